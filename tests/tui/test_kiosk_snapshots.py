"""What each kiosk screen looks like, at 80x24 (the smallest terminal we support) and 120x40.

Stable pictures need fixed inputs: the app's clock and date are injected, text cursors do not
blink, the session id and the audit log's times are pinned, and the card is shown under a
fixed name. Screens that show a step in progress get fixed progress values posted to them.
Update with ``pytest tests/tui --snapshot-update`` and look at every changed picture.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from textual.pilot import Pilot

from core.errors import FailedSafely
from core.session import Progress
from core.session.model import WipeSummary
from tests.tui.conftest import (
    FIXED_NOW,
    PATIENT,
    Kiosk,
    give_consent,
    scan,
    settle,
    sign_in,
    type_text,
)
from tui.messages import StepProgress
from tui.screens.modals import ConfirmScreen
from tui.screens.progress import ArchivingScreen, ReadingScreen, WipingScreen

SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((120, 40), id="120x40")]


class PinnedDatetime(datetime):
    """``datetime.now()`` for the audit log: always the fixed test time."""

    @classmethod
    def now(cls, tz: Any = None) -> PinnedDatetime:  # type: ignore[override]
        return cls.fromtimestamp(FIXED_NOW.timestamp(), tz)


@pytest.fixture(autouse=True)
def pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    import core.audit
    import core.session.ingest

    monkeypatch.setattr(core.session.ingest, "new_session_id",
                        lambda now=None: "20250314T092653Z-0000beef")
    monkeypatch.setattr(core.audit, "datetime", PinnedDatetime)


Before = Callable[[Pilot[Any]], Any]


def snap(snap_compare: Any, kiosk: Kiosk, size: tuple[int, int], before: Before,
         **app_args: Any) -> None:
    app = kiosk.app(**app_args)

    async def run_before(pilot: Pilot[Any]) -> None:
        await before(pilot)
        await settle(pilot)

    assert snap_compare(app, run_before=run_before, terminal_size=size)


# -- the steps, as a nurse reaches them -----------------------------------------------------

async def nothing(pilot: Pilot[Any]) -> None:
    await pilot.pause()


async def to_waiting(pilot: Pilot[Any]) -> None:
    await sign_in(pilot)


async def to_consent(pilot: Pilot[Any]) -> None:
    await sign_in(pilot)
    await pilot.press("enter")
    await settle(pilot)


async def to_consent_filled(pilot: Pilot[Any]) -> None:
    await to_consent(pilot)
    await give_consent(pilot)


async def to_patient_id_wrong(pilot: Pilot[Any]) -> None:
    await to_consent_filled(pilot)
    await pilot.press("f10")
    await settle(pilot)
    await type_text(pilot, "ZAC5362")


async def to_review(pilot: Pilot[Any]) -> None:
    await to_consent_filled(pilot)
    await pilot.press("f10")
    await settle(pilot)
    await scan(pilot, PATIENT)
    await pilot.press("f10")
    await settle(pilot)
    await pilot.press("right", "right", "right", "right", "right")  # image 6: blurred


async def to_zoom(pilot: Pilot[Any]) -> None:
    await to_review(pilot)
    await pilot.press("enter")


async def to_finish_confirm(pilot: Pilot[Any]) -> None:
    await to_review(pilot)
    await pilot.press("f10")
    assert isinstance(pilot.app.screen, ConfirmScreen)


async def to_summary(pilot: Pilot[Any]) -> None:
    await to_review(pilot)
    await pilot.press("f10", "y")
    await settle(pilot)
    await pilot.press("f10")


async def to_audit_log(pilot: Pilot[Any]) -> None:
    await sign_in(pilot, "audit1", "4321")


async def to_help(pilot: Pilot[Any]) -> None:
    await to_review(pilot)
    await pilot.press("f1")


async def to_lock(pilot: Pilot[Any]) -> None:
    await to_consent(pilot)
    await pilot.press("f2")


async def to_error(pilot: Pilot[Any]) -> None:
    await sign_in(pilot)
    pilot.app.show_error(FailedSafely("the vault disk is full", "Free space on the vault "
                                      "disk, then start the session again"), "archive")


async def to_reading(pilot: Pilot[Any]) -> None:
    await sign_in(pilot)
    screen = ReadingScreen("TEST card")
    await pilot.app.push_screen(screen)
    screen.post_message(StepProgress(Progress("assess", 4, 10, "DCIM/100DEMO/IMG_0004.JPG")))


async def to_archiving(pilot: Pilot[Any]) -> None:
    await sign_in(pilot)
    screen = ArchivingScreen(40)
    await pilot.app.push_screen(screen)
    clock = pilot.app.clock
    mb = 1_000_000
    for n in range(0, 17):
        screen.post_message(StepProgress(Progress("archive", n, 40, f"DCIM/100DEMO/IMG_{n + 1:04d}"
                                                  ".JPG", n * 2 * mb, 80 * mb)))
        await pilot.pause()
        clock.advance(0.25)  # 8 MB/s


async def to_wiping(pilot: Pilot[Any]) -> None:
    await sign_in(pilot)
    screen = WipingScreen()
    await pilot.app.push_screen(screen)
    gb = 1_000_000_000
    screen.post_message(StepProgress(Progress("wipe pass 2", 12 * gb, 32 * gb, None, 12 * gb,
                                              32 * gb)))
    await pilot.pause()


async def to_wiped(pilot: Pilot[Any]) -> None:
    await to_wiping(pilot)
    screen = pilot.app.screen
    assert isinstance(screen, WipingScreen)
    screen.show_result(WipeSummary(
        mode="device", files=41, bytes=80_000_000, read_only=False, not_wiped=[], residue=0,
        words="whole card cleared (NIST SP 800-88 Clear): every addressable sector overwritten "
              "twice and verified; not a Purge: sectors the card's controller has retired are "
              "out of reach of any overwrite; residue scan: no fragment of any session file "
              "found on the card"))


SCREENS: dict[str, Before] = {
    "sign_in": nothing, "waiting": to_waiting, "reading": to_reading,
    "consent": to_consent, "consent_filled": to_consent_filled,
    "patient_id_wrong_check": to_patient_id_wrong, "review": to_review, "zoom": to_zoom,
    "confirm_finish": to_finish_confirm, "archiving": to_archiving, "wiping": to_wiping,
    "wiped": to_wiped,
    "summary": to_summary, "audit_log": to_audit_log, "help": to_help, "lock": to_lock,
    "error": to_error,
}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("screen", list(SCREENS))
def test_screen(snap_compare: Any, kiosk: Kiosk, screen: str, size: tuple[int, int]) -> None:
    snap(snap_compare, kiosk, size, SCREENS[screen])


@pytest.mark.parametrize("screen", ["sign_in", "consent_filled", "review", "archiving"])
def test_linux_console(snap_compare: Any, kiosk: Kiosk, screen: str) -> None:
    """TERM=linux: ASCII borders and symbols, 16 colours."""
    snap(snap_compare, kiosk, (80, 24), SCREENS[screen], console=True)
