"""Forward-secure, hash-chained audit log (Schneier & Kelsey; journald Forward Secure Sealing).

Why: the kiosk sits in a clinic room and can be stolen or tampered with. Whoever takes it at
time t holds the *current* MAC key but not the earlier ones, so they cannot alter, reorder,
delete or insert entries written before t without detection by an auditor who holds the
initial key K_0 (shown once at ``clinivault init`` and sealed in the vault). Removing entries
from the *end* is caught against the kiosk's key state (which holds the next sequence number)
or, if that was rolled back too, against an anchor (SEQ:HASH) the auditor wrote down earlier.

File format (an auditor may reimplement verification from this section alone)
------------------------------------------------------------------------------
The log is ASCII text, one entry a line, each line ending in one LF (0x0A). Line i (1-based
line number i+1) holds entry i (seq = i, 0-based). Each line is the canonical JSON of the entry::

    CANON(x) = json.dumps(x, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                          allow_nan=False)  -- encoded as ASCII

i.e. keys sorted by code point, no whitespace, every non-ASCII or control character written as
a lowercase ``\\uXXXX`` escape (so newlines, terminal escapes and the lone surrogates that
``os.fsdecode`` makes of invalid UTF-8 in file names can never break a line). A line that is
not exactly CANON of what it parses to (other whitespace, key order, escapes, number forms, or
a duplicated key) is rejected.

An entry has exactly these keys:

=========  ==================================================================================
actor      non-empty string: who acted ("operator:jsmith", "system")
details    JSON object of event-specific facts. NEVER a patient ID or other identifying data:
           keeping it out is the caller's duty; this module cannot tell an NHI from a label.
           Values: strings, integers, finite floats, booleans, null, arrays, objects.
event      non-empty string ("startup", "session started", "discard", ...)
hash       h_i, 64 lowercase hex digits
mac        mac_i, 64 lowercase hex digits
prev       h_{i-1}, 64 lowercase hex digits; h_{-1} = 32 zero bytes (GENESIS = "00" * 32)
seq        i, integer, 0 for the first line, +1 each line
session    string, or null outside a session
time       UTC, ``YYYY-MM-DDTHH:MM:SS[.mmm]Z`` (the writer uses milliseconds)
=========  ==================================================================================

The hash and MAC, with ``||`` concatenation and hashes taken as raw 32 bytes (not hex)::

    BODY_i  = CANON(entry i without the keys "hash" and "mac")
    h_i     = SHA-256(h_{i-1} || BODY_i)
    mac_i   = HMAC-SHA256(key=K_i, msg=h_i)
    K_{i+1} = SHA-256(b"audit-evolve" || 0x00 || K_i)        (K_0: 32 random bytes)

Because the keys are sorted and "hash"/"mac" are neither the first nor the last key, BODY_i is
the line (without its LF) with the one substring ``,"hash":"<hash>","mac":"<mac>"`` removed
(the last occurrence; it is always followed by ``,"prev":"``). Verification uses that and never
re-serialises for the hash; it re-serialises only to check the canonical form.

Key state file (on the kiosk only, mode 0600, replaced atomically after every append)::

    CANON({"head": hex h_{n-1}, "key": hex K_n, "next_seq": n, "version": 1}) || LF

Appending entry n: write the line and fsync the log; then replace the key state with
(n+1, K_{n+1}, h_n). K_n is no longer stored anywhere we control (see Limits).

Crash recovery and torn lines
-----------------------------
``AuditLog.open`` runs recovery. A last line without its LF is a torn write (the process or
power died inside append): it is cut off and the recovery note says how many bytes. If the log
holds exactly one more complete entry than the key state (death after the fsync of the line but
before the key state was replaced), that entry is checked against the state's head and its MAC
against the state's key, and the state is rolled forward. Anything else inconsistent is tampering
and ``open`` raises ``IntegrityError``. ``open`` checks only the tail (the kiosk does not hold K_0
and must start quickly); the whole chain is the auditor's ``verify_log``.

``verify_log`` treats a torn last line as **ok with a note** (``VerifyResult.note``): the bytes
are an unfinished, never-sealed write, no sealed entry was changed, and ``open`` removes them. A
sealed last entry cut short by an attacker is still caught: the key state (or an anchor) then
expects more entries than the log holds.

Limits
------
* Without the key state or an anchor, deleting entries from the end cannot be detected (nor
  can it in any forward-secure log); that is what anchors are for.
* Replacing the key state drops our reference to the old key, but a journalling file system may
  keep the old blocks until reused, and Python cannot wipe ``bytes`` in memory. Like journald
  FSS, the guarantee is against an intruder *after* the fact, not a forensic lab.
* Entries written by someone holding the current key (i.e. after the kiosk was taken) verify:
  the log proves what happened *before* the compromise, not after it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import math
import os
import re
import secrets
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from core.errors import BadInput, FailedSafely, IntegrityError, VaultError
from core.fsutil import FILE_MODE, atomic_write_bytes, ensure_dir, fsync_dir, remove_stale_temps

GENESIS = "00" * 32
KEY_BYTES = 32
EVOLVE_PREFIX = b"audit-evolve\x00"
STATE_VERSION = 1
STARTUP_EVENT = "startup"
TORN_REASON = "torn last line (crash during append)"

FIELDS = ("actor", "details", "event", "hash", "mac", "prev", "seq", "session", "time")
_FIELD_SET = frozenset(FIELDS)
_HEX = "0123456789abcdef"
_TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{3})?Z")
_TIME_MATCH = _TIME_RE.fullmatch
_MAX_DEPTH = 32

_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                            allow_nan=False)


def _make_reencoder() -> Callable[[Any], str]:
    """CANON for values json just parsed, with the C encoder built once instead of per call.

    Same function and arguments ``JSONEncoder.encode`` uses (it rebuilds it on every call,
    a third of the cost for a log line); no cycle check, as parsed JSON has no cycles. The
    plain encoder is the fallback where the C accelerator is missing.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    basestring_ascii = getattr(json.encoder, "c_encode_basestring_ascii", None)
    if make is None or basestring_ascii is None:  # pragma: no cover - CPython has both
        return _ENCODER.encode
    encode = make(None, _ENCODER.default, basestring_ascii, None, ":", ",", True, False,
                  False)

    def reencode(value: Any) -> str:
        return "".join(encode(value, 0))

    return reencode


_REENCODE = _make_reencoder()


def canonical_json(value: Any) -> str:
    """CANON(value) as a str (ASCII only); see the module docstring."""
    return _ENCODER.encode(value)


def evolve_key(key: bytes) -> bytes:
    """K_{i+1} from K_i."""
    return hashlib.sha256(EVOLVE_PREFIX + key).digest()


def _is_hex64(s: object) -> bool:
    return type(s) is str and len(s) == 64 and not s.strip(_HEX)


# --------------------------------------------------------------------------------------------
# Parsing and checking one line


class _LineError(Exception):
    """Why one line is malformed (the message is the verify reason)."""


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _LineError(f"duplicate key {key!r}")
        obj[key] = value
    return obj


def _reject_constant(name: str) -> Any:
    raise _LineError(f"{name} is not allowed in the log")


_STRICT_DECODER = json.JSONDecoder(object_pairs_hook=_reject_duplicates,
                                   parse_constant=_reject_constant)
_RAW_DECODE = json.JSONDecoder(parse_constant=_reject_constant).raw_decode


def _strict_loads(text: str) -> Any:
    """Parse JSON, rejecting duplicate keys and NaN/Infinity with a _LineError."""
    try:
        return _STRICT_DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise _LineError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise _LineError("JSON nested too deeply") from None


def _diagnose_non_canonical(text: str) -> str:
    """A precise reason why *text* is not a canonical JSON line (invalid, duplicate key, ...)."""
    try:
        obj = _strict_loads(text)
    except _LineError as exc:
        return str(exc)
    try:
        canon = canonical_json(obj)
    except (ValueError, TypeError):
        return "not in canonical form"
    col = next((i for i, (a, b) in enumerate(zip(text, canon, strict=False)) if a != b),
               min(len(text), len(canon)))
    return f"not in canonical form (first difference at column {col + 1})"


def _check_fields(obj: dict[str, Any]) -> None:
    if obj.keys() != _FIELD_SET:
        missing = sorted(_FIELD_SET - obj.keys())
        extra = sorted(obj.keys() - _FIELD_SET)
        if missing:
            raise _LineError(f"missing field {missing[0]!r}")
        raise _LineError(f"unexpected field {extra[0]!r}")
    seq = obj["seq"]
    if type(seq) is not int or seq < 0:
        raise _LineError("field 'seq' is not a non-negative integer")
    for name in ("prev", "hash", "mac"):
        if not _is_hex64(obj[name]):
            raise _LineError(f"field {name!r} is not 64 lowercase hex digits")
    for name in ("actor", "event"):
        value = obj[name]
        if type(value) is not str or not value:
            raise _LineError(f"field {name!r} is not a non-empty string")
    session = obj["session"]
    if session is not None and type(session) is not str:
        raise _LineError("field 'session' is neither a string nor null")
    if type(obj["details"]) is not dict:
        raise _LineError("field 'details' is not an object")
    time = obj["time"]
    if type(time) is not str or not _TIME_RE.fullmatch(time):
        raise _LineError("field 'time' is not UTC ISO 8601 (YYYY-MM-DDTHH:MM:SS[.mmm]Z)")


def _parse_line(raw: bytes) -> tuple[dict[str, Any], bytes]:
    """Check one complete line (with its LF); return the entry and BODY (see docstring)."""
    try:
        text = raw[:-1].decode("ascii")
    except UnicodeDecodeError:
        raise _LineError("not in canonical form (contains non-ASCII bytes)") from None
    # Fast path: plain C decoder, then compare with the canonical re-serialisation. A duplicate
    # key can never survive this (the dict keeps one copy, the text has two), so the strict
    # duplicate-rejecting parser is only needed to name the problem.
    try:
        obj, end = _RAW_DECODE(text)
    except (json.JSONDecodeError, RecursionError):
        raise _LineError(_diagnose_non_canonical(text)) from None
    if type(obj) is not dict:
        raise _LineError("not a JSON object")
    try:
        canon = _REENCODE(obj)
    except (ValueError, TypeError):
        canon = None
    if canon != text or end != len(text):
        raise _LineError(_diagnose_non_canonical(text))
    # Cheap structural checks; the full ones (hex digits) run only to explain a failure, since
    # verify compares prev, hash and mac with hex it computed itself.
    if not (obj.keys() == _FIELD_SET and type(seq := obj["seq"]) is int and seq >= 0
            and type(actor := obj["actor"]) is str and actor
            and type(event := obj["event"]) is str and event
            and ((session := obj["session"]) is None or type(session) is str)
            and type(obj["details"]) is dict
            and type(time := obj["time"]) is str and _TIME_MATCH(time)):
        _check_fields(obj)
        raise _LineError("malformed entry")  # pragma: no cover - _check_fields is stricter
    seal = f',"hash":"{obj["hash"]}","mac":"{obj["mac"]}"'
    cut = text.rfind(seal + ',"prev":"')
    if cut < 0:  # only if hash or mac is not hex (a canonical line has it exactly there)
        _check_fields(obj)
        raise _LineError("'hash' and 'mac' are not where canonical form puts them")
    return obj, raw[:cut] + raw[cut + len(seal):-1]


def _parse_checked(raw: bytes) -> tuple[dict[str, Any], bytes]:
    """_parse_line plus the full field checks (for lines nothing else compares)."""
    obj, body = _parse_line(raw)
    _check_fields(obj)
    return obj, body


def _explain(entry: dict[str, Any], reason: str) -> str:
    """The field-format problem of *entry* if it has one, else *reason*."""
    try:
        _check_fields(entry)
    except _LineError as exc:
        return str(exc)
    return reason


# --------------------------------------------------------------------------------------------
# Writing


def _check_value(value: Any, where: str, depth: int = 0) -> None:
    if depth > _MAX_DEPTH:
        raise BadInput(f"audit details nested deeper than {_MAX_DEPTH} levels at {where}")
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BadInput(f"audit details hold a non-finite number at {where}")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_value(item, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise BadInput(f"audit details key {key!r} at {where} is not a string")
            _check_value(item, f"{where}.{key}", depth + 1)
        return
    raise BadInput(f"audit details at {where} hold a {type(value).__name__}, "
                   "which JSON cannot store")


def _format_time(now: datetime) -> str:
    if now.tzinfo is None or now.utcoffset() is None:
        raise BadInput("audit time must be timezone-aware")
    utc = now.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S") + f".{utc.microsecond // 1000:03d}Z"


def _seal(fields: dict[str, Any], key: bytes) -> tuple[str, dict[str, Any], bytes]:
    """Seal an entry (without hash and mac) under *key*; return (line with LF, entry, h_i)."""
    body = canonical_json(fields)
    h = hashlib.sha256(bytes.fromhex(fields["prev"]) + body.encode("ascii")).digest()
    mac = hmac.digest(key, h, "sha256")
    entry = json.loads(body)
    entry["hash"] = h.hex()
    entry["mac"] = mac.hex()
    return canonical_json(entry) + "\n", entry, h


def build_entry(seq: int, prev: str, key: bytes, *, actor: str, event: str,
                session: str | None, details: dict[str, Any], time: str) -> tuple[str, dict]:
    """Seal one entry without touching any file; return (line with LF, entry).

    For tools that must write many entries without an fsync each (the benchmark) and for
    tests that play the attacker; the application appends through ``AuditLog``.
    """
    fields = {"actor": actor, "details": details, "event": event, "prev": prev, "seq": seq,
              "session": session, "time": time}
    line, entry, _ = _seal(fields, key)
    return line, entry


# --------------------------------------------------------------------------------------------
# Key state


@dataclass(frozen=True)
class _KeyState:
    next_seq: int
    key: bytes
    head: str

    def encode(self) -> bytes:
        doc = {"head": self.head, "key": self.key.hex(), "next_seq": self.next_seq,
               "version": STATE_VERSION}
        return (canonical_json(doc) + "\n").encode("ascii")


def _read_state(path: Path) -> _KeyState:
    """Read the key state; IntegrityError if it is not exactly what we write."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise IntegrityError(f"audit key state {path} is missing",
                             "The log cannot be continued; have the auditor verify it") from None
    except OSError as exc:
        raise VaultError(f"cannot read audit key state {path}: {exc.strerror}") from None
    try:
        doc = _strict_loads(raw.decode("ascii").removesuffix("\n"))
    except (UnicodeDecodeError, _LineError):
        doc = None
    ok = (isinstance(doc, dict) and doc.keys() == {"head", "key", "next_seq", "version"}
          and doc["version"] == STATE_VERSION and type(doc["next_seq"]) is int
          and doc["next_seq"] >= 0 and _is_hex64(doc["key"]) and _is_hex64(doc["head"]))
    if not ok:
        raise IntegrityError(f"audit key state {path} is malformed")
    assert isinstance(doc, dict)
    state = _KeyState(doc["next_seq"], bytes.fromhex(doc["key"]), doc["head"])
    if state.encode() != raw:
        raise IntegrityError(f"audit key state {path} is malformed (not canonical)")
    return state


# --------------------------------------------------------------------------------------------
# The log, for the kiosk


def _read_tail(fd: int, size: int, want: int) -> tuple[int, list[bytes]]:
    """Return (end offset of the last complete line, up to *want* last complete lines)."""
    chunks: list[bytes] = []
    pos = size
    step = 65536
    newlines = 0
    while pos > 0 and newlines <= want:
        n = min(step, pos)
        pos -= n
        chunk = os.pread(fd, n, pos)
        chunks.append(chunk)
        newlines += chunk.count(b"\n")
        step *= 2
    buf = b"".join(reversed(chunks))
    last_nl = buf.rfind(b"\n")
    if last_nl < 0:
        return 0, []
    pieces = buf[: last_nl + 1].splitlines(keepends=True)
    if pos > 0:  # the first piece may have started before what we read
        pieces = pieces[1:]
    return pos + last_nl + 1, pieces[-want:]


class AuditLog:
    """The kiosk's handle on the log: appends sealed entries and evolves the key.

    Thread-safe within one process; one process owns a vault at a time (the vault lock).
    """

    def __init__(self, log_path: Path, key_path: Path, fd: int, state: _KeyState,
                 recovery_note: str | None) -> None:
        self.log_path = log_path
        self.key_path = key_path
        self._fd: int | None = fd
        self._key = state.key
        self._head = state.head
        self._next_seq = state.next_seq
        self._broken: str | None = None
        self._lock = threading.Lock()
        self.recovery_note = recovery_note

    # -- life cycle ------------------------------------------------------------------------

    @classmethod
    def create(cls, log_path: Path, key_path: Path) -> tuple[AuditLog, bytes]:
        """Start a new, empty log with a fresh random K_0; return it and K_0.

        The caller shows K_0 once and seals it for the auditor; only the key state keeps it,
        until the first append evolves it. Not atomic across the two files: a crash in
        between leaves a log without key state, which ``open`` refuses (IntegrityError), so
        vault init should treat a half-made vault as not made.
        """
        log_path, key_path = Path(log_path), Path(key_path)
        for p in (log_path, key_path):
            if p.exists() or p.is_symlink():
                raise VaultError(f"{p} already exists", "Refusing to overwrite an audit log")
        ensure_dir(log_path.parent)
        ensure_dir(key_path.parent)
        k0 = secrets.token_bytes(KEY_BYTES)
        state = _KeyState(0, k0, GENESIS)
        try:
            fd = os.open(log_path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL
                         | os.O_CLOEXEC, FILE_MODE)
        except FileExistsError:
            raise VaultError(f"{log_path} already exists",
                             "Refusing to overwrite an audit log") from None
        try:
            os.fsync(fd)
            fsync_dir(log_path.parent)
            if key_path.exists():
                raise VaultError(f"{key_path} already exists",
                                 "Refusing to overwrite an audit key state")
            atomic_write_bytes(key_path, state.encode(), FILE_MODE)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                log_path.unlink()
            raise
        return cls(log_path, key_path, fd, state, None), k0

    @classmethod
    def open(cls, log_path: Path, key_path: Path) -> AuditLog:
        """Open for appending, after crash recovery; IntegrityError if the tail was tampered with.

        ``recovery_note`` says what recovery did (None if nothing was needed).
        """
        log_path, key_path = Path(log_path), Path(key_path)
        if not log_path.exists() and not key_path.exists():
            raise VaultError(f"no audit log at {log_path}", "Is this a clinivault vault?")
        if not log_path.exists():
            raise IntegrityError(f"audit log {log_path} is missing but its key state exists",
                                 "Have the auditor look at the vault")
        remove_stale_temps(key_path.parent)
        state = _read_state(key_path)
        try:
            fd = os.open(log_path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        except OSError as exc:
            raise VaultError(f"cannot open audit log {log_path}: {exc.strerror}") from None
        try:
            state, note = cls._recover(fd, log_path, key_path, state)
        except BaseException:
            os.close(fd)
            raise
        return cls(log_path, key_path, fd, state, note)

    @staticmethod
    def _recover(fd: int, log_path: Path, key_path: Path,
                 state: _KeyState) -> tuple[_KeyState, str | None]:
        size = os.fstat(fd).st_size
        end, lines = _read_tail(fd, size, 2)
        torn = size - end
        n = state.next_seq

        def tampered(why: str) -> IntegrityError:
            return IntegrityError(f"audit log {log_path} does not match its key state: {why}",
                                  "Possible tampering; have the auditor verify the log")

        parsed: list[tuple[dict[str, Any], bytes]] = []
        for raw in lines:
            try:
                parsed.append(_parse_checked(raw))
            except _LineError as exc:
                raise tampered(f"a line at the end is malformed ({exc})") from None
        for entry, body in parsed:
            h = hashlib.sha256(bytes.fromhex(entry["prev"]) + body).hexdigest()
            if h != entry["hash"]:
                raise tampered(f"entry {entry['seq']} does not match its hash")

        roll = False
        if not parsed:
            if n != 0:
                raise tampered(f"the log is empty but {n} entries were written")
        else:
            last = parsed[-1][0]
            if last["seq"] == n - 1:
                if last["hash"] != state.head:
                    raise tampered(f"entry {n - 1} is not the one last written")
            elif last["seq"] == n:
                # Died after the line was fsynced, before the key state was replaced.
                if last["prev"] != state.head:
                    raise tampered(f"entry {n} does not follow the last written entry")
                before = parsed[-2][0] if len(parsed) == 2 else None
                if n == 0 and end != len(lines[-1]):
                    raise tampered("entries precede entry 0")
                if n > 0 and (before is None or before["seq"] != n - 1
                              or before["hash"] != state.head):
                    raise tampered(f"entry {n - 1} is not the one last written")
                mac = hmac.digest(state.key, bytes.fromhex(last["hash"]), "sha256")
                if not hmac.compare_digest(mac.hex(), last["mac"]):
                    raise tampered(f"entry {n} is not sealed with the current key")
                roll = True
            elif last["seq"] < n:
                raise tampered(f"the log ends at entry {last['seq']} but {n} entries were "
                               "written (entries removed from the end)")
            else:
                raise tampered(f"the log reaches entry {last['seq']} but only {n} entries "
                               "were written")

        notes: list[str] = []
        if torn:
            os.ftruncate(fd, end)
            os.fsync(fd)
            notes.append(f"removed a torn last line ({torn} bytes) left by a crash during "
                         "append")
        if roll:
            last = parsed[-1][0]
            state = _KeyState(n + 1, evolve_key(state.key), last["hash"])
            atomic_write_bytes(key_path, state.encode(), FILE_MODE)
            notes.append(f"key state rolled forward past entry {n} (crash after append, "
                         "before the key update)")
        return state, "; ".join(notes) or None

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- state -----------------------------------------------------------------------------

    @property
    def next_seq(self) -> int:
        return self._next_seq

    def anchor(self) -> tuple[int, str]:
        """(seq of the last entry, its hash) for the auditor to note; (-1, GENESIS) if empty."""
        return self._next_seq - 1, self._head

    # -- appending -------------------------------------------------------------------------

    def append(self, actor: str, event: str, session: str | None = None,
               details: dict[str, Any] | None = None, *, now: datetime | None = None) -> dict:
        """Seal and durably append one entry; return it (with seq, time, prev, hash, mac).

        *details* must never hold a patient ID or anything identifying: the log is readable
        by auditors who are not in the patient's care.
        """
        if not isinstance(actor, str) or not actor:
            raise BadInput("audit actor must be a non-empty string")
        if not isinstance(event, str) or not event:
            raise BadInput("audit event must be a non-empty string")
        if session is not None and not isinstance(session, str):
            raise BadInput("audit session must be a string or None")
        if details is None:
            details = {}
        if not isinstance(details, dict):
            raise BadInput("audit details must be a dict")
        _check_value(details, "details")
        time = _format_time(now if now is not None else datetime.now(UTC))
        with self._lock:
            if self._fd is None:
                raise VaultError("the audit log is closed")
            if self._broken:
                raise FailedSafely(self._broken, "Restart the application to recover the log")
            seq = self._next_seq
            fields = {"actor": actor, "details": details, "event": event, "prev": self._head,
                      "seq": seq, "session": session, "time": time}
            line, entry, h = _seal(fields, self._key)
            self._write_line(line.encode("ascii"))
            new_state = _KeyState(seq + 1, evolve_key(self._key), h.hex())
            try:
                atomic_write_bytes(self.key_path, new_state.encode(), FILE_MODE)
            except OSError as exc:
                # The entry is durable; open() will roll the key state forward. Appending more
                # now would put the log two ahead of the state, which open() calls tampering.
                self._broken = f"audit key state could not be updated ({exc.strerror})"
                raise FailedSafely(self._broken, "Restart the application to recover the log"
                                   ) from None
            self._key, self._head, self._next_seq = new_state.key, new_state.head, seq + 1
        return entry

    def _write_line(self, data: bytes) -> None:
        assert self._fd is not None
        fd = self._fd
        before = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except OSError as exc:
            try:
                os.ftruncate(fd, before)
                os.fsync(fd)
            except OSError:
                self._broken = f"audit log write failed and could not be undone ({exc.strerror})"
                raise FailedSafely(self._broken, "Restart the application to recover the log"
                                   ) from None
            raise FailedSafely(f"could not write the audit log ({exc.strerror})",
                               "Nothing was recorded; free disk space and retry") from None

    def startup(self, actor: str, details: dict[str, Any] | None = None, *,
                now: datetime | None = None) -> dict:
        """Write the launch entry; written at every launch, it seals the quiet period before."""
        return self.append(actor, STARTUP_EVENT, None, details, now=now)


# --------------------------------------------------------------------------------------------
# Reading and verifying, for the auditor


@contextlib.contextmanager
def _open_log(log_path: Path) -> Iterator[BinaryIO]:
    try:
        # Opened outside "with" so only the open's own errors become VaultError.
        fh = Path(log_path).open("rb")  # noqa: SIM115
    except FileNotFoundError:
        raise VaultError(f"no audit log at {log_path}") from None
    except OSError as exc:
        raise VaultError(f"cannot read audit log {log_path}: {exc.strerror}") from None
    with fh:
        yield fh


def read_entries(log_path: Path) -> Iterator[dict]:
    """Yield each complete entry for display. Does NOT verify: run verify_log for trust.

    Each entry has exactly the documented fields with their types (so display code cannot
    trip over a tampered line); a line that is not such an entry, or repeats a key, raises
    IntegrityError naming its line number. A torn last line is skipped. Show every string
    (including detail keys) through ``safe_text``.
    """
    with _open_log(log_path) as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.endswith(b"\n"):
                return
            try:
                obj = _strict_loads(raw[:-1].decode("ascii"))
                if type(obj) is not dict:
                    raise _LineError("not a JSON object")
                _check_fields(obj)
            except UnicodeDecodeError:
                raise IntegrityError(f"audit log line {lineno} holds non-ASCII bytes",
                                     "Run 'clinivault audit verify'") from None
            except _LineError as exc:
                raise IntegrityError(f"audit log line {lineno}: {exc}",
                                     "Run 'clinivault audit verify'") from None
            yield obj


@dataclass(frozen=True)
class Anchor:
    """A (seq, hash) pair the auditor wrote down; written and parsed as ``SEQ:HASH``."""

    seq: int
    head: str

    def __str__(self) -> str:
        return f"{self.seq}:{self.head}"


_ANCHOR_RE = re.compile(r"(\d{1,18}):([0-9a-fA-F]{64})")


def parse_anchor(text: str) -> Anchor:
    """Parse ``SEQ:HASH`` (decimal seq, 64 hex digits); BadInput if malformed."""
    m = _ANCHOR_RE.fullmatch(text.strip())
    if not m:
        raise BadInput(f"bad audit anchor {text!r}",
                       "Write it as SEQ:HASH, e.g. 41:3f9a... with 64 hex digits, as printed "
                       "by 'clinivault audit anchor'")
    return Anchor(int(m.group(1)), m.group(2).lower())


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of verify_log.

    On failure ``entries`` counts the entries verified before the problem and
    ``first_bad_line`` is the 1-based line number where it shows: for entries missing from the
    end, the first line that should be there; None when no line is at fault (a replaced or
    unreadable key state). ``ok`` may carry a ``note``: a torn last line (crash during append)
    or a key state one entry behind (crash after append); ``open`` recovers both.
    """

    ok: bool
    entries: int
    first_bad_line: int | None
    reason: str | None
    note: str | None = None  # e.g. a torn last line, or a key state one entry behind
    head: str = GENESIS  # hash of the last verified entry


def load_key_file(path: Path) -> bytes:
    """Read an auditor's key file: K_0 as 64 hex digits; whitespace anywhere is ignored."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise BadInput(f"audit key file {path} does not exist") from None
    except IsADirectoryError:
        raise BadInput(f"audit key file {path} is a directory") from None
    except OSError as exc:
        raise BadInput(f"cannot read audit key file {path}: {exc.strerror}") from None
    try:
        text = "".join(raw.decode("ascii").split())
    except UnicodeDecodeError:
        raise BadInput(f"audit key file {path} is not plain text",
                       "It must hold the 64 hex digits shown at vault init") from None
    if len(text) != 2 * KEY_BYTES or text.strip("0123456789abcdefABCDEF"):
        raise BadInput(f"audit key file {path} does not hold a key",
                       f"It must hold exactly 64 hex digits (found {len(text)} characters)")
    return bytes.fromhex(text)


def verify_log(log_path: Path, k0: bytes, *, anchors: Sequence[Anchor] = (),
               key_state_path: Path | None = None) -> VerifyResult:
    """Verify the whole log under K_0 (see the module docstring for what is checked)."""
    if not isinstance(k0, bytes) or len(k0) != KEY_BYTES:
        raise BadInput(f"the audit key must be {KEY_BYTES} bytes")
    by_seq: dict[int, list[Anchor]] = {}
    for a in anchors:
        by_seq.setdefault(a.seq, []).append(a)
    state: _KeyState | None = None
    if key_state_path is not None:
        try:
            state = _read_state(Path(key_state_path))
        except IntegrityError as exc:
            return VerifyResult(False, 0, None, exc.message)
    key = k0
    prev_raw = bytes(32)
    prev_hex = GENESIS
    n = 0
    note: str | None = None
    last_key, head_before_last = k0, GENESIS  # K_{n-1} and h_{n-2}, for a state one behind
    sha256 = hashlib.sha256
    digest = hmac.digest
    compare = hmac.compare_digest
    parse = _parse_line

    def bad(reason: str) -> VerifyResult:
        return VerifyResult(False, n, n + 1, reason, head=prev_hex)

    with _open_log(log_path) as fh:
        for raw in fh:
            if raw[-1:] != b"\n":
                note = f"{TORN_REASON}: {len(raw)} bytes on line {n + 1} ignored"
                break
            try:
                entry, body = parse(raw)
            except _LineError as exc:
                return bad(str(exc))
            seq = entry["seq"]
            if seq != n:
                return bad(_explain(entry, f"sequence number {seq} where {n} was expected "
                                           "(line deleted, inserted or moved)"))
            if entry["prev"] != prev_hex:
                return bad(_explain(entry, "'prev' is not the hash of the line before "
                                           "(line deleted, inserted or moved)"))
            h = sha256(prev_raw + body).digest()
            h_hex = h.hex()
            if h_hex != entry["hash"]:
                return bad(_explain(entry, "'hash' does not match the entry's content "
                                           "(entry edited)"))
            mac = entry["mac"]
            if not (mac.isascii() and compare(digest(key, h, "sha256").hex(), mac)):
                return bad(_explain(entry, f"MAC does not verify under key K_{n} "
                                           "(entry forged or re-sealed)"))
            if n in by_seq:
                for a in by_seq[n]:
                    if a.head != h_hex:
                        return bad(f"entry {n} does not match anchor {n}:{a.head[:12]}... "
                                   "(log rewritten from here)")
            last_key, head_before_last = key, prev_hex
            key = sha256(EVOLVE_PREFIX + key).digest()
            prev_raw = h
            prev_hex = h_hex
            n += 1

    for seq in sorted(by_seq):
        if seq >= n:
            return VerifyResult(False, n, n + 1,
                                f"the log ends after {n} entries but anchor {seq}:"
                                f"{by_seq[seq][0].head[:12]}... was recorded "
                                "(entries removed from the end)", head=prev_hex)
    if state is not None:
        if n < state.next_seq:
            return VerifyResult(False, n, n + 1,
                                f"the log ends after {n} entries but the key state says "
                                f"{state.next_seq} were written (entries removed from the end)",
                                head=prev_hex)
        if n > state.next_seq + 1:
            return VerifyResult(False, n, state.next_seq + 2,
                                f"the key state says {state.next_seq} entries were written but "
                                f"the log holds {n} (key state rolled back)", head=prev_hex)
        # The state's head and key must be the ones this log implies: catches a forged state.
        expected_head, expected_key = prev_hex, key
        if n == state.next_seq + 1:
            expected_head, expected_key = head_before_last, last_key
            note = _join(note, "key state is one entry behind (crash after append; "
                               "opening the log rolls it forward)")
        if state.head != expected_head or state.key != expected_key:
            return VerifyResult(False, n, None,
                                "the key state's head or key does not belong to this log "
                                "(key state replaced)", head=prev_hex)
    return VerifyResult(True, n, None, None, note=note, head=prev_hex)


def _join(a: str | None, b: str) -> str:
    return b if a is None else f"{a}; {b}"


# --------------------------------------------------------------------------------------------
# Display


def _escape_char(ch: str) -> str:
    code = ord(ch)
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}
    if ch in named:
        return named[ch]
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def safe_text(s: str) -> str:
    """Render *s* so a terminal shows it and obeys none of it.

    Control characters (C0, DEL, C1), escape sequences, bidi overrides and other invisible
    format characters, line/paragraph separators and lone surrogates (undecodable bytes in file
    names) become visible escapes such as ``\\x1b``, ``\\n``, ``\\u202e``, ``\\udcff``; a
    backslash becomes ``\\\\`` so the rendering is unambiguous. Printable text is unchanged.
    """
    if s.isprintable() and "\\" not in s:
        return s
    return "".join(ch if ch.isprintable() and ch != "\\" else _escape_char(ch) for ch in s)
