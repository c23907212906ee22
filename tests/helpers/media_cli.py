"""Run ``clinivault devices`` / ``clinivault watch`` in tests, registered or not yet.

Why: the lead registers :mod:`core.cli.media_cmds` in ``core.cli.build_parser``; until then
the tests build the same parser with the module added, so they exercise the real commands.
``python -m tests.helpers.media_cli ARGS`` runs it as a process (for ``watch``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from core.cli import _Parser, build_parser
from core.cli import main as cli_main
from core.errors import ClinivaultError


def registered() -> bool:
    parser = build_parser()
    for action in parser._actions:
        choices = getattr(action, "choices", None)
        if isinstance(choices, dict) and "devices" in choices:
            return True
    return False


def main(argv: Sequence[str]) -> int:
    if registered():
        return cli_main(list(argv))
    from core.cli import media_cmds

    parser = _Parser(prog="clinivault")
    parser.add_argument("--config", metavar="FILE")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    media_cmds.register(sub)
    args = parser.parse_args(list(argv))
    try:
        return int(args.func(args) or 0)
    except ClinivaultError as exc:
        print(f"clinivault: error: {exc.user_message()}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
