"""The review grid: every image of the session as a tile, drawn line by line.

Why the line API (a ``ScrollView`` that renders only the visible lines) instead of one widget
per tile: a studio session holds hundreds of images, and hundreds of widgets each with
children make mounting and every resize slow. Here a tile is a few cached strips.

Each tile shows the thumbnail, the decision as a symbol and a word ("✓ keep", "✗ discard:
blurred") and the quality flags as symbols and words; the selected tile has a different
border shape, not only a different colour. Colours come from component classes, so the
stylesheets (including the 16-colour console one) decide them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from core.session import ItemReport
from tui.glyphs import UNICODE, Glyphs
from tui.widgets.halfblock import PixelBlock

INNER_W = 16
THUMB_ROWS = 4
TILE_W = INNER_W + 2 + 1  # borders and a gap of one column
TILE_H = THUMB_ROWS + 2 + 2  # thumbnail, two text lines, borders


def reason_words(reason: str | None) -> str:
    """A flag reason in words ("low_resolution" -> "low resolution")."""
    if not reason:
        return ""
    return {"low_resolution": "low res", "operator": "by you"}.get(reason,
                                                                    reason.replace("_", " "))


@dataclass(frozen=True)
class TileView:
    """What one tile shows, copied from the session's ``ItemReport``."""

    index: int
    name: str
    decision: str
    reason: str | None
    flags: tuple[str, ...]
    unreadable: bool
    unreadable_reason: str | None
    consent_form: bool
    video: bool

    @classmethod
    def of(cls, item: ItemReport) -> TileView:
        return cls(index=item.index, name=item.display.rsplit("/", 1)[-1],
                   decision=item.decision, reason=item.reason,
                   flags=tuple(f.reason for f in item.flags), unreadable=item.unreadable,
                   unreadable_reason=item.unreadable_reason, consent_form=item.consent_form,
                   video=item.kind == "video")


def _fit(text: str, width: int, ellipsis: str = "…") -> str:
    if len(text) <= width:
        return text.ljust(width)
    return text[: width - 1] + ellipsis if width > 1 else text[:width]


class ReviewGrid(ScrollView, can_focus=True, inherit_bindings=False):
    """Tiles in rows; arrow keys move the selection. Posts ``Selected`` when it moves."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "review-grid--border", "review-grid--selected", "review-grid--keep",
        "review-grid--discard", "review-grid--flag", "review-grid--muted",
        "review-grid--title",
    }
    DEFAULT_CSS = """
    ReviewGrid { height: 1fr; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("left", "move(-1, 0)", "Previous", show=False, id="grid.left",
                tooltip="Select the image to the left"),
        Binding("right", "move(1, 0)", "Next", show=False, id="grid.right",
                tooltip="Select the image to the right"),
        Binding("up", "move(0, -1)", "Up", show=False, id="grid.up",
                tooltip="Select the image above"),
        Binding("down", "move(0, 1)", "Down", show=False, id="grid.down",
                tooltip="Select the image below"),
        Binding("pageup", "page(-1)", "Page up", show=False, id="grid.pageup",
                tooltip="Up one screenful"),
        Binding("pagedown", "page(1)", "Page down", show=False, id="grid.pagedown",
                tooltip="Down one screenful"),
        Binding("home", "jump(0)", "First", show=False, id="grid.home",
                tooltip="Select the first image"),
        Binding("end", "jump(-1)", "Last", show=False, id="grid.end",
                tooltip="Select the last image"),
    ]

    cursor: reactive[int] = reactive(0)

    class Selected(Message):
        """The selection moved to tile *index*."""

        def __init__(self, index: int) -> None:
            super().__init__()
            self.index = index

    def __init__(self, tiles: list[TileView], glyphs: Glyphs = UNICODE, *,
                 id: str | None = None) -> None:
        super().__init__(id=id)
        self.tiles = tiles
        self.glyphs = glyphs
        self.thumbs: dict[int, PixelBlock] = {}
        self._cache: dict[tuple[int, bool], list[list[Segment]]] = {}

    # -- data ------------------------------------------------------------------------------
    def update_tiles(self, tiles: list[TileView]) -> None:
        """Replace the tiles that changed (decisions, consent-form marks) and redraw them."""
        for new in tiles:
            if new.index < len(self.tiles) and self.tiles[new.index] != new:
                self._forget(new.index)
        self.tiles = tiles
        self._resize()
        self.refresh()

    def add_thumbnails(self, blocks: dict[int, PixelBlock]) -> None:
        self.thumbs.update(blocks)
        for index in blocks:
            self._forget(index)
        self.refresh()

    def _forget(self, index: int) -> None:
        self._cache.pop((index, True), None)
        self._cache.pop((index, False), None)

    # -- geometry --------------------------------------------------------------------------
    @property
    def columns(self) -> int:
        return max(1, self.scrollable_content_region.width // TILE_W)

    def _left(self) -> int:
        return max(0, (self.scrollable_content_region.width - self.columns * TILE_W) // 2)

    def _resize(self) -> None:
        rows = -(-len(self.tiles) // self.columns)
        self.virtual_size = Size(self.columns * TILE_W, rows * TILE_H)

    def on_resize(self, _event: events.Resize) -> None:
        self._resize()
        self._show_cursor()

    def on_mount(self) -> None:
        self._resize()

    def tile_region(self, index: int) -> Region:
        row, col = divmod(index, self.columns)
        return Region(col * TILE_W, row * TILE_H, TILE_W, TILE_H)

    def _show_cursor(self) -> None:
        if self.tiles:
            self.scroll_to_region(self.tile_region(self.cursor), animate=False, force=True)

    # -- keys ------------------------------------------------------------------------------
    def action_move(self, dx: int, dy: int) -> None:
        self._go(self.cursor + dx + dy * self.columns)

    def action_page(self, direction: int) -> None:
        rows = max(1, self.scrollable_content_region.height // TILE_H)
        self._go(self.cursor + direction * rows * self.columns)

    def action_jump(self, index: int) -> None:
        self._go(index if index >= 0 else len(self.tiles) - 1)

    def _go(self, index: int) -> None:
        if not self.tiles:
            return
        self.cursor = max(0, min(len(self.tiles) - 1, index))

    def watch_cursor(self, old: int, new: int) -> None:
        self._forget(old)
        self._forget(new)
        self._show_cursor()
        self.refresh()
        self.post_message(self.Selected(new))

    def on_click(self, event: events.Click) -> None:
        x = event.x + int(self.scroll_offset.x) - self._left()
        y = event.y + int(self.scroll_offset.y)
        if x < 0:
            return
        col, row = x // TILE_W, y // TILE_H
        if col < self.columns:
            index = row * self.columns + col
            if index < len(self.tiles):
                self.cursor = index

    # -- drawing ---------------------------------------------------------------------------
    def render_line(self, y: int) -> Strip:
        base = self.rich_style
        width = self.scrollable_content_region.width
        vy = y + int(self.scroll_offset.y)
        row, line = divmod(vy, TILE_H)
        cols = self.columns
        segments: list[Segment] = [Segment(" " * self._left(), base)]
        for col in range(cols):
            index = row * cols + col
            if index >= len(self.tiles):
                break
            segments.extend(self._tile_lines(index)[line])
        strip = Strip(segments)
        return strip.extend_cell_length(width, base).crop(0, width)

    def _tile_lines(self, index: int) -> list[list[Segment]]:
        selected = index == self.cursor
        key = (index, selected)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._cache[key] = self._draw(self.tiles[index], selected)
        return cached

    def _style(self, name: str) -> Style:
        return self.rich_style + self.get_component_rich_style(name, partial=True)

    def _draw(self, tile: TileView, selected: bool) -> list[list[Segment]]:
        g = self.glyphs
        box = g.box_selected if selected else g.box
        tl, top, tr, side, bl, br = box
        border = self._style("review-grid--selected" if selected else "review-grid--border")
        base = self.rich_style
        muted = self._style("review-grid--muted")
        gap = Segment(" ", base)
        title = f" {tile.index + 1} {tile.name} "
        if selected:
            title = f"{g.selected}{title}"
        title = title[:INNER_W]
        lines: list[list[Segment]] = [[
            Segment(tl, border), Segment(title, self._style("review-grid--title")),
            Segment(top * (INNER_W - len(title)), border), Segment(tr, border), gap]]

        def row(segs: list[Segment]) -> list[Segment]:
            return [Segment(side, border), *segs, Segment(side, border), gap]

        thumb = self.thumbs.get(tile.index)
        for r in range(THUMB_ROWS):
            if thumb is not None and not tile.unreadable:
                pad = INNER_W - thumb.width
                top_pad = (THUMB_ROWS - thumb.rows) // 2
                if top_pad <= r < top_pad + thumb.rows:
                    segs = [Segment(" " * (pad // 2), base), *thumb.row_segments(r - top_pad),
                            Segment(" " * (pad - pad // 2), base)]
                    lines.append(row(segs))
                    continue
                lines.append(row([Segment(" " * INNER_W, base)]))
            else:
                text = ""
                if r == 1:
                    text = ("cannot read" if tile.unreadable else
                            f"{g.video} video" if tile.video else g.ellipsis)
                elif r == 2 and tile.unreadable:
                    text = tile.unreadable_reason or ""
                lines.append(row([Segment(self._fit(text.center(INNER_W)), muted)]))
        lines.append(row(self._decision_line(tile)))
        lines.append(row(self._flags_line(tile)))
        lines.append([Segment(bl + top * INNER_W + br, border), gap])
        return lines

    def _fit(self, text: str) -> str:
        return _fit(text, INNER_W, self.glyphs.ellipsis)

    def _decision_line(self, tile: TileView) -> list[Segment]:
        g = self.glyphs
        if tile.unreadable:
            return [Segment(self._fit(f"{g.unreadable} stays on card"),
                            self._style("review-grid--muted"))]
        if tile.decision == "keep":
            text = f"{g.keep} keep"
            if tile.consent_form:
                text += f" {g.consent_form} form"
            return [Segment(self._fit(text), self._style("review-grid--keep"))]
        text = f"{g.discard} discard"
        if tile.reason:
            text += f": {reason_words(tile.reason)}"
        return [Segment(self._fit(text), self._style("review-grid--discard"))]

    def _flags_line(self, tile: TileView) -> list[Segment]:
        g = self.glyphs
        if tile.unreadable:
            return [Segment(self._fit("not archived"), self._style("review-grid--muted"))]
        if not tile.flags:
            text = f"{g.consent_form} consent form" if tile.consent_form else "no problems"
            return [Segment(self._fit(text), self._style("review-grid--muted"))]
        words = " ".join(f"{g.flag(r)}{reason_words(r)}" for r in tile.flags)
        return [Segment(self._fit(words), self._style("review-grid--flag"))]
