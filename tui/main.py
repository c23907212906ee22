"""The ``clinivault`` console script: the kiosk app, or a headless command.

Why here and not in ``core.cli``: starting the app needs Textual, and nothing under
``core/`` may import it. ``clinivault demo`` and ``clinivault kiosk`` (or no command with a
site config) start the app; every other command is handed to ``core.cli`` untouched.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

#: Options of the top-level parser that take a value (so the value is not the command).
_VALUE_OPTIONS = {"--config"}


def command_of(args: Sequence[str]) -> str | None:
    """The first word that is neither an option nor an option's value."""
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        if a in _VALUE_OPTIONS:
            skip = True
            continue
        if a.startswith("-"):
            continue
        return a
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command = command_of(args)
    if command == "demo":
        from tui.app import run_demo

        return run_demo(args)
    if command == "kiosk" or (command is None and (
            "--config" in args or os.environ.get("CLINIVAULT_CONFIG"))):
        from tui.app import run_kiosk

        return run_kiosk(args)
    from core.cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
