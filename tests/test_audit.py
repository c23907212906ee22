"""Tests for core.audit: every way of tampering with the log that the issue lists is detected.

Why so adversarial: the log's value is that someone who steals the kiosk (and with it the
current MAC key) still cannot rewrite history. Attacks are played with the attacker's real
knowledge (the key state file on disk) and sealed by an independent re-implementation of the
documented format, not by the code under test.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import audit
from core.audit import (
    FIELDS,
    GENESIS,
    TORN_REASON,
    Anchor,
    AuditLog,
    build_entry,
    load_key_file,
    parse_anchor,
    read_entries,
    safe_text,
    verify_log,
)
from core.errors import BadInput, IntegrityError, VaultError

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 5, 12, 9, 0, tzinfo=UTC)


# ------------------------------------------------------------------------------------------
# An independent implementation of the documented format (the auditor's and the attacker's)


def canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False)


def evolve(key: bytes) -> bytes:
    return hashlib.sha256(b"audit-evolve" + b"\x00" + key).digest()


def seal(fields: dict[str, Any], key: bytes) -> tuple[str, dict[str, Any]]:
    """Seal *fields* (an entry without hash and mac) under *key*, as the docstring defines."""
    body = canon(fields).encode("ascii")
    h = hashlib.sha256(bytes.fromhex(fields["prev"]) + body).digest()
    entry = {**fields, "hash": h.hex(), "mac": hmac.new(key, h, hashlib.sha256).hexdigest()}
    return canon(entry) + "\n", entry


def independent_verify(log_path: Path, k0: bytes) -> int:
    """The auditor's verifier written from the module docstring alone; returns the count."""
    key, prev, count = k0, bytes(32), 0
    for i, raw in enumerate(log_path.read_bytes().splitlines(keepends=True)):
        assert raw.endswith(b"\n")
        entry = json.loads(raw)
        assert canon(entry).encode() + b"\n" == raw
        body = canon({k: v for k, v in entry.items() if k not in ("hash", "mac")}).encode()
        assert entry["seq"] == i and entry["prev"] == prev.hex()
        h = hashlib.sha256(prev + body).digest()
        assert h.hex() == entry["hash"]
        assert hmac.compare_digest(hmac.new(key, h, hashlib.sha256).hexdigest(), entry["mac"])
        key, prev, count = evolve(key), h, count + 1
    return count


def stolen_key(key_path: Path) -> tuple[int, bytes]:
    """What an intruder at the kiosk reads: (next seq, current key K_n)."""
    state = json.loads(key_path.read_text())
    return state["next_seq"], bytes.fromhex(state["key"])


# ------------------------------------------------------------------------------------------
# Helpers


class Vault:
    """A log and its key state in a temp dir, with K_0 as the auditor holds it."""

    def __init__(self, root: Path) -> None:
        self.log_path = root / "audit" / "log.jsonl"
        self.key_path = root / "audit" / "key.json"
        log, self.k0 = AuditLog.create(self.log_path, self.key_path)
        log.close()

    def append(self, count: int, **kw: Any) -> list[dict]:
        out = []
        with AuditLog.open(self.log_path, self.key_path) as log:
            for _ in range(count):
                seq = log.next_seq
                out.append(log.append("operator:op-1", f"event-{seq}", f"s-{seq // 3}",
                                      {"n": seq, "file": f"IMG_{seq:04d}.JPG"},
                                      now=T0 + timedelta(seconds=seq), **kw))
        return out

    def lines(self) -> list[bytes]:
        return self.log_path.read_bytes().splitlines(keepends=True)

    def write_lines(self, lines: list[bytes]) -> None:
        self.log_path.write_bytes(b"".join(lines))

    def entry(self, i: int) -> dict[str, Any]:
        return json.loads(self.lines()[i])

    def verify(self, **kw: Any) -> audit.VerifyResult:
        return verify_log(self.log_path, self.k0, **kw)

    def verify_with_state(self, **kw: Any) -> audit.VerifyResult:
        return verify_log(self.log_path, self.k0, key_state_path=self.key_path, **kw)


@pytest.fixture
def vault(tmp_path: Path) -> Vault:
    return Vault(tmp_path)


def assert_bad(result: audit.VerifyResult, line: int | None, *words: str) -> None:
    assert not result.ok, result
    assert result.first_bad_line == line, result
    assert result.reason is not None
    for word in words:
        assert word in result.reason, result


# ------------------------------------------------------------------------------------------
# Writing and the format


def test_fresh_log_with_only_startup_entries_verifies(vault: Vault) -> None:
    for launch in range(3):
        with AuditLog.open(vault.log_path, vault.key_path) as log:
            assert log.recovery_note is None
            entry = log.startup("system", now=T0 + timedelta(hours=launch))
            assert entry["event"] == "startup" and entry["seq"] == launch
    result = vault.verify_with_state()
    assert result.ok and result.entries == 3 and result.note is None
    assert [e["event"] for e in read_entries(vault.log_path)] == ["startup"] * 3
    assert independent_verify(vault.log_path, vault.k0) == 3


def test_empty_log_verifies_with_zero_entries(vault: Vault) -> None:
    result = vault.verify_with_state()
    assert result.ok and result.entries == 0 and result.head == GENESIS
    with AuditLog.open(vault.log_path, vault.key_path) as log:
        assert log.anchor() == (-1, GENESIS) and log.next_seq == 0


def test_entries_follow_the_documented_format(vault: Vault) -> None:
    entries = vault.append(5)
    assert entries[0]["prev"] == GENESIS
    assert [e["seq"] for e in entries] == [0, 1, 2, 3, 4]
    for a, b in itertools.pairwise(entries):
        assert b["prev"] == a["hash"]
    assert entries[1]["time"] == "2026-05-12T09:00:01.000Z"
    assert set(entries[0]) == set(FIELDS)
    # What append returned is exactly what is on disk, and an independent verifier agrees.
    assert [json.loads(raw) for raw in vault.lines()] == entries
    assert independent_verify(vault.log_path, vault.k0) == 5
    result = vault.verify_with_state()
    assert result.ok and result.entries == 5 and result.head == entries[-1]["hash"]
    with AuditLog.open(vault.log_path, vault.key_path) as log:
        assert log.anchor() == (4, entries[-1]["hash"]) and log.next_seq == 5


def test_time_is_utc_whatever_zone_now_is_in(vault: Vault) -> None:
    with AuditLog.open(vault.log_path, vault.key_path) as log:
        plus_13 = timezone(timedelta(hours=13))
        entry = log.append("system", "check", now=datetime(2026, 5, 12, 22, 30, 5, 123456,
                                                          tzinfo=plus_13))
        assert entry["time"] == "2026-05-12T09:30:05.123Z"
        assert log.append("system", "check")["time"].endswith("Z")


def test_key_evolves_and_old_key_is_gone(vault: Vault) -> None:
    state = json.loads(vault.key_path.read_text())
    assert state == {"head": GENESIS, "key": vault.k0.hex(), "next_seq": 0, "version": 1}
    vault.append(2)
    state = json.loads(vault.key_path.read_text())
    assert state["key"] == evolve(evolve(vault.k0)).hex() and state["next_seq"] == 2
    on_disk = b"".join(p.read_bytes() for p in vault.key_path.parent.iterdir())
    assert vault.k0.hex().encode() not in on_disk
    assert evolve(vault.k0).hex().encode() not in on_disk
    for p in (vault.log_path, vault.key_path):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600


def test_create_refuses_existing_files(vault: Vault, tmp_path: Path) -> None:
    vault.append(1)
    before = vault.log_path.read_bytes(), vault.key_path.read_bytes()
    with pytest.raises(VaultError, match="already exists"):
        AuditLog.create(vault.log_path, vault.key_path)
    with pytest.raises(VaultError, match="already exists"):
        AuditLog.create(tmp_path / "other.jsonl", vault.key_path)
    assert not (tmp_path / "other.jsonl").exists()
    assert (vault.log_path.read_bytes(), vault.key_path.read_bytes()) == before


def test_open_without_a_log_is_a_vault_error(tmp_path: Path) -> None:
    with pytest.raises(VaultError, match="no audit log"):
        AuditLog.open(tmp_path / "log.jsonl", tmp_path / "key.json")


def test_open_with_the_key_state_deleted_refuses(vault: Vault) -> None:
    vault.append(2)
    vault.key_path.unlink()
    with pytest.raises(IntegrityError, match="missing"):
        AuditLog.open(vault.log_path, vault.key_path)
    assert_bad(vault.verify_with_state(), None, "missing")


@pytest.mark.parametrize("details, problem", [
    ({"x": float("nan")}, "non-finite"),
    ({"x": object()}, "JSON cannot store"),
    ({1: "int key"}, "not a string"),
    ({"p": Path("/x")}, "JSON cannot store"),
])
def test_append_rejects_what_json_cannot_store_and_writes_nothing(
        vault: Vault, details: dict, problem: str) -> None:
    vault.append(1)
    before = vault.log_path.read_bytes(), vault.key_path.read_bytes()
    with AuditLog.open(vault.log_path, vault.key_path) as log, \
            pytest.raises(BadInput, match=problem):
        log.append("system", "check", None, details)
    assert (vault.log_path.read_bytes(), vault.key_path.read_bytes()) == before


def test_append_rejects_naive_time_and_empty_names(vault: Vault) -> None:
    with AuditLog.open(vault.log_path, vault.key_path) as log:
        with pytest.raises(BadInput, match="timezone"):
            log.append("system", "check", now=datetime(2026, 1, 1))
        with pytest.raises(BadInput, match="actor"):
            log.append("", "check")
        with pytest.raises(BadInput, match="event"):
            log.append("system", "")
        assert log.next_seq == 0
    assert vault.log_path.read_bytes() == b""


def test_closed_log_refuses_to_append(vault: Vault) -> None:
    log = AuditLog.open(vault.log_path, vault.key_path)
    log.close()
    with pytest.raises(VaultError, match="closed"):
        log.append("system", "check")


# ------------------------------------------------------------------------------------------
# Tampering with old entries

EDITS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "actor": (lambda v: "operator:mallory", "'hash' does not match"),
    "details": (lambda v: {**v, "file": "IMG_9999.JPG"}, "'hash' does not match"),
    "event": (lambda v: "nothing happened", "'hash' does not match"),
    "hash": (lambda v: ("0" if v[0] != "0" else "1") + v[1:], "'hash' does not match"),
    "mac": (lambda v: ("0" if v[0] != "0" else "1") + v[1:], "MAC does not verify"),
    "prev": (lambda v: ("0" if v[0] != "0" else "1") + v[1:], "'prev' is not the hash"),
    "seq": (lambda v: v + 10, "sequence number 12 where 2 was expected"),
    "session": (lambda v: None, "'hash' does not match"),
    "time": (lambda v: "2026-05-12T08:00:00.000Z", "'hash' does not match"),
}


def test_edits_cover_every_field() -> None:
    assert set(EDITS) == set(FIELDS)


@pytest.mark.parametrize("field", FIELDS)
def test_editing_any_field_of_an_old_line_is_detected(vault: Vault, field: str) -> None:
    vault.append(6)
    lines = vault.lines()
    entry = json.loads(lines[2])
    change, reason = EDITS[field]
    entry[field] = change(entry[field])
    lines[2] = (canon(entry) + "\n").encode()
    vault.write_lines(lines)
    result = vault.verify()
    assert_bad(result, 3, reason)
    assert result.entries == 2


@pytest.mark.parametrize("field", ["actor", "details", "event", "session", "time"])
def test_editing_a_field_and_resealing_with_every_key_the_intruder_has_fails(
        vault: Vault, field: str) -> None:
    """The intruder edits entry 2, recomputes its hash, and tries K_n, K_n+1, ... for the MAC."""
    vault.append(6)
    _, k_n = stolen_key(vault.key_path)
    lines = vault.lines()
    fields = {k: v for k, v in json.loads(lines[2]).items() if k not in ("hash", "mac")}
    fields[field] = EDITS[field][0](fields[field])
    key = k_n
    for _ in range(50):
        lines[2] = seal(fields, key)[0].encode()
        vault.write_lines(lines)
        result = vault.verify()
        assert_bad(result, 3)
        key = evolve(key)
    assert "MAC does not verify under key K_2" in (result.reason or "")


def test_deleting_a_line_is_detected(vault: Vault) -> None:
    vault.append(6)
    lines = vault.lines()
    vault.write_lines(lines[:3] + lines[4:])
    assert_bad(vault.verify(), 4, "sequence number 4 where 3 was expected")


def test_deleting_the_first_line_is_detected(vault: Vault) -> None:
    vault.append(3)
    vault.write_lines(vault.lines()[1:])
    assert_bad(vault.verify(), 1, "sequence number 1 where 0 was expected")


def test_reordering_two_lines_is_detected(vault: Vault) -> None:
    vault.append(6)
    lines = vault.lines()
    lines[2], lines[4] = lines[4], lines[2]
    vault.write_lines(lines)
    assert_bad(vault.verify(), 3, "sequence number 4 where 2 was expected")


def test_inserting_a_forged_line_with_the_stolen_key_is_detected(vault: Vault) -> None:
    """Insert a forged entry 2 and re-chain every later entry; all sealed with stolen keys."""
    vault.append(6)
    _, key = stolen_key(vault.key_path)
    old = [json.loads(raw) for raw in vault.lines()]
    forged_fields = {"actor": "operator:op-1", "details": {"note": "all fine"},
                     "event": "archive verified", "prev": old[1]["hash"], "seq": 2,
                     "session": "s-0", "time": old[1]["time"]}
    rewritten = [vault.lines()[0], vault.lines()[1]]
    prev = None
    for fields in [forged_fields] + [{k: v for k, v in e.items() if k not in ("hash", "mac")}
                                     for e in old[2:]]:
        fields = dict(fields, seq=len(rewritten))
        if prev is not None:
            fields["prev"] = prev
        line, entry = seal(fields, key)
        rewritten.append(line.encode())
        prev, key = entry["hash"], evolve(key)
    vault.write_lines(rewritten)
    assert_bad(vault.verify(), 3, "MAC does not verify under key K_2")


def test_inserting_a_forged_line_before_the_first_is_detected(vault: Vault) -> None:
    vault.append(2)
    _, key = stolen_key(vault.key_path)
    line, _ = seal({"actor": "x", "details": {}, "event": "startup", "prev": GENESIS,
                    "seq": 0, "session": None, "time": "2026-05-12T08:00:00Z"}, key)
    vault.write_lines([line.encode(), *vault.lines()])
    assert_bad(vault.verify(), 1, "MAC does not verify under key K_0")


def test_resealing_an_old_entry_with_the_current_key_is_detected(vault: Vault) -> None:
    """Re-seal entry 1 (content unchanged) with K_n, fixing the link from entry 2."""
    vault.append(4)
    _, key = stolen_key(vault.key_path)
    lines = vault.lines()
    e1 = {k: v for k, v in json.loads(lines[1]).items() if k not in ("hash", "mac")}
    line, entry = seal(e1, key)
    assert entry["hash"] == json.loads(lines[1])["hash"]  # same content, same hash
    lines[1] = line.encode()
    vault.write_lines(lines)
    assert_bad(vault.verify(), 2, "MAC does not verify under key K_1", "re-sealed")


def test_intruder_may_append_new_entries_but_not_rewrite_old_ones(vault: Vault) -> None:
    """Entries sealed after the theft verify (they are the intruder's): the limit we document."""
    vault.append(3)
    n, key = stolen_key(vault.key_path)
    prev = json.loads(vault.lines()[-1])["hash"]
    line, _ = seal({"actor": "x", "details": {}, "event": "startup", "prev": prev, "seq": n,
                    "session": None, "time": "2026-05-12T10:00:00Z"}, key)
    vault.write_lines([*vault.lines(), line.encode()])
    result = vault.verify()
    assert result.ok and result.entries == 4


# ------------------------------------------------------------------------------------------
# Line form


@pytest.mark.parametrize("mangle, reason", [
    (lambda s: s.replace(',"event":', ', "event":', 1), "not in canonical form"),
    (lambda s: s.replace('{"actor":', '{ "actor":', 1), "not in canonical form"),
    (lambda s: s + " ", "not in canonical form"),
    (lambda s: s.replace('"seq":2', '"seq":2.0', 1), "'seq' is not a non-negative integer"),
    (lambda s: s.replace('"seq":2', '"seq":2.00', 1), "not in canonical form"),
    (lambda s: s.replace("IMG_", "IMG\\u005f", 1), "not in canonical form"),
    (lambda s: s.replace('"n":2', '"n":2e0', 1), "not in canonical form"),
    (lambda s: s.replace('"n":2', '"n":NaN', 1), "NaN is not allowed"),
    (lambda s: s[:-1], "not valid JSON"),
    (lambda s: '{"seq":2}', "missing field"),
    (lambda s: "[1,2]", "not a JSON object"),
    (lambda s: "", "not valid JSON"),
])
def test_non_canonical_lines_are_rejected(vault: Vault, mangle: Callable[[str], str],
                                          reason: str) -> None:
    vault.append(4)
    lines = vault.lines()
    lines[2] = (mangle(lines[2].decode().rstrip("\n")) + "\n").encode()
    vault.write_lines(lines)
    assert_bad(vault.verify(), 3, reason)


def test_reordered_keys_are_rejected_even_though_hash_and_mac_still_match(vault: Vault) -> None:
    vault.append(3)
    lines = vault.lines()
    entry = json.loads(lines[1])
    moved = {k: entry[k] for k in ("hash", "mac")} | {k: v for k, v in entry.items()
                                                     if k not in ("hash", "mac")}
    lines[1] = (json.dumps(moved, separators=(",", ":")) + "\n").encode()
    vault.write_lines(lines)
    assert_bad(vault.verify(), 2, "not in canonical form")


@pytest.mark.parametrize("where", ["top", "details"])
def test_duplicate_keys_in_a_line_are_rejected(vault: Vault, where: str) -> None:
    vault.append(4)
    lines = vault.lines()
    text = lines[1].decode()
    if where == "top":
        text = text.replace('"actor":"operator:op-1"',
                            '"actor":"operator:op-1","actor":"operator:mallory"', 1)
    else:
        text = text.replace('"file":"IMG_0001.JPG"', '"file":"IMG_0001.JPG","file":"x"', 1)
    lines[1] = text.encode()
    vault.write_lines(lines)
    key = "actor" if where == "top" else "file"
    assert_bad(vault.verify(), 2, f"duplicate key {key!r}")
    with pytest.raises(IntegrityError, match=f"line 2: duplicate key {key!r}"):
        list(read_entries(vault.log_path))


def test_non_ascii_bytes_are_rejected(vault: Vault) -> None:
    vault.append(3)
    lines = vault.lines()
    lines[1] = lines[1].replace(b"IMG_", "IMG_é".encode())
    vault.write_lines(lines)
    assert_bad(vault.verify(), 2, "non-ASCII")


@pytest.mark.parametrize("field, value, reason", [
    ("mac", "Z" * 64, "'mac' is not 64 lowercase hex digits"),
    ("hash", "AB" * 32, "'hash' is not 64 lowercase hex digits"),
    ("seq", True, "'seq' is not a non-negative integer"),
    ("session", 5, "'session' is neither a string nor null"),
    ("details", [], "'details' is not an object"),
    ("time", "2026-05-12 09:00:00", "'time' is not UTC ISO 8601"),
    ("actor", "", "'actor' is not a non-empty string"),
])
def test_ill_typed_fields_are_named(vault: Vault, field: str, value: Any, reason: str) -> None:
    vault.append(3)
    lines = vault.lines()
    entry = json.loads(lines[1])
    entry[field] = value
    lines[1] = (canon(entry) + "\n").encode()
    vault.write_lines(lines)
    assert_bad(vault.verify(), 2, reason)


# ------------------------------------------------------------------------------------------
# Crashes and recovery


def crash_after_append(vault: Vault) -> tuple[bytes, dict]:
    """Leave the disk as a crash after the line's fsync, before the key update, would."""
    state_before = vault.key_path.read_bytes()
    [entry] = vault.append(1)
    vault.key_path.write_bytes(state_before)
    return state_before, entry


def test_torn_last_line_is_ok_with_a_note_and_recovered_on_open(vault: Vault) -> None:
    vault.append(5)
    crash_after_append(vault)
    data = vault.log_path.read_bytes()
    last_len = len(vault.lines()[-1])
    torn = last_len // 2
    vault.log_path.write_bytes(data[: len(data) - last_len + torn])

    result = vault.verify_with_state()
    assert result.ok and result.entries == 5 and result.first_bad_line is None
    assert result.note is not None and TORN_REASON in result.note

    with AuditLog.open(vault.log_path, vault.key_path) as log:
        assert log.recovery_note is not None
        assert "torn last line" in log.recovery_note and f"({torn} bytes)" in log.recovery_note
        assert log.next_seq == 5
        assert log.append("system", "startup")["seq"] == 5
    assert vault.log_path.read_bytes().endswith(b"\n")
    result = vault.verify_with_state()
    assert result.ok and result.entries == 6 and result.note is None
    assert independent_verify(vault.log_path, vault.k0) == 6


def test_torn_first_line_is_recovered(vault: Vault) -> None:
    vault.log_path.write_bytes(b'{"actor":"sys')
    assert vault.verify_with_state().ok
    with AuditLog.open(vault.log_path, vault.key_path) as log:
        assert log.recovery_note is not None and "13 bytes" in log.recovery_note
        log.startup("system")
    assert vault.verify_with_state().entries == 1


@pytest.mark.parametrize("before", [0, 4])
def test_crash_after_append_before_key_update_rolls_forward(vault: Vault, before: int) -> None:
    vault.append(before)
    _, entry = crash_after_append(vault)
    result = vault.verify_with_state()
    assert result.ok and result.entries == before + 1
    assert result.note is not None and "one entry behind" in result.note

    with AuditLog.open(vault.log_path, vault.key_path) as log:
        assert log.recovery_note is not None and "rolled forward" in log.recovery_note
        assert log.next_seq == before + 1 and log.anchor() == (before, entry["hash"])
        log.startup("system")
    state = json.loads(vault.key_path.read_text())
    assert state["next_seq"] == before + 2
    result = vault.verify_with_state()
    assert result.ok and result.entries == before + 2 and result.note is None


def test_roll_forward_refuses_an_entry_not_sealed_with_the_state_key(vault: Vault) -> None:
    """One extra entry is recovered only if the state's own key sealed it."""
    vault.append(3)
    n, key = stolen_key(vault.key_path)
    prev = json.loads(vault.lines()[-1])["hash"]
    line, _ = seal({"actor": "x", "details": {}, "event": "startup", "prev": prev, "seq": n,
                    "session": None, "time": "2026-05-12T10:00:00Z"}, evolve(key))
    vault.write_lines([*vault.lines(), line.encode()])
    before = vault.key_path.read_bytes()
    with pytest.raises(IntegrityError, match="not sealed with the current key"):
        AuditLog.open(vault.log_path, vault.key_path)
    assert vault.key_path.read_bytes() == before


def test_open_refuses_two_entries_beyond_the_key_state(vault: Vault) -> None:
    vault.append(2)
    state_before = vault.key_path.read_bytes()
    vault.append(2)
    vault.key_path.write_bytes(state_before)
    with pytest.raises(IntegrityError, match="only 2 entries were written"):
        AuditLog.open(vault.log_path, vault.key_path)
    assert_bad(vault.verify_with_state(), 4, "key state rolled back")


def test_open_refuses_an_edited_last_line(vault: Vault) -> None:
    vault.append(3)
    lines = vault.lines()
    lines[-1] = lines[-1].replace(b"IMG_0002", b"IMG_0009")
    vault.write_lines(lines)
    with pytest.raises(IntegrityError, match="does not match its hash"):
        AuditLog.open(vault.log_path, vault.key_path)


def test_recovery_reads_back_past_entries_longer_than_its_read_chunk(vault: Vault) -> None:
    with AuditLog.open(vault.log_path, vault.key_path) as log:
        for i in range(3):
            log.append("system", "big", None, {"blob": str(i) * 150_000})
    crash_after_append(vault)  # a short entry after the long ones, key state one behind
    with AuditLog.open(vault.log_path, vault.key_path) as log:
        assert log.recovery_note is not None and "rolled forward" in log.recovery_note
        state_before = vault.key_path.read_bytes()
        log.append("system", "big", None, {"blob": "z" * 200_000})
    # A crash inside that append: the 200 KB line torn, the key state not yet replaced.
    vault.key_path.write_bytes(state_before)
    data = vault.log_path.read_bytes()
    vault.log_path.write_bytes(data[:-70_000])
    with AuditLog.open(vault.log_path, vault.key_path) as log:
        assert log.recovery_note is not None and "torn" in log.recovery_note
        assert log.next_seq == 4
    result = vault.verify_with_state()
    assert result.ok and result.entries == 4 and result.note is None


def test_a_failed_write_is_undone_and_the_log_stays_usable(vault: Vault) -> None:
    """A real EFBIG (file size limit) mid-line: nothing half-written stays, appends go on."""
    vault.append(2)
    child = (
        "import resource, signal, sys\n"
        "from pathlib import Path\n"
        "from core.audit import AuditLog\n"
        "from core.errors import FailedSafely\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "log = AuditLog.open(Path(sys.argv[1]), Path(sys.argv[2]))\n"
        "limit = Path(sys.argv[1]).stat().st_size + 5000\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))\n"
        "try:\n"
        "    log.append('system', 'big', None, {'blob': 'x' * 20000})\n"
        "except FailedSafely as exc:\n"
        "    print('failed:', exc)\n"
        "print(Path(sys.argv[1]).stat().st_size <= limit - 5000)\n"
        "log.append('system', 'small')\n"
        "print(log.next_seq)\n"
    )
    out = subprocess.run([sys.executable, "-c", child, str(vault.log_path),
                          str(vault.key_path)], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[0].startswith("failed: could not write the audit log"), out
    assert out[1:] == ["True", "3"]
    result = vault.verify_with_state()
    assert result.ok and result.entries == 3 and result.note is None


def test_sigkill_at_random_moments_never_loses_a_returned_append(tmp_path: Path) -> None:
    """A child appends in a loop and is killed at random moments; the log always recovers."""
    v = Vault(tmp_path)
    child = (
        "import sys\n"
        "from pathlib import Path\n"
        "from core.audit import AuditLog\n"
        "log = AuditLog.open(Path(sys.argv[1]), Path(sys.argv[2]))\n"
        "log.startup('system')\n"
        "while True:\n"
        "    e = log.append('system', 'tick', None, {'pad': 'x' * 200})\n"
        "    print(e['seq'], flush=True)\n"
    )
    rng = random.Random(7)
    committed = 0
    for _ in range(15):
        proc = subprocess.Popen([sys.executable, "-c", child, str(v.log_path), str(v.key_path)],
                                cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        for _ in range(rng.randint(1, 25)):
            seq = int(proc.stdout.readline())
            committed = max(committed, seq + 1)
        proc.kill()
        proc.wait()
        proc.stdout.close()
        result = v.verify_with_state()
        assert result.ok, result
        assert result.entries >= committed
    with AuditLog.open(v.log_path, v.key_path) as log:
        assert log.next_seq >= committed
    result = v.verify_with_state()
    assert result.ok and result.note is None and result.entries >= committed


# ------------------------------------------------------------------------------------------
# Truncation, key-state rollback, anchors


def test_tail_truncation_is_detected_against_the_key_state(vault: Vault) -> None:
    vault.append(8)
    vault.write_lines(vault.lines()[:6])
    assert vault.verify().ok  # undetectable from the log alone: the documented limit
    assert_bad(vault.verify_with_state(), 7, "ends after 6 entries", "8 were written",
               "removed from the end")
    with pytest.raises(IntegrityError, match="removed from the end"):
        AuditLog.open(vault.log_path, vault.key_path)


def test_cutting_the_last_sealed_entry_short_is_truncation_not_a_torn_line(
        vault: Vault) -> None:
    vault.append(4)
    data = vault.log_path.read_bytes()
    vault.log_path.write_bytes(data[:-40])
    assert_bad(vault.verify_with_state(), 4, "removed from the end")
    with pytest.raises(IntegrityError):
        AuditLog.open(vault.log_path, vault.key_path)


def test_truncating_everything_is_detected_against_the_key_state(vault: Vault) -> None:
    vault.append(3)
    vault.log_path.write_bytes(b"")
    assert_bad(vault.verify_with_state(), 1, "removed from the end")
    with pytest.raises(IntegrityError, match="empty"):
        AuditLog.open(vault.log_path, vault.key_path)


def test_key_file_rollback_plus_truncation_is_detected_against_an_anchor(
        vault: Vault, tmp_path: Path) -> None:
    vault.append(4)
    saved_state = tmp_path / "saved-key.json"
    shutil.copy2(vault.key_path, saved_state)  # the intruder keeps a copy at entry 4
    vault.append(2)
    with AuditLog.open(vault.log_path, vault.key_path) as log:
        seq, head = log.anchor()  # the auditor writes this down
    anchor = parse_anchor(f"{seq}:{head}")
    assert anchor == Anchor(5, head)
    vault.append(3)

    # The intruder cuts the log back to 4 entries and restores the matching key state.
    vault.write_lines(vault.lines()[:4])
    shutil.copy2(saved_state, vault.key_path)
    assert vault.verify_with_state().ok  # consistent on the kiosk: only an anchor can tell
    AuditLog.open(vault.log_path, vault.key_path).close()
    assert_bad(vault.verify_with_state(anchors=[anchor]), 5, "anchor 5:",
               "removed from the end")

    # ... and then writes different entries with the restored key to fill the gap.
    with AuditLog.open(vault.log_path, vault.key_path) as log:
        for _ in range(4):
            log.append("operator:op-1", "startup", None, {"quiet": True}, now=T0)
    assert vault.verify_with_state().ok
    assert_bad(vault.verify_with_state(anchors=[anchor]), 6, "does not match anchor 5:")


def test_matching_anchors_pass(vault: Vault) -> None:
    entries = vault.append(5)
    anchors = [Anchor(0, entries[0]["hash"]), Anchor(4, entries[4]["hash"])]
    result = vault.verify_with_state(anchors=anchors)
    assert result.ok and result.entries == 5


def test_a_replaced_key_state_is_detected(vault: Vault) -> None:
    vault.append(3)
    state = json.loads(vault.key_path.read_text())
    state["key"] = os.urandom(32).hex()
    vault.key_path.write_text(canon(state) + "\n")
    assert_bad(vault.verify_with_state(), None, "key state replaced")


def test_a_malformed_key_state_is_reported(vault: Vault) -> None:
    vault.append(1)
    vault.key_path.write_text('{"next_seq": 1}')
    assert_bad(vault.verify_with_state(), None, "malformed")
    with pytest.raises(IntegrityError, match="malformed"):
        AuditLog.open(vault.log_path, vault.key_path)


# ------------------------------------------------------------------------------------------
# Hostile strings and display

HOSTILE = {
    "newline": "IMG_0001.JPG\nseq 99 startup forged",
    "clear": "\x1b[2J\x1b[H",
    "title": "\x1b]0;owned\x07",
    "undecodable": os.fsdecode(b"IMG_\xff\xfe\x80.JPG"),
    "bidi": "photo\u202egpj.exe",
    "crlf": "a\r\nb",
    "nul": "a\x00b",
    "c1": "a\x9bb",
    "separator": "a\u2028b",
    "quote": '", "event": "forged',
    "backslash": "C:\\DCIM\\n",
}


def test_hostile_strings_round_trip_and_keep_one_line_per_entry(vault: Vault) -> None:
    with AuditLog.open(vault.log_path, vault.key_path) as log:
        log.append("operator:op\n1", "file.skipped\x1b[2J", "s\n1", dict(HOSTILE))
        log.append("system", "discard", None, {"names": list(HOSTILE.values()),
                                                 "nested": {k: {"v": v} for k, v in
                                                            HOSTILE.items()}})
    data = vault.log_path.read_bytes()
    assert data.count(b"\n") == 2 and data.isascii()
    assert all(0x20 <= b < 0x7F for b in data.replace(b"\n", b""))
    entries = list(read_entries(vault.log_path))
    assert entries[0]["details"] == HOSTILE
    assert entries[0]["actor"] == "operator:op\n1" and entries[0]["session"] == "s\n1"
    assert entries[1]["details"]["names"] == list(HOSTILE.values())
    assert os.fsencode(entries[0]["details"]["undecodable"]) == b"IMG_\xff\xfe\x80.JPG"
    result = vault.verify_with_state()
    assert result.ok and result.entries == 2
    assert independent_verify(vault.log_path, vault.k0) == 2


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_safe_text_renders_hostile_strings_inert(name: str) -> None:
    shown = safe_text(HOSTILE[name])
    assert shown.isprintable() and shown.isascii(), shown
    assert "\x1b" not in shown and "\n" not in shown


def test_safe_text_escapes_visibly_and_unambiguously() -> None:
    assert safe_text("\x1b[2J") == "\\x1b[2J"
    assert safe_text("a\nb\tc\rd") == "a\\nb\\tc\\rd"
    assert safe_text(os.fsdecode(b"\xff")) == "\\udcff"
    assert safe_text("x\u202ey") == "x\\u202ey"
    assert safe_text("\x7f\x9b") == "\\x7f\\x9b"
    assert safe_text("C:\\n") == "C:\\\\n"  # a literal backslash-n differs from a newline
    assert safe_text("\U000e0041") == "\\U000e0041"  # invisible tag character
    assert safe_text("Zoë Ōtaki 日本 ✓") == "Zoë Ōtaki 日本 ✓"
    assert safe_text("") == ""


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(details=st.dictionaries(st.text(), json_values, max_size=5), actor=st.text(min_size=1),
       session=st.none() | st.text())
def test_any_details_seal_and_verify_like_the_independent_verifier(
        details: dict, actor: str, session: str | None) -> None:
    """The verifier's fast body (cutting hash/mac out of the line) equals re-serialising."""
    k0 = os.urandom(32)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "log.jsonl"
        line0, e0 = build_entry(0, GENESIS, k0, actor=actor, event="x", session=session,
                                details=details, time="2026-05-12T09:00:00.000Z")
        line1, _ = build_entry(1, e0["hash"], evolve(k0), actor=actor, event="y",
                               session=session, details={"d": details},
                               time="2026-05-12T09:00:01Z")
        assert line0 == seal({k: v for k, v in e0.items() if k not in ("hash", "mac")},
                             k0)[0]
        path.write_text(line0 + line1, encoding="ascii")
        result = verify_log(path, k0)
        assert result.ok and result.entries == 2, result
        assert independent_verify(path, k0) == 2
        assert next(read_entries(path))["details"] == json.loads(canon(details))


@settings(max_examples=200, deadline=None)
@given(value=st.dictionaries(st.text(), json_values, max_size=6))
def test_the_verifiers_fast_encoder_is_canon(value: dict) -> None:
    assert audit._REENCODE(value) == canon(value) == audit.canonical_json(value)


# ------------------------------------------------------------------------------------------
# Anchors and key files


@pytest.mark.parametrize("text", ["", "5", "5:", ":" + "a" * 64, "-1:" + "a" * 64,
                                  "5:" + "a" * 63, "5:" + "g" * 64, "5:" + "a" * 65,
                                  "x:" + "a" * 64, "5 : " + "a" * 64])
def test_parse_anchor_rejects_bad_forms(text: str) -> None:
    with pytest.raises(BadInput, match="SEQ:HASH"):
        parse_anchor(text)


def test_parse_anchor_accepts_and_normalises() -> None:
    assert parse_anchor(" 41:" + "AB" * 32 + "\n") == Anchor(41, "ab" * 32)
    assert str(Anchor(41, "ab" * 32)) == "41:" + "ab" * 32


def test_load_key_file_tolerates_whitespace(tmp_path: Path) -> None:
    key = os.urandom(32)
    path = tmp_path / "k"
    hexed = key.hex().upper()
    path.write_text("  " + " ".join(hexed[i:i + 8] for i in range(0, 64, 8)) + "\n\n")
    assert load_key_file(path) == key


@pytest.mark.parametrize("content, problem", [
    (b"ab" * 31, "exactly 64 hex digits"),
    (b"ab" * 33, "exactly 64 hex digits"),
    (b"zz" * 32, "exactly 64 hex digits"),
    (b"", "exactly 64 hex digits"),
    (b"\xff\xfe" * 32, "not plain text"),
])
def test_load_key_file_rejects_malformed(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "k"
    path.write_bytes(content)
    with pytest.raises(BadInput) as err:
        load_key_file(path)
    assert problem in err.value.user_message() and str(path) in err.value.user_message()


def test_load_key_file_missing(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="does not exist"):
        load_key_file(tmp_path / "nope")


def test_verify_with_the_wrong_key_fails_on_line_one(vault: Vault) -> None:
    vault.append(2)
    assert_bad(verify_log(vault.log_path, os.urandom(32)), 1, "MAC does not verify")
    with pytest.raises(BadInput, match="32 bytes"):
        verify_log(vault.log_path, b"short")
