"""Step 4: the patient ID — the scheme named, live validation, and a confirmation.

Confirmation is either typing the ID a second time, or a barcode scanner: a scanner in
keyboard-wedge mode "types" the wristband's barcode faster than any person and ends with
Enter, and ``core.scanner_wedge.WedgeDetector`` tells the two apart from the key events'
timestamps. Which rule failed (length, letters, check digit...) is ``core.patient_id``'s
wording; this screen shows it as the nurse types.
"""

from __future__ import annotations

from typing import ClassVar

from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.reactive import reactive
from textual.widgets import Input, Label, Static

from core.patient_id import (
    KEEP_TYPING,
    PatientId,
    PatientIdError,
    check_partial,
    normalise,
    parse_patient_id,
    scheme_info,
)
from core.scanner_wedge import WedgeDetector, WedgeResult
from tui.messages import CancelSession, PatientConfirmed
from tui.screens.base import KioskScreen, step_title
from tui.widgets.common import Feedback, plain


class WedgeInput(Input):
    """An Input that also times its keystrokes, so a scanner's burst can be recognised.

    Printable keys are fed to the detector with their event times; any editing key or a
    paste starts afresh (a half-typed, half-scanned entry is not a scan).
    """

    def __init__(self, detector: WedgeDetector, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.detector = detector
        self.last_entry: WedgeResult | None = None
        self._enter_at: float | None = None

    def on_key(self, event: events.Key) -> None:
        if event.is_printable and event.character is not None:
            self.detector.feed(event.character, event.time * 1000)
        elif event.key == "enter":
            self._enter_at = event.time
        else:
            self.detector.reset()

    def on_paste(self, _event: events.Paste) -> None:
        self.detector.reset()

    def entered(self, submitted_at: float) -> WedgeResult:
        """Enter was pressed: was the entry a scan of the whole value?

        The Enter key's own time is used when it was seen; *submitted_at* (when the Input
        reported it) otherwise.
        """
        at = self._enter_at if self._enter_at is not None else submitted_at
        self._enter_at = None
        result = self.detector.enter(at * 1000)
        if result.text != self.value:
            result = WedgeResult(result.text, scanned=False)
        self.last_entry = result
        return result


class PatientIdScreen(KioskScreen):
    """Enter the ID, then confirm it (type again, or scan)."""

    WHERE = step_title("Patient ID")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f10", "next", "Next", id="patient.next",
                tooltip="Use this patient ID and go on to review the images"),
        Binding("escape", "cancel", "Cancel session", id="patient.cancel",
                tooltip="Stop this session; nothing has been archived or wiped yet"),
    ]

    #: The confirmed, valid ID, or None (Next is dimmed until then).
    patient: reactive[PatientId | None] = reactive(None, bindings=True)

    def __init__(self, scheme: str, *, allow_test_ids: bool, mrn_pattern: str | None,
                 max_gap_ms: float) -> None:
        super().__init__()
        self.scheme = scheme
        self.allow_test_ids = allow_test_ids
        self.mrn_pattern = mrn_pattern
        self.max_gap_ms = max_gap_ms
        self.info = scheme_info(scheme)
        self.scanned = False

    def compose_body(self) -> ComposeResult:
        with Vertical(id="form"):
            yield Label(plain(f"Patient ID: {self.info.label}"), classes="step-title")
            yield Static(plain(f"{self.info.hint}. Example: {self.info.example}. Scan the "
                               "wristband, or type the ID."), id="hint")
            yield Label(plain(self.info.label), classes="question")
            yield WedgeInput(WedgeDetector(self.max_gap_ms), id="pid", max_length=40,
                             placeholder="scan the wristband or type")
            yield Feedback(id="pid-feedback")
            yield Label("Type it again to confirm", classes="question", id="again-label")
            yield Input(id="pid2", max_length=40, password=False)
            yield Feedback(id="pid2-feedback")

    def on_mount(self) -> None:
        self.query_one("#pid", WedgeInput).focus()
        self._check()

    def _partial(self, text: str) -> str | None:
        return check_partial(text, self.scheme, allow_test_ids=self.allow_test_ids,
                             mrn_pattern=self.mrn_pattern)

    @on(Input.Changed)
    def _changed(self, event: Input.Changed) -> None:
        first = self.query_one("#pid", WedgeInput)
        if event.input is first and self.scanned and (
                first.last_entry is None or first.last_entry.text != first.value):
            self.scanned = False
        self._check()

    def _check(self) -> None:
        g = self.glyphs
        first = self.query_one("#pid", WedgeInput).value
        second = self.query_one("#pid2", Input).value
        problem = self._partial(first) if first else None
        fb1 = self.query_one("#pid-feedback", Feedback)
        fb2 = self.query_one("#pid2-feedback", Feedback)
        patient: PatientId | None = None
        if not first:
            fb1.show(None)
        elif problem is None:
            fb1.show(f"{g.ok} valid {self.info.label}", "ok")
        elif problem.startswith(KEEP_TYPING):
            fb1.show(problem, "info")
        else:
            fb1.show(f"{g.bad} {problem}", "problem")
        self.query_one("#again-label").display = not self.scanned
        self.query_one("#pid2", Input).display = not self.scanned
        if problem is None and first:
            if self.scanned:
                fb2.show(f"{g.ok} Scanned from a barcode: confirmed", "ok")
                patient = self._parse(first)
            elif not second:
                fb2.show("Type the ID again, or scan the wristband", "info")
            elif normalise(second, self.scheme) == normalise(first, self.scheme):
                fb2.show(f"{g.ok} The two entries match", "ok")
                patient = self._parse(first)
            else:
                fb2.show(f"{g.bad} The two entries differ", "problem")
        else:
            fb2.show(None)
        self.patient = patient

    def _parse(self, text: str) -> PatientId | None:
        try:
            return parse_patient_id(text, self.scheme, allow_test_ids=self.allow_test_ids,
                                    mrn_pattern=self.mrn_pattern)
        except PatientIdError:
            return None

    @on(Input.Submitted, "#pid")
    def _first_entered(self, event: Input.Submitted) -> None:
        first = self.query_one("#pid", WedgeInput)
        entry = first.entered(event.time)
        if entry.scanned and self._partial(first.value) is None:
            self.scanned = True
            self.query_one("#pid2", Input).value = ""
            self._check()
        elif not self.scanned:
            self.query_one("#pid2", Input).focus()

    @on(Input.Submitted, "#pid2")
    def _second_entered(self) -> None:
        self.action_next()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "next":
            return True if self.patient is not None else None
        return True

    def action_next(self) -> None:
        if self.patient is not None:
            self.post_message(PatientConfirmed(self.patient))

    def action_cancel(self) -> None:
        self.post_message(CancelSession())
