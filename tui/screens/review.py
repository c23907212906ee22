"""Step 5: review — every image as a tile; keep or discard, zoom, keywords, consent form.

The decisions are the session's (``IngestSession.set_decision``, ``suggest_all``); the
counts line is ``core.session.model.review_counts_line``; the quality flags and their
messages come from ``core.quality`` through the session. Nothing is discarded here: the
decisions take effect after F10 and a confirmation, when the session archives the kept
images and only then wipes the card.
"""

from __future__ import annotations

from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Footer, Label, Static
from textual.worker import get_current_worker

from core.errors import BadInput
from core.media.devices import human_size
from core.session import IngestSession, ItemReport
from core.session.model import review_counts_line
from tui.glyphs import Glyphs
from tui.messages import CancelSession, ReviewFinished, ThumbnailsReady
from tui.screens.base import KioskScreen, step_title
from tui.screens.consent import split_list
from tui.screens.modals import ConfirmScreen, Field, FormScreen
from tui.widgets.common import plain
from tui.widgets.halfblock import fit
from tui.widgets.pixel_view import PixelView
from tui.widgets.review_grid import INNER_W, THUMB_ROWS, ReviewGrid, TileView, reason_words

BATCH = 24


def describe_item(item: ItemReport, glyphs: Glyphs) -> str:
    """The selected image in words: decision, every flag's message, size and capture time."""
    g = glyphs
    lines = []
    if item.unreadable:
        lines.append(f"{g.unreadable} Image {item.index + 1} ({item.display}) could not be read: "
                     f"{item.unreadable_reason}. It stays on the card and is not archived.")
    else:
        if item.decision == "keep":
            what = f"{g.keep} keep"
        else:
            what = f"{g.discard} discard ({reason_words(item.reason)})"
        lines.append(f"Image {item.index + 1} · {item.display} · {what}")
        for flag in item.flags:
            lines.append(f"{g.flag(flag.reason)} {flag.message}")
        if not item.flags:
            lines.append("No quality problems found.")
    a = item.analysis
    facts = [human_size(item.item.size)]
    if a is not None and a.width and a.height:
        facts.append(f"{a.display_width or a.width} x {a.display_height or a.height} pixels")
    if a is not None and a.captured:
        facts.append(f"taken {a.captured}")
    if item.consent_form:
        facts.append(f"{g.consent_form} photo of the consent form")
    if item.keywords:
        facts.append("keywords: " + ", ".join(item.keywords))
    if item.body_site:
        facts.append(f"body site: {item.body_site}")
    lines.append(" · ".join(facts))
    return "\n".join(lines)


class ZoomScreen(ModalScreen[None]):
    """One image as large as the terminal allows, with everything known about it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,enter,z", "close", "Back", id="zoom.close",
                tooltip="Back to all the images", key_display="Esc"),
    ]

    def __init__(self, item: ItemReport, glyphs: Glyphs) -> None:
        super().__init__()
        self.item = item
        self.glyphs = glyphs

    def compose(self) -> ComposeResult:
        a = self.item.analysis
        with Vertical(id="zoom"):
            yield PixelView(a.thumbnail_jpeg if a is not None else None, id="zoom-image")
            yield Static(plain(describe_item(self.item, self.glyphs)), id="zoom-detail")
        yield Footer(compact=True)

    def action_close(self) -> None:
        self.dismiss(None)


class ReviewScreen(KioskScreen):
    """The grid, the live counts line and the selected image's details."""

    WHERE = step_title("Review")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("space", "toggle", "Keep/discard", id="review.toggle",
                tooltip="Switch the selected image between keep and discard"),
        Binding("enter,z", "zoom", "Zoom", id="review.zoom", key_display="Enter",
                tooltip="Show the selected image large, with all its details"),
        Binding("a", "accept", "Suggestions", id="review.accept",
                tooltip="Accept every suggestion: discard what the quality check flagged, "
                        "keep the rest"),
        Binding("c", "consent_form", "Consent form", id="review.consent_form",
                tooltip="Mark (or unmark) the selected image as the photographed consent form"),
        Binding("k", "details('keywords')", "Keywords", id="review.keywords",
                tooltip="Keywords and body site for the selected image, and keywords "
                        "(e.g. a diagnosis) for the whole session"),
        Binding("b", "details('body_site')", "Body site", id="review.body_site", show=False,
                tooltip="Body site of the selected image"),
        Binding("f10", "finish", "Finish", id="review.finish",
                tooltip="Confirm the decisions: archive the kept images, then wipe the card"),
        Binding("escape", "cancel", "Cancel session", id="review.cancel", show=False,
                tooltip="Stop this session; nothing has been archived or wiped yet"),
    ]

    def __init__(self, session: IngestSession) -> None:
        super().__init__()
        self.session = session
        self.session_keywords: list[str] = list(session.keywords)

    @property
    def items(self) -> list[ItemReport]:
        return self.session.items

    def compose_body(self) -> ComposeResult:
        yield Label(plain(review_counts_line(self.items)), id="counts")
        yield ReviewGrid([TileView.of(it) for it in self.items], self.glyphs, id="grid")
        yield Static(id="detail")

    def on_mount(self) -> None:
        grid = self.query_one(ReviewGrid)
        grid.focus()
        self._show_detail(grid.cursor)
        self._decode_thumbnails()

    # -- thumbnails (decoded off the UI thread) --------------------------------------------
    @work(thread=True, exclusive=True, exit_on_error=False, group="thumbnails")
    def _decode_thumbnails(self) -> None:
        worker = get_current_worker()
        batch: dict[int, object] = {}
        for it in self.items:
            if worker.is_cancelled:
                return
            a = it.analysis
            if a is None or not a.ok or not a.thumbnail_jpeg:
                continue
            block = fit(a.thumbnail_jpeg, INNER_W, THUMB_ROWS)
            if block is not None:
                batch[it.index] = block
            if len(batch) >= BATCH:
                self.post_message(ThumbnailsReady(batch))
                batch = {}
        if batch:
            self.post_message(ThumbnailsReady(batch))

    @on(ThumbnailsReady)
    def _thumbnails(self, event: ThumbnailsReady) -> None:
        self.query_one(ReviewGrid).add_thumbnails(event.blocks)

    # -- showing changes -------------------------------------------------------------------
    def _changed(self) -> None:
        self.query_one("#counts", Label).update(plain(review_counts_line(self.items)))
        grid = self.query_one(ReviewGrid)
        grid.update_tiles([TileView.of(it) for it in self.items])
        self._show_detail(grid.cursor)
        self.refresh_bindings()

    @on(ReviewGrid.Selected)
    def _selected(self, event: ReviewGrid.Selected) -> None:
        self._show_detail(event.index)
        self.refresh_bindings()

    def _show_detail(self, index: int) -> None:
        if 0 <= index < len(self.items):
            self.query_one("#detail", Static).update(plain(describe_item(self.items[index],
                                                                         self.glyphs)))

    @property
    def current(self) -> ItemReport:
        return self.items[self.query_one(ReviewGrid).cursor]

    # -- keys ------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("toggle", "consent_form", "details"):
            return None if self.current.unreadable else True
        return True

    def action_toggle(self) -> None:
        item = self.current
        try:
            self.session.set_decision(item.index,
                                      "discard" if item.decision == "keep" else "keep")
        except BadInput as exc:
            self.notify(exc.user_message(), severity="warning")
            return
        self._changed()

    def action_accept(self) -> None:
        self.session.suggest_all()
        self._changed()

    def action_consent_form(self) -> None:
        item = self.current
        if not item.unreadable:
            item.consent_form = not item.consent_form
            self._changed()

    def action_zoom(self) -> None:
        self.app.push_screen(ZoomScreen(self.current, self.glyphs))

    def action_details(self, focus: str = "keywords") -> None:
        item = self.current
        fields = [Field("keywords", f"Keywords for image {item.index + 1} (commas between)",
                        ", ".join(item.keywords)),
                  Field("body_site", f"Body site of image {item.index + 1}", item.body_site,
                        placeholder="e.g. left forearm"),
                  Field("session", "Keywords for the whole session, e.g. a diagnosis",
                        ", ".join(self.session_keywords))]
        if focus == "body_site":
            fields = [fields[1], fields[0], fields[2]]

        def saved(values: dict[str, str] | None) -> None:
            if values is None:
                return
            item.keywords = split_list(values["keywords"])
            item.body_site = values["body_site"].strip()
            self.session_keywords = split_list(values["session"])
            self._changed()

        self.app.push_screen(FormScreen("Keywords and body site", fields), saved)

    def action_finish(self) -> None:
        kept = len(self.session.kept())
        line = review_counts_line(self.items)
        discards = sum(1 for it in self.items if it.decision == "discard" and not it.unreadable)
        body = (f"{line}.\n\n{kept} image{'s' if kept != 1 else ''} will be archived and "
                "verified. ")
        if discards:
            body += (f"The {discards} discarded image{'s are' if discards != 1 else ' is'} "
                     "not archived. ")
        body += "Then every archived and discarded image is wiped from the card."

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.post_message(ReviewFinished(self.session_keywords))

        self.app.push_screen(ConfirmScreen("Finish the review?", body,
                                           yes="Yes, archive and wipe", no="No, keep reviewing"),
                             confirmed)

    def action_cancel(self) -> None:
        self.post_message(CancelSession())
