"""Crash safety: SIGKILL the ingest at every durable step in turn, recover, check the promise.

The steps are not sampled: a first run with CLINIVAULT_CRASH_TRACE lists every journal
transition, object write/fsync/rename, catalog commit and wipe step the session reaches;
then one run per step kills the process there (CLINIVAULT_CRASH_AT), ``recover`` runs, and
the invariants are checked: every source image is still on the card or verified in the
vault (never neither), no object without a catalog entry and no entry without its object,
the audit log verifies, and no temp file or journal is left.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from core import audit as auditlog
from core.check import check_vault
from core.session import recover
from core.vault.vault import Vault
from tests.conftest import TEST_PASSPHRASE
from tests.helpers.cards import small_card

ROOT = Path(__file__).resolve().parents[1]


def ingest(site: Path, vault: Path, card: Path, env: dict[str, str]
           ) -> subprocess.CompletedProcess[str]:
    args = ["--config", str(site), "ingest", str(vault), "--source", str(card),
            "--patient", "ZAC5361", "--consent", "record", "--method", "written",
            "--obtained-by", "R. Nurse", "--operator", "nurse1", "--yes", "--json"]
    return subprocess.run([sys.executable, "-m", "tui.main", *args], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, **env})


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | bytes]:
    base = tmp_path_factory.mktemp("crash-template")
    site = base / "site.toml"
    site.write_text("[patient_id]\nallow_test_ids = true\n[vault]\nscrypt_log_n = 12\n"
                    "[imaging]\nworkers = 1\n")
    v, k0 = Vault.init(base / "vault", "cust", TEST_PASSPHRASE, scrypt_log_n=12)
    v.close()
    small_card(base / "card", sharp=2, blurred=1)
    return {"base": base, "site": site, "vault": base / "vault", "card": base / "card",
            "k0": k0}


def fresh(template: dict[str, Path | bytes], work: Path) -> tuple[Path, Path]:
    vault, card = work / "vault", work / "card"
    shutil.copytree(template["vault"], vault)  # type: ignore[arg-type]
    shutil.copytree(template["card"], card)  # type: ignore[arg-type]
    return vault, card


def source_digests(card: Path) -> set[str]:
    return {hashlib.sha256(p.read_bytes()).hexdigest()
            for p in card.rglob("*.JPG") if p.is_file()}


def assert_promise_kept(vault_root: Path, card: Path, originals: set[str],
                        discarded: set[str], k0: bytes, where: str) -> None:
    with Vault.open(vault_root, actor="test") as vault:
        recoveries = recover(vault)
        assert all(r.session for r in recoveries)
        private = vault.unlock(TEST_PASSPHRASE)
        report = check_vault(vault, private)
        assert report.ok, f"{where}: {report.lines()}"
        in_vault = {o["sha256"] for rec in vault.catalog.iter_sessions()
                    for o in rec.get("objects") or []}
    on_card = source_digests(card)
    gone = originals - on_card - in_vault
    assert gone <= discarded, (
        f"{where}: {len(gone - discarded)} kept images neither on the card nor in the vault")
    if gone:
        assert in_vault, f"{where}: a discarded image was wiped before the archive committed"
    result = auditlog.verify_log(vault_root / "audit" / "log.jsonl", k0,
                                 key_state_path=vault_root / "audit" / "key.json")
    assert result.ok, f"{where}: audit {result.reason} at line {result.first_bad_line}"
    leftovers = [p for p in vault_root.rglob("*") if p.name.startswith(".tmp-")]
    assert leftovers == [], f"{where}: temp files left: {leftovers}"
    assert not list((vault_root / "journal").iterdir()), f"{where}: journal left"
    assert not list((vault_root / "tmp").iterdir()), f"{where}: tmp not empty"


@pytest.mark.slow
def test_kill_at_every_durable_step_then_recover(template: dict[str, Path | bytes],
                                                 tmp_path: Path) -> None:
    site = template["site"]
    k0 = template["k0"]
    assert isinstance(site, Path) and isinstance(k0, bytes)
    originals = source_digests(template["card"])  # type: ignore[arg-type]
    vault, card = fresh(template, tmp_path / "trace")
    trace = tmp_path / "trace.txt"
    r = ingest(site, vault, card, {"CLINIVAULT_CRASH_TRACE": str(trace)})
    assert r.returncode == 0, r.stderr
    steps = trace.read_text().split()
    # What the operator's decisions discard may leave the card; everything else may not.
    with Vault.open(vault, actor="test") as v:
        kept = {o["sha256"] for rec in v.catalog.iter_sessions() for o in rec["objects"]}
    discarded = originals - kept
    assert len(discarded) == 1 and len(kept) == 2
    # journal transitions, 2 kept objects x 4 steps, the catalog commit, 3 files x 4 wipe steps
    assert len(steps) >= 8 + 8 + 1 + 12, steps
    assert len(steps) == len(set(steps))
    for n, step in enumerate(steps):
        vault, card = fresh(template, tmp_path / f"kill{n}")
        r = ingest(site, vault, card, {"CLINIVAULT_CRASH_AT": step})
        assert r.returncode == -signal.SIGKILL, f"{step}: process was not killed ({r.stderr})"
        assert_promise_kept(vault, card, originals, discarded, k0, f"killed at {step}")
        shutil.rmtree(tmp_path / f"kill{n}")


def test_recovery_finishes_the_wipe_after_a_remount_changed_every_inode(
        tmp_path: Path) -> None:
    """FAT and exFAT drivers invent inode numbers at each mount: after a crash and a remount
    the journalled identities no longer match. Recovery re-identifies each file by path,
    size, modification time and (archived files) content hash, and wipes only those; a file
    whose content changed under the same size and time is left alone."""
    from core.config import load_config
    from core.consent import grant
    from core.patient_id import parse_patient_id
    from core.session import IngestSession

    cfg = load_config(use_env=False, overrides={"vault": {"scrypt_log_n": 12},
                                                "imaging": {"workers": 1}})
    card = tmp_path / "card"
    paths = small_card(card, sharp=3, blurred=0)
    v, _k0 = Vault.init(tmp_path / "vault", "cust", TEST_PASSPHRASE, scrypt_log_n=12)
    with v:
        s = IngestSession(v, cfg, card, "nurse1")
        s.scan()
        s.assess()
        s.record_consent(grant(scopes=("record",), method="verbal", obtained_by_name="N",
                               obtained_by_role="RN", body_areas=["hand"],
                               statement=cfg.consent.statement))
        s.identify(parse_patient_id("ZAC5361", "nhi", allow_test_ids=True))
        s.finish_review()
        s.archive()  # committed; the "crash" comes before the wipe
    # "Remount": every file gets a new inode, same bytes, size and modification time.
    remounted = tmp_path / "remounted"
    shutil.copytree(card, remounted)  # copy2 keeps mtime to the nanosecond
    shutil.rmtree(card)
    remounted.rename(card)
    tampered = card / paths[2].relative_to(card)
    st = tampered.stat()
    data = bytearray(tampered.read_bytes())
    data[-100] ^= 0xFF
    tampered.write_bytes(bytes(data))
    os.utime(tampered, ns=(st.st_atime_ns, st.st_mtime_ns))
    with Vault.open(tmp_path / "vault", actor="test") as v:
        (result,) = recover(v)
    assert "wipe finished" in result.action
    left = sorted(p.name for p in card.rglob("*") if p.is_file())
    assert left == [tampered.name]
