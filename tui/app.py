"""The kiosk app: sign-in, the operator's session screens, and the auditor's audit log.

Modes give each role its own stack of screens: ``signin`` (nobody signed in), ``operator``
(waiting for a card, then one session at a time; custodians use it too) and ``auditor`` (the
audit log only). Signing out throws the role's stack away, so nothing of one person's work is
left on screen for the next.

The app holds no business rules. It calls ``core``: ``core.users`` for PINs and lockout,
``core.session`` through :class:`tui.flow.SessionFlow` for the session, ``core.audit`` for
the log. Every call that touches the disk runs in a worker thread; a worker's failure
becomes an error dialog (what happened, what to do), never a crash.

No escape hatches for operators: no command palette, no Ctrl+Q, no Ctrl+C quit
(``inherit_bindings=False`` drops Textual's defaults). Quitting is for the demo, custodians
and auditors. The kiosk locks itself after ``[kiosk] idle_lock_minutes`` without a key press;
the clock is injected so tests make it idle without waiting.

Entry points: :func:`run_demo` (``clinivault demo``) and :func:`run_kiosk` (``clinivault
kiosk``, or ``clinivault`` with a config).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from textual import events, on
from textual.app import App
from textual.binding import Binding, BindingType
from textual.reactive import reactive
from textual.worker import Worker, WorkerState

from core.config import Config, load_config
from core.errors import ClinivaultError
from core.media.sources import DetectedMedia, FolderSource, MediaSource
from core.session import recover
from core.users import IdleTimer, User, UserStore
from core.vault.vault import Vault
from tui.flow import GROUP, SessionFlow, describe_error
from tui.glyphs import ASCII, UNICODE, Glyphs, console_requested
from tui.messages import (
    CancelSession,
    ConsentGiven,
    MediaChanged,
    PatientConfirmed,
    ReviewFinished,
    SessionClosed,
    StartSession,
    WipeAcknowledged,
)
from tui.screens.audit_log import AuditLogScreen
from tui.screens.consent import ConsentScreen
from tui.screens.modals import ErrorScreen, HelpScreen, help_entries
from tui.screens.patient_id import PatientIdScreen
from tui.screens.review import ReviewScreen
from tui.screens.sign_in import LockScreen, SignInScreen
from tui.screens.summary import SummaryScreen
from tui.screens.waiting import WaitingScreen
from tui.widgets.common import TopBar

ROLE_MODE = {"operator": "operator", "custodian": "operator", "auditor": "auditor"}
KEY_NAMES = {"escape": "Esc", "enter": "Enter", "space": "Space", "pageup": "PgUp",
             "pagedown": "PgDn", "left": "←", "right": "→", "up": "↑", "down": "↓"}
IDLE_CHECK_SECONDS = 5.0
MEDIA_POLL_SECONDS = 2.0

#: For the help page: the keys of each screen, in the order the nurse meets them.
HELP_SCREENS: tuple[tuple[str, type], ...] = (
    ("Sign in", SignInScreen), ("Waiting for a card", WaitingScreen),
    ("Consent", ConsentScreen), ("Patient ID", PatientIdScreen), ("Review", ReviewScreen),
    ("Summary", SummaryScreen), ("Audit log (auditors)", AuditLogScreen),
)


class KioskApp(App[int], inherit_bindings=False):
    """The kiosk. Construct with an open vault, a config and a media source."""

    TITLE = "clinivault"
    ENABLE_COMMAND_PALETTE = False
    CSS_PATH = "kiosk.tcss"
    MODES: ClassVar[dict[str, Any]] = {
        "signin": SignInScreen, "operator": WaitingScreen, "auditor": AuditLogScreen}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f1", "help", "Help", id="app.help",
                tooltip="List every key and what it does"),
        Binding("f2", "lock", "Lock", id="app.lock",
                tooltip="Lock the kiosk now; your work waits until you sign in again"),
        Binding("ctrl+q", "quit_kiosk", "Quit", id="app.quit",
                tooltip="Close the kiosk program (demo, custodians and auditors only)"),
        # inherit_bindings=False drops Textual's own Tab handling: without these a nurse
        # could not move from one field to the next.
        Binding("tab", "app.focus_next", "Next field", id="app.focus_next", show=False,
                tooltip="Move to the next field"),
        Binding("shift+tab", "app.focus_previous", "Previous field",
                id="app.focus_previous", show=False, tooltip="Move to the previous field"),
    ]

    media: reactive[list[DetectedMedia]] = reactive(list, always_update=True)

    def __init__(self, *, vault: Vault, config: Config, source: MediaSource,
                 demo_hint: str | None = None, demo_card: Path | None = None,
                 audit_key_hint: str | None = None, export_dir: Path | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], datetime] | None = None, console: bool | None = None,
                 notices: Sequence[str] = (), poll_media: bool = True,
                 cursor_blink: bool = True) -> None:
        _start_resource_tracker()
        self.console_mode = console_requested() if console is None else console
        css = ["kiosk.tcss", "console.tcss"] if self.console_mode else ["kiosk.tcss"]
        super().__init__(css_path=css)
        self.vault = vault
        self.config = config
        self.source = source
        self.demo_hint = demo_hint
        self.demo_card = demo_card
        self.audit_key_hint = audit_key_hint
        self.export_dir = export_dir or Path.home()
        self.clock = clock
        self._now = now or (lambda: datetime.now(UTC))
        self.notices = list(notices)
        self.poll_media = poll_media
        self.cursor_blink = cursor_blink
        self.glyphs: Glyphs = ASCII if self.console_mode else UNICODE
        self.users = UserStore.for_vault(vault.root, config)
        self.user: User | None = None
        self.locked = False
        self.idle = IdleTimer(config.kiosk.idle_lock_minutes, clock())
        self.flow = SessionFlow(self)

    # -- small services for screens --------------------------------------------------------
    def now(self) -> datetime:
        return self._now()

    def who(self) -> str:
        return f"{self.user.id} · {self.user.role}" if self.user else "not signed in"

    def actor(self) -> str:
        return self.user.id if self.user else "kiosk"

    def default_export_path(self) -> str:
        stamp = self.now().strftime("%Y%m%d-%H%M%S")
        return str(self.export_dir / f"audit-{stamp}.csv")

    # -- start and stop --------------------------------------------------------------------
    def on_mount(self) -> None:
        self.switch_mode("signin")
        self.set_interval(IDLE_CHECK_SECONDS, self.check_idle_lock)
        self.source.start(lambda: self.post_message(MediaChanged()))
        if self.poll_media:
            self.set_interval(MEDIA_POLL_SECONDS, self.refresh_media)

    # -- signing in and out ----------------------------------------------------------------
    def signed_in(self, user: User) -> None:
        self.user = user
        self.idle.touch(self.clock())
        self.switch_mode(ROLE_MODE[user.role])

    async def sign_out(self) -> None:
        if self.flow.active or self.user is None:
            return
        user, self.user = self.user, None
        self._audit(user.id, "signout", {"role": user.role})
        await self.switch_mode("signin")
        for mode, screen in (("operator", WaitingScreen), ("auditor", AuditLogScreen)):
            await self.remove_mode(mode)
            self.add_mode(mode, screen)

    def _audit(self, actor: str, event: str, details: dict[str, Any]) -> None:
        """Append to the audit log off the UI thread (each entry is fsynced)."""
        self.run_worker(lambda: self.vault.audit.append(actor, event, None, details),
                        thread=True, group="audit", name=f"audit:{event}", exit_on_error=False)

    # -- idle lock -------------------------------------------------------------------------
    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.Key | events.MouseDown | events.MouseScrollDown
                      | events.MouseScrollUp):
            self.idle.touch(self.clock())
        await super().on_event(event)

    def check_idle_lock(self) -> None:
        """Lock if nobody touched the kiosk for the configured minutes (timer and tests)."""
        if self.user is not None and not self.locked and self.idle.due(self.clock()):
            minutes = self.config.kiosk.idle_lock_minutes
            self.lock_kiosk(f"Locked after {minutes:g} minutes without a key press.", idle=True)

    def lock_kiosk(self, reason: str, *, idle: bool = False) -> None:
        if self.user is None or self.locked:
            return
        self.locked = True
        self._audit(self.user.id, "kiosk.locked", {"idle": idle})

        def unlocked(user: User | None) -> None:
            # A custodian may unlock an operator's screen; the top bar shows who has it now.
            self.locked = False
            if user is not None:
                self.user = user
            self.idle.touch(self.clock())
            for bar in self.screen.query(TopBar):
                bar.set_who(self.who())

        self.push_screen(LockScreen(self.user.id, reason), unlocked)

    def action_lock(self) -> None:
        self.lock_kiosk(f"{self.actor()} locked the kiosk (F2).")

    # -- keys ------------------------------------------------------------------------------
    def get_key_display(self, binding: Binding) -> str:
        """Keys as printed on the keyboard: "F10", "Esc", "Ctrl+Q", "A"."""
        if binding.key_display:
            return binding.key_display
        key = binding.key.split(",")[0]
        *mods, name = key.split("+")
        name = KEY_NAMES.get(name, name.upper() if len(name) == 1 or name[:1] == "f" else
                             name.capitalize())
        return "+".join([*(m.capitalize() for m in mods), name])

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "lock":
            return self.user is not None and not self.locked
        if action == "quit_kiosk":
            allowed = self.demo_hint is not None or (
                self.user is not None and self.user.role in ("custodian", "auditor"))
            if not allowed or self.locked:
                return False
            return None if self.flow.active else True
        if action == "help":
            return not isinstance(self.screen, HelpScreen)
        return True

    def action_quit_kiosk(self) -> None:
        if self.check_action("quit_kiosk", ()) is True:
            self.exit(0)

    def action_help(self) -> None:
        screen = self.screen
        here = getattr(screen, "WHERE", None) or type(screen).__name__
        others = []
        for title, cls in HELP_SCREENS:
            if isinstance(screen, cls):
                continue
            keys = [(self.get_key_display(b), b.tooltip or b.description)
                    for b in getattr(cls, "BINDINGS", []) if isinstance(b, Binding)]
            others.append((title, keys))
        self.push_screen(HelpScreen(here, help_entries(screen.active_bindings,
                                                       self.get_key_display), others))

    # -- errors ----------------------------------------------------------------------------
    def show_error(self, error: BaseException | None, step: str) -> None:
        what, todo = describe_error(error, step)
        self.push_screen(ErrorScreen(what, todo))

    # -- media -----------------------------------------------------------------------------
    def refresh_media(self) -> None:
        self.run_worker(self.source.current, thread=True, exclusive=True, group="media",
                        name="media", exit_on_error=False)

    @on(MediaChanged)
    def _media_changed(self) -> None:
        self.refresh_media()

    def new_demo_card(self) -> None:
        if self.demo_card is None:
            return
        from core.demo import make_sample_card

        card = self.demo_card
        self.run_worker(lambda: make_sample_card(card), thread=True, group="demo",
                        name="demo-card", exit_on_error=False)

    # -- the session (see tui.flow) --------------------------------------------------------
    @on(StartSession)
    def _start(self, event: StartSession) -> None:
        self.flow.start(event.media)

    @on(ConsentGiven)
    def _consent(self, event: ConsentGiven) -> None:
        self.flow.consent(event.record)

    @on(PatientConfirmed)
    def _patient(self, event: PatientConfirmed) -> None:
        self.flow.identify(event.patient)

    @on(ReviewFinished)
    def _reviewed(self, event: ReviewFinished) -> None:
        self.flow.finish_review(event.keywords)

    @on(WipeAcknowledged)
    def _wipe_read(self) -> None:
        self.flow.wipe_read()

    @on(SessionClosed)
    def _closed(self) -> None:
        self.flow.close()

    @on(CancelSession)
    def _cancel(self) -> None:
        self.flow.cancel()

    @on(Worker.StateChanged)
    def _worker_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        if worker.group == GROUP:
            self.flow.worker_changed(worker, event.state)
        elif worker.group == "media" and event.state == WorkerState.SUCCESS:
            self.media = list(worker.result or [])
        elif worker.group == "demo" and event.state == WorkerState.SUCCESS:
            self.refresh_media()
        elif event.state == WorkerState.ERROR and worker.group in ("audit", "demo"):
            self.show_error(worker.error, "recording" if worker.group == "audit" else "demo")


def _start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker while sys.stderr is still the real one.

    Why: the image decoders run in spawned processes (``core.imaging.pool``); the first spawn
    starts the tracker and hands it ``sys.stderr.fileno()``. Inside a running Textual app
    stderr is Textual's capture object, whose fileno() is -1, and the spawn then fails with
    "bad value(s) in fds_to_keep". Starting it before the app runs avoids that; it is
    idempotent.
    """
    from multiprocessing import resource_tracker

    # No tracker (OSError, ValueError) is reported by the pool when it starts a decoder.
    with contextlib.suppress(OSError, ValueError):
        resource_tracker.ensure_running()


# -- entry points ------------------------------------------------------------------------------

def _strip_command(argv: Sequence[str], command: str) -> list[str]:
    """``run_demo(["demo", ...])``, ``run_demo(["--config", "F", "demo"])`` and
    ``run_demo([...])`` mean the same: the command word, wherever it is, is dropped."""
    args = list(argv)
    if command in args:
        args.remove(command)
    return args


def _use_console_glyphs() -> None:
    """On the Linux console, draw scroll bars without the eighth-block glyphs it lacks."""
    from textual.scrollbar import ScrollBar, ScrollBarRender

    class ConsoleScrollBarRender(ScrollBarRender):
        VERTICAL_BARS: ClassVar[list[str]] = [" "] * 8
        HORIZONTAL_BARS: ClassVar[list[str]] = [" "] * 8

    ScrollBar.renderer = ConsoleScrollBarRender


DEMO_USERS = (("nurse1", "operator", "1234"), ("audit1", "auditor", "4321"),
              ("lead1", "custodian", "5678"))


def run_demo(argv: Sequence[str]) -> int:
    """``clinivault demo``: a throwaway vault, a simulated card and demo accounts, then the app.

    Prints where the vault and card are when the app closes (they are kept for inspection).
    """
    from core.demo import DEMO_OVERRIDES, make_demo_vault, make_sample_card

    parser = argparse.ArgumentParser(prog="clinivault demo",
                                     description="Try the kiosk on a simulated card.")
    parser.add_argument("--dir", metavar="DIR", help="where to create the demo (default: a "
                        "new temporary folder)")
    args = parser.parse_args(_strip_command(argv, "demo"))
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="clinivault-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    cfg = load_config(use_env=False, overrides=DEMO_OVERRIDES)
    print("Preparing the demo: sample photographs and a new vault…", file=sys.stderr)
    card = make_sample_card(base / "card")
    vault, k0 = make_demo_vault(base)
    key_file = base / "audit-key.txt"
    key_file.write_text(k0.hex() + "\n")
    os.chmod(key_file, 0o600)
    try:
        store = UserStore.for_vault(vault.root, cfg)
        for uid, role, pin in DEMO_USERS:
            store.add(uid, role, pin)
            vault.audit.append("demo", "user.added", None, {"user": uid, "role": role})
        hint = ("demo: nurse1 / 1234 (operator) · audit1 / 4321 (auditor) · "
                "lead1 / 5678 (custodian)")
        app = KioskApp(vault=vault, config=cfg,
                       source=FolderSource([card.root], kind="simulated card",
                                           labels=["DEMO card"]),
                       demo_hint=hint, demo_card=card.root, audit_key_hint=str(key_file),
                       export_dir=base)
        if app.console_mode:
            _use_console_glyphs()
        try:
            code = app.run()
        finally:
            app.source.stop()
    finally:
        vault.close()
    print(f"clinivault demo: vault and card kept in {base}", file=sys.stderr)
    return int(code or 0)


def run_kiosk(argv: Sequence[str]) -> int:
    """``clinivault kiosk [--config FILE] [--vault DIR] [--card DIR]``: the real kiosk.

    Cards come from udev (removable media only) unless ``--card DIR`` names a mounted
    folder to use instead. Unfinished sessions are recovered before anyone signs in.
    """
    parser = argparse.ArgumentParser(prog="clinivault kiosk", description="Run the kiosk.")
    parser.add_argument("--config", metavar="FILE", help="site configuration file")
    parser.add_argument("--vault", metavar="DIR", help="the vault (default: [vault] path)")
    parser.add_argument("--card", metavar="DIR", action="append", default=[],
                        help="use this mounted folder as a card (repeatable; no udev)")
    args = parser.parse_args(_strip_command(argv, "kiosk"))
    try:
        cfg = load_config(args.config)
        root = args.vault or cfg.vault.path
        if not root:
            print("clinivault kiosk: no vault: set [vault] path in the config or pass --vault",
                  file=sys.stderr)
            return 2
        vault = Vault.open(Path(root), actor="kiosk")
    except ClinivaultError as exc:
        print(f"clinivault kiosk: {exc.user_message()}", file=sys.stderr)
        return exc.exit_code
    try:
        notices = [r.line() for r in recover(vault, actor="kiosk")]
        if not UserStore.for_vault(vault.root, cfg).users():
            print("clinivault kiosk: no accounts yet; add one with 'clinivault user add "
                  f"{vault.root} ID --role operator'", file=sys.stderr)
            return 2
        source: MediaSource
        if args.card:
            source = FolderSource([Path(c) for c in args.card], kind="card folder")
        else:
            from core.media.sources import UdevSource

            source = UdevSource(cfg, vault_path=vault.root)
        app = KioskApp(vault=vault, config=cfg, source=source, notices=notices)
        if app.console_mode:
            _use_console_glyphs()
        try:
            code = app.run()
        finally:
            source.stop()
    except ClinivaultError as exc:
        print(f"clinivault kiosk: {exc.user_message()}", file=sys.stderr)
        return exc.exit_code
    finally:
        vault.close()
    return int(code or 0)
