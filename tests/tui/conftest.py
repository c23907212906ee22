"""Fixtures for driving the real kiosk app: a real vault, a simulated card of real JPEGs, real
accounts, an injected clock, and helpers that wait on the app's workers (never on time).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.worker import WorkerFailed

from core.config import Config, load_config
from core.demo import make_sample_card
from core.media.sources import DetectedMedia, FolderSource
from core.users import UserStore
from core.vault.vault import Vault
from tui.app import KioskApp

PATIENT = "ZAC5361"
CARD_SIZE = (800, 600)
#: Small cards keep the tests quick; the quality threshold for resolution follows.
TUI_OVERRIDES: dict[str, dict[str, Any]] = {
    "patient_id": {"allow_test_ids": True, "scheme": "nhi"},
    "vault": {"scrypt_log_n": 10},
    "media": {"accept_loop": True},
    "quality": {"min_long_side": 600},
    "kiosk": {"idle_lock_minutes": 5, "max_failed_signins": 3, "lockout_minutes": 15},
}
USERS = (("nurse1", "operator", "1234"), ("audit1", "auditor", "4321"),
         ("lead1", "custodian", "5678"))
TEST_PASSPHRASE = b"correct horse battery staple"
FIXED_NOW = datetime(2025, 3, 14, 9, 26, 53, tzinfo=UTC)


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class FixedSource(FolderSource):
    """The card folder, shown under a fixed name (tmp paths differ from run to run)."""

    def current(self) -> list[DetectedMedia]:
        return [DetectedMedia(key=m.key, label=m.label, kind=m.kind, size_bytes=m.size_bytes,
                              source=m.source, device="/media/card") for m in super().current()]


@dataclass
class Kiosk:
    """One kiosk set-up: vault (open), config, card and the app factory's knobs."""

    tmp: Path
    vault: Vault
    k0: bytes
    config: Config
    card: Path
    clock: FakeClock = field(default_factory=FakeClock)

    def app(self, **kwargs: Any) -> KioskApp:
        args: dict[str, Any] = dict(
            vault=self.vault, config=self.config,
            source=FixedSource([self.card], kind="simulated card", labels=["TEST card"]),
            demo_hint="demo: nurse1 / 1234", demo_card=None, clock=self.clock,
            now=lambda: FIXED_NOW, console=False, poll_media=False, cursor_blink=False,
            export_dir=self.tmp)
        args.update(kwargs)
        return KioskApp(**args)

    def audit_events(self) -> list[dict]:
        from core.audit import read_entries

        return list(read_entries(self.vault.layout.audit_log))


@pytest.fixture(scope="session")
def card_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo card's photographs, generated once (they are deterministic)."""
    root = tmp_path_factory.mktemp("card-template") / "card"
    make_sample_card(root, size=CARD_SIZE)
    return root


def make_kiosk(tmp: Path, card_template: Path | None,
               overrides: dict[str, dict[str, Any]] | None = None) -> Kiosk:
    merged = {k: dict(v) for k, v in TUI_OVERRIDES.items()}
    for section, values in (overrides or {}).items():
        merged.setdefault(section, {}).update(values)
    cfg = load_config(use_env=False, overrides=merged)
    card = tmp / "card"
    if card_template is not None:
        shutil.copytree(card_template, card)
    else:
        card.mkdir(parents=True)
    vault, k0 = Vault.init(tmp / "vault", "custodian", TEST_PASSPHRASE,
                           scrypt_log_n=cfg.vault.scrypt_log_n)
    store = UserStore.for_vault(vault.root, cfg)
    for uid, role, pin in USERS:
        store.add(uid, role, pin)
        vault.audit.append("setup", "user.added", None, {"user": uid, "role": role})
    return Kiosk(tmp, vault, k0, cfg, card)


@pytest.fixture
def kiosk(tmp_path: Path, card_template: Path) -> Iterator[Kiosk]:
    k = make_kiosk(tmp_path, card_template)
    try:
        yield k
    finally:
        k.vault.close()


@pytest.fixture
def kiosk_factory(tmp_path: Path, card_template: Path) -> Iterator[Callable[..., Kiosk]]:
    """For tests that need their own config or card: ``kiosk_factory(overrides, card=...)``."""
    made: list[Kiosk] = []

    def make(overrides: dict[str, dict[str, Any]] | None = None, *,
             template: Path | None = card_template) -> Kiosk:
        k = make_kiosk(tmp_path / f"k{len(made)}", template, overrides)
        made.append(k)
        return k

    try:
        yield make
    finally:
        for k in made:
            k.vault.close()


# -- waiting on the app -------------------------------------------------------------------

async def settle(pilot: Pilot[Any], *, allow_errors: bool = False) -> None:
    """Wait until no worker runs and every message they caused has been handled.

    A finished step starts the next one (archive, then wipe), so this waits in rounds until
    a round starts nothing new.
    """
    app = pilot.app
    for _ in range(100):
        try:
            await app.workers.wait_for_complete()
        except WorkerFailed:
            if not allow_errors:
                raise
        await pilot.pause()
        if not any(w.is_running for w in app.workers):
            await pilot.pause()
            if not any(w.is_running for w in app.workers):
                return
    raise AssertionError("the app's workers did not settle")


async def type_text(pilot: Pilot[Any], text: str) -> None:
    await pilot.press(*[c if c != " " else "space" for c in text])


async def paste(pilot: Pilot[Any], text: str) -> None:
    """Paste *text* into the focused field (quicker than typing it key by key)."""
    from textual import events

    driver = pilot.app._driver
    assert driver is not None
    driver.send_message(events.Paste(text))
    await pilot.pause()


async def sign_in(pilot: Pilot[Any], user: str = "nurse1", pin: str = "1234") -> None:
    await type_text(pilot, user)
    await pilot.press("enter")
    await type_text(pilot, pin)
    await pilot.press("enter")
    await settle(pilot)


async def give_consent(pilot: Pilot[Any], *, typed: bool = False) -> None:
    """Health record + teaching, written, a body area, who obtained it; as a nurse would.

    The names are pasted unless *typed* (typing is tested once; it is slow under Pilot).
    """
    enter = type_text if typed else paste
    await pilot.press("space", "tab", "space", "tab", "tab", "enter", "tab")
    await enter(pilot, "left forearm")
    await pilot.press("tab")
    await enter(pilot, "Jo Nurse")
    await pilot.press("tab")
    await enter(pilot, "Registered nurse")


def shown(app: Any) -> str:
    """The class name of the screen on top."""
    return type(app.screen).__name__


def later(minutes: float) -> timedelta:
    return timedelta(minutes=minutes)


def run(app: Any, scenario: Callable[[Pilot[Any]], Any], size: tuple[int, int] = (80, 24)) -> None:
    """Run *scenario(pilot)* against *app* in a fresh event loop (no asyncio plugin needed)."""
    import asyncio

    async def main() -> None:
        async with app.run_test(size=size) as pilot:
            await scenario(pilot)

    asyncio.run(main())


async def scan(pilot: Pilot[Any], text: str, gap_ms: float = 4.0) -> None:
    """A barcode scanner in keyboard-wedge mode: *text* then Enter, *gap_ms* apart.

    The key events go through the driver like real input; only their timestamps are set,
    since Pilot's own presses are tens of milliseconds apart (slower than any scanner).
    """
    from textual import events
    from textual._time import get_time

    t0 = get_time()
    driver = pilot.app._driver
    assert driver is not None
    for i, key in enumerate([*text, "enter"]):
        event = events.Key(key, key if len(key) == 1 else None)
        event.time = t0 + i * gap_ms / 1000
        event.set_sender(pilot.app)
        driver.send_message(event)
    await pilot.pause()
