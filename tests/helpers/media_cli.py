"""Run ``clinivault devices`` / ``clinivault watch`` in tests, in-process or as a process
(``python -m tests.helpers.media_cli ARGS``, for ``watch``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from core.cli import main as cli_main


def main(argv: Sequence[str]) -> int:
    return cli_main(list(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
