"""Sign-in, lockout, idle lock, the keys that must (and must not) work, errors as dialogs,
and the UI answering a key while a 500-image archive runs.
"""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image
from textual.pilot import Pilot
from textual.worker import WorkerState

from core.demo import scene
from core.errors import FailedSafely
from tests.tui.conftest import (
    PATIENT,
    Kiosk,
    give_consent,
    run,
    scan,
    settle,
    shown,
    sign_in,
    type_text,
)
from tui.screens.modals import ConfirmScreen, ErrorScreen, HelpScreen
from tui.screens.progress import ArchivingScreen, WipingScreen
from tui.screens.review import ReviewScreen
from tui.screens.sign_in import LockScreen, SignInForm
from tui.screens.waiting import WaitingScreen


def events_of(kiosk: Kiosk) -> list[tuple[str, str]]:
    return [(e["actor"], e["event"]) for e in kiosk.audit_events()]


async def to_review(pilot: Pilot[Any]) -> None:
    await sign_in(pilot)
    await pilot.press("enter")
    await settle(pilot)
    await give_consent(pilot)
    await pilot.press("f10")
    await settle(pilot)
    await scan(pilot, PATIENT)
    await pilot.press("f10")
    await settle(pilot)
    assert isinstance(pilot.app.screen, ReviewScreen)


# -- signing in ----------------------------------------------------------------------------

def test_wrong_pins_are_logged_and_lock_the_account(kiosk: Kiosk) -> None:
    app = kiosk.app()

    async def scenario(pilot: Pilot[Any]) -> None:
        await sign_in(pilot, "nurse1", "0000")
        form = app.screen.query_one(SignInForm)
        assert "not recognised" in str(form.query_one("#signin-feedback").render())
        assert "2 tries before this ID is locked" in str(
            form.query_one("#signin-feedback").render())
        for _ in range(2):  # the ID stays; the PIN field is cleared and has the focus
            await type_text(pilot, "9999")
            await pilot.press("enter")
            await settle(pilot)
        assert "locked after too many failed sign-ins" in str(
            form.query_one("#signin-feedback").render())
        # Now even the right PIN is refused until the lockout ends.
        await type_text(pilot, "1234")
        await pilot.press("enter")
        await settle(pilot)
        assert shown(app) == "SignInScreen"

    run(app, scenario)
    log = events_of(kiosk)
    assert log.count(("nurse1", "signin.failed")) == 4
    assert ("nurse1", "signin.locked") in log
    assert ("nurse1", "signin") not in log
    assert "9999" not in kiosk.vault.layout.audit_log.read_text()


def test_an_unknown_id_is_logged_without_the_text_typed(kiosk: Kiosk) -> None:
    app = kiosk.app()

    async def scenario(pilot: Pilot[Any]) -> None:
        await sign_in(pilot, PATIENT, "1234")  # a patient ID typed into the ID field
        assert shown(app) == "SignInScreen"

    run(app, scenario)
    assert ("unknown", "signin.failed") in events_of(kiosk)
    assert PATIENT.lower() not in kiosk.vault.layout.audit_log.read_text().lower()


def test_operators_have_no_quit_key_and_no_command_palette(kiosk: Kiosk) -> None:
    app = kiosk.app(demo_hint=None)

    async def scenario(pilot: Pilot[Any]) -> None:
        await sign_in(pilot)
        await pilot.press("ctrl+q", "ctrl+c", "ctrl+p")
        await pilot.pause()
        assert app.is_running and shown(app) == "WaitingScreen"
        assert app.check_action("quit_kiosk", ()) is False  # hidden, not just dimmed
        keys = {b.binding.key for b in app.screen.active_bindings.values()}
        assert "ctrl+q" not in keys and "ctrl+p" not in keys

    run(app, scenario)


def test_auditor_gets_the_audit_log_and_may_quit(kiosk: Kiosk) -> None:
    app = kiosk.app(demo_hint=None)

    async def scenario(pilot: Pilot[Any]) -> None:
        await sign_in(pilot, "audit1", "4321")
        assert shown(app) == "AuditLogScreen" and app.current_mode == "auditor"
        await pilot.press("f3")  # sign out: the auditor's screens are gone
        await settle(pilot)
        assert shown(app) == "SignInScreen"
        await sign_in(pilot, "audit1", "4321")
        await pilot.press("ctrl+q")
        await pilot.pause()

    run(app, scenario)
    assert app.return_value == 0
    assert ("audit1", "signout") in events_of(kiosk)


# -- the idle lock --------------------------------------------------------------------------

def test_idle_kiosk_locks_and_only_the_same_user_unlocks(kiosk: Kiosk) -> None:
    app = kiosk.app()

    async def scenario(pilot: Pilot[Any]) -> None:
        await sign_in(pilot)
        await pilot.press("enter")
        await settle(pilot)
        consent = app.screen
        kiosk.clock.advance(4 * 60)
        app.check_idle_lock()
        await pilot.pause()
        assert app.screen is consent  # not yet: 5 minutes
        kiosk.clock.advance(61)
        app.check_idle_lock()
        await settle(pilot)
        assert isinstance(app.screen, LockScreen)
        assert app.check_action("lock", ()) is False
        # Another operator cannot take over nurse1's session.
        await pilot.press("shift+tab", *["backspace"] * 6)
        await type_text(pilot, "audit1")
        await pilot.press("enter")
        await type_text(pilot, "4321")
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, LockScreen)
        assert "locked for nurse1" in str(app.screen.query_one("#signin-feedback").render())
        await pilot.press("shift+tab", *["backspace"] * 6)
        await type_text(pilot, "nurse1")
        await pilot.press("enter")
        await type_text(pilot, "1234")
        await pilot.press("enter")
        await settle(pilot)
        assert app.screen is consent  # the work in progress is still there
        assert not app.locked
        kiosk.clock.advance(60)
        app.check_idle_lock()
        assert not app.locked  # the clock restarted at the unlock

    run(app, scenario)
    log = events_of(kiosk)
    assert ("nurse1", "kiosk.locked") in log
    assert ("audit1", "unlock.refused") in log
    assert ("nurse1", "kiosk.unlocked") in log


def test_f2_locks_at_once(kiosk: Kiosk) -> None:
    app = kiosk.app()

    async def scenario(pilot: Pilot[Any]) -> None:
        await sign_in(pilot)
        await pilot.press("f2")
        await settle(pilot)
        assert isinstance(app.screen, LockScreen)
        await type_text(pilot, "1234")  # the ID is filled in; the PIN has the focus
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, WaitingScreen)

    run(app, scenario)


# -- help -------------------------------------------------------------------------------------

def test_help_lists_every_key_and_which_apply_now(kiosk: Kiosk) -> None:
    app = kiosk.app()

    async def scenario(pilot: Pilot[Any]) -> None:
        await to_review(pilot)
        await pilot.press("f1")
        help_screen = app.screen
        assert isinstance(help_screen, HelpScreen)
        described = {e.description: e.available for e in help_screen.entries}
        for key in ("Keep/discard", "Zoom", "Suggestions", "Consent form", "Keywords",
                    "Body site", "Finish", "Lock"):
            assert described.get(key) is True, key
        titles = [t for t, _ in help_screen.others]
        assert "Consent" in titles and "Patient ID" in titles
        await pilot.press("escape")
        assert isinstance(app.screen, ReviewScreen)

    run(app, scenario, (120, 40))


# -- errors become dialogs ----------------------------------------------------------------------

def test_a_card_gone_before_reading_is_an_error_dialog(kiosk: Kiosk) -> None:
    app = kiosk.app()

    async def scenario(pilot: Pilot[Any]) -> None:
        await sign_in(pilot)
        for p in sorted(kiosk.card.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        await pilot.press("enter")
        await settle(pilot, allow_errors=True)
        dialog = app.screen
        assert isinstance(dialog, ErrorScreen)
        assert "No images on the card" in dialog.what
        await pilot.press("enter")
        await settle(pilot, allow_errors=True)
        assert isinstance(app.screen, WaitingScreen)
        assert app.flow.session is None

    run(app, scenario)
    assert not any(kiosk.vault.layout.journal.iterdir())


def test_a_full_vault_disk_mid_archive_is_a_dialog_and_loses_nothing(
        kiosk: Kiosk, monkeypatch: Any) -> None:
    before = sorted(p.name for p in kiosk.card.rglob("*") if p.is_file())
    real_put = kiosk.vault.objects.put
    calls = {"n": 0}

    def put(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise FailedSafely("the vault disk is full", "Free space on the vault disk")
        return real_put(*args, **kwargs)

    monkeypatch.setattr(kiosk.vault.objects, "put", put)
    app = kiosk.app()

    async def scenario(pilot: Pilot[Any]) -> None:
        await to_review(pilot)
        await pilot.press("f10", "y")
        await settle(pilot, allow_errors=True)
        dialog = app.screen
        assert isinstance(dialog, ErrorScreen), shown(app)
        assert "vault disk is full" in dialog.what
        assert dialog.todo == "Free space on the vault disk"
        await pilot.press("enter")
        await settle(pilot, allow_errors=True)
        assert isinstance(app.screen, WaitingScreen)

    run(app, scenario)
    assert sorted(p.name for p in kiosk.card.rglob("*") if p.is_file()) == before
    assert not [p for p in kiosk.vault.layout.objects.rglob("*") if p.is_file()]
    assert ("nurse1", "session.aborted") in events_of(kiosk)


def test_an_unexpected_exception_is_a_dialog_not_a_crash(kiosk: Kiosk, monkeypatch: Any) -> None:
    from core.session import IngestSession

    def broken(self: IngestSession, *_a: Any, **_k: Any) -> None:
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr(IngestSession, "identify", broken)
    app = kiosk.app()

    async def scenario(pilot: Pilot[Any]) -> None:
        await sign_in(pilot)
        await pilot.press("enter")
        await settle(pilot)
        await give_consent(pilot)
        await pilot.press("f10")
        await settle(pilot)
        await scan(pilot, PATIENT)
        await pilot.press("f10")
        await settle(pilot, allow_errors=True)
        dialog = app.screen
        assert isinstance(dialog, ErrorScreen)
        assert "RuntimeError: decoder exploded" in dialog.what
        assert "Nothing was lost" in dialog.todo
        await pilot.press("enter")
        await settle(pilot, allow_errors=True)
        assert isinstance(app.screen, WaitingScreen)

    run(app, scenario)
    assert ("nurse1", "session.abandoned") in events_of(kiosk)


# -- a key handled while a 500-image archive runs ----------------------------------------------

def tiny_card(root: Path, count: int) -> None:
    dcim = root / "DCIM" / "100TINY"
    dcim.mkdir(parents=True)
    for i in range(count):
        buf = io.BytesIO()
        img: Image.Image = scene(64, 48, 1000 + i)
        img.save(buf, "JPEG", quality=85)
        (dcim / f"IMG_{i + 1:04d}.JPG").write_bytes(buf.getvalue())


def test_ui_answers_keys_while_a_500_image_archive_runs(
        kiosk_factory: Callable[..., Kiosk], monkeypatch: Any) -> None:
    kiosk = kiosk_factory({"quality": {"min_long_side": 32}}, template=None)
    tiny_card(kiosk.card, 500)
    real_put = kiosk.vault.objects.put
    reached, release = threading.Event(), threading.Event()
    calls = {"n": 0, "hold_at": 100}

    def put(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == calls["hold_at"]:  # hold the archive worker until the key was handled
            reached.set()
            release.wait(60)
        return real_put(*args, **kwargs)

    monkeypatch.setattr(kiosk.vault.objects, "put", put)
    app = kiosk.app()
    seen: dict[str, Any] = {}

    async def scenario(pilot: Pilot[Any]) -> None:
        await to_review(pilot)
        kept = len(app.screen.session.kept())  # type: ignore[attr-defined]
        seen["kept"] = kept
        assert kept >= 50  # most of the 500 tiny images pass the quality check
        calls["hold_at"] = min(100, kept // 2)
        await pilot.press("f10", "y")
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, reached.wait, 120)
        await pilot.pause()
        archiving = app.screen
        assert isinstance(archiving, ArchivingScreen)
        worker = next(w for w in app.workers if w.name == "archive")
        assert worker.state == WorkerState.RUNNING

        await pilot.press("f1")  # answered while the archive worker is busy
        assert isinstance(app.screen, HelpScreen)
        assert worker.state == WorkerState.RUNNING
        assert 0 < archiving.verified < kept
        await pilot.press("escape")
        assert app.screen is archiving
        release.set()
        await settle(pilot)
        assert isinstance(app.screen, WipingScreen)

    try:
        run(app, scenario, (80, 24))
    finally:
        release.set()
    record = next(iter(kiosk.vault.catalog.iter_sessions()))
    assert record["retained"] == seen["kept"]
    assert len(record["objects"]) == seen["kept"]


def test_stopping_while_reading_writes_nothing(kiosk: Kiosk) -> None:
    app = kiosk.app()

    async def scenario(pilot: Pilot[Any]) -> None:
        await sign_in(pilot)
        await pilot.press("enter", "escape")
        await settle(pilot, allow_errors=True)
        if isinstance(app.screen, ConfirmScreen):
            # The card was read before Escape arrived (a fast machine): stopping a session
            # that has started is confirmed first. Confirm; nothing may be written either way.
            await pilot.press("y")
            await settle(pilot, allow_errors=True)
        assert isinstance(app.screen, WaitingScreen)
        assert app.flow.session is None

    run(app, scenario)
    assert not any(kiosk.vault.layout.journal.iterdir())
