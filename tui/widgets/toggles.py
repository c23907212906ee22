"""Check boxes and radio buttons whose state shows as a mark, not only as a colour.

Why: Textual draws a check box's "X" whether it is ticked or not and tells the two apart by
colour alone; a consent scope must be readable by anyone, on any screen, so an unticked box
here is empty. On the Linux console the brackets are ASCII.
"""

from __future__ import annotations

from textual.content import Content
from textual.style import Style
from textual.widgets import Checkbox, RadioButton


def _mark(widget: Checkbox | RadioButton, inner: str, left: str, right: str) -> Content:
    button_style = widget.get_visual_style("toggle--button")
    side_style = Style(foreground=button_style.background,
                       background=widget.background_colors[1])
    return Content.assemble((left, side_style), (inner, button_style), (right, side_style))


class MarkCheckbox(Checkbox):
    """[X] ticked, [ ] not."""

    def __init__(self, label: str, *, id: str, console: bool = False) -> None:
        super().__init__(label, id=id, compact=True)
        self._sides = ("[", "]") if console else (self.BUTTON_LEFT, self.BUTTON_RIGHT)

    @property
    def _button(self) -> Content:
        return _mark(self, "X" if self.value else " ", *self._sides)


class MarkRadioButton(RadioButton):
    """(*) or ● chosen, empty otherwise."""

    def __init__(self, label: str, *, id: str, console: bool = False) -> None:
        super().__init__(label, id=id, compact=True)
        self._ascii = console
        self._sides = ("(", ")") if console else (self.BUTTON_LEFT, self.BUTTON_RIGHT)

    @property
    def _button(self) -> Content:
        on = "*" if self._ascii else self.BUTTON_INNER
        return _mark(self, on if self.value else " ", *self._sides)
