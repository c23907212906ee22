"""The auditor's screen: the audit log as a table, filters, verification and CSV export.

Reading, filtering and writing CSV are ``core.audit`` and ``core.audit_view``; verifying is
``core.audit.verify_log`` with the key K0 the auditor holds. All of it runs in workers (a log
can hold hundreds of thousands of lines). The auditor never sees images or patient IDs: the
log holds none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.widgets import DataTable, Input, Label, Select, Static
from textual.worker import Worker, WorkerState

from core import audit as auditlog
from core import audit_view
from core.errors import BadInput, ClinivaultError
from tui.screens.base import KioskScreen
from tui.screens.modals import Field, FormScreen
from tui.widgets.common import Feedback, plain

#: More rows than this make the table slow to build; the status line says when it cuts.
MAX_ROWS = 2000


@dataclass(frozen=True)
class Loaded:
    entries: list[dict]
    matched: list[dict]


def _cells(entry: dict) -> tuple[Text, ...]:
    """A table row: the time without the "T", milliseconds and "Z" (the column says UTC)."""
    seq, time, *rest = audit_view.row(entry)
    return tuple(Text(c) for c in (seq, time[:19].replace("T", " "), *rest))


class AuditLogScreen(KioskScreen):
    """Read-only: nothing here changes the log except the entries it adds about itself."""

    WHERE = "Audit log · read only"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f5", "reload", "Reload", id="audit.reload",
                tooltip="Read the log again from the vault"),
        Binding("f6", "verify", "Verify", id="audit.verify",
                tooltip="Check every entry's hash chain and MAC with the audit key"),
        Binding("f7", "export", "Export CSV", id="audit.export",
                tooltip="Write the entries shown to a CSV file"),
        Binding("f3", "sign_out", "Sign out", id="audit.sign_out",
                tooltip="Sign out of the audit log"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.entries: list[dict] = []
        self.matched: list[dict] = []
        self.loading = False
        self._choices: dict[str, list[str]] = {}

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="filters"):
            yield Input(id="since", placeholder="from YYYY-MM-DD", restrict=r"[0-9-]*",
                        max_length=10, compact=True)
            yield Input(id="until", placeholder="to YYYY-MM-DD", restrict=r"[0-9-]*",
                        max_length=10, compact=True)
            yield Select([], id="event", prompt="any event", compact=True)
            yield Select([], id="actor", prompt="anyone", compact=True)
            yield Input(id="session", placeholder="session", max_length=40, compact=True)
        yield Feedback(id="status")
        yield DataTable(id="log", cursor_type="row", zebra_stripes=True)
        yield Static(id="entry")
        yield Label("Not verified yet: F6 checks every entry with the audit key.",
                    id="verify-result")

    def on_mount(self) -> None:
        table = self.query_one("#log", DataTable)
        table.add_columns("#", "Time (UTC)", "Actor", "Event", "Session", "Details")
        table.focus()
        self.action_reload()

    # -- loading and filtering -------------------------------------------------------------
    def _filter(self) -> audit_view.AuditFilter:
        def sel(widget_id: str) -> str:
            value = self.query_one(f"#{widget_id}", Select).value
            return value if isinstance(value, str) else ""

        return audit_view.AuditFilter.from_text(
            self.query_one("#since", Input).value, self.query_one("#until", Input).value,
            sel("event"), sel("actor"), self.query_one("#session", Input).value)

    def action_reload(self) -> None:
        self._load(reread=True)

    @on(Input.Changed)
    @on(Select.Changed)
    def _filters_changed(self) -> None:
        self._load(reread=False)

    def _load(self, *, reread: bool) -> None:
        try:
            flt = self._filter()
        except BadInput as exc:
            self.query_one("#status", Feedback).show(f"{self.glyphs.bad} {exc.user_message()}")
            return
        self.loading = True
        self._read(flt, None if reread else self.entries)

    @work(thread=True, exclusive=True, exit_on_error=False, group="audit", name="audit.read")
    def _read(self, flt: audit_view.AuditFilter, entries: list[dict] | None) -> Loaded:
        if entries is None:
            entries = list(auditlog.read_entries(self.kiosk.vault.layout.audit_log))
        return Loaded(entries, audit_view.select(entries, flt))

    @on(Worker.StateChanged)
    def _worker_changed(self, event: Worker.StateChanged) -> None:
        name = event.worker.name
        if not name.startswith("audit."):
            return
        event.stop()
        if event.state == WorkerState.ERROR:
            self.loading = False
            error = event.worker.error
            text = error.user_message() if isinstance(error, ClinivaultError) else repr(error)
            if name == "audit.read":
                self.query_one("#status", Feedback).show(
                    f"{self.glyphs.bad} The log could not be read: {text}")
            else:
                self.kiosk.show_error(error, name.removeprefix("audit."))
            return
        if event.state != WorkerState.SUCCESS:
            return
        if name == "audit.read":
            self._show(event.worker.result)  # type: ignore[arg-type]
        elif name == "audit.verify":
            self._verified(event.worker.result)  # type: ignore[arg-type]
        elif name == "audit.export":
            count, path = event.worker.result  # type: ignore[misc]
            self.notify(f"{count} entries written to {path}", title="Exported")
            self.query_one("#verify-result", Label).update(plain(
                f"{self.glyphs.ok} Exported {count} entries to {path}"))

    @on(DataTable.RowHighlighted, "#log")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        """The highlighted entry in full (the table cuts long details)."""
        shown = self.matched[-MAX_ROWS:]
        row = event.cursor_row
        if 0 <= row < len(shown):
            seq, time, actor, what, session, details = audit_view.row(shown[row])
            where = f" · session {session}" if session else ""
            self.query_one("#entry", Static).update(plain(
                f"#{seq} {time} · {actor} · {what}{where}\n{details}"))

    def _show(self, loaded: Loaded) -> None:
        self.loading = False
        self.entries, self.matched = loaded.entries, loaded.matched
        self._set_choices("event", audit_view.distinct(self.entries, "event"))
        self._set_choices("actor", audit_view.distinct(self.entries, "actor"))
        table = self.query_one("#log", DataTable)
        table.clear()
        self.query_one("#entry", Static).update("")
        shown = self.matched[-MAX_ROWS:]
        table.add_rows([_cells(e) for e in shown])
        if shown:
            table.move_cursor(row=len(shown) - 1)
        status = f"{len(self.matched)} of {len(self.entries)} entries match"
        if len(shown) < len(self.matched):
            status += f" (newest {len(shown)} shown; export CSV for all)"
        self.query_one("#status", Feedback).show(status, "info")
        self.refresh_bindings()

    def _set_choices(self, widget_id: str, values: list[str]) -> None:
        if self._choices.get(widget_id) == values:
            return
        self._choices[widget_id] = values
        select = self.query_one(f"#{widget_id}", Select)
        current = select.value
        with select.prevent(Select.Changed):
            select.set_options([(plain(v), v) for v in values])
            if isinstance(current, str) and current in values:
                select.value = current

    # -- verify ----------------------------------------------------------------------------
    def action_verify(self) -> None:
        def check(values: dict[str, str]) -> str | None:
            try:
                audit_view.parse_audit_key(values["key"])
            except BadInput as exc:
                return exc.user_message()
            return None

        form = FormScreen(
            "Verify the audit log",
            [Field("key", "Audit key: 64 hex digits, or the path of the key file",
                   self.kiosk.audit_key_hint or "", password=False)],
            intro="The key was shown once when the vault was created. It is not kept on "
                  "this kiosk.", save_label="Verify", check=check)

        def entered(values: dict[str, str] | None) -> None:
            if values is not None:
                self.query_one("#verify-result", Label).update("Verifying…")
                self._verify(values["key"])

        self.app.push_screen(form, entered)

    @work(thread=True, exclusive=True, exit_on_error=False, group="audit", name="audit.verify")
    def _verify(self, key_text: str) -> auditlog.VerifyResult:
        k = self.kiosk
        k0 = audit_view.parse_audit_key(key_text)
        layout = k.vault.layout
        result = auditlog.verify_log(layout.audit_log, k0, key_state_path=layout.audit_key)
        k.vault.audit.append(k.actor(), "audit.verified", None, {
            "ok": result.ok, "entries": result.entries, "first_bad_line": result.first_bad_line})
        return result

    def _verified(self, result: auditlog.VerifyResult) -> None:
        g = self.glyphs
        line = audit_view.verify_words(result)
        self.query_one("#verify-result", Label).update(
            plain(f"{g.ok if result.ok else g.bad} {line}"))
        self.query_one("#verify-result", Label).set_class(not result.ok, "-problem")
        self.query_one("#verify-result", Label).set_class(result.ok, "-ok")
        self.action_reload()

    # -- export ----------------------------------------------------------------------------
    def action_export(self) -> None:
        shown = list(self.matched)

        def entered(values: dict[str, str] | None) -> None:
            if values is not None:
                self._export(shown, values["path"])

        self.app.push_screen(FormScreen(
            "Export the entries shown as CSV",
            [Field("path", "File to write (a new file)", self.kiosk.default_export_path())],
            intro=f"{len(shown)} entries match the filters.", save_label="Export",
            check=lambda v: None if v["path"].strip() else "Give a file name"), entered)

    @work(thread=True, exclusive=True, exit_on_error=False, group="audit", name="audit.export")
    def _export(self, entries: list[dict], path: str) -> tuple[int, str]:
        count = audit_view.export_csv(entries, path)
        self.kiosk.vault.audit.append(self.kiosk.actor(), "audit.exported", None,
                                      {"entries": count})
        return count, path

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "export":
            return True if self.matched else None
        return True

    async def action_sign_out(self) -> None:
        await self.kiosk.sign_out()
