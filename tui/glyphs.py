"""Symbols the kiosk draws, in two sets: Unicode, and ASCII for the bare Linux console.

Why two sets: the Linux console font (TERM=linux) holds a few hundred glyphs, and a missing
glyph shows as a blank or a diamond, so a flag's symbol would vanish. Every symbol is always
shown next to its word (never colour or symbol alone); the ASCII set only keeps the symbol
visible too. The half-block (U+2580) used for thumbnails is in the console's code page.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Glyphs:
    keep: str
    discard: str
    ok: str
    bad: str
    selected: str
    consent_form: str
    video: str
    box: str  # tl, top, tr, side, bl, br
    box_selected: str
    flags: dict[str, str] = field(default_factory=dict)
    unknown_flag: str = "?"
    unreadable: str = "!"
    ellipsis: str = "…"

    def flag(self, reason: str) -> str:
        return self.flags.get(reason, self.unknown_flag)


UNICODE = Glyphs(
    keep="✓", discard="✗", ok="✓", bad="✗", selected="▶", consent_form="§", video="▶",
    box="╭─╮│╰╯", box_selected="┏━┓┃┗┛",
    flags={"blurred": "≈", "dark": "◐", "bright": "○", "overexposed": "○",
           "underexposed": "◐", "low_resolution": "▫", "duplicate": "=", "operator": "✗"},
    unknown_flag="?", unreadable="!",
)

ASCII = Glyphs(
    keep="+", discard="x", ok="ok", bad="!", selected=">", consent_form="C", video=">",
    box="+-+|++", box_selected="#=#H##",
    flags={"blurred": "~", "dark": "v", "bright": "^", "overexposed": "^", "underexposed": "v",
           "low_resolution": ".", "duplicate": "=", "operator": "x"},
    unknown_flag="?", unreadable="!", ellipsis=">",
)


def console_requested(environ: dict[str, str] | None = None) -> bool:
    """True on the bare Linux console, or when CLINIVAULT_CONSOLE=1 asks for it."""
    env = os.environ if environ is None else environ
    if env.get("CLINIVAULT_CONSOLE") in ("0", "1"):
        return env["CLINIVAULT_CONSOLE"] == "1"
    return env.get("TERM", "") == "linux"
