"""Small widgets every kiosk screen uses: the top bar, a progress bar, safe text.

Why ``plain()``: file names, labels and log lines come from cards and logs, i.e. from outside.
Textual would read ``[...]`` in a str as markup, so every outside string is shown through
``plain()``, which never parses markup (terminal escapes are already made visible by
``core.media.safe_open.display_name`` and ``core.audit.safe_text``).
"""

from __future__ import annotations

from typing import Any

from rich.console import Console, ConsoleOptions, RenderResult
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.content import Content
from textual.renderables.bar import Bar as BarRenderable
from textual.screen import Screen
from textual.widgets import Label, ProgressBar, Static


def plain(text: str) -> Content:
    """*text* as content, with no markup interpreted."""
    return Content(text)


class AsciiBar(BarRenderable):
    """``#####-----``: the bar for the Linux console, whose font lacks the heavy line glyphs.

    Filled and empty cells differ in character, not only in colour.
    """

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = self.width or options.max_width
        _start, end = self.highlight_range
        filled = max(0, min(width, round(end)))
        yield Text.assemble(("#" * filled, console.get_style(self.highlight_style)),
                            ("-" * (width - filled), console.get_style(self.background_style)),
                            end="")


class ConsoleProgressBar(ProgressBar):
    BAR_RENDERABLE = AsciiBar


def progress_bar(console: bool, *, id: str | None = None) -> ProgressBar:
    """A progress bar without the ETA (it jumps about and makes snapshots unstable)."""
    cls = ConsoleProgressBar if console else ProgressBar
    return cls(show_eta=False, id=id)


class TopBar(Horizontal):
    """One line: where we are in the session, and who is signed in."""

    DEFAULT_CSS = """
    TopBar { height: 1; dock: top; }
    TopBar > #where { width: 1fr; }
    TopBar > #who { width: auto; }
    """

    def __init__(self, where: str, who: str = "") -> None:
        super().__init__()
        self._where = where
        self._who = who

    def compose(self) -> ComposeResult:
        yield Label(plain(self._where), id="where")
        yield Label(plain(self._who), id="who")

    def set_where(self, where: str) -> None:
        self._where = where
        if self.is_mounted:
            self.query_one("#where", Label).update(plain(where))

    def set_who(self, who: str) -> None:
        self._who = who
        if self.is_mounted:
            self.query_one("#who", Label).update(plain(who))


class Feedback(Static):
    """A line of feedback under a form: problems in words, with a symbol, never colour alone."""

    DEFAULT_CSS = """
    Feedback { height: auto; }
    """

    def show(self, text: str | None, kind: str = "problem") -> None:
        self.set_class(kind == "problem" and bool(text), "-problem")
        self.set_class(kind == "ok" and bool(text), "-ok")
        self.update(plain(text or ""))


def set_cursor_blink(screen: Screen[Any], blink: bool) -> None:
    """Turn text cursors' blinking on or off (off in snapshot tests, so pictures are stable)."""
    if not blink:
        for widget in screen.query("Input, TextArea"):
            widget.cursor_blink = False  # type: ignore[attr-defined]

