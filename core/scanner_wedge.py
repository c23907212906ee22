"""Tell a barcode scanner's typing from a person's, by the gaps between keystrokes.

Why: a scanner in keyboard-wedge mode "types" the barcode as keystrokes ending in Enter. A
scanned wristband is the safest way to enter a patient ID, so a scan can count as a confirmed
entry, while hand-typed IDs get a second look. A scanner types a character every few
milliseconds; people (and key auto-repeat, which waits a few hundred ms before repeating) are
far slower. This is a pure classifier over timestamps: the TUI feeds it key events with their
times and asks at Enter; it never reads a clock or the keyboard itself.

Only an entry typed entirely at scanner speed counts; a mix of typing and scanning is not a
scan. ``text`` is what was fed since the last ``reset``/``enter``: the caller should also check
it equals the input field's contents (text left over from before an edit is not seen here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Fewer characters than this are never a scan (a person can tap two or three keys quickly).
MIN_SCAN_CHARS = 4


@dataclass(frozen=True)
class WedgeResult:
    """What was entered, and whether it arrived at scanner speed."""

    text: str
    scanned: bool


class WedgeDetector:
    """Feed each printable key with its time (ms, monotonic); ask :meth:`enter` at Enter."""

    def __init__(self, max_gap_ms: float, min_chars: int = MIN_SCAN_CHARS) -> None:
        if not (isinstance(max_gap_ms, int | float) and math.isfinite(max_gap_ms)
                and max_gap_ms > 0):
            raise ValueError(f"max_gap_ms must be a positive number, not {max_gap_ms!r}")
        if min_chars < 1:
            raise ValueError(f"min_chars must be at least 1, not {min_chars!r}")
        self.max_gap_ms = float(max_gap_ms)
        self.min_chars = min_chars
        self.reset()

    def reset(self) -> None:
        """Forget the entry so far: call on backspace, delete, paste, cursor moves or clearing."""
        self._chars: list[str] = []
        self._last_ms: float | None = None
        self._fast = True

    def _gap(self, t_ms: float) -> None:
        if self._last_ms is not None:
            gap = t_ms - self._last_ms
            # A clock that runs backwards proves nothing about speed: not a scan.
            if not (0 <= gap <= self.max_gap_ms):
                self._fast = False
        self._last_ms = t_ms

    def feed(self, key: str, t_ms: float) -> None:
        """One printable character typed at *t_ms*."""
        if not isinstance(key, str) or len(key) != 1 or not key.isprintable():
            raise ValueError(f"feed takes one printable character, not {key!r}")
        self._gap(t_ms)
        self._chars.append(key)

    @property
    def text(self) -> str:
        """The characters fed since the last reset or Enter."""
        return "".join(self._chars)

    def enter(self, t_ms: float) -> WedgeResult:
        """Enter pressed at *t_ms*: classify the entry, then start afresh for the next one."""
        count = len(self._chars)
        if count:
            self._gap(t_ms)
        result = WedgeResult(self.text, scanned=count >= self.min_chars and self._fast)
        self.reset()
        return result
