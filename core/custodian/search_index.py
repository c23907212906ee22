"""The search index: what a custodian searches by, sealed under a key only an unlock yields.

Why an index at all: the patient ID, keywords, body sites and consent of a session are sealed
to the vault public key inside its catalog record, so a search that unsealed every session
would cost ~130 µs of X25519 + AES per session plus parsing every catalog shard — tens of
seconds at 100,000 sessions. Issue 7 asks for < 1 s after unlock. So each session is unsealed
once, when a custodian first unlocks after it was archived, and the searchable facts are kept
here, encrypted.

Why this key: ``HKDF-SHA256(private key raw bytes, salt = vault public key,
info = b"clinivault-search-index/v1")``. Only someone holding the private key (an unlocked
custodian) can derive it; the kiosk, which has only the public key, can neither read nor
write the index, so a stolen kiosk reveals no patient ID through it. The index is derived
data: any shard that is missing, damaged or from another vault is dropped and rebuilt from
the catalog, never trusted and never an error.

Files (``VAULT/index/``), each replaced atomically (``core.fsutil``)::

    YYYY-MM.idx   the entries of sessions that started in that UTC month
    meta.idx      the watermark: for every catalog day shard, the (size, mtime_ns, inode) it
                  had when indexed; for every month file, its entry count and SHA-256

    file = b"clinivault-index/v1\\n" || nonce (12 random bytes, fresh per write)
           || AES-256-GCM(key, nonce, plaintext, aad = b"clinivault-index/v1\\n" || file name)

    meta.idx plaintext:    one JSON object
    YYYY-MM.idx plaintext: {"v":1,"n":COUNT} LF, then one [session id, entry] JSON line per
                           session (compact, ASCII-escaped), LF-terminated

The file name is in the AAD so a month file cannot be passed off as another month. One line
per session is what makes a search fast: a month is decrypted and searched as bytes for the
patient pair (``["nhs","9434765870"]`` appears verbatim), and only matching lines are parsed;
JSON-parsing all 100,000 entries would take most of the 1 s budget.

Why a per-day watermark and not "the last session id indexed": a session's id is its *start*
time, and sessions are committed out of order (a crash-recovered session, a long studio
session finishing after a short one started later), and a record changes after commit (consent
withdrawn, tombstone). Listing the catalog's day files and comparing each one's stat with the
watermark finds every changed day in a few milliseconds; only those days are parsed, and only
records whose ``sealed`` text changed (a 24-hex fingerprint is kept per entry) are unsealed.

An entry (short keys, as there are 100,000 of them)::

    t  started (ISO UTC)           h  fingerprint of the record's sealed text
    p  [scheme, value] or null     k  keywords (session and per image), as typed
    b  body sites (consent body areas and per image)
    c  consent scopes granted now  x  scopes withdrawn
    n  images (kind "image")       o  objects of any kind
    st catalog state               z  true when the session was withdrawn (tombstone)
    e  null, or why the sealed details could not be read
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from core.catalog import Catalog
from core.custodian.access import SessionSecrets, sealed_digest
from core.errors import ClinivaultError, FailedSafely
from core.fsutil import atomic_write_bytes, ensure_dir, remove_stale_temps
from core.vault.layout import VaultLayout

MAGIC = b"clinivault-index/v1\n"
KEY_INFO = b"clinivault-search-index/v1"
NONCE_SIZE = 12
META_NAME = "meta.idx"
FORMAT_VERSION = 1

Entry = dict[str, Any]
SecretsOf = Callable[[dict[str, Any]], SessionSecrets]


def index_dir(layout: VaultLayout) -> Path:
    """``VAULT/index`` (kept here until ``VaultLayout`` names it)."""
    return layout.root / "index"


def derive_key(private: X25519PrivateKey) -> bytes:
    """The index key: only a holder of the private key can compute it."""
    raw = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    salt = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=KEY_INFO).derive(raw)


class IndexFileError(Exception):
    """An index file that does not open: it is rebuilt, never trusted."""


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def encrypt_bytes(key: bytes, name: str, plain: bytes) -> bytes:
    nonce = os.urandom(NONCE_SIZE)
    return MAGIC + nonce + AESGCM(key).encrypt(nonce, plain, MAGIC + name.encode("ascii"))


def encrypt_file(key: bytes, name: str, payload: dict[str, Any]) -> bytes:
    """Encrypt a JSON document (``meta.idx``)."""
    return encrypt_bytes(key, name, _compact(payload))


def month_text(entries: dict[str, Entry]) -> bytes:
    """A month file's plaintext: a header line, then one ``[session, entry]`` JSON line per
    session. One line per session lets a search parse only the lines that can match."""
    lines = [_compact({"v": FORMAT_VERSION, "n": len(entries)})]
    lines += [_compact([sid, entry]) for sid, entry in sorted(entries.items())]
    return b"\n".join(lines) + b"\n"


def parse_month(name: str, plain: bytes) -> dict[str, Entry]:
    """Every entry of a month file's plaintext; IndexFileError if it is not that layout."""
    lines = plain.split(b"\n")
    try:
        header = json.loads(lines[0])
        if not isinstance(header, dict) or header.get("v") != FORMAT_VERSION:
            raise IndexFileError(f"{name} has an unknown layout")
        entries: dict[str, Entry] = {}
        for line in lines[1:]:
            if line:
                sid, entry = _line(line)
                entries[sid] = entry
    except (ValueError, TypeError):
        raise IndexFileError(f"{name} is malformed") from None
    if len(entries) != header.get("n"):
        raise IndexFileError(f"{name} holds {len(entries)} entries, not {header.get('n')}")
    return entries


def _line(line: bytes) -> tuple[str, Entry]:
    sid, entry = json.loads(line)
    if not isinstance(sid, str) or not isinstance(entry, dict):
        raise ValueError("not a [session, entry] line")
    return sid, entry


def decrypt_bytes(key: bytes, name: str, data: bytes) -> bytes:
    """Authenticate and decrypt one index file; IndexFileError if it is not ours, intact."""
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + NONCE_SIZE + 16:
        raise IndexFileError(f"{name} is not a clinivault index file")
    nonce = data[len(MAGIC):len(MAGIC) + NONCE_SIZE]
    try:
        return AESGCM(key).decrypt(nonce, data[len(MAGIC) + NONCE_SIZE:],
                                   MAGIC + name.encode("ascii"))
    except InvalidTag:
        raise IndexFileError(f"{name} does not authenticate (damaged, or another vault's)"
                             ) from None


def decrypt_file(key: bytes, name: str, data: bytes) -> dict[str, Any]:
    """Decrypt and parse ``meta.idx``."""
    return _payload(name, decrypt_bytes(key, name, data))


def read_month(key: bytes, name: str, data: bytes) -> dict[str, Entry]:
    """Decrypt and parse a month file (``YYYY-MM.idx``): session id -> entry."""
    return parse_month(name, decrypt_bytes(key, name, data))


def _payload(name: str, plain: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(plain)
    except ValueError:
        raise IndexFileError(f"{name} holds no JSON") from None
    if not isinstance(payload, dict) or payload.get("v") != FORMAT_VERSION:
        raise IndexFileError(f"{name} has an unknown layout")
    return payload


@dataclass
class RefreshStats:
    """What one refresh did (for the bench, the audit entry and tests)."""

    days: int = 0
    days_changed: int = 0
    unsealed: int = 0
    updated: int = 0
    removed: int = 0
    rebuilt: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


def _stat_signature(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _month_of(session_id: str) -> str:
    return f"{session_id[:4]}-{session_id[4:6]}"


def _day_of(session_id: str) -> str:
    return f"{session_id[:4]}-{session_id[4:6]}-{session_id[6:8]}"


def build_entry(record: dict[str, Any], secrets: SessionSecrets | None,
                error: str | None = None) -> Entry:
    """The index entry of one catalog record and (when readable) its unsealed details."""
    entry: Entry = {"h": sealed_digest(record["sealed"]), "p": None, "k": [], "b": [],
                    "c": [], "x": [], "e": error}
    if secrets is not None:
        if secrets.patient is not None:
            entry["p"] = [secrets.patient.scheme, secrets.patient.value]
        entry["k"] = secrets.all_keywords()
        entry["b"] = secrets.body_sites()
        consent = secrets.consent
        if consent is not None and consent.granted:
            entry["c"] = list(consent.scopes)
            entry["x"] = list(consent.withdrawn)
    _catalog_fields(entry, record)
    return entry


def _catalog_fields(entry: Entry, record: dict[str, Any]) -> None:
    """Fields read from the plaintext record: refreshed on every change of its day file."""
    objects = record.get("objects") or []
    entry["t"] = record["started"]
    entry["n"] = sum(1 for o in objects if o.get("kind") == "image")
    entry["o"] = len(objects)
    entry["st"] = record.get("state")
    entry["z"] = record.get("tombstone") is not None


class SearchIndex:
    """The index of one vault, decrypted in memory for the length of an unlock.

    Month files are decrypted (and authenticated) on open but parsed only when a query might
    match them: JSON-parsing 100,000 entries costs ~0.8 s, most of the 1 s budget, while a
    patient ID is found in the decrypted text of a month with one bytes search (see
    :func:`needles`). ``meta.idx`` records each month file's SHA-256, so an older (still
    authentic) copy of a month file put back in place is noticed without parsing it.
    """

    def __init__(self, directory: Path, key: bytes) -> None:
        self.directory = directory
        self._key = key
        self._days: dict[str, list[int]] = {}
        self._files: dict[str, dict[str, Any]] = {}  # month -> {"n": entries, "sha256": hex}
        self._raw: dict[str, bytes] = {}  # month -> decrypted JSON, not yet parsed
        self._months: dict[str, dict[str, Entry]] = {}  # month -> parsed entries
        self._dirty: set[str] = set()
        self.rebuilt: list[str] = []

    @classmethod
    def open(cls, layout: VaultLayout, private: X25519PrivateKey) -> SearchIndex:
        """Open (or start) the index; call :meth:`refresh` before searching."""
        directory = ensure_dir(index_dir(layout))
        remove_stale_temps(directory)
        index = cls(directory, derive_key(private))
        index._load()
        return index

    # -- loading ----------------------------------------------------------------------------
    def _decrypt(self, name: str, data: bytes) -> bytes | None:
        try:
            return decrypt_bytes(self._key, name, data)
        except IndexFileError as exc:
            self.rebuilt.append(str(exc))
            return None

    def _load(self) -> None:
        meta = None
        try:
            data = (self.directory / META_NAME).read_bytes()
        except FileNotFoundError:
            data = None
        if data is not None:
            plain = self._decrypt(META_NAME, data)
            try:
                meta = _payload(META_NAME, plain) if plain is not None else None
            except IndexFileError as exc:
                self.rebuilt.append(str(exc))
        days = meta.get("days") if meta else None
        files = meta.get("months") if meta else None
        if not isinstance(days, dict) or not isinstance(files, dict):
            days, files = {}, {}
        self._days = {str(d): sig for d, sig in days.items() if isinstance(sig, list)}
        for month in sorted(files):
            info = files[month]
            name = f"{month}.idx"
            try:
                data = (self.directory / name).read_bytes()
            except FileNotFoundError:
                data = None
            if (data is None or not isinstance(info, dict)
                    or hashlib.sha256(data).hexdigest() != info.get("sha256")):
                self.rebuilt.append(f"{name} is missing or not the file the watermark names")
                self._forget_month(month)
                continue
            plain = self._decrypt(name, data)
            if plain is None:
                self._forget_month(month)
                continue
            self._files[month] = info
            self._raw[month] = plain

    def _forget_month(self, month: str) -> None:
        """Drop a month whose file is missing or damaged: its days are indexed again."""
        self._raw.pop(month, None)
        self._files.pop(month, None)
        self._months[month] = {}
        for day in [d for d in self._days if d.startswith(month)]:
            del self._days[day]
        self._dirty.add(month)

    def _month(self, month: str) -> dict[str, Entry]:
        """The parsed entries of *month* (parsed now if need be)."""
        parsed = self._months.get(month)
        if parsed is not None:
            return parsed
        raw = self._raw.pop(month, None)
        entries: dict[str, Entry] = {}
        if raw is not None:
            try:
                entries = parse_month(f"{month}.idx", raw)
            except IndexFileError as exc:
                # Authentic but unreadable (a newer writer's layout): rebuild this month.
                self.rebuilt.append(str(exc))
                self._forget_month(month)
                entries = self._months[month]
        self._months[month] = entries
        return entries

    # -- bringing it up to date -------------------------------------------------------------
    def refresh(self, catalog: Catalog, secrets_of: SecretsOf,
                progress: Callable[[int, int], None] | None = None) -> RefreshStats:
        """Index every session of every catalog day whose file changed since the last refresh.

        *secrets_of* unseals a record (the caller holds the private key). A record whose
        sealed details do not open is indexed with ``e`` set and listed in the stats, so one
        damaged record does not stop a custodian finding the others (``check`` names it).
        """
        stats = RefreshStats(rebuilt=list(self.rebuilt))
        base = os.fspath(catalog.directory)
        now = {day: _stat_signature(os.path.join(base, f"{day}.json")) for day in catalog.days()}
        stats.days = len(now)
        changed = [d for d, sig in now.items() if sig is not None and self._days.get(d) != sig]
        gone = [d for d in self._days if d not in now]
        for n, day in enumerate(changed):
            self._index_day(catalog, day, secrets_of, stats)
            self._days[day] = now[day]  # type: ignore[assignment]
            if progress:
                progress(n + 1, len(changed))
        for day in gone:
            month = self._month(day[:7])
            for sid in [s for s in month if _day_of(s) == day]:
                del month[sid]
                stats.removed += 1
            self._dirty.add(day[:7])
            del self._days[day]
        stats.days_changed = len(changed) + len(gone)
        self._save()
        self.rebuilt = []
        return stats

    def _index_day(self, catalog: Catalog, day: str, secrets_of: SecretsOf,
                   stats: RefreshStats) -> None:
        month = self._month(day[:7])
        seen: set[str] = set()
        when = date.fromisoformat(day)
        for record in catalog.iter_sessions(since=when, until=when):
            sid = record["session"]
            seen.add(sid)
            entry = month.get(sid)
            if entry is not None and entry.get("h") == sealed_digest(record["sealed"]) \
                    and entry.get("e") is None:
                before = dict(entry)
                _catalog_fields(entry, record)
                if entry != before:
                    stats.updated += 1
                    self._dirty.add(day[:7])
                continue
            try:
                month[sid] = build_entry(record, secrets_of(record))
            except ClinivaultError as exc:  # IntegrityError from unseal or parse
                month[sid] = build_entry(record, None, exc.user_message()[:200])
                stats.unreadable.append(sid)
            stats.unsealed += 1
            self._dirty.add(day[:7])
        for sid in [s for s in month if _day_of(s) == day and s not in seen]:
            del month[sid]
            stats.removed += 1
            self._dirty.add(day[:7])

    def _save(self) -> None:
        """Write changed months, then the watermark: a crash in between only means those
        months are rebuilt next time (their hashes no longer match the old watermark)."""
        try:
            for month in sorted(self._dirty):
                entries = self._month(month)
                name = f"{month}.idx"
                if entries:
                    data = encrypt_bytes(self._key, name, month_text(entries))
                    atomic_write_bytes(self.directory / name, data)
                    self._files[month] = {"n": len(entries),
                                          "sha256": hashlib.sha256(data).hexdigest()}
                else:
                    (self.directory / name).unlink(missing_ok=True)
                    self._files.pop(month, None)
            if self._dirty or not (self.directory / META_NAME).exists():
                atomic_write_bytes(self.directory / META_NAME, encrypt_file(
                    self._key, META_NAME, {"v": FORMAT_VERSION, "days": self._days,
                                           "months": self._files}))
        except OSError as exc:
            raise FailedSafely(f"could not write the search index: {exc.strerror or exc}",
                               "Free space on the vault disk; the index is rebuilt next time"
                               ) from exc
        self._dirty.clear()

    # -- reading ----------------------------------------------------------------------------
    def entries(self, since: date | None = None, until: date | None = None,
                needles: Sequence[Needle] = ()) -> Iterator[tuple[str, Entry]]:
        """(session id, entry) of indexed sessions whose UTC start day is in range.

        With *needles*, only entries whose line in the decrypted month text holds every
        needle are parsed and yielded (see :func:`needles`); months already parsed yield all
        their entries. Either way the caller still matches each entry it gets.
        """
        lo = since.isoformat() if since else ""
        hi = until.isoformat() if until else "9999"
        for month in sorted(set(self._months) | set(self._raw)):
            if month < lo[:7] or month > hi[:7]:
                continue
            raw = self._raw.get(month)
            found = (_candidates(raw, needles) if raw is not None and needles
                     else self._month(month).items())
            for sid, entry in found:
                if lo <= _day_of(sid) <= hi:
                    yield sid, entry

    def get(self, session_id: str) -> Entry | None:
        return self._month(_month_of(session_id)).get(session_id)

    def __len__(self) -> int:
        return sum(len(e) for e in self._months.values()) + sum(
            int(self._files.get(m, {}).get("n", 0)) for m in self._raw)


@dataclass(frozen=True)
class Needle:
    """Bytes that must occur in a month's decrypted JSON for it to hold a match."""

    text: bytes
    case_insensitive: bool = False


def patient_needle(scheme: str, value: str) -> Needle:
    """The patient pair exactly as :func:`encrypt_file` writes it (compact, ASCII-escaped)."""
    return Needle(json.dumps([scheme, value], separators=(",", ":"),
                             ensure_ascii=True).encode("ascii"))


def text_needle(text: str) -> Needle | None:
    """A case-insensitive needle for a keyword or body-site query, when one is safe.

    Only plain printable ASCII without quote or backslash appears verbatim in the JSON, and
    matching lower-cased bytes equals ``casefold`` only for ASCII; a month whose text holds
    ``\\u`` escapes (non-ASCII keywords, where casefold can turn "ß" into "ss") is always
    parsed (see :func:`_may_contain`).
    """
    t = text.strip().casefold()
    if not t or not t.isascii() or not t.isprintable() or '"' in t or "\\" in t:
        return None
    return Needle(t.encode("ascii"), case_insensitive=True)


def _candidates(raw: bytes, needles: Sequence[Needle]) -> Iterator[tuple[str, Entry]]:
    """Parse only the lines of a month's text that contain every needle."""
    exact = [n.text for n in needles if not n.case_insensitive]
    folded = [n.text for n in needles if n.case_insensitive]
    if folded and b"\\u" in raw:
        folded = []  # non-ASCII text present: casefold may match where bytes do not
    if not exact and not folded:
        yield from parse_month("month", raw).items()
        return
    lowered = raw.lower() if folded else raw
    anchor, text = (exact[0], raw) if exact else (folded[0], lowered)
    pos = text.find(anchor)
    while pos >= 0:
        start = text.rfind(b"\n", 0, pos) + 1
        end = text.find(b"\n", pos)
        end = len(text) if end < 0 else end
        if all(e in raw[start:end] for e in exact) and all(
                f in lowered[start:end] for f in folded) and start > 0:  # line 0: header
            try:
                item = _line(raw[start:end])
            except (ValueError, TypeError):  # authentic, so written by us: a bug, say so
                raise FailedSafely("the search index holds a malformed entry",
                                   "Delete VAULT/index; it is rebuilt at the next unlock"
                                   ) from None
            yield item
        pos = text.find(anchor, end)
