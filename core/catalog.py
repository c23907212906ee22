"""The catalog: one record per ingest session, in TinyDB files that are never half-written.

Why this shape:

* **Crash safety.** A kiosk loses power at any instant. :class:`AtomicJSONStorage` is a TinyDB
  storage that writes a whole new file (temp file in the same directory, fsync, ``os.replace``,
  fsync the directory, via :func:`core.fsutil.atomic_writer`), so a shard on disk is always the
  old version or the new one. A commit is exactly one such write, and is durable when
  :meth:`Catalog.commit_session` returns. A crash can leave one ``.tmp-*`` file behind;
  :meth:`Catalog.recover` (run at start-up, under the vault lock) deletes it. A shard that does
  not parse is an error naming the file, never an empty catalog.
* **Scale.** A kiosk vault grows for years (target: 100,000 sessions of 2-50 images; open < 1 s,
  commit < 100 ms). One TinyDB file would be rewritten whole on every commit, so the catalog is
  sharded: ``VAULT/catalog/YYYY-MM-DD.json``, one TinyDB file per UTC *day* of the session's
  start, derivable from the session id. Opening lists the directory and parses nothing; shards
  are parsed on demand and a few recent ones are cached. Day, not month: at realistic object
  counts (~26 objects of ~250 bytes each per session) a month shard is ~11 MB and serialising
  plus fsyncing it costs ~130 ms, over budget; a day shard is ~0.3 MB and costs a few ms
  (measured by ``bench/catalog_scale.py``). :meth:`Catalog.months` still groups by month.
* **No plaintext patient ID.** A record's plaintext fields are only what an auditor may see.
  Everything identifying (patient ID, consent details, keywords, notes) arrives already sealed
  to the vault public key as one base64 string, ``sealed``. Records are validated on the way
  in: an unknown top-level field (say ``patient_id``) or a record without ``sealed`` is
  refused with :class:`~core.errors.BadInput`, so nobody can put an identifier in by accident.
  Free-text fields are kept out: states, reasons, scopes and kinds are short identifiers.

Session record (all fields are present in a stored record; optional ones get their default)::

    session         str   required  "YYYYMMDDTHHMMSSZ-xxxxxxxx" from new_session_id(); its UTC
                                    day names the shard
    started         str   required  ISO-8601 time with zone UTC ("...Z" or "+00:00")
    finished        str|None        ISO-8601 UTC time; default None
    operator        str   required  operator account id (not a name), [A-Za-z0-9._@-]{1,64}
    state           str   required  session state identifier, e.g. "archived", "wiped"
    taken           int             images found on the card; default 0
    retained        int             images kept; default 0
    discarded       {reason: int}   images discarded, by reason identifier; default {}
                                    (retained + sum(discarded.values()) <= taken is enforced;
                                    a refused session retains and discards nothing)
    archived_bytes  int             total plaintext bytes archived; default 0
    objects         [object]        one per archived vault object, see below; default []
    consent_scopes  [str]           consent scope identifiers (e.g. "clinical", "teaching");
                                    scopes are not identifying; default []
    wipe            dict|None       wipe result summary (mode, counts, residue result); default None
    tombstone       dict|None       set when the session is withdrawn/removed; default None
    sealed          str   required  base64 of the blob sealed to the vault public key

    object: {"id": str (object store id, [A-Za-z0-9_-]{8,128}), "sha256": 64 lowercase hex of
             the original bytes, "size": int plaintext bytes, "object_size": int bytes on disk,
             "kind": "image"|"raw"|"sidecar"|"video", "captured": ISO time or None (camera
             clock, may lack a zone), "index": int position in the session (unique; if
             absent it is set to the object's position in the list)}

``wipe`` and ``tombstone`` are small plain dicts: identifier keys, values that are numbers,
booleans, None, strings (<= 256 chars), lists or dicts of the same, nested at most 3 deep.
There are no file names anywhere (a card's file names can be identifying): keys such as
``file``, ``path``, ``name`` or ``patient_id`` are refused at any depth (IDENTIFYING_KEYS).

The catalog is not thread-safe and assumes one owner process (see :mod:`core.vault.lock`).
"""

from __future__ import annotations

import binascii
import contextlib
import json
import math
import os
import re
import secrets
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from tinydb import TinyDB
from tinydb.storages import Storage
from tinydb.table import Table

from core.errors import BadInput, FailedSafely, VaultError
from core.fsutil import TEMP_PREFIX, atomic_write_bytes, ensure_dir, remove_stale_temps

TABLE = "sessions"
"""The TinyDB table each shard file holds."""

MAX_CACHED_SHARDS = 16
"""Parsed shards kept in memory (LRU); full scans read the others without caching them."""

REQUIRED_FIELDS = frozenset({"session", "started", "operator", "state", "sealed"})
DEFAULTS: dict[str, Any] = {
    "finished": None,
    "taken": 0,
    "retained": 0,
    "discarded": {},
    "archived_bytes": 0,
    "objects": [],
    "consent_scopes": [],
    "wipe": None,
    "tombstone": None,
}
SESSION_FIELDS = REQUIRED_FIELDS | frozenset(DEFAULTS)
OBJECT_FIELDS = frozenset({"id", "sha256", "size", "object_size", "kind", "captured", "index"})
OBJECT_KINDS = frozenset({"image", "raw", "sidecar", "video"})
IDENTIFYING_KEYS = frozenset({
    "file", "files_list", "filename", "file_name", "path", "paths", "name", "names", "label",
    "volume_label", "patient", "patient_id", "nhi", "nhs", "chi", "mrn", "dob", "keywords",
    "notes", "consent", "witness", "guardian",
})
MAX_SEALED_CHARS = 1 << 20

SESSION_ID_RE = re.compile(r"^(\d{8})T(\d{6})Z-[0-9a-f]{8}$")
SHARD_RE = re.compile(r"^(\d{4}-\d{2}-\d{2})\.json$")
IDENT_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
OPERATOR_RE = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
OBJECT_ID_RE = re.compile(r"^[A-Za-z0-9_-]{8,128}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_B64_RE = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")


# --------------------------------------------------------------------------- session ids


def new_session_id(now: datetime | None = None) -> str:
    """A fresh session id: UTC start time to the second, then 32 random bits.

    The time prefix makes ids sort chronologically and names the catalog shard.
    """
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None or now.utcoffset() is None:
        raise BadInput("a session id needs a time with a zone", hint="pass an aware datetime")
    return f"{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


def session_day(session_id: str) -> date:
    """The UTC day a session started, read from its id; BadInput if it is not a session id."""
    m = SESSION_ID_RE.match(session_id) if isinstance(session_id, str) else None
    if m is not None:
        try:
            return datetime.strptime(m.group(1) + m.group(2), "%Y%m%d%H%M%S").date()
        except ValueError:
            pass
    raise BadInput(
        f"{session_id!r} is not a session id",
        hint="session ids look like 20261125T010203Z-1a2b3c4d",
    )


def shard_key(session_id: str) -> str:
    """The shard (``YYYY-MM-DD``) holding *session_id*."""
    return session_day(session_id).isoformat()


# --------------------------------------------------------------------------- validation


def validate_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """Check a session record against the schema; return a normalised deep copy.

    Raises :class:`BadInput` naming the first problem. Missing optional fields get defaults.
    """
    if not isinstance(record, Mapping):
        raise BadInput("a catalog record must be a mapping")
    unknown = sorted(str(k) for k in record if k not in SESSION_FIELDS)
    if unknown:
        raise BadInput(
            f"catalog record field {unknown[0]!r} is not allowed",
            hint="identifying fields (patient ID, consent details, keywords, notes) go in "
            "'sealed'; allowed fields: " + ", ".join(sorted(SESSION_FIELDS)),
        )
    missing = sorted(REQUIRED_FIELDS - set(record))
    if missing:
        raise BadInput(f"catalog record lacks the required field {missing[0]!r}")

    rec: dict[str, Any] = {name: _clone(record.get(name, DEFAULTS.get(name)))
                           for name in sorted(SESSION_FIELDS)}
    sid = rec["session"]
    session_day(sid)  # raises BadInput
    _check_time("started", rec["started"], utc=True)
    if rec["finished"] is not None:
        _check_time("finished", rec["finished"], utc=True)
    if not isinstance(rec["operator"], str) or not OPERATOR_RE.match(rec["operator"]):
        raise BadInput(f"catalog record {sid}: 'operator' must be an account id")
    _check_ident(sid, "state", rec["state"])
    for name in ("taken", "retained", "archived_bytes"):
        _check_count(sid, name, rec[name])

    discarded = rec["discarded"]
    if not isinstance(discarded, dict):
        raise BadInput(f"catalog record {sid}: 'discarded' must map reasons to counts")
    for reason, n in discarded.items():
        _check_ident(sid, "discarded reason", reason)
        _check_count(sid, f"discarded[{reason}]", n)
    if rec["retained"] + sum(discarded.values()) > rec["taken"]:
        raise BadInput(
            f"catalog record {sid}: retained ({rec['retained']}) plus discarded "
            f"({sum(discarded.values())}) is more than taken ({rec['taken']})"
        )

    scopes = rec["consent_scopes"]
    if not isinstance(scopes, list) or len(set(map(str, scopes))) != len(scopes):
        raise BadInput(f"catalog record {sid}: 'consent_scopes' must be a list without repeats")
    for scope in scopes:
        _check_ident(sid, "consent scope", scope)

    _check_objects(sid, rec["objects"])
    for name in ("wipe", "tombstone"):
        if rec[name] is not None:
            if not isinstance(rec[name], dict):
                raise BadInput(f"catalog record {sid}: {name!r} must be a dict or null")
            _check_plain(sid, name, rec[name], depth=0)

    sealed = rec["sealed"]
    if (
        not isinstance(sealed, str)
        or not 0 < len(sealed) <= MAX_SEALED_CHARS
        or len(sealed) % 4
        or not _B64_RE.match(sealed)
    ):
        raise BadInput(f"catalog record {sid}: 'sealed' must be a non-empty base64 string")
    try:
        binascii.a2b_base64(sealed, strict_mode=True)
    except binascii.Error as exc:
        raise BadInput(f"catalog record {sid}: 'sealed' is not valid base64 ({exc})") from None
    return rec


def _check_objects(sid: str, objects: Any) -> None:
    if not isinstance(objects, list):
        raise BadInput(f"catalog record {sid}: 'objects' must be a list")
    ids: set[str] = set()
    indexes: set[int] = set()
    for n, obj in enumerate(objects):
        where = f"catalog record {sid}: objects[{n}]"
        if not isinstance(obj, dict):
            raise BadInput(f"{where} must be a dict")
        obj.setdefault("index", n)  # obj is already our own copy
        if set(obj) != OBJECT_FIELDS:
            extra = sorted(set(map(str, obj)) - OBJECT_FIELDS)
            lack = sorted(OBJECT_FIELDS - set(obj))
            what = f"has the unknown field {extra[0]!r}" if extra else f"lacks {lack[0]!r}"
            raise BadInput(f"{where} {what}", hint="fields: " + ", ".join(sorted(OBJECT_FIELDS)))
        if not isinstance(obj["id"], str) or not OBJECT_ID_RE.match(obj["id"]):
            raise BadInput(f"{where}: 'id' is not an object id")
        if obj["id"] in ids:
            raise BadInput(f"{where}: object {obj['id']} is listed twice")
        ids.add(obj["id"])
        if not isinstance(obj["sha256"], str) or not SHA256_RE.match(obj["sha256"]):
            raise BadInput(f"{where}: 'sha256' must be 64 lowercase hex digits")
        _check_count(sid, f"objects[{n}].size", obj["size"])
        _check_count(sid, f"objects[{n}].object_size", obj["object_size"])
        _check_count(sid, f"objects[{n}].index", obj["index"])
        if obj["index"] in indexes:
            raise BadInput(f"{where}: index {obj['index']} is used twice")
        indexes.add(obj["index"])
        if obj["kind"] not in OBJECT_KINDS:
            raise BadInput(f"{where}: 'kind' must be one of " + ", ".join(sorted(OBJECT_KINDS)))
        if obj["captured"] is not None:
            _check_time(f"objects[{n}].captured", obj["captured"], utc=False)


def _check_time(name: str, value: Any, *, utc: bool) -> None:
    try:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None:
        raise BadInput(f"catalog record field {name!r} must be an ISO-8601 time, not {value!r}")
    if utc and parsed.utcoffset() != UTC.utcoffset(None):
        raise BadInput(f"catalog record field {name!r} must be a UTC time, not {value!r}")


def _check_ident(sid: str, name: str, value: Any) -> None:
    if not isinstance(value, str) or not IDENT_RE.match(value):
        raise BadInput(
            f"catalog record {sid}: {name} {value!r} is not an identifier",
            hint="use lowercase letters, digits, '_' and '-' (no free text)",
        )


def _check_count(sid: str, name: str, value: Any) -> None:
    if type(value) is not int or value < 0:
        raise BadInput(f"catalog record {sid}: {name!r} must be a whole number >= 0")


def _check_plain(sid: str, name: str, value: Any, depth: int) -> None:
    if depth > 3:
        raise BadInput(f"catalog record {sid}: {name!r} is nested too deeply")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_ident(sid, f"{name} key", key)
            if key in IDENTIFYING_KEYS:
                raise BadInput(
                    f"catalog record {sid}: {name!r} may not hold {key!r}",
                    hint="file names and identifying details go in the sealed blob, or are "
                    "recorded only as counts",
                )
            _check_plain(sid, f"{name}.{key}", item, depth + 1)
    elif isinstance(value, list):
        for n, item in enumerate(value):
            _check_plain(sid, f"{name}[{n}]", item, depth + 1)
    elif isinstance(value, str):
        if len(value) > 256:
            raise BadInput(f"catalog record {sid}: {name!r} is longer than 256 characters")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise BadInput(f"catalog record {sid}: {name!r} must be a finite number")
    elif value is not None and not isinstance(value, int):  # bool is an int
        raise BadInput(f"catalog record {sid}: {name!r} has a value of type {type(value).__name__}")


def _clone(value: Any) -> Any:
    """Deep copy of a JSON value (several times faster than copy.deepcopy)."""
    if type(value) is dict:
        return {k: _clone(v) for k, v in value.items()}
    if type(value) is list:
        return [_clone(v) for v in value]
    return value


# --------------------------------------------------------------------------- storage


class AtomicJSONStorage(Storage):
    """A TinyDB storage that replaces its file atomically and durably on every write.

    ``read`` parses the file once and then serves the parsed state from memory (TinyDB reads
    the whole state before every operation); a missing file reads as ``None`` (empty), a file
    that does not parse or does not have TinyDB's shape raises :class:`VaultError` naming it.
    ``write`` serialises to a temp file beside the target, fsyncs, renames over it and fsyncs
    the directory; if that fails the in-memory state is dropped (TinyDB has already changed it)
    so the next read sees what is really on disk.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = Path(path)
        self._data: dict[str, dict[str, Any]] | None = None
        self._loaded = False
        self.writes = 0

    def read(self) -> dict[str, dict[str, Any]] | None:
        if not self._loaded:
            self._data = self._load()
            self._loaded = True
        return self._data

    def write(self, data: dict[str, dict[str, Any]]) -> None:
        try:
            payload = json.dumps(data, separators=(",", ":"), allow_nan=False).encode("ascii")
            atomic_write_bytes(self.path, payload)
        except OSError as exc:
            self._data, self._loaded = None, False
            raise FailedSafely(
                f"could not write the catalog file {self.path}: {exc.strerror or exc}",
                hint="free space on the vault disk and try again; the change was not saved",
            ) from exc
        except BaseException:
            self._data, self._loaded = None, False
            raise
        self._data, self._loaded = data, True
        self.writes += 1

    def _load(self) -> dict[str, dict[str, Any]] | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise VaultError(
                f"cannot read the catalog file {self.path}: {exc.strerror or exc}",
                hint="check the vault disk and its permissions",
            ) from exc
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
            raise VaultError(
                f"catalog file {self.path} is corrupt ({exc})",
                hint="restore it from the latest vault backup",
            ) from None
        if not isinstance(data, dict) or not all(
            isinstance(t, dict) and all(_is_doc(k, d) for k, d in t.items())
            for t in data.values()
        ):
            raise VaultError(
                f"catalog file {self.path} is corrupt (not a TinyDB document file)",
                hint="restore it from the latest vault backup",
            )
        return data


# --------------------------------------------------------------------------- catalog


@dataclass
class _Shard:
    key: str
    storage: AtomicJSONStorage
    table: Table
    index: dict[str, int]  # session id -> TinyDB document id

    def raw(self) -> dict[str, dict[str, Any]]:
        data = self.storage.read() or {}
        return data.get(TABLE, {})


class Catalog:
    """The session catalog of one vault, in ``directory`` (``VAULT/catalog``).

    Opening lists the shard files and parses none of them.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        try:
            self.directory = ensure_dir(directory)
        except OSError as exc:
            raise VaultError(
                f"cannot create the catalog directory {directory}: {exc.strerror or exc}",
                hint="check the vault path and that its disk is writable",
            ) from exc
        self._keys: set[str] = set()
        self._cache: OrderedDict[str, _Shard] = OrderedDict()
        self.writes = 0
        """Shard files written by this instance (one per commit or update)."""
        try:
            entries = list(os.scandir(self.directory))
        except OSError as exc:
            raise VaultError(
                f"cannot list the catalog directory {self.directory}: {exc.strerror}",
                hint="check the vault disk and its permissions",
            ) from exc
        for entry in entries:
            if entry.name.startswith(TEMP_PREFIX) and entry.is_file(follow_symlinks=False):
                continue  # crash debris; recover() removes it
            m = SHARD_RE.match(entry.name)
            if m is None or not entry.is_file(follow_symlinks=False) or not _is_date(m[1]):
                raise VaultError(
                    f"unexpected entry {entry.path} in the catalog",
                    hint="the catalog holds only YYYY-MM-DD.json files; move it elsewhere",
                )
            self._keys.add(m[1])

    # ---- maintenance

    def recover(self) -> int:
        """Delete temp files a crash left in the catalog; return how many. Call at start-up."""
        return remove_stale_temps(self.directory)

    def close(self) -> None:
        """Drop the parsed shards (everything is already on disk)."""
        self._cache.clear()

    # ---- writing

    def commit_session(self, record: Mapping[str, Any]) -> None:
        """Insert *record*, or replace the record with the same ``session``.

        Exactly one atomic write of one shard; durable when this returns.
        """
        rec = validate_record(record)
        sid = rec["session"]
        shard = self._shard(shard_key(sid), keep=True)
        doc_id = shard.index.get(sid)
        with self._writing(shard):
            if doc_id is None:
                doc_id = shard.table.insert(rec)
            else:
                _replace(shard, doc_id, rec)
        shard.index[sid] = doc_id
        self._keys.add(shard.key)

    def update_session(self, session_id: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Change some fields of a stored session (one atomic write); return the new record."""
        if changes.get("session", session_id) != session_id:
            raise BadInput(f"session {session_id} cannot be renamed")
        shard = self._shard(shard_key(session_id), keep=True) if self._has(session_id) else None
        doc_id = shard.index.get(session_id) if shard else None
        if shard is None or doc_id is None:
            raise BadInput(f"session {session_id} is not in the catalog")
        current = shard.raw()[str(doc_id)]
        rec = validate_record({**current, **changes})
        with self._writing(shard):
            _replace(shard, doc_id, rec)
        return _clone(rec)

    # ---- reading

    def get_session(self, session_id: str) -> dict[str, Any] | None:
        """The stored record (a copy), or None. Parses at most one shard."""
        if not self._has(session_id):
            return None
        shard = self._shard(shard_key(session_id), keep=True)
        doc_id = shard.index.get(session_id)
        if doc_id is None:
            return None
        doc = shard.table.get(doc_id=doc_id)
        return _clone(dict(doc)) if doc is not None else None

    def iter_sessions(
        self, *, since: date | None = None, until: date | None = None
    ) -> Iterator[dict[str, Any]]:
        """Records (copies) whose UTC start day is in [since, until], oldest first.

        Reads shard by shard; shards outside the range are not parsed.
        """
        lo = _as_date(since).isoformat() if since is not None else ""
        hi = _as_date(until).isoformat() if until is not None else "9999"
        for key in sorted(k for k in self._keys if lo <= k <= hi):
            shard = self._shard(key, keep=False)
            raw = shard.raw()
            docs = [raw[str(shard.index[sid])] for sid in sorted(shard.index)]
            for doc in docs:
                yield _clone(doc)

    def object_ids(self) -> set[str]:
        """Every object id any session references (for ``check`` and orphan detection)."""
        ids: set[str] = set()
        for key in sorted(self._keys):
            for doc in self._shard(key, keep=False).raw().values():
                ids.update(obj["id"] for obj in doc.get("objects", ()))
        return ids

    def months(self) -> list[str]:
        """``YYYY-MM`` of every month with at least one session, oldest first."""
        return sorted({key[:7] for key in self._keys})

    def days(self) -> list[str]:
        """``YYYY-MM-DD`` of every shard, oldest first."""
        return sorted(self._keys)

    def count(self) -> int:
        """Number of sessions (parses every shard not already cached)."""
        return sum(len(self._shard(key, keep=False).index) for key in self._keys)

    # ---- internals

    def _has(self, session_id: str) -> bool:
        return shard_key(session_id) in self._keys

    def _shard(self, key: str, *, keep: bool) -> _Shard:
        shard = self._cache.get(key)
        if shard is not None:
            self._cache.move_to_end(key)
            return shard
        shard = self._open_shard(key)
        if keep:
            self._cache[key] = shard
            while len(self._cache) > MAX_CACHED_SHARDS:
                self._cache.popitem(last=False)
        return shard

    def _open_shard(self, key: str) -> _Shard:
        path = self.directory / f"{key}.json"
        db = TinyDB(path, storage=AtomicJSONStorage)
        storage = db.storage
        assert isinstance(storage, AtomicJSONStorage)
        data = storage.read()
        if data is None and key in self._keys:
            raise VaultError(
                f"catalog file {path} disappeared while the catalog was open",
                hint="another program is changing the vault; stop it and restore from backup",
            )
        tables = data or {}
        if set(tables) - {TABLE}:
            raise VaultError(
                f"catalog file {path} is corrupt (unexpected table "
                f"{sorted(set(tables) - {TABLE})[0]!r})",
                hint="restore it from the latest vault backup",
            )
        index: dict[str, int] = {}
        for doc_id, doc in tables.get(TABLE, {}).items():
            sid = doc.get("session")
            if not isinstance(sid, str) or not SESSION_ID_RE.match(sid) or _day_of(sid) != key:
                raise VaultError(
                    f"catalog file {path} is corrupt (document {doc_id} has session {sid!r}, "
                    f"which does not belong to {key})",
                    hint="restore it from the latest vault backup",
                )
            if sid in index:
                raise VaultError(
                    f"catalog file {path} is corrupt (session {sid} appears twice)",
                    hint="restore it from the latest vault backup",
                )
            index[sid] = int(doc_id)
        return _Shard(key, storage, db.table(TABLE, cache_size=0), index)

    @contextlib.contextmanager
    def _writing(self, shard: _Shard) -> Iterator[None]:
        """Check a change is exactly one shard write; on failure forget the shard so the next
        access re-reads what is really on disk (TinyDB has already changed the parsed copy)."""
        before = shard.storage.writes
        try:
            yield
        except BaseException:
            self._cache.pop(shard.key, None)
            raise
        written = shard.storage.writes - before
        if written != 1:
            raise AssertionError(f"a catalog change must be exactly one write, not {written}")
        self.writes += written


def _replace(shard: _Shard, doc_id: int, rec: dict[str, Any]) -> None:
    """Replace a whole document in one TinyDB update (= one write)."""

    def replace(doc: dict[str, Any]) -> None:
        doc.clear()
        doc.update(rec)

    if shard.table.update(replace, doc_ids=[doc_id]) != [doc_id]:
        raise VaultError(f"catalog shard {shard.key} lost document {doc_id} while open")


def _day_of(session_id: str) -> str:
    d = session_id[:8]
    return f"{d[:4]}-{d[4:6]}-{d[6:]}"


def _is_doc(doc_id: str, doc: Any) -> bool:
    return isinstance(doc, dict) and doc_id.isascii() and doc_id.isdigit()


def _is_date(text: str) -> bool:
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def _as_date(value: date) -> date:
    return value.date() if isinstance(value, datetime) else value
