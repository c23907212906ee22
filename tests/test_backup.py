"""Backup and restore: incremental verified copies, a restored vault that passes ``check`` and
``audit verify``, withdrawals that reach the backup, and damaged backups that restore nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from core.config import Config
from core.custodian.backup import MANIFEST
from core.session.journal import Journal
from core.vault.vault import Vault
from tests.helpers.cards import jpeg_bytes
from tests.helpers.custodian import (
    CliResult,
    VaultFiles,
    audit_events,
    ingest,
    make_card,
    new_vault,
    run_cli,
    sha256,
)


def backup(vf: VaultFiles, to: Path) -> CliResult:
    return run_cli("backup", str(vf.root), "--to", str(to), "--json")


def card(base: Path, name: str, *seeds: int) -> Path:
    return make_card(base / name, {f"IMG_{s:04d}.JPG": jpeg_bytes(s, (240, 180)) for s in seeds})


def manifest(to: Path) -> dict[str, Any]:
    return json.loads((to / MANIFEST).read_text())


def object_files(root: Path) -> set[str]:
    return {p.name for p in (root / "objects").rglob("*") if p.is_file()}


def test_incremental_backup_then_restore_passes_check_and_audit_verify(
        tmp_path: Path, cfg: Config) -> None:
    vf = new_vault(tmp_path, cfg)
    first = ingest(vf.root, cfg, card(tmp_path, "c1", 1, 2))
    to = tmp_path / "backup"
    r = backup(vf, to)
    assert r.code == 0, r.err
    stats = r.json()
    assert (stats["objects_copied"], stats["objects_kept"], stats["objects_total"]) == (2, 0, 2)
    before = {p: p.stat().st_mtime_ns for p in (to / "objects").rglob("*") if p.is_file()}

    second = ingest(vf.root, cfg, card(tmp_path, "c2", 3, 4, 5))
    stats = backup(vf, to).json()
    assert (stats["objects_copied"], stats["objects_kept"], stats["objects_total"]) == (3, 2, 5)
    new_bytes = sum(p.stat().st_size for p in (vf.root / "objects").rglob("*")
                    if p.is_file() and (to / "objects" / p.parent.name / p.name) not in before)
    assert stats["bytes_copied"] >= new_bytes
    # Old object copies were not rewritten; every file matches the manifest and the vault.
    assert {p: p.stat().st_mtime_ns for p in before} == before
    m = manifest(to)
    assert m["runs"] == 2 and m["format"] == "clinivault-backup/v1"
    for rel, entry in m["files"].items():
        assert sha256(to / rel) == entry["sha256"], rel
        if rel not in ("audit/log.jsonl", "audit/key.json"):  # the vault logged the backup since
            assert sha256(vf.root / rel) == entry["sha256"], rel
    assert object_files(to) == object_files(vf.root)
    assert not list(to.rglob(".tmp-*"))
    events = [e for e in audit_events(vf.root) if e["event"] == "backup"]
    assert [e["details"]["objects_copied"] for e in events] == [2, 3]

    third = backup(vf, to).json()  # nothing new: only the always-copied small files
    assert third["objects_copied"] == 0 and third["objects_kept"] == 5

    restored = tmp_path / "restored"
    r = run_cli("restore", str(to), "--to", str(restored), "--json")
    assert r.code == 0, r.err
    assert r.json()["objects"] == 5
    check = run_cli("check", str(restored), *vf.unlock_args(), "--json")
    assert check.code == 0, check.out + check.err
    assert check.json()["objects"] == 5 and check.json()["orphans"] == []
    verify = run_cli("audit", "verify", str(restored), "--key-file", str(vf.key_file))
    assert verify.code == 0, verify.out + verify.err
    names = [e["event"] for e in audit_events(restored)]
    assert names.count("restore") == 1 and names.index("restore") < len(names) - 1
    assert names[names.index("restore") + 1:] == ["startup", "unlock", "check"]
    found = run_cli("--config", str(vf.site), "find", str(restored), "--patient", "ZAC5361",
                    *vf.unlock_args(), "--json")
    assert sorted(h["session"] for h in found.json()) == sorted([first, second])
    assert not list(tmp_path.glob(".tmp-restore-*"))


def test_a_withdrawal_reaches_the_backup_at_the_next_run(tmp_path: Path, cfg: Config) -> None:
    vf = new_vault(tmp_path, cfg)
    sid = ingest(vf.root, cfg, card(tmp_path, "c1", 1, 2))
    keep = ingest(vf.root, cfg, card(tmp_path, "c2", 3))
    to = tmp_path / "backup"
    assert backup(vf, to).code == 0
    gone = object_files(vf.root)
    r = run_cli("withdraw", str(vf.root), "--session", sid, "--scope", "all", "--yes",
                *vf.unlock_args())
    assert r.code == 0, r.err
    gone -= object_files(vf.root)
    assert len(gone) == 2
    stats = backup(vf, to).json()
    assert stats["objects_removed"] == 2 and stats["objects_kept"] == 1
    assert object_files(to) == object_files(vf.root)
    assert not any(g in (to / MANIFEST).read_text() for g in gone)
    restored = tmp_path / "restored"
    assert run_cli("restore", str(to), "--to", str(restored)).code == 0
    check = run_cli("check", str(restored), *vf.unlock_args(), "--json").json()
    assert check["objects"] == 1 and check["orphans"] == [] and check["missing"] == []
    with Vault.open(restored, startup=False) as vault:
        assert vault.catalog.get_session(sid)["tombstone"] is not None  # type: ignore[index]
        assert vault.catalog.get_session(keep)["objects"]  # type: ignore[index]


@pytest.mark.parametrize("damage", ["object", "catalog", "missing", "manifest-path"])
def test_a_damaged_backup_restores_nothing(tmp_path: Path, cfg: Config, damage: str) -> None:
    vf = new_vault(tmp_path, cfg)
    ingest(vf.root, cfg, card(tmp_path, "c1", 1, 2))
    to = tmp_path / "backup"
    assert backup(vf, to).code == 0
    victim = sorted((to / "objects").rglob("*/*"))[0]
    if damage == "object":
        data = bytearray(victim.read_bytes())
        data[300] ^= 0x40
        victim.write_bytes(bytes(data))
    elif damage == "catalog":
        shard = next((to / "catalog").glob("*.json"))
        shard.write_text(shard.read_text().replace('"done"', '"DONE"'))
    elif damage == "missing":
        victim.unlink()
    else:
        m = manifest(to)
        m["files"]["../escape"] = {"sha256": "0" * 64, "size": 1}
        (to / MANIFEST).write_text(json.dumps(m))
    restored = tmp_path / "restored"
    r = run_cli("restore", str(to), "--to", str(restored))
    expected_code = 2 if damage == "manifest-path" else 1
    assert r.code == expected_code, r.err
    words = {"object": "does not match its recorded SHA-256", "catalog": "catalog/",
             "missing": "is missing", "manifest-path": "unexpected file"}[damage]
    assert words in r.err and len(r.err.strip().splitlines()) == 1
    if damage == "object":
        assert f"objects/{victim.parent.name}/{victim.name}" in r.err
    assert not restored.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize("case, words", [
    ("inside-vault", "inside the vault"),
    ("not-a-backup", "holds no clinivault backup"),
    ("other-vault", "backup of another vault"),
    ("unfinished", "unfinished session"),
])
def test_bad_backup_targets_are_refused(tmp_path: Path, cfg: Config, case: str,
                                        words: str) -> None:
    vf = new_vault(tmp_path, cfg)
    to = tmp_path / "backup"
    if case == "inside-vault":
        to = vf.root / "backup"
    elif case == "not-a-backup":
        to.mkdir()
        (to / "holiday.jpg").write_bytes(b"x")
    elif case == "other-vault":
        other = new_vault(tmp_path / "other", cfg)
        assert backup(other, to).code == 0
    elif case == "unfinished":
        Journal.create(vf.root / "journal", "20250101T000000Z-0badcafe", {"state": "scanned"})
    r = backup(vf, to)
    assert r.code == 2, r.err
    assert words in r.err and len(r.err.strip().splitlines()) == 1
    assert not (vf.root / "backup").exists()
    assert "backup" not in [e["event"] for e in audit_events(vf.root)]


def test_restore_refuses_a_non_empty_target_and_a_non_backup(tmp_path: Path,
                                                             cfg: Config) -> None:
    vf = new_vault(tmp_path, cfg)
    to = tmp_path / "backup"
    assert backup(vf, to).code == 0
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    r = run_cli("restore", str(to), "--to", str(busy))
    assert r.code == 2 and "is not empty" in r.err
    assert os.listdir(busy) == ["x"]
    r = run_cli("restore", str(tmp_path / "busy"), "--to", str(tmp_path / "new"))
    assert r.code == 2 and "not a clinivault backup" in r.err
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_cli("restore", str(to), "--to", str(empty))
    assert r.code == 0, r.err
    assert (empty / "vault.json").is_file() and (empty / "journal").is_dir()
