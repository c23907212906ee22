"""Sign-in, and the lock screen that asks for a PIN again after the kiosk was left idle.

The PIN check is ``core.users`` (scrypt, lockout, audit entries); it takes a noticeable
fraction of a second by design, so it runs in a worker and the form says "Checking…".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, cast

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Footer, Input, Label, Static
from textual.worker import Worker, WorkerState

from core.users import SignInError, User, sign_in, unlock
from tui.messages import SignedIn
from tui.screens.base import KioskScreen
from tui.widgets.common import Feedback, plain, set_cursor_blink

if TYPE_CHECKING:
    from tui.app import KioskApp


class SignInForm(Vertical):
    """ID and PIN; posts ``SignedIn`` when core accepts them. *locked_for*: unlock rules."""

    DEFAULT_CSS = """
    SignInForm { height: auto; width: 100%; }
    """

    def __init__(self, *, locked_for: str | None = None, id: str | None = None) -> None:
        super().__init__(id=id)
        self.locked_for = locked_for
        self.busy = False
        self._was_ready = False

    @property
    def kiosk(self) -> KioskApp:
        return cast("KioskApp", self.app)

    def compose(self) -> ComposeResult:
        yield Label("Your ID")
        yield Input(self.locked_for or "", id="user", restrict=r"[A-Za-z0-9._-]*",
                    max_length=32, placeholder="e.g. nurse1")
        yield Label("PIN")
        yield Input(id="pin", password=True, max_length=64, placeholder="your PIN")
        yield Feedback(id="signin-feedback")

    def on_mount(self) -> None:
        self.query_one("#pin" if self.locked_for else "#user", Input).focus()

    def clear(self) -> None:
        self.query_one("#user", Input).value = self.locked_for or ""
        self.query_one("#pin", Input).value = ""
        self.query_one(Feedback).show(None)
        self.query_one("#pin" if self.locked_for else "#user", Input).focus()

    @property
    def ready(self) -> bool:
        return (not self.busy and bool(self.query_one("#user", Input).value.strip())
                and bool(self.query_one("#pin", Input).value))

    @on(Input.Changed)
    def _changed(self) -> None:
        if self.ready != self._was_ready:  # only then can the footer change
            self._was_ready = self.ready
            self.screen.refresh_bindings()

    @on(Input.Submitted, "#user")
    def _to_pin(self) -> None:
        self.query_one("#pin", Input).focus()

    @on(Input.Submitted, "#pin")
    def _pin_entered(self) -> None:
        self.submit()

    def submit(self) -> None:
        if not self.ready:
            return
        self.busy = True
        self.query_one(Feedback).show("Checking…", "info")
        self.screen.refresh_bindings()
        self._check(self.query_one("#user", Input).value, self.query_one("#pin", Input).value)

    @work(thread=True, exclusive=True, exit_on_error=False, group="signin", name="signin")
    def _check(self, user_id: str, pin: str) -> User:
        k = self.kiosk
        if self.locked_for:
            return unlock(k.users, k.vault.audit, self.locked_for, user_id, pin, now=k.now())
        return sign_in(k.users, k.vault.audit, user_id, pin, now=k.now())

    @on(Worker.StateChanged)
    def _checked(self, event: Worker.StateChanged) -> None:
        if event.worker.name != "signin":
            return
        event.stop()
        if event.state == WorkerState.SUCCESS:
            self.busy = False
            user = cast(User, event.worker.result)
            self.query_one("#pin", Input).value = ""
            self.query_one(Feedback).show(None)
            self.post_message(SignedIn(user))
        elif event.state == WorkerState.ERROR:
            self.busy = False
            error = event.worker.error
            self.query_one("#pin", Input).value = ""
            self.query_one("#pin", Input).focus()
            if isinstance(error, SignInError):
                self.query_one(Feedback).show(f"{self.kiosk.glyphs.bad} {error.user_message()}")
            else:
                self.query_one(Feedback).show(None)
                self.kiosk.show_error(error, "signing in")
            self.screen.refresh_bindings()


class SignInScreen(KioskScreen):
    """The kiosk's first screen: nobody is signed in."""

    WHERE = "clinivault · sign in"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f10", "sign_in", "Sign in", id="signin.go",
                tooltip="Check the ID and PIN (Enter in the PIN field does the same)"),
    ]

    def compose_body(self) -> ComposeResult:
        with Vertical(id="signin-box"):
            yield Label("Sign in to start", id="signin-title")
            yield SignInForm(id="signin-form")
            if self.kiosk.demo_hint:
                yield Label(plain(self.kiosk.demo_hint), id="demo-hint")
            yield Static(plain("\n".join(self.kiosk.notices)), id="notices")

    def on_screen_resume(self) -> None:
        if self.is_mounted:
            self.query_one(SignInForm).clear()
            self.query_one("#notices", Static).update(plain("\n".join(self.kiosk.notices)))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "sign_in":
            return True if self.query_one(SignInForm).ready else None
        return True

    def action_sign_in(self) -> None:
        self.query_one(SignInForm).submit()

    @on(SignedIn)
    def _signed_in(self, event: SignedIn) -> None:
        event.stop()
        self.kiosk.signed_in(event.user)


class LockScreen(ModalScreen[User]):
    """Over whatever was on screen: work is kept, and continues after the PIN is given again."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f10", "unlock", "Unlock", id="lock.unlock",
                tooltip="Check the PIN (Enter in the PIN field does the same)"),
    ]

    def __init__(self, locked_for: str, reason: str) -> None:
        super().__init__()
        self.locked_for = locked_for
        self.reason = reason

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label("Locked", id="title")
            yield Static(plain(self.reason), id="reason")
            yield Static(plain(f"{self.locked_for}, or a custodian, can unlock. "
                               "Work in progress is kept."), id="who-unlocks")
            yield SignInForm(locked_for=self.locked_for)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        set_cursor_blink(self, getattr(self.app, "cursor_blink", True))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "unlock":
            return True if self.query_one(SignInForm).ready else None
        return True

    def action_unlock(self) -> None:
        self.query_one(SignInForm).submit()

    @on(SignedIn)
    def _unlocked(self, event: SignedIn) -> None:
        event.stop()
        self.dismiss(event.user)

