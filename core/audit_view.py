"""The auditor's view of the audit log: filter entries and export them as CSV.

Why in core: which entries match a filter, and what a CSV cell may contain, are rules the
kiosk and any later tool must apply the same way. Reading and verifying the log itself is
``core.audit``; this module only selects and writes what was read.

Every string from the log is passed through ``core.audit.safe_text`` (the log is evidence and
may hold hostile text, such as a file name from a card), and a CSV cell that a spreadsheet
would run as a formula (``=``, ``+``, ``-``, ``@``, tab, carriage return first) is prefixed
with ``'`` (OWASP's advice on CSV injection).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from core.audit import KEY_BYTES, VerifyResult, load_key_file, safe_text
from core.errors import BadInput
from core.fsutil import atomic_write_bytes

CSV_COLUMNS = ("seq", "time", "actor", "event", "session", "details")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def parse_day(text: str, what: str = "date") -> date | None:
    """``YYYY-MM-DD`` -> date; empty -> None; anything else -> BadInput naming the field."""
    text = text.strip()
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise BadInput(f"{what} {text!r} is not a date", "Write it as YYYY-MM-DD") from None


@dataclass(frozen=True)
class AuditFilter:
    """Which entries to show. Empty fields match everything; dates are UTC days, inclusive."""

    since: date | None = None
    until: date | None = None
    event: str = ""
    actor: str = ""
    session: str = ""

    def matches(self, entry: dict[str, Any]) -> bool:
        day = str(entry.get("time", ""))[:10]
        if self.since is not None and day < self.since.isoformat():
            return False
        if self.until is not None and day > self.until.isoformat():
            return False
        if self.event and entry.get("event") != self.event:
            return False
        if self.actor and entry.get("actor") != self.actor:
            return False
        return not (self.session and not str(entry.get("session") or "").startswith(
            self.session.strip()))

    @classmethod
    def from_text(cls, since: str = "", until: str = "", event: str = "", actor: str = "",
                  session: str = "") -> AuditFilter:
        """From the text of form fields; BadInput for a bad date or a reversed range."""
        start = parse_day(since, "'from' date")
        end = parse_day(until, "'to' date")
        if start and end and start > end:
            raise BadInput("the 'from' date is after the 'to' date")
        return cls(start, end, event.strip(), actor.strip(), session.strip())


def select(entries: Iterable[dict[str, Any]], flt: AuditFilter) -> list[dict[str, Any]]:
    return [e for e in entries if flt.matches(e)]


def distinct(entries: Iterable[dict[str, Any]], key: str) -> list[str]:
    """The values of *key* that occur (for the event and actor pick-lists), sorted."""
    return sorted({str(e.get(key)) for e in entries if e.get(key)})


def details_text(details: Any) -> str:
    """``key=value`` pairs, sorted, each shown safely."""
    if not isinstance(details, dict):
        return safe_text(json.dumps(details, sort_keys=True))
    parts = []
    for k, v in sorted(details.items()):
        value = v if isinstance(v, str) else json.dumps(v, sort_keys=True, ensure_ascii=False)
        parts.append(f"{safe_text(str(k))}={safe_text(value)}")
    return " ".join(parts)


def row(entry: dict[str, Any]) -> tuple[str, ...]:
    """One entry as display text, in :data:`CSV_COLUMNS` order."""
    return (str(entry.get("seq", "")), safe_text(str(entry.get("time", ""))),
            safe_text(str(entry.get("actor", ""))), safe_text(str(entry.get("event", ""))),
            safe_text(str(entry.get("session") or "")), details_text(entry.get("details")))


def _cell(text: str) -> str:
    return "'" + text if text.startswith(_FORMULA_START) else text


def to_csv(entries: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for e in entries:
        writer.writerow([_cell(c) for c in row(e)])
    return buf.getvalue()


def export_csv(entries: Sequence[dict[str, Any]], path: str | Path) -> int:
    """Write *entries* as CSV to *path* (new file only); return how many rows."""
    target = Path(path).expanduser()
    if not str(path).strip():
        raise BadInput("no file name given for the CSV export")
    if target.exists():
        raise BadInput(f"{target} already exists", "Choose a new file name")
    if not target.parent.is_dir():
        raise BadInput(f"folder {target.parent} does not exist")
    try:
        atomic_write_bytes(target, to_csv(entries).encode("utf-8"), 0o644)
    except OSError as exc:
        raise BadInput(f"cannot write {target}: {exc.strerror}") from None
    return len(entries)


def parse_audit_key(text: str) -> bytes:
    """The auditor's key K0 from what they typed: 64 hex digits, or the path of a key file."""
    compact = "".join(text.split())
    if not compact:
        raise BadInput("no audit key given",
                       "Type the 64 hex digits shown at vault creation, or a key file's path")
    if len(compact) == 2 * KEY_BYTES and not compact.strip("0123456789abcdefABCDEF"):
        return bytes.fromhex(compact)
    path = Path(text.strip()).expanduser()
    if not path.is_file():
        raise BadInput("that is neither 64 hex digits nor an existing key file",
                       "Type the key shown at vault creation, or the path of its file")
    return load_key_file(path)


def verify_words(result: VerifyResult) -> str:
    """The verification outcome in one line: "N entries verified" or the first bad line."""
    if result.ok:
        line = f"{result.entries} entries verified"
        return f"{line} ({result.note})" if result.note else line
    where = (f"line {result.first_bad_line}" if result.first_bad_line is not None
             else "the key state")
    return (f"verification FAILED at {where}: {result.reason} "
            f"({result.entries} entries before it verified)")
