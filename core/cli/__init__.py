"""Headless commands over the same core the kiosk uses (``clinivault COMMAND``).

Each command module adds its sub-parsers in ``register(subparsers)`` and sets ``func``.
Expected failures (``core.errors.ClinivaultError``) become one line on stderr and the
error's exit code (2 bad input, 1 failed safely); no traceback for them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from core.errors import EXIT_BAD_INPUT, ClinivaultError


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors with our exit code for bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        """One line, like every other error; the full usage is one --help away."""
        self.exit(EXIT_BAD_INPUT,
                  f"clinivault: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    from core.cli import (
        audit_cmds,
        custodian_cmds,
        ingest_cmds,
        media_cmds,
        user_cmds,
        vault_cmds,
    )

    parser = _Parser(prog="clinivault", description=__doc__.splitlines()[0])
    parser.add_argument("--config", metavar="FILE",
                        help="site configuration file (default: $CLINIVAULT_CONFIG)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in (vault_cmds, audit_cmds, ingest_cmds, media_cmds, custodian_cmds,
                   user_cmds):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return int(args.func(args) or 0)
    except ClinivaultError as exc:
        print(f"clinivault: error: {exc.user_message()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("clinivault: interrupted", file=sys.stderr)
        return 130
