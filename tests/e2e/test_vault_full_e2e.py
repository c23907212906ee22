"""A vault on a small real ext4 file system (loop device) fills up mid-archive.

The session must fail safely: exit 1 with a message naming the full disk, every image
still on the card byte for byte, no object, temp file, journal or catalog entry left in the
vault, and an audit log that still verifies.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.vault.vault import Vault
from tests.conftest import TEST_PASSPHRASE
from tests.helpers.cards import digests, small_card

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def small_ext4(tmp_path: Path) -> Iterator[Path]:
    """A 12 MiB ext4 file system on a loop device, mounted; always torn down."""
    image, mnt = tmp_path / "vault.img", tmp_path / "vaultfs"
    mnt.mkdir()
    subprocess.run(["truncate", "-s", "12M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True)
    dev = subprocess.run(["losetup", "-f", "--show", str(image)], check=True,
                         capture_output=True, text=True).stdout.strip()
    mounted = False
    try:
        subprocess.run(["mount", dev, str(mnt)], check=True)
        mounted = True
        yield mnt
    finally:
        if mounted:
            subprocess.run(["umount", str(mnt)], check=False)
        subprocess.run(["losetup", "-d", dev], check=False)


def test_vault_disk_full_fails_safely_and_card_is_untouched(tmp_path: Path,
                                                           small_ext4: Path) -> None:
    vault_root = small_ext4 / "vault"
    v, k0 = Vault.init(vault_root, "cust", TEST_PASSPHRASE, scrypt_log_n=12)
    v.close()
    card = tmp_path / "card"
    small_card(card, sharp=18, blurred=0)
    assert sum(p.stat().st_size for p in card.rglob("*.JPG")) > 12 * 2**20
    before = digests(card)
    site = tmp_path / "site.toml"
    site.write_text("[patient_id]\nallow_test_ids = true\n[imaging]\nworkers = 1\n")
    r = subprocess.run(
        [sys.executable, "-m", "tui.main", "--config", str(site), "ingest", str(vault_root),
         "--source", str(card), "--patient", "ZAC5361", "--consent", "record",
         "--method", "written", "--obtained-by", "R. Nurse", "--operator", "nurse1",
         "--yes", "--json"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "vault disk is full" in r.stderr and "Traceback" not in r.stderr
    assert digests(card) == before
    assert [p for p in (vault_root / "objects").rglob("*") if p.is_file()] == []
    assert os.listdir(vault_root / "tmp") == [] and os.listdir(vault_root / "journal") == []
    with Vault.open(vault_root, actor="test") as v:
        assert v.catalog.count() == 0
    log = [json.loads(x) for x in (vault_root / "audit" / "log.jsonl").read_text().splitlines()]
    aborted = [e for e in log if e["event"] == "session.aborted"]
    assert len(aborted) == 1 and "full" in aborted[0]["details"]["reason"]
    from core import audit
    assert audit.verify_log(vault_root / "audit" / "log.jsonl", k0,
                            key_state_path=vault_root / "audit" / "key.json").ok
