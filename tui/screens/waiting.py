"""Step 1: "Insert a card or USB stick", the cards found, and refused devices on request.

The list comes from the app's media source (``core.media.sources``), read in a worker; this
screen only shows it and says which card to start with.
"""

from __future__ import annotations

from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.widgets import Label, OptionList, Static
from textual.widgets.option_list import Option

from core.media.sources import DetectedMedia
from tui.messages import StartSession
from tui.screens.base import KioskScreen, step_title
from tui.widgets.common import plain


class WaitingScreen(KioskScreen):
    """The operator's home: waits for a card, then starts a session on the chosen one."""

    WHERE = step_title("Card")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f10", "start", "Start", id="waiting.start",
                tooltip="Start a session with the highlighted card (Enter does the same)"),
        Binding("r", "toggle_refused", "Refused", id="waiting.refused",
                tooltip="Show or hide devices that are not used, with the reason"),
        Binding("n", "new_demo_card", "New card", id="waiting.demo_card",
                tooltip="Demo only: put a fresh set of sample photographs on the simulated "
                        "card"),
        Binding("f3", "sign_out", "Sign out", id="waiting.sign_out",
                tooltip="Sign out; the next person signs in with their own ID"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.show_refused = False
        self._shown: list[DetectedMedia] = []

    def compose_body(self) -> ComposeResult:
        with Vertical(id="waiting"):
            yield Label("Insert a card or USB stick", id="insert")
            yield Static(plain("Cards found appear below. Choose one with the arrow keys and "
                               "press Enter to start."), id="waiting-help")
            yield OptionList(id="media")
            yield Static(id="refused-count")

    def on_mount(self) -> None:
        self.watch(self.kiosk, "media", self._media_changed)
        self.kiosk.refresh_media()

    def _media_changed(self, media: list[DetectedMedia]) -> None:
        usable = [m for m in media if m.refused is None]
        refused = [m for m in media if m.refused is not None]
        shown = usable + (refused if self.show_refused else [])
        if shown != self._shown:
            self._shown = shown
            ol = self.query_one("#media", OptionList)
            highlighted = ol.highlighted
            ol.clear_options()
            g = self.glyphs
            for m in shown:
                if m.refused is not None:
                    text = f"{g.bad} {m.device or m.key}: not used — {m.refused}"
                    ol.add_option(Option(plain(text), id=m.key, disabled=True))
                else:
                    ol.add_option(Option(plain(m.describe()), id=m.key,
                                         disabled=not m.usable))
            if shown:
                first = next((i for i, m in enumerate(shown) if m.usable), None)
                ol.highlighted = highlighted if highlighted is not None and \
                    highlighted < len(shown) and shown[highlighted].usable else first
            ol.focus()
        hidden = len(refused) if not self.show_refused else 0
        self.query_one("#refused-count", Static).update(plain(
            f"{hidden} other device{'s' if hidden != 1 else ''} not used (R shows why)"
            if hidden else ""))
        self.query_one("#insert", Label).update(
            "Card found" if any(m.usable for m in media) else "Insert a card or USB stick")
        self.refresh_bindings()

    def selected(self) -> DetectedMedia | None:
        ol = self.query_one("#media", OptionList)
        if ol.highlighted is None or ol.highlighted >= len(self._shown):
            return None
        m = self._shown[ol.highlighted]
        return m if m.usable else None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "start":
            return True if self.selected() else None
        if action == "new_demo_card":
            return self.kiosk.demo_card is not None
        return True

    @on(OptionList.OptionHighlighted)
    def _highlighted(self) -> None:
        self.refresh_bindings()

    @on(OptionList.OptionSelected)
    def _chosen(self) -> None:
        self.action_start()

    def action_start(self) -> None:
        media = self.selected()
        if media is not None:
            self.post_message(StartSession(media))

    def action_toggle_refused(self) -> None:
        self.show_refused = not self.show_refused
        self._media_changed(self.kiosk.media)

    def action_new_demo_card(self) -> None:
        self.kiosk.new_demo_card()

    async def action_sign_out(self) -> None:
        await self.kiosk.sign_out()
