"""The catalog keeps every committed session through crashes, and holds no patient ID.

Real shard files and real TinyDB throughout; the crash test SIGKILLs a real child process.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import re
import resource
import selectors
import signal
import struct
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from tinydb import TinyDB
from tinydb.storages import JSONStorage

from core.catalog import (
    SESSION_FIELDS,
    Catalog,
    new_session_id,
    session_day,
    shard_key,
    validate_record,
)
from core.errors import BadInput, FailedSafely, VaultError
from core.fsutil import TEMP_PREFIX
from core.vault.lock import VaultLock

REPO = Path(__file__).resolve().parents[1]


def make_record(
    session_id: str | None = None, *, objects: int = 3, seed: int = 0, **changes: Any
) -> dict[str, Any]:
    rng = random.Random(seed)
    sid = session_id or new_session_id()
    objs = [
        {
            "id": rng.randbytes(16).hex(),
            "sha256": rng.randbytes(32).hex(),
            "size": rng.randint(1, 1 << 30),
            "object_size": rng.randint(1, 1 << 30),
            "kind": "image",
            "captured": "2026-11-25T09:10:11",
            "index": i,
        }
        for i in range(objects)
    ]
    rec: dict[str, Any] = {
        "session": sid,
        "started": datetime.strptime(sid[:16], "%Y%m%dT%H%M%SZ").isoformat() + "+00:00",
        "finished": None,
        "operator": "nurse-7",
        "state": "archived",
        "taken": objects + 2,
        "retained": objects,
        "discarded": {"blurred": 1, "duplicate": 1},
        "archived_bytes": sum(o["size"] for o in objs),
        "objects": objs,
        "consent_scopes": ["clinical"],
        "wipe": None,
        "tombstone": None,
        "sealed": "U0VBTEVE",
    }
    rec.update(changes)
    return rec


def sid_on(day: date, hour: int = 12) -> str:
    return new_session_id(datetime(day.year, day.month, day.day, hour, tzinfo=UTC))


def temps(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(TEMP_PREFIX))


# --------------------------------------------------------------------------- ids


def test_session_id_names_its_utc_day_and_shard() -> None:
    when = datetime(2026, 11, 25, 23, 30, 5, tzinfo=UTC)
    sid = new_session_id(when)
    assert sid.startswith("20261125T233005Z-") and len(sid) == 25
    assert session_day(sid) == date(2026, 11, 25)
    assert shard_key(sid) == "2026-11-25"
    # 09:00 in Auckland (+13:00) on the 26th is the 25th in UTC.
    nz = datetime(2026, 11, 26, 9, 0, tzinfo=timezone(timedelta(hours=13)))
    assert shard_key(new_session_id(nz)) == "2026-11-25"
    assert new_session_id(when) != sid  # random suffix


@pytest.mark.parametrize("bad", ["", "20261125T233005Z", "20261332T000000Z-1a2b3c4d",
                                 "20261125T233005Z-1A2B3C4D", "../../etc/passwd"])
def test_malformed_session_id_is_bad_input(bad: str) -> None:
    with pytest.raises(BadInput):
        session_day(bad)


def test_naive_time_is_refused_for_a_session_id() -> None:
    with pytest.raises(BadInput, match="zone"):
        new_session_id(datetime(2026, 11, 25, 1, 2, 3))


# --------------------------------------------------------------------------- commit / read


def test_commit_then_read_back_from_a_fresh_catalog(tmp_path: Path) -> None:
    directory = tmp_path / "catalog"
    cat = Catalog(directory)
    assert oct(directory.stat().st_mode & 0o777) == "0o700"
    rec = make_record(sid_on(date(2026, 11, 25)), objects=5)
    cat.commit_session(rec)
    shard = directory / "2026-11-25.json"
    assert shard.is_file()
    assert oct(shard.stat().st_mode & 0o777) == "0o600"
    reopened = Catalog(directory)
    assert reopened.get_session(rec["session"]) == rec
    assert reopened.get_session(sid_on(date(2026, 11, 25))) is None
    assert reopened.get_session(sid_on(date(2026, 11, 26))) is None
    assert temps(directory) == []


def test_missing_optional_fields_are_stored_with_defaults(tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    sid = new_session_id()
    cat.commit_session({"session": sid, "started": "2026-11-25T01:02:03Z",
                        "operator": "nurse-7", "state": "refused", "sealed": "QUJD"})
    got = Catalog(tmp_path).get_session(sid)
    assert got is not None and set(got) == SESSION_FIELDS
    assert got["objects"] == [] and got["discarded"] == {} and got["wipe"] is None


def test_each_commit_is_one_atomic_replacement_of_one_shard(tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    day = date(2026, 11, 25)
    cat.commit_session(make_record(sid_on(day, 1), objects=2))
    shard = tmp_path / "2026-11-25.json"
    inode = shard.stat().st_ino
    writes = cat.writes
    cat.commit_session(make_record(sid_on(day, 2), objects=50))  # 50 images, still one write
    assert cat.writes == writes + 1
    assert shard.stat().st_ino != inode  # replaced by rename, not rewritten in place
    assert [p.name for p in tmp_path.iterdir()] == ["2026-11-25.json"]


def test_recommitting_a_session_replaces_it(tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    rec = make_record(objects=4)
    cat.commit_session(rec)
    smaller = make_record(rec["session"], objects=1, seed=9, state="wiped",
                          wipe={"mode": "per-file", "files": 7, "residue": {"found": 0}})
    cat.commit_session(smaller)
    reopened = Catalog(tmp_path)
    assert reopened.count() == 1
    assert reopened.get_session(rec["session"]) == smaller
    assert reopened.object_ids() == {o["id"] for o in smaller["objects"]}


def test_update_session_changes_fields_in_one_write(tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    rec = make_record()
    cat.commit_session(rec)
    writes = cat.writes
    new = cat.update_session(rec["session"], {"state": "wiped", "finished": "2026-11-25T02:00:00Z",
                                              "wipe": {"mode": "device", "residue_found": 0}})
    assert cat.writes == writes + 1
    assert new == {**rec, "state": "wiped", "finished": "2026-11-25T02:00:00Z",
                   "wipe": {"mode": "device", "residue_found": 0}}
    assert Catalog(tmp_path).get_session(rec["session"]) == new


def test_update_of_unknown_session_or_renaming_is_bad_input(tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    rec = make_record(sid_on(date(2026, 11, 25)))
    cat.commit_session(rec)
    with pytest.raises(BadInput, match="not in the catalog"):
        cat.update_session(sid_on(date(2026, 11, 25)), {"state": "wiped"})
    with pytest.raises(BadInput, match="not in the catalog"):
        cat.update_session(sid_on(date(2020, 1, 1)), {"state": "wiped"})
    with pytest.raises(BadInput, match="renamed"):
        cat.update_session(rec["session"], {"session": sid_on(date(2026, 11, 25))})
    with pytest.raises(BadInput, match="patient_id"):
        cat.update_session(rec["session"], {"patient_id": "ZAA0024"})
    assert Catalog(tmp_path).get_session(rec["session"]) == rec
    assert cat.get_session(rec["session"]) == rec


def test_records_handed_out_and_in_are_copies(tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    rec = make_record()
    cat.commit_session(rec)
    rec["objects"].clear()  # the caller reusing its dict must not change the catalog
    got = cat.get_session(rec["session"])
    assert got is not None and len(got["objects"]) == 3
    got["objects"][0]["id"] = "changed-by-caller"
    got["discarded"]["blurred"] = 99
    again = cat.get_session(rec["session"])
    assert again is not None
    assert again["objects"][0]["id"] != "changed-by-caller"
    assert again["discarded"]["blurred"] == 1


def test_iteration_is_oldest_first_and_respects_day_bounds(tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    days = [date(2025, 12, 31), date(2026, 1, 1), date(2026, 1, 31), date(2026, 2, 1)]
    sids = []
    for n, day in enumerate(reversed(days)):  # commit out of order
        for hour in (20, 3):
            sid = sid_on(day, hour)
            cat.commit_session(make_record(sid, seed=n * 10 + hour))
            sids.append(sid)
    expected = sorted(sids)
    cat = Catalog(tmp_path)
    assert [r["session"] for r in cat.iter_sessions()] == expected
    jan = [r["session"] for r in cat.iter_sessions(since=date(2026, 1, 1),
                                                   until=date(2026, 1, 31))]
    assert jan == [s for s in expected if s.startswith("202601")] and len(jan) == 4
    assert [r["session"] for r in cat.iter_sessions(since=date(2026, 2, 1))] == expected[-2:]
    assert [r["session"] for r in cat.iter_sessions(until=date(2025, 12, 31))] == expected[:2]
    assert cat.months() == ["2025-12", "2026-01", "2026-02"]
    assert cat.count() == 8
    assert len(cat.object_ids()) == 8 * 3


def test_shards_are_plain_tinydb_files(tmp_path: Path) -> None:
    """A custodian can inspect a shard with stock TinyDB; nothing proprietary on disk."""
    cat = Catalog(tmp_path)
    rec = make_record(sid_on(date(2026, 11, 25)))
    cat.commit_session(rec)
    with TinyDB(tmp_path / "2026-11-25.json", storage=JSONStorage, access_mode="r") as db:
        docs = db.table("sessions").all()
    assert [dict(d) for d in docs] == [rec]


# --------------------------------------------------------------------------- no patient ID


def test_record_with_patient_id_is_refused_and_nothing_written(tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    rec = make_record(patient_id="ZAA0024")
    with pytest.raises(BadInput, match="'patient_id' is not allowed") as info:
        cat.commit_session(rec)
    assert "sealed" in str(info.value)  # says where identifying fields belong
    assert list(tmp_path.iterdir()) == []
    assert cat.get_session(rec["session"]) is None


def test_record_without_sealed_blob_is_refused(tmp_path: Path) -> None:
    rec = make_record()
    del rec["sealed"]
    with pytest.raises(BadInput, match="'sealed'"):
        Catalog(tmp_path).commit_session(rec)
    assert list(tmp_path.iterdir()) == []


def test_refused_session_has_counts_but_no_objects() -> None:
    rec = make_record(objects=0, state="refused", taken=12, retained=0, discarded={},
                      consent_scopes=[], archived_bytes=0)
    assert validate_record(rec)["taken"] == 12


def test_object_index_defaults_to_list_position() -> None:
    rec = make_record(objects=3)
    for obj in rec["objects"]:
        del obj["index"]
    assert [o["index"] for o in validate_record(rec)["objects"]] == [0, 1, 2]
    assert all("index" not in o for o in rec["objects"])  # the caller's dicts are untouched


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sealed": "ZAA0024 Jane Doe"}, "base64"),
        ({"sealed": ""}, "base64"),
        ({"started": "2026-11-25T01:02:03"}, "UTC"),
        ({"started": "yesterday"}, "ISO-8601"),
        ({"finished": "2026-11-25T14:02:03+13:00"}, "UTC"),
        ({"operator": "Jane Doe"}, "operator"),
        ({"state": "Patient ZAA0024 refused"}, "identifier"),
        ({"discarded": {"blurry photo of Jane": 2}}, "identifier"),
        ({"consent_scopes": ["clinical", "clinical"]}, "repeats"),
        ({"taken": 3}, "more than taken"),
        ({"retained": True, "taken": 3}, "whole number"),
        ({"archived_bytes": -1}, "whole number"),
        ({"wipe": {"files": ["IMG_0001.JPG"] * 2, "note": "x" * 300}}, "256"),
        ({"wipe": "done"}, "dict"),
        ({"wipe": {"not_wiped": [{"file": "JaneDoe-ZAA0024.jpg", "reason": "locked"}]}},
         "may not hold 'file'"),
        ({"tombstone": {"by": "custodian-1", "patient_id": "ZAA0024"}}, "'patient_id'"),
        ({"tombstone": {"by": float("nan")}}, "finite"),
        ({"wipe": {"a": {"b": {"c": {"d": {"e": 1}}}}}}, "deeply"),
    ],
)
def test_invalid_fields_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(BadInput, match=message):
        validate_record(make_record(**changes))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda o: o.update(name="IMG_0001.JPG"), "unknown field 'name'"),
        (lambda o: o.pop("sha256"), "lacks 'sha256'"),
        (lambda o: o.update(id="../../etc"), "object id"),
        (lambda o: o.update(sha256="A" * 64), "lowercase hex"),
        (lambda o: o.update(kind="document"), "kind"),
        (lambda o: o.update(index=1), "used twice"),
        (lambda o: o.update(captured="last tuesday"), "ISO-8601"),
    ],
)
def test_invalid_objects_are_refused(mutate: Any, message: str) -> None:
    rec = make_record(objects=2)
    mutate(rec["objects"][0])
    with pytest.raises(BadInput, match=message):
        validate_record(rec)


# --------------------------------------------------------------------------- corruption


def test_open_parses_no_shard(tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    good = make_record(sid_on(date(2026, 11, 25)))
    cat.commit_session(good)
    (tmp_path / "2026-11-24.json").write_text('{"sessions": {"1": {"sess')
    reopened = Catalog(tmp_path)  # must not touch the corrupt shard
    assert reopened.months() == ["2026-11"]
    assert reopened.get_session(good["session"]) == good
    with pytest.raises(VaultError, match=r"2026-11-24\.json"):
        reopened.get_session(sid_on(date(2026, 11, 24)))


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b'{"sessions": {"1": {"session": "2026',
        b"\xff\xfe\x00garbage",
        b"[1, 2, 3]",
        b'{"sessions": [1, 2]}',
        b'{"sessions": {"one": {"session": "20261125T010203Z-1a2b3c4d"}}}',
        b'{"sessions": {"\\u00b2": {"session": "20261125T010203Z-1a2b3c4d"}}}',  # "²".isdigit()
        b'{"sessions": {"1": {"session": "20261124T010203Z-1a2b3c4d"}}}',  # wrong day
        b'{"sessions": {"1": {"session": "20261125T010203Z-1a2b3c4d"}, '
        b'"2": {"session": "20261125T010203Z-1a2b3c4d"}}}',  # twice
        b'{"sessions": {}, "patients": {}}',
    ],
)
def test_corrupt_shard_is_a_vault_error_naming_the_file(tmp_path: Path, content: bytes) -> None:
    shard = tmp_path / "2026-11-25.json"
    shard.write_bytes(content)
    cat = Catalog(tmp_path)
    for action in (
        lambda: cat.get_session("20261125T010203Z-1a2b3c4d"),
        lambda: list(cat.iter_sessions()),
        cat.count,
        lambda: cat.commit_session(make_record(sid_on(date(2026, 11, 25)))),
    ):
        with pytest.raises(VaultError, match=re.escape(str(shard))) as info:
            action()
        assert "corrupt" in str(info.value) and "backup" in str(info.value)
    assert shard.read_bytes() == content  # never "repaired" into an empty shard


def test_unexpected_file_in_catalog_refuses_to_open(tmp_path: Path) -> None:
    (tmp_path / "patients.json").write_text("{}")
    with pytest.raises(VaultError, match=r"patients\.json"):
        Catalog(tmp_path)


def test_recover_removes_crash_debris(tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    rec = make_record()
    cat.commit_session(rec)
    (tmp_path / f"{TEMP_PREFIX}abc123").write_bytes(b'{"sessions": {"1": {"se')
    reopened = Catalog(tmp_path)  # debris does not stop opening
    assert reopened.recover() == 1
    assert temps(tmp_path) == []
    assert reopened.get_session(rec["session"]) == rec


def test_failed_write_keeps_the_old_shard_and_says_so(tmp_path: Path) -> None:
    """A write that cannot finish (here: the file-size limit, like a full disk) changes nothing."""
    cat = Catalog(tmp_path)
    first = make_record(sid_on(date(2026, 11, 25), 1), objects=2)
    cat.commit_session(first)
    shard = tmp_path / "2026-11-25.json"
    before = shard.read_bytes()
    big = make_record(sid_on(date(2026, 11, 25), 2), objects=400)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) + 4096, old_limit[1]))
    try:
        with pytest.raises(FailedSafely, match=r"2026-11-25\.json.*not saved"):
            cat.commit_session(big)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert shard.read_bytes() == before
    assert temps(tmp_path) == []
    assert cat.get_session(big["session"]) is None  # memory agrees with disk
    assert cat.get_session(first["session"]) == first
    cat.commit_session(big)  # and the catalog still works once there is room
    assert Catalog(tmp_path).count() == 2


# --------------------------------------------------------------------------- crash test

IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE = 0x08, 0x80, 0x100


class DirEvents:
    """inotify on one directory (via libc): lets the parent kill the child *inside* a write,
    right after it creates the temp file, finishes writing it, or renames it into place."""

    def __init__(self, directory: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_CLOEXEC)
        if self.fd < 0 or libc.inotify_add_watch(
            self.fd, os.fsencode(directory), IN_CREATE | IN_CLOSE_WRITE | IN_MOVED_TO
        ) < 0:
            raise OSError(ctypes.get_errno(), "inotify")

    def count(self, data: bytes) -> int:
        n = pos = 0
        while pos < len(data):
            _wd, _mask, _cookie, length = struct.unpack_from("iIII", data, pos)
            pos += 16 + length
            n += 1
        return n

    def close(self) -> None:
        os.close(self.fd)


def run_child_until(
    proc: subprocess.Popen[bytes], events: DirEvents, lines: int, fs_events: int
) -> list[str]:
    """Read the child's lines and the catalog's fs events until *lines* lines and then
    *fs_events* events have arrived (the kill moment); return the lines read. No timers."""
    assert proc.stdout is not None
    out = proc.stdout.fileno()
    buf, got = b"", []
    seen = 0
    with selectors.DefaultSelector() as sel:
        sel.register(out, selectors.EVENT_READ)
        sel.register(events.fd, selectors.EVENT_READ)
        while len(got) < lines or seen < fs_events:
            for key, _ in sel.select():
                if key.fd == out:
                    chunk = os.read(out, 65536)
                    if not chunk:
                        return got  # died by itself; the caller reports it
                    buf += chunk
                    *done, buf = buf.split(b"\n")
                    got += [ln.decode() for ln in done]
                elif len(got) >= lines:
                    seen += events.count(os.read(events.fd, 65536))
                else:
                    os.read(events.fd, 65536)  # not counting yet
    return got


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_sigkill_at_random_moments_loses_no_returned_commit(tmp_path: Path) -> None:
    """A child commits and updates sessions in a loop, printing each once its call returned.

    The parent SIGKILLs it at random moments driven by the pipe and by the catalog
    directory's events (no sleeps): after a random number of printed lines, and in half the
    runs then after a random number of temp-create / temp-written / rename events, which lands
    the kill inside a shard write. It then takes the vault lock (freed by the kernel), checks
    every returned commit survived and every shard parses, and recovers the debris.
    """
    vault = tmp_path / "vault"
    catalog_dir = vault / "catalog"
    catalog_dir.mkdir(parents=True)
    rng = random.Random(20261125)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = [sys.executable, str(REPO / "tests" / "_catalog_crash_child.py"), str(vault)]
    promised: dict[str, int] = {}  # session id -> least state number it must now hold
    kills = debris = 0
    while kills < 60:
        lines, fs_events = rng.randint(1, 8), rng.choice([0, rng.randint(1, 9)])
        events = DirEvents(catalog_dir)
        with (tmp_path / "child.err").open("w+b") as err:
            proc = subprocess.Popen(
                [*child, str(rng.randrange(1 << 30)), str(kills * 1_000_000)],
                stdout=subprocess.PIPE, stderr=err, env=env,
            )
            try:
                got = run_child_until(proc, events, lines, fs_events)
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                events.close()
            assert proc.stdout is not None
            rest = proc.stdout.read().decode()  # lines flushed before the kill are promises
            proc.stdout.close()
            err.seek(0)
            assert proc.returncode == -signal.SIGKILL, f"child died by itself: {err.read()!r}"
        kills += 1
        for line in got + rest.split("\n")[:-1]:
            _, sid, n = line.split()
            promised[sid] = int(n)

        debris += bool(temps(catalog_dir))
        with VaultLock(vault):
            cat = Catalog(catalog_dir)
            for sid, n in promised.items():
                rec = cat.get_session(sid)
                assert rec is not None, f"kill {kills}: committed session {sid} is lost"
                assert int(rec["state"][1:]) >= n, f"kill {kills}: update of {sid} is lost"
            for shard in catalog_dir.glob("*.json"):
                json.loads(shard.read_bytes())
            cat.recover()
            assert temps(catalog_dir) == []

    final = Catalog(catalog_dir)
    assert final.count() >= len(promised) > 60
    assert {r["session"] for r in final.iter_sessions()} >= set(promised)
    assert debris > 0, "no kill landed inside a shard write; the test exercised nothing"
    print(f"{kills} kills, {len(promised)} sessions, {debris} kills left a temp file")
