"""Thumbnails drawn with half-blocks: each character cell shows two pixels, one above the other.

Why our own (about 60 lines) instead of textual-image or rich-pixels: textual-image probes
the terminal at import (which can eat a keystroke) and its newer releases need Python 3.12;
half-blocks need nothing from the terminal but colour, so they work in every terminal and over
ssh. The cell "▀" takes the upper pixel as its foreground and the lower as its background.

Decoding (Pillow) is done off the UI thread: :func:`fit` is called from a worker and returns a
:class:`PixelBlock`, plain bytes that render cheaply. The JPEG bytes come from
``ImageAnalysis.thumbnail_jpeg``, which the sandboxed decode workers re-encoded, so no card
file is parsed here.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image
from rich.color import Color
from rich.segment import Segment
from rich.style import Style

UPPER_HALF = "▀"


@dataclass(frozen=True)
class PixelBlock:
    """RGB pixels, ``width`` x ``height``, fitted to ``width`` cells and ``ceil(height/2)`` rows."""

    width: int
    height: int
    rgb: bytes

    @property
    def rows(self) -> int:
        return (self.height + 1) // 2

    def pixel(self, x: int, y: int) -> tuple[int, int, int]:
        i = (y * self.width + x) * 3
        return self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]

    def row_segments(self, row: int) -> list[Segment]:
        """The segments of character row *row* (0-based), exactly ``width`` cells."""
        top_y, bottom_y = 2 * row, 2 * row + 1
        out = []
        for x in range(self.width):
            top = self.pixel(x, top_y)
            bottom = self.pixel(x, bottom_y) if bottom_y < self.height else None
            out.append(Segment(UPPER_HALF, _style(top, bottom)))
        return out


@lru_cache(maxsize=4096)
def _style(top: tuple[int, int, int], bottom: tuple[int, int, int] | None) -> Style:
    return Style(color=Color.from_rgb(*top),
                 bgcolor=Color.from_rgb(*bottom) if bottom is not None else None)


def fit(jpeg: bytes, cols: int, rows: int) -> PixelBlock | None:
    """Decode *jpeg* and shrink it to fit *cols* x *rows* cells (aspect kept); None if unreadable.

    A cell is about twice as tall as wide, and holds two pixels stacked, so one pixel is about
    square: the fit is to ``cols`` x ``2 * rows`` pixels.
    """
    if cols < 1 or rows < 1:
        return None
    try:
        with Image.open(io.BytesIO(jpeg), formats=("JPEG",)) as img:
            img.draft("RGB", (cols, rows * 2))
            rgb = img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    w, h = rgb.size
    if w < 1 or h < 1:
        return None
    scale = min(cols / w, (2 * rows) / h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = rgb.resize(size, Image.Resampling.LANCZOS)
    return PixelBlock(size[0], size[1], small.tobytes())
