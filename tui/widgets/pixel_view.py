"""One image, as large as the widget, in half-blocks (the review screen's zoom).

The JPEG is decoded and scaled in a worker thread whenever the widget's size changes; until
then the widget says "…".
"""

from __future__ import annotations

from rich.segment import Segment
from textual import events, work
from textual.strip import Strip
from textual.widget import Widget

from tui.widgets.halfblock import PixelBlock, fit


class PixelView(Widget):
    """Shows *jpeg* fitted to the widget, centred."""

    DEFAULT_CSS = """
    PixelView { width: 1fr; height: 1fr; }
    """

    def __init__(self, jpeg: bytes | None, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.jpeg = jpeg
        self.block: PixelBlock | None = None

    def on_resize(self, event: events.Resize) -> None:
        if self.jpeg:
            self._decode(self.jpeg, event.size.width, event.size.height)

    @work(thread=True, exclusive=True, exit_on_error=False, group="zoom")
    def _decode(self, jpeg: bytes, cols: int, rows: int) -> None:
        block = fit(jpeg, cols, rows)
        self.app.call_from_thread(self._show, block)

    def _show(self, block: PixelBlock | None) -> None:
        self.block = block
        self.refresh()

    def render_line(self, y: int) -> Strip:
        width, height = self.size
        base = self.rich_style
        block = self.block
        if block is None:
            text = ("no preview" if not self.jpeg else "…") if y == height // 2 else ""
            return Strip([Segment(text.center(width), base)]).crop(0, width)
        top = (height - block.rows) // 2
        row = y - top
        if not 0 <= row < block.rows:
            return Strip.blank(width, base)
        left = (width - block.width) // 2
        segs = [Segment(" " * left, base), *block.row_segments(row)]
        return Strip(segs).extend_cell_length(width, base).crop(0, width)
