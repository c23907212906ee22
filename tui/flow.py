"""The operator's path through one ingest session, screen by screen.

Why a separate object: ``core.session.IngestSession`` decides what happens and in which order;
this class only runs each of its steps in a worker thread (scan, assess, record consent,
identify, finish review, archive, wipe — each writes to disk or the audit log) and, when a
step ends, shows the next screen, or an error dialog and then the waiting screen. It holds no
rule of its own.

Screens change only when the step's own screen is on top: a help page, a confirmation or the
lock screen in front of it is never replaced, so a step that ends while the kiosk is locked
moves on after the unlock.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual.screen import Screen
from textual.worker import Worker, WorkerState

from core.consent import ConsentRecord
from core.errors import ClinivaultError, FailedSafely
from core.media.sources import DetectedMedia
from core.patient_id import PatientId
from core.session import IngestSession, Progress, State, recover
from core.session.card import open_card
from tui.messages import StepProgress
from tui.screens.consent import ConsentScreen
from tui.screens.modals import ConfirmScreen, ErrorScreen
from tui.screens.patient_id import PatientIdScreen
from tui.screens.progress import ArchivingScreen, ReadingScreen, WipingScreen
from tui.screens.review import ReviewScreen
from tui.screens.summary import SummaryScreen

if TYPE_CHECKING:
    from tui.app import KioskApp

GROUP = "session"
#: States a stopped session can simply be abandoned from: nothing archived, nothing wiped.
BEFORE_ARCHIVING = frozenset({State.SCANNED, State.ASSESSED, State.CONSENT, State.IDENTIFIED,
                              State.REVIEWED, State.REFUSED})

#: What to do after a step failed, when the error itself does not say.
NEXT_STEPS = {
    "scan": "Check that the card is inserted and holds photographs, then start again.",
    "consent": "Nothing was archived or wiped. Start the session again.",
    "identify": "Nothing was archived or wiped. Start the session again.",
    "review": "Nothing was archived or wiped. Start the session again.",
    "archive": "Nothing was wiped: every image is still on the card. Check the vault disk, "
               "then start the session again.",
    "wipe": "The kept images are safe in the vault. Leave the card in the reader and tell "
            "the records lead: the wipe is finished when the kiosk restarts (or by "
            "'clinivault recover').",
    "abandon": "Tell the records lead; 'clinivault recover' finishes or rolls back the "
               "session.",
    "release": "Remove the card only after the records lead has checked the kiosk.",
}


class SessionFlow:
    """Runs the session's steps for the app and moves between the step screens."""

    def __init__(self, app: KioskApp) -> None:
        self.app = app
        self.session: IngestSession | None = None
        self.media: DetectedMedia | None = None
        self.view: Screen[Any] | None = None
        self.busy: str | None = None
        self.stopping = False
        self._pending: Callable[[], None] | None = None

    @property
    def active(self) -> bool:
        """A session is open (or its card is being opened): no signing out or quitting."""
        return self.session is not None or self.busy is not None

    @property
    def archiving_started(self) -> bool:
        return self.busy in ("archive", "wipe") or isinstance(self.view, (
            ArchivingScreen, WipingScreen, SummaryScreen))

    # -- running steps ---------------------------------------------------------------------
    def _run(self, name: str, work: Callable[[], Any]) -> Worker[Any]:
        self.busy = name
        return self.app.run_worker(work, name=name, group=GROUP, thread=True,
                                   exit_on_error=False)

    def _progress(self, view: Screen[Any]) -> Callable[[Progress], None]:
        return lambda p: view.post_message(StepProgress(p))

    def _show(self, screen: Screen[Any], then: Callable[[], Any] | None = None) -> None:
        """Replace the step screen by *screen* now, or as soon as nothing covers it; then
        start *then* (the next step's work, which reports to that screen)."""
        def go() -> None:
            self.view = screen
            self.app.switch_screen(screen)
            if then is not None:
                then()

        self._when_on_top(go)

    def _when_on_top(self, action: Callable[[], None]) -> None:
        if self.app.screen is (self.view or self.app.screen_stack[0]):
            action()
        else:
            self._pending = action

    def screen_resumed(self) -> None:
        """A screen came back on top: run the change that waited for it."""
        action, self._pending = self._pending, None
        if action is not None:
            self._when_on_top(action)

    # -- the steps, in order ---------------------------------------------------------------
    def start(self, media: DetectedMedia) -> None:
        app = self.app
        if self.active or media.source is None or app.user is None:
            return
        self.media = media
        self.stopping = False
        view = ReadingScreen(media.label)
        self.view = view
        app.push_screen(view)
        self._run("scan", partial(self._read, media.source, media.label, app.user.id, view))

    def _read(self, source: Path, label: str, operator: str, view: Screen[Any]) -> None:
        """Open the card (a device is checked, identified and mounted read-only), then list
        and assess it. The session is handed over as soon as it exists, so that a failure
        later in this step can still be rolled back."""
        app = self.app
        card = open_card(source, app.config, vault_root=app.vault.root)
        session = IngestSession(app.vault, app.config, card, operator, source_label=label)
        app.call_from_thread(setattr, self, "session", session)
        report = self._progress(view)
        session.scan(report)
        session.assess(report, cancelled=lambda: self.stopping)

    def consent(self, record: ConsentRecord) -> None:
        if self.session is None or self.busy:
            return
        self._run("consent", partial(self.session.record_consent, record))

    def identify(self, patient: PatientId) -> None:
        if self.session is None or self.busy:
            return
        self._run("identify", partial(self.session.identify, patient))

    def finish_review(self, keywords: list[str]) -> None:
        if self.session is None or self.busy:
            return
        self._run("review", partial(self.session.finish_review, keywords))

    def _archive(self) -> None:
        assert self.session is not None
        session = self.session
        view = ArchivingScreen(len(session.kept()))
        self._show(view, lambda: self._run("archive",
                                           partial(session.archive, self._progress(view))))

    def _wipe(self, *, refused: bool = False) -> None:
        """Wipe; first, if the whole card is to be cleared and files on it were not archived
        (unreadable or skipped), ask whether they may be destroyed with it. Core refuses to
        clear the card unless told so; the answer is the operator's."""
        assert self.session is not None
        session = self.session
        mode = self.app.config.wipe.mode
        left = unarchived_on_card(session)
        if not (session.card.is_device and mode != "files" and left):
            self._start_wipe(refused, destroy_unarchived=False)
            return
        names = ", ".join(left[:3]) + (f" and {len(left) - 3} more" if len(left) > 3 else "")
        noun = "file is" if len(left) == 1 else "files are"

        def answered(yes: bool | None) -> None:
            self._start_wipe(refused, destroy_unarchived=bool(yes))

        self._when_on_top(lambda: self.app.push_screen(ConfirmScreen(
            "Clear the whole card?",
            f"{len(left)} {noun} on the card but not in the vault ({names}). Clearing the "
            "whole card destroys them too. If you answer No, only the session's own files "
            "are wiped and the card is set aside for the records lead.",
            yes="Yes, clear the whole card", no="No, keep those files", danger=True),
            answered))

    def _start_wipe(self, refused: bool, *, destroy_unarchived: bool) -> None:
        session = self.session
        assert session is not None
        consent = session.consent
        view = WipingScreen(refused=refused,
                            witness=consent.witness if consent is not None else None)
        mode = self.app.config.wipe.mode
        self._show(view, lambda: self._run("wipe", partial(
            session.wipe, self._progress(view), mode=mode,
            destroy_unarchived=destroy_unarchived)))

    def wipe_read(self) -> None:
        if self.session is not None and not self.busy:
            self._show(SummaryScreen(self.session.summary()))

    def close(self) -> None:
        """The summary was read: forget the session and wait for the next card."""
        if self.session is None or self.busy:
            return
        self._home()

    # -- stopping --------------------------------------------------------------------------
    def cancel(self) -> None:
        """The operator asked to stop: ask first, unless the card is still being read."""
        if self.session is None or self.archiving_started:
            return
        if self.busy == "scan":
            self.stopping = True
            return

        def answered(yes: bool | None) -> None:
            if yes and not self.busy:
                self.abandon()

        self.app.push_screen(ConfirmScreen(
            "Stop this session?",
            "Nothing has been archived or wiped: every image stays on the card. The "
            "answers given so far are discarded.", yes="Yes, stop", no="No, go on"), answered)

    def abandon(self) -> None:
        """End a session that has not archived anything; core logs it and removes its journal."""
        self._pending = None
        actor = self.app.actor()
        self._run("abandon", partial(recover, self.app.vault, actor=actor, wipe=False))

    def _home(self) -> None:
        """Release the card (unmount what the session mounted), then wait for the next one."""
        session = self.session
        if session is not None:
            self._run("release", session.card.close)
        else:
            self._go_home()

    def _go_home(self) -> None:
        def go() -> None:
            self.session = None
            self.media = None
            self.busy = None
            if self.view is not None and self.app.screen is self.view:
                self.view = None
                self.app.pop_screen()
            self.view = None
            self.app.refresh_media()

        self._when_on_top(go)

    # -- when a step ends ------------------------------------------------------------------
    def worker_changed(self, worker: Worker[Any], state: WorkerState) -> None:
        name = worker.name
        if state not in (WorkerState.SUCCESS, WorkerState.ERROR):
            return
        self.busy = None
        if state == WorkerState.ERROR:
            self._failed(name, worker.error)
            return
        session = self.session
        if name == "abandon":
            self._home()
        elif name == "release":
            self._go_home()
        elif session is None:
            return
        elif name == "scan":
            if self.stopping:
                self.abandon()
                return
            readable = sum(1 for it in session.items if not it.unreadable)
            self._show(ConsentScreen(self.app.config.consent.statement, readable))
        elif name == "consent":
            if session.consent is not None and not session.consent.granted:
                self._wipe(refused=True)
            else:
                pid = self.app.config.patient_id
                self._show(PatientIdScreen(pid.scheme, allow_test_ids=pid.allow_test_ids,
                                           mrn_pattern=pid.mrn_pattern,
                                           max_gap_ms=pid.scanner_max_gap_ms))
        elif name == "identify":
            self._show(ReviewScreen(session))
        elif name == "review":
            self._archive()
        elif name == "archive":
            self._wipe()
        elif name == "wipe":
            summary = session.summary()
            view = self.view
            if isinstance(view, WipingScreen) and summary.wipe is not None:
                view.show_result(summary.wipe)

    def _failed(self, name: str, error: BaseException | None) -> None:
        if name == "release":  # the card could not be unmounted: say so, then carry on
            self.app.show_error(error, "release")
            self._go_home()
            return
        if name == "scan" and self.stopping and isinstance(error, FailedSafely):
            self.abandon()  # the operator stopped the reading: not an error
            return
        what, todo = describe_error(error, name)

        def shown() -> None:
            self.app.push_screen(ErrorScreen(what, todo), lambda _r: self._after_error(name))

        self._when_on_top(shown)

    def _after_error(self, name: str) -> None:
        session = self.session
        if (name != "abandon" and session is not None and session.journal is not None
                and session.state in BEFORE_ARCHIVING):
            self.abandon()
        else:
            # Nothing to undo (an archive rolls itself back), or the images are archived and
            # the journal must stay so that recovery finishes the wipe.
            self._home()


def unarchived_on_card(session: IngestSession) -> list[str]:
    """Files a whole-card wipe would destroy that are not in the vault: unreadable images and
    skipped files, but not empty ones (a FAT volume label shows as an empty file).

    This mirrors ``IngestSession._unarchived_on_card`` before the wipe, only to word the
    question; core still decides. (Asked of the lead: a public method in core for this.)
    """
    names = [it.display for it in session.items if it.unreadable]
    if session.scan_result is not None:
        names += [sk.display for sk in session.scan_result.skipped if sk.category != "empty"]
    return names


def describe_error(error: BaseException | None, step: str) -> tuple[str, str]:
    """(what happened, what to do) for an error dialog; the words come from core's error."""
    todo = NEXT_STEPS.get(step, "Nothing was lost. Tell the records lead what happened.")
    if isinstance(error, ClinivaultError):
        return error.message[:1].upper() + error.message[1:] + ".", error.hint or todo
    return (f"An unexpected problem stopped the {step} step: {type(error).__name__}: {error}.",
            "Nothing was lost: the card was only wiped if a summary said so. " + todo)
