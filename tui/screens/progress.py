"""Steps 2, 6 and 7: reading the card, archiving, wiping. Each shows a worker's progress.

These screens hold no work of their own: the app's session flow runs the step in a worker,
which posts ``StepProgress`` here; the screen draws it. Throughput is computed from the app's
clock (injected, so snapshots and tests see fixed numbers).
"""

from __future__ import annotations

from collections import deque
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.reactive import reactive
from textual.widgets import Label, ProgressBar, Static

from core.media.devices import human_size
from core.session import Progress
from core.session.model import WipeSummary
from tui.messages import CancelSession, StepProgress, WipeAcknowledged
from tui.screens.base import KioskScreen, step_title
from tui.widgets.common import Feedback, plain, progress_bar


class ReadingScreen(KioskScreen):
    """Listing the card's files, then checking each image's quality (in sandboxed workers)."""

    WHERE = step_title("Reading")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Stop", id="reading.stop",
                tooltip="Stop reading the card; nothing is written anywhere"),
    ]

    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = label
        self.stopping = False

    def compose_body(self) -> ComposeResult:
        with Vertical(classes="step"):
            yield Label(plain(f"Reading {self.label}"), classes="step-title")
            yield Static("Listing the files on the card…", id="phase")
            yield progress_bar(self.kiosk.console_mode, id="bar")
            yield Static(id="current")
            yield Static(plain("Nothing is written to the card while it is read."),
                         classes="reassure")

    @on(StepProgress)
    def _progress(self, event: StepProgress) -> None:
        p = event.progress
        bar = self.query_one("#bar", ProgressBar)
        if p.step == "scan":
            self.query_one("#phase", Static).update(plain(f"Listing the files on the card: "
                                                          f"{p.done} looked at"))
            bar.update(total=None)
        else:
            self.query_one("#phase", Static).update(plain(
                f"Checking image quality: {p.done} of {p.total}"))
            bar.update(total=p.total or 1, progress=p.done)
            self.query_one("#current", Static).update(plain(p.current or ""))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "cancel":
            return None if self.stopping else True
        return True

    def action_cancel(self) -> None:
        self.stopping = True
        self.query_one("#phase", Static).update("Stopping…")
        self.refresh_bindings()
        self.post_message(CancelSession())


class ArchivingScreen(KioskScreen):
    """Encrypt, write, read back and verify each kept file; ticks for those verified."""

    WHERE = step_title("Archive")
    TICKS = 6

    def __init__(self, images: int) -> None:
        super().__init__()
        self.images = images
        self._started: float | None = None
        self._last: str | None = None
        self._ticks: deque[str] = deque(maxlen=self.TICKS)
        self.verified = 0

    def compose_body(self) -> ComposeResult:
        noun = "image" if self.images == 1 else "images"
        with Vertical(classes="step"):
            yield Label(plain(f"Archiving {self.images} {noun} to the vault"),
                        classes="step-title")
            yield progress_bar(self.kiosk.console_mode, id="bar")
            yield Static(id="current")
            yield Static(id="rate")
            yield Static(id="ticks")
            yield Static(plain("Each file is encrypted, written, read back and checked. The "
                               "card is not touched until every kept image is verified."),
                         classes="reassure")

    @on(StepProgress)
    def _progress(self, event: StepProgress) -> None:
        p = event.progress
        now = self.kiosk.clock()
        if self._started is None:
            self._started = now
        bar = self.query_one("#bar", ProgressBar)
        bar.update(total=p.total or 1, progress=p.done)
        if self._last is not None and p.current != self._last:
            self._ticks.append(self._last)
        self._last = p.current
        self.verified = p.done
        g = self.glyphs
        self.query_one("#current", Static).update(plain(
            f"Now: {p.current}" if p.current else f"{g.ok} All {p.total} files verified"))
        elapsed = now - self._started
        rate = f" · {human_size(int(p.bytes_done / elapsed))}/s" if elapsed > 0.5 else ""
        self.query_one("#rate", Static).update(plain(
            f"{p.done} of {p.total} files · {human_size(p.bytes_done)} of "
            f"{human_size(p.bytes_total)}{rate}"))
        self.query_one("#ticks", Static).update(plain("\n".join(
            f"{g.ok} {name} verified" for name in self._ticks)))


WIPE_WORDS = {
    "files": ("Per-file wipe", "each file is overwritten, flushed, truncated, renamed and "
              "removed. On flash cards this cannot reach blocks the card has remapped."),
    "device": ("Whole-card wipe", "the card's own device is overwritten twice and read back, "
               "then its file system is made again."),
}


def phase_words(step: str) -> str:
    """What a wipe progress step is doing, in words ("wipe pass 1" -> "overwriting the
    whole card, pass 1")."""
    if step == "wipe":
        return "overwriting the session's files"
    if step.startswith("wipe pass"):
        return f"overwriting the whole card, {step.removeprefix('wipe ')}"
    if step == "wipe verify":
        return "reading the whole card back to verify it"
    if step in ("residue scan", "wipe residue"):
        return "searching the card for any trace of the session's files"
    return step


class WipingScreen(KioskScreen):
    """The card's session files being overwritten, then the result in words."""

    WHERE = step_title("Wipe")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f10", "next", "Continue", id="wiping.next",
                tooltip="Go on to the summary once the wipe has finished"),
    ]

    #: The wipe's outcome once it has finished (Continue is dimmed until then).
    result: reactive[WipeSummary | None] = reactive(None, bindings=True)

    def __init__(self, *, refused: bool = False, witness: str | None = None) -> None:
        super().__init__()
        self.refused = refused
        self.witness = witness

    def compose_body(self) -> ComposeResult:
        with Vertical(classes="step"):
            title = "Wiping the card" + (" (consent refused)" if self.refused else "")
            yield Label(plain(title), classes="step-title")
            if self.refused:
                yield Static(plain(f"Nothing was archived. Every image is being removed "
                                   f"from the card, witnessed by {self.witness}."),
                             id="refused-note")
            yield Static(plain("Starting the wipe…"), id="mode")
            yield progress_bar(self.kiosk.console_mode, id="bar")
            yield Static(id="amount")
            yield Feedback(id="result")

    @on(StepProgress)
    def _progress(self, event: StepProgress) -> None:
        p: Progress = event.progress
        self.query_one("#bar", ProgressBar).update(total=p.total or 1, progress=p.done)
        self.query_one("#mode", Static).update(plain(f"Now {phase_words(p.step)}."))
        if p.bytes_total:
            self.query_one("#amount", Static).update(plain(
                f"{human_size(p.bytes_done)} of {human_size(p.bytes_total)}"))

    def show_result(self, summary: WipeSummary) -> None:
        """The wipe finished: say what was done and what the residue check found."""
        self.result = summary
        g = self.glyphs
        bar = self.query_one("#bar", ProgressBar)
        bar.update(total=bar.total or 1, progress=bar.total or 1)
        name, how = WIPE_WORDS.get(summary.mode, (summary.mode, ""))
        self.query_one("#mode", Static).update(plain(f"Mode: {name}: {how}"))
        self.query_one("#amount", Static).update(plain("Finished."))
        complete = summary.complete
        lines = [f"{g.ok if complete else g.bad} {summary.words[:1].upper()}"
                 f"{summary.words[1:]}."]
        if summary.residue is None:
            lines.append("Residue scan: not run (it needs the card's own device, not a "
                         "folder).")
        if not complete:
            lines.append("The card is not fully wiped: keep it aside and tell the records "
                         "lead.")
        for name, reason in summary.not_wiped[:5]:
            lines.append(f"{g.bad} Not wiped: {name}: {reason}")
        self.query_one("#result", Feedback).show("\n".join(lines),
                                                  "ok" if complete else "problem")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "next":
            return True if self.result is not None else None
        return True

    def action_next(self) -> None:
        if self.result is not None:
            self.post_message(WipeAcknowledged())
