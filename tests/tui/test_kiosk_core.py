"""The core pieces the kiosk leans on that are not the session: audit-log filtering and CSV
(core.audit_view), card sources (core.media.sources), and the half-block renderer.
"""

from __future__ import annotations

import csv
import io
from datetime import date
from pathlib import Path

import pytest
from PIL import Image

from core import audit_view
from core.audit import VerifyResult
from core.errors import BadInput
from core.media.devices import MediaCandidate, Rejection
from core.media.sources import FolderSource, UdevSource
from tui.widgets.halfblock import fit

ENTRIES = [
    {"seq": 0, "time": "2025-03-13T23:59:59.000Z", "actor": "setup", "event": "vault.init",
     "session": None, "details": {"custodian": "lead"}},
    {"seq": 1, "time": "2025-03-14T09:00:00.000Z", "actor": "nurse1", "event": "signin",
     "session": None, "details": {"role": "operator"}},
    {"seq": 2, "time": "2025-03-14T09:01:00.000Z", "actor": "nurse1",
     "event": "session.started", "session": "20250314T090100Z-aa", "details": {
         "card": "=HYPERLINK(\"http://x\")", "items": 3}},
    {"seq": 3, "time": "2025-03-15T10:00:00.000Z", "actor": "audit1", "event": "signin",
     "session": None, "details": {"name": "\x1b[31mred\u202e"}},
]


def test_filters_by_day_range_event_actor_and_session() -> None:
    f = audit_view.AuditFilter.from_text(since="2025-03-14", until="2025-03-14")
    assert [e["seq"] for e in audit_view.select(ENTRIES, f)] == [1, 2]
    f = audit_view.AuditFilter(event="signin", actor="audit1")
    assert [e["seq"] for e in audit_view.select(ENTRIES, f)] == [3]
    f = audit_view.AuditFilter(session="20250314T0901")
    assert [e["seq"] for e in audit_view.select(ENTRIES, f)] == [2]
    assert audit_view.distinct(ENTRIES, "event") == ["session.started", "signin", "vault.init"]


def test_bad_dates_name_the_field() -> None:
    with pytest.raises(BadInput, match="'from' date"):
        audit_view.AuditFilter.from_text(since="14/03/2025")
    with pytest.raises(BadInput, match="after the 'to' date"):
        audit_view.AuditFilter.from_text(since="2025-03-15", until="2025-03-14")
    assert audit_view.parse_day("") is None
    assert audit_view.parse_day("2025-03-14") == date(2025, 3, 14)


def test_csv_escapes_formulas_and_terminal_controls(tmp_path: Path) -> None:
    out = tmp_path / "log.csv"
    assert audit_view.export_csv(ENTRIES, out) == 4
    rows = list(csv.reader(io.StringIO(out.read_text())))
    assert rows[0] == list(audit_view.CSV_COLUMNS)
    assert rows[3][5] == 'card==HYPERLINK("http://x") items=3'  # not a formula: starts "card"
    assert "\x1b" not in out.read_text() and "\u202e" not in out.read_text()
    assert "\\x1b[31mred\\u202e" in rows[4][5]
    with pytest.raises(BadInput, match="already exists"):
        audit_view.export_csv(ENTRIES, out)


def test_a_cell_starting_like_a_formula_is_quoted() -> None:
    text = audit_view.to_csv([{"seq": 9, "time": "t", "actor": "=cmd", "event": "-x",
                               "session": "@s", "details": {}}])
    row = list(csv.reader(io.StringIO(text)))[1]
    assert row[2:5] == ["'=cmd", "'-x", "'@s"]


def test_audit_key_from_hex_or_file(tmp_path: Path) -> None:
    key = bytes(range(32))
    assert audit_view.parse_audit_key(key.hex().upper()) == key
    path = tmp_path / "k.txt"
    path.write_text(key.hex() + "\n")
    assert audit_view.parse_audit_key(str(path)) == key
    with pytest.raises(BadInput):
        audit_view.parse_audit_key("12ab")


def test_verify_words() -> None:
    assert audit_view.verify_words(VerifyResult(True, 41, None, None)) == "41 entries verified"
    bad = VerifyResult(False, 7, 8, "'hash' does not match the entry's content (entry edited)")
    assert audit_view.verify_words(bad) == (
        "verification FAILED at line 8: 'hash' does not match the entry's content (entry "
        "edited) (7 entries before it verified)")


def test_folder_source_lists_folders_that_exist(tmp_path: Path) -> None:
    card = tmp_path / "card"
    (card / "DCIM").mkdir(parents=True)
    (card / "DCIM" / "a.jpg").write_bytes(b"x" * 1500)
    source = FolderSource([card, tmp_path / "missing"], kind="card folder", labels=["CARD"])
    calls: list[int] = []
    source.start(lambda: calls.append(1))
    (found,) = source.current()
    assert calls == [1]
    assert (found.label, found.kind, found.size_bytes, found.source) == (
        "CARD", "card folder", 1500, card)
    assert found.usable and found.describe().startswith("CARD · card folder · 1.5 KB")


def test_udev_source_maps_cards_and_reasons(tmp_path: Path) -> None:
    candidate = MediaCandidate(
        devnode="/dev/sdz1", sys_path="/sys/x/sdz1", devnum=(999, 1), fs_type="vfat",
        fs_version="FAT32", label="NIKON", uuid="1234", size_bytes=32_000_000_000,
        serial="s", bus="usb", kind="SD card in a USB reader", disk_devnode="/dev/sdz",
        disk_devnum=(999, 0), is_partition=True)
    refused = Rejection("/dev/sda", "holds the system or the vault (never a card)", "/sys/sda")
    quiet = Rejection("/dev/ram0", "RAM disk, not a card", "/sys/ram0", quiet=True)

    class FakeWatcher:
        def __init__(self, callback, config, *, vault_path=None):  # type: ignore[no-untyped-def]
            self.callback = callback

        def start(self) -> None:
            self.callback(None)

        def stop(self) -> None:
            pass

        def known(self):  # type: ignore[no-untyped-def]
            return [candidate, refused, quiet]

    changed: list[int] = []
    source = UdevSource({}, watcher_factory=FakeWatcher)
    source.start(lambda: changed.append(1))
    media = source.current()
    assert changed == [1]
    card, bad = media
    assert (card.label, card.device, card.source) == ("NIKON", "/dev/sdz1", Path("/dev/sdz1"))
    assert card.usable and card.describe().startswith("NIKON · SD card in a USB reader · 32.0 GB")
    assert bad.refused == "holds the system or the vault (never a card)"


def test_half_blocks_fit_the_cell_box_and_keep_the_aspect() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (320, 240), (200, 10, 10)).save(buf, "JPEG")
    block = fit(buf.getvalue(), 16, 4)
    assert block is not None
    assert (block.width, block.height, block.rows) == (11, 8, 4)
    segments = block.row_segments(0)
    assert len(segments) == 11 and {s.text for s in segments} == {"▀"}
    top = segments[0].style
    assert top is not None and top.color is not None and top.bgcolor is not None
    assert fit(b"not a jpeg", 16, 4) is None
