"""What every kiosk screen shares: the top bar (step and who is signed in) and the footer.

Why a base class: the footer must show the keys that apply *now*, so every screen has one;
the top bar tells the nurse where they are ("Step 3 of 8 · Consent") on every screen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer

from tui.glyphs import Glyphs
from tui.widgets.common import TopBar, set_cursor_blink

if TYPE_CHECKING:
    from tui.app import KioskApp

STEPS = ("Card", "Reading", "Consent", "Patient ID", "Review", "Archive", "Wipe", "Summary")


def step_title(name: str) -> str:
    """"Step 3 of 8 · Consent"."""
    return f"Step {STEPS.index(name) + 1} of {len(STEPS)} · {name}"


class KioskScreen(Screen[None]):
    """A full screen of the kiosk. Subclasses set ``WHERE`` and implement ``compose_body``."""

    WHERE = "clinivault"

    @property
    def kiosk(self) -> KioskApp:
        return cast("KioskApp", self.app)

    @property
    def glyphs(self) -> Glyphs:
        return self.kiosk.glyphs

    def compose(self) -> ComposeResult:
        yield TopBar(self.WHERE, self.kiosk.who())
        yield from self.compose_body()
        yield Footer(compact=True)

    def compose_body(self) -> ComposeResult:
        yield from ()

    def on_mount(self) -> None:
        set_cursor_blink(self, self.kiosk.cursor_blink)

    def on_screen_resume(self) -> None:
        """Back on top (a dialog closed, the kiosk was unlocked): a step may move on now."""
        self.kiosk.flow.screen_resumed()
        for bar in self.query(TopBar):
            bar.set_who(self.kiosk.who())

    def set_where(self, where: str) -> None:
        self.query_one(TopBar).set_where(where)
