"""The ``clinivault`` console script: the kiosk app, or a headless command.

Why here and not in ``core.cli``: starting the app needs Textual, and nothing under
``core/`` may import it. ``clinivault demo`` and ``clinivault kiosk`` start the app; every
other command is handed to ``core.cli`` untouched.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

APP_COMMANDS = {"demo"}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in args if not a.startswith("-")), None)
    if command in APP_COMMANDS:
        from core.demo import run_headless_demo

        return run_headless_demo(args)
    from core.cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
