"""Dialogs over a screen: confirm, error, help, and a small form.

Why modal screens: a confirmation must stop everything behind it until it is answered (a
discard, a refused consent, a wipe), and an error must be read before the kiosk goes on.
``ConfirmScreen`` answers a bool through ``dismiss``: y, n and Escape are its only keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import ActiveBinding, Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Input, Label, Static

from tui.widgets.common import Feedback, plain, set_cursor_blink


class ConfirmScreen(ModalScreen[bool]):
    """A question with a yes and a no; Escape is no."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes", id="confirm.yes",
                tooltip="Go ahead", key_display="Y"),
        Binding("n", "answer(False)", "No", id="confirm.no",
                tooltip="Go back without doing anything", key_display="N"),
        Binding("escape", "answer(False)", "Back", id="confirm.back", show=False,
                tooltip="Go back without doing anything"),
    ]

    def __init__(self, title: str, body: str, *, yes: str = "Yes", no: str = "No",
                 danger: bool = False) -> None:
        super().__init__(classes="-danger" if danger else "")
        self._title = title
        self._body = body
        self._yes = yes
        self._no = no

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(plain(self._title), id="title")
            yield Static(plain(self._body), id="body")
            yield Label(plain(f"Y  {self._yes}      N  {self._no}"), id="choices")
        yield Footer(compact=True)

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class ErrorScreen(ModalScreen[None]):
    """What happened and what to do, in words; Enter or Escape closes it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter,escape", "close", "OK", id="error.ok",
                tooltip="Close this message", key_display="Enter"),
    ]

    def __init__(self, what: str, todo: str, *, title: str = "Something went wrong") -> None:
        super().__init__()
        self.what = what
        self.todo = todo
        self._title = title

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(plain(self._title), id="title")
            yield Label("What happened", classes="heading")
            yield Static(plain(self.what), id="what")
            yield Label("What to do", classes="heading")
            yield Static(plain(self.todo), id="todo")
        yield Footer(compact=True)

    def action_close(self) -> None:
        self.dismiss(None)


@dataclass(frozen=True)
class HelpEntry:
    key: str
    description: str
    tooltip: str
    available: bool


def help_entries(active: dict[str, ActiveBinding], key_display) -> list[HelpEntry]:  # type: ignore[no-untyped-def]
    """The keys that apply on a screen, with whether each can be used right now."""
    out, seen = [], set()
    for binding_info in active.values():
        b = binding_info.binding
        if b.system or not b.description or (b.action, b.description) in seen:
            continue
        seen.add((b.action, b.description))
        out.append(HelpEntry(key_display(b), b.description, b.tooltip,
                             bool(binding_info.enabled)))
    return out


class HelpScreen(ModalScreen[None]):
    """Every key of the screen underneath, and of the whole kiosk, with what it does."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,f1,enter", "close", "Close help", id="help.close",
                tooltip="Back to where you were", key_display="Esc"),
    ]

    def __init__(self, here: str, entries: Sequence[HelpEntry],
                 others: Iterable[tuple[str, Sequence[tuple[str, str]]]] = ()) -> None:
        super().__init__()
        self.here = here
        self.entries = list(entries)
        self.others = list(others)

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="dialog"):
            yield Label(plain(f"Keys on this screen: {self.here}"), id="title")
            yield Static(self._table(), id="keys")
            yield Static(plain("Keys shown dimmed in the footer cannot be used yet (for "
                               "example, Next stays dimmed until the screen is complete)."),
                         id="note")
            for title, keys in self.others:
                yield Label(plain(title), classes="heading")
                yield Static(plain("\n".join(f"{k:<14}{d}" for k, d in keys)),
                             classes="other")
        yield Footer(compact=True)

    def _table(self) -> Table:
        table = Table(box=None, expand=True, show_edge=False, pad_edge=False,
                      header_style="bold")
        table.add_column("Key", no_wrap=True)
        table.add_column("What it does", ratio=1)
        table.add_column("Now", no_wrap=True)
        for e in self.entries:
            table.add_row(Text(e.key), Text(e.tooltip or e.description),
                          Text("yes" if e.available else "not yet"))
        return table

    def action_close(self) -> None:
        self.dismiss(None)


@dataclass(frozen=True)
class Field:
    """One line of a :class:`FormScreen`."""

    key: str
    label: str
    value: str = ""
    placeholder: str = ""
    password: bool = False


class FormScreen(ModalScreen[dict[str, str] | None]):
    """A few text fields; F10 (or Enter on the last field) saves, Escape cancels.

    *check* turns the values into an error message or None; Save stays dimmed until None.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f10", "save", "Save", id="form.save", tooltip="Use these values"),
        Binding("escape", "cancel", "Cancel", id="form.cancel",
                tooltip="Close without changing anything"),
    ]

    def __init__(self, title: str, fields: Sequence[Field], *, intro: str = "",
                 save_label: str = "Save", check=None) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self._title = title
        self._fields = list(fields)
        self._intro = intro
        self._save_label = save_label
        self._check = check
        self._problem: str | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(plain(self._title), id="title")
            if self._intro:
                yield Static(plain(self._intro), id="intro")
            for f in self._fields:
                yield Label(plain(f.label))
                yield Input(f.value, placeholder=f.placeholder, password=f.password,
                            id=f"field-{f.key}")
            yield Feedback(id="feedback")
            yield Label(plain(f"F10  {self._save_label}      Esc  Cancel"), id="choices")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        set_cursor_blink(self, getattr(self.app, "cursor_blink", True))
        self._recheck()

    def values(self) -> dict[str, str]:
        return {f.key: self.query_one(f"#field-{f.key}", Input).value for f in self._fields}

    @on(Input.Changed)
    def _recheck(self) -> None:
        self._problem = self._check(self.values()) if self._check else None
        self.query_one(Feedback).show(self._problem)
        self.refresh_bindings()

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        inputs = list(self.query(Input))
        if event.input is inputs[-1]:
            self.action_save()
        else:
            inputs[inputs.index(event.input) + 1].focus()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "save":
            return None if self._problem else True
        return True

    def action_save(self) -> None:
        if not self._problem:
            self.dismiss(self.values())

    def action_cancel(self) -> None:
        self.dismiss(None)
