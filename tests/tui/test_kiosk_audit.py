"""The auditor's screen on a real vault: the log as a table, filters, verification against K0
(and a tampered line found), and CSV export.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from textual.pilot import Pilot
from textual.widgets import DataTable, Select

from tests.tui.conftest import FIXED_NOW, Kiosk, run, settle, sign_in, type_text
from tui.screens.audit_log import AuditLogScreen
from tui.screens.modals import FormScreen


def key_file(kiosk: Kiosk) -> Path:
    path = kiosk.tmp / "audit-key.txt"
    path.write_text(kiosk.k0.hex() + "\n")
    return path


def test_auditor_filters_verifies_and_exports(kiosk: Kiosk) -> None:
    app = kiosk.app(audit_key_hint=str(key_file(kiosk)))
    seen: dict[str, Any] = {}

    async def scenario(pilot: Pilot[Any]) -> None:
        await sign_in(pilot, "audit1", "4321")
        screen = app.screen
        assert isinstance(screen, AuditLogScreen)
        table = screen.query_one("#log", DataTable)
        total = len(kiosk.audit_events())
        assert table.row_count == total

        screen.query_one("#event", Select).value = "user.added"  # the event pick-list
        await settle(pilot)
        assert table.row_count == 3
        assert {str(table.get_row_at(i)[3]) for i in range(3)} == {"user.added"}
        screen.query_one("#event", Select).clear()
        await settle(pilot)

        screen.query_one("#since").focus()
        await type_text(pilot, "2999-01-01")  # a from-date in the future: nothing matches
        await settle(pilot)
        assert table.row_count == 0
        assert screen.check_action("export", ()) is None
        await pilot.press(*["backspace"] * 10)
        await settle(pilot)

        await pilot.press("f6")
        assert isinstance(app.screen, FormScreen)
        await pilot.press("f10")  # the key file's path is filled in (demo set-up)
        await settle(pilot)
        result = str(screen.query_one("#verify-result").render())
        assert result.endswith(f"{total} entries verified"), result

        await pilot.press("f7")
        assert isinstance(app.screen, FormScreen)
        await pilot.press("f10")
        await settle(pilot)
        seen["rows"] = len(screen.matched)

    run(app, scenario, (120, 40))
    exported = kiosk.tmp / f"audit-{FIXED_NOW:%Y%m%d-%H%M%S}.csv"
    rows = list(csv.reader(exported.open(newline="")))
    assert rows[0] == ["seq", "time", "actor", "event", "session", "details"]
    assert len(rows) == 1 + seen["rows"]
    events = [e["event"] for e in kiosk.audit_events()]
    assert "audit.verified" in events and "audit.exported" in events


def test_verify_names_the_first_tampered_line(kiosk: Kiosk) -> None:
    log = kiosk.vault.layout.audit_log
    lines = log.read_bytes().splitlines(keepends=True)
    entry = json.loads(lines[2])
    entry["details"]["role"] = "custodian"  # an edited entry: hash and MAC no longer match
    lines[2] = (json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n").encode()
    log.write_bytes(b"".join(lines))
    app = kiosk.app(audit_key_hint=kiosk.k0.hex())

    async def scenario(pilot: Pilot[Any]) -> None:
        await sign_in(pilot, "audit1", "4321")
        screen = app.screen
        assert isinstance(screen, AuditLogScreen)
        await pilot.press("f6", "f10")
        await settle(pilot)
        result = str(screen.query_one("#verify-result").render())
        assert "verification FAILED at line 3" in result, result
        assert "entry edited" in result

    run(app, scenario, (120, 40))


def test_a_bad_key_is_refused_before_verifying(kiosk: Kiosk) -> None:
    app = kiosk.app(audit_key_hint="")

    async def scenario(pilot: Pilot[Any]) -> None:
        await sign_in(pilot, "audit1", "4321")
        await pilot.press("f6")
        form = app.screen
        assert isinstance(form, FormScreen)
        await type_text(pilot, "12ab")
        assert form.check_action("save", ()) is None
        assert "neither 64 hex digits nor an existing key file" in str(
            form.query_one("#feedback").render())
        await pilot.press("escape")

    run(app, scenario)
