"""Step 3: the patient's consent — the site's statement, scopes, method, names, body areas.

``core.consent.grant`` decides whether the answers make a complete record and words what is
missing; this screen asks it after every change, shows its message, and keeps Next dimmed
until it accepts. "Consent refused" asks who recorded it and who witnesses the wipe
(``core.consent.refuse``), then asks for confirmation: nothing is archived and the card is
wiped.
"""

from __future__ import annotations

from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.reactive import reactive
from textual.widgets import Checkbox, Input, Label, RadioSet, Static

from core.consent import METHOD_LABELS, METHODS, ConsentError, ConsentRecord, grant, refuse
from tui.messages import CancelSession, ConsentGiven
from tui.screens.base import KioskScreen, step_title
from tui.screens.modals import ConfirmScreen, Field, FormScreen
from tui.widgets.common import Feedback, plain
from tui.widgets.toggles import MarkCheckbox, MarkRadioButton

SCOPE_CHOICES = (
    ("record", "Health record (needed to archive)"),
    ("teaching", "Teaching within this organisation"),
    ("publication", "Publication (journals, conferences)"),
)


def split_list(text: str) -> list[str]:
    """"left forearm, right hand" -> ["left forearm", "right hand"]."""
    return [part.strip() for part in text.split(",") if part.strip()]


class ConsentScreen(KioskScreen):
    """Everything ``core.consent.grant`` needs, one question per line."""

    WHERE = step_title("Consent")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f10", "next", "Next", id="consent.next",
                tooltip="Record this consent and go on to the patient ID"),
        Binding("f5", "refused", "Consent refused", id="consent.refused",
                tooltip="The patient refused: nothing is archived and the card is wiped in "
                        "front of a witness"),
        Binding("escape", "cancel", "Cancel session", id="consent.cancel",
                tooltip="Stop this session; nothing has been archived or wiped yet"),
    ]

    #: The complete record, or None while something is missing (Next is dimmed until then).
    record: reactive[ConsentRecord | None] = reactive(None, bindings=True)

    def __init__(self, statement: str, images: int) -> None:
        super().__init__()
        self.statement = statement
        self.images = images
        self.problem: str | None = None

    def compose_body(self) -> ComposeResult:
        with VerticalScroll(id="form"):
            yield Label("The patient's consent to clinical photography", classes="step-title")
            yield Static(plain(self.statement.strip()), id="statement")
            yield Label("What the patient agrees to", classes="question")
            for scope, label in SCOPE_CHOICES:
                yield MarkCheckbox(label, id=f"scope-{scope}",
                                   console=self.kiosk.console_mode)
            yield Label("How consent was given", classes="question")
            with RadioSet(id="method", compact=True):
                for method in METHODS:
                    yield MarkRadioButton(METHOD_LABELS[method].capitalize(),
                                          id=f"method-{method}", console=self.kiosk.console_mode)
            with Horizontal(id="witness-box", classes="row extra"):
                yield Label("Witness's name", classes="row-label")
                yield Input(id="witness", placeholder="who witnessed the consent", compact=True)
            with Horizontal(id="guardian-box", classes="row extra"):
                yield Label("Parent/guardian, relation", classes="row-label")
                yield Input(id="guardian", placeholder="name", compact=True)
                yield Input(id="relationship", placeholder="e.g. mother", compact=True)
            yield Label("Details", classes="question")
            with Horizontal(classes="row"):
                yield Label("Body areas photographed", classes="row-label")
                yield Input(id="body-areas", placeholder="e.g. left forearm (commas between)",
                            compact=True)
            with Horizontal(classes="row"):
                yield Label("Consent obtained by", classes="row-label")
                yield Input(id="obtained-name", placeholder="name", compact=True)
                yield Input(id="obtained-role", placeholder="job title", compact=True)
        yield Feedback(id="consent-feedback")

    def on_mount(self) -> None:
        self.query_one("#scope-record", Checkbox).focus()
        self._check()

    # -- reading the form ------------------------------------------------------------------
    def _value(self, widget_id: str) -> str:
        return self.query_one(f"#{widget_id}", Input).value

    def method(self) -> str | None:
        pressed = self.query_one("#method", RadioSet).pressed_button
        return pressed.id.removeprefix("method-") if pressed and pressed.id else None

    def scopes(self) -> list[str]:
        return [s for s, _ in SCOPE_CHOICES if self.query_one(f"#scope-{s}", Checkbox).value]

    @on(Checkbox.Changed)
    @on(RadioSet.Changed)
    @on(Input.Changed)
    def _check(self) -> None:
        method = self.method()
        self.query_one("#witness-box").display = method == "witness"
        self.query_one("#guardian-box").display = method == "guardian"
        try:
            self.record = grant(
                scopes=self.scopes(), method=method,  # type: ignore[arg-type]
                obtained_by_name=self._value("obtained-name"),
                obtained_by_role=self._value("obtained-role"),
                body_areas=split_list(self._value("body-areas")),
                statement=self.statement,
                witness=self._value("witness") if method == "witness" else None,
                guardian=self._value("guardian") if method == "guardian" else None,
                guardian_relationship=(self._value("relationship") if method == "guardian"
                                       else None),
                now=self.kiosk.now())
            self.problem = None
            self.query_one(Feedback).show(f"{self.glyphs.ok} Consent is complete. F10 goes "
                                          "on to the patient ID.", "ok")
        except ConsentError as exc:
            self.record = None
            self.problem = exc.user_message()
            self.query_one(Feedback).show(f"Still needed: {self.problem}", "problem")

    # -- keys ------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "next":
            return True if self.record is not None else None
        return True

    def action_next(self) -> None:
        if self.record is not None:
            self.post_message(ConsentGiven(self.record))

    def action_cancel(self) -> None:
        self.post_message(CancelSession())

    def action_refused(self) -> None:
        statement = self.statement
        now = self.kiosk.now()

        def check(values: dict[str, str]) -> str | None:
            try:
                refuse(recorded_by_name=values["name"], recorded_by_role=values["role"],
                       witness=values["witness"], statement=statement, now=now)
            except ConsentError as exc:
                return exc.user_message()
            return None

        form = FormScreen(
            "Consent refused",
            [Field("name", "Refusal recorded by (your name)", self._value("obtained-name")),
             Field("role", "Your job title", self._value("obtained-role")),
             Field("witness", "Witness to the refusal and the wipe (name)")],
            intro="Nothing will be archived. The card will be wiped in front of the witness.",
            save_label="Continue", check=check)
        self.app.push_screen(form, self._refusal_entered)

    def _refusal_entered(self, values: dict[str, str] | None) -> None:
        if values is None:
            return
        record = refuse(recorded_by_name=values["name"], recorded_by_role=values["role"],
                        witness=values["witness"], statement=self.statement,
                        now=self.kiosk.now())
        noun = "image" if self.images == 1 else "images"

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.post_message(ConsentGiven(record))

        self.app.push_screen(ConfirmScreen(
            "Consent refused — wipe the card?",
            f"Nothing will be archived. All {self.images} {noun} on the card will be "
            f"overwritten and removed now, witnessed by {record.witness}. This cannot be "
            "undone.", yes="Yes, wipe the card", no="No, go back", danger=True), confirmed)
