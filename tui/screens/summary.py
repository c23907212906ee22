"""Step 8: the summary — the line for the patient's notes, large and selectable.

The line is ``SessionSummary.note()``, worded by core. It sits in a read-only text area so it
can be selected and copied (Ctrl+C) into the patient's record; "Remove the card" ends the
session.
"""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.widgets import Label, Static, TextArea

from core.media.sources import DetectedMedia
from core.session import SessionSummary
from tui.messages import SessionClosed
from tui.screens.base import KioskScreen, step_title
from tui.widgets.common import plain


class SummaryScreen(KioskScreen):
    """What the session did, and the request to remove the card."""

    WHERE = step_title("Summary")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f10", "done", "Done", id="summary.done",
                tooltip="The card is out: wait for the next card"),
        Binding("f7", "copy_note", "Copy line", id="summary.copy",
                tooltip="Select the whole line for the notes and copy it to the clipboard"),
    ]

    def __init__(self, summary: SessionSummary) -> None:
        super().__init__()
        self.summary = summary

    def compose_body(self) -> ComposeResult:
        s = self.summary
        with Vertical(id="summary"):
            yield Label("For the patient's notes", classes="step-title")
            note = TextArea(s.note(), read_only=True, soft_wrap=True, id="note",
                            show_line_numbers=False, compact=True)
            yield note
            lines = [f"Session {s.session}"]
            for r in s.left_on_card[:6]:
                lines.append(f"Left on the card: {r['file']}: {r['reason']}")
            if len(s.left_on_card) > 6:
                lines.append(f"… and {len(s.left_on_card) - 6} more left on the card")
            yield Static(plain("\n".join(lines)), id="facts")
            yield Label("Remove the card, then press F10.", id="remove-card")

    def on_mount(self) -> None:
        self.query_one("#note", TextArea).focus()
        self.watch(self.kiosk, "media", self._media_changed, init=False)

    def _media_changed(self, media: list[DetectedMedia]) -> None:
        """Say so when the card is out (a udev source reports it; a folder never leaves)."""
        card = self.kiosk.flow.media
        if card is not None and all(m.key != card.key for m in media):
            self.query_one("#remove-card", Label).update(
                f"{self.glyphs.ok} The card is out. Press F10 for the next patient.")

    def action_copy_note(self) -> None:
        self.query_one("#note", TextArea).select_all()
        self.app.copy_to_clipboard(self.summary.note())
        self.notify("The line is copied: paste it into the patient's notes.", title="Copied")

    def action_done(self) -> None:
        self.post_message(SessionClosed())
