"""`clinivault ingest --source /dev/loopN` on real exFAT and FAT card images.

The whole flow on a block device: identity recorded, mounted read-only through FUSE,
archived, remounted read-write for the per-file pass (new inode numbers: re-identified),
whole-card Clear, residue scan. Afterwards an independent scan of the image file (not
core.wipe_device) finds no 4 KiB block of any original, and the card carries a fresh empty
file system with its old label.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from core.vault.vault import Vault
from tests.conftest import TEST_PASSPHRASE
from tests.e2e.conftest import LoopCard, blkid, blocks_found, original_blocks
from tests.helpers.cards import jpeg_bytes

ROOT = Path(__file__).resolve().parents[2]


def ingest(tmp_path: Path, vault: Path, source: str, *extra: str
           ) -> subprocess.CompletedProcess[str]:
    site = tmp_path / "site.toml"
    site.write_text("[patient_id]\nallow_test_ids = true\n[media]\naccept_loop = true\n"
                    "[imaging]\nworkers = 1\n")
    return subprocess.run(
        [sys.executable, "-m", "tui.main", "--config", str(site), "ingest", str(vault),
         "--source", source, "--patient", "ZAC5361", "--consent", "record",
         "--method", "written", "--obtained-by", "R. Nurse", "--operator", "nurse1",
         "--yes", "--json", *extra], cwd=ROOT, capture_output=True, text=True)


@pytest.fixture
def vault(tmp_path: Path) -> Path:
    v, _ = Vault.init(tmp_path / "vault", "cust", TEST_PASSPHRASE, scrypt_log_n=12)
    v.close()
    return tmp_path / "vault"


def card_photos() -> dict[str, bytes]:
    return {"DCIM/100CARD/IMG_0001.JPG": jpeg_bytes(1, (1800, 1350)),
            "DCIM/100CARD/IMG_0002.JPG": jpeg_bytes(2, (1800, 1350)),
            "DCIM/100CARD/IMG_0003.JPG": jpeg_bytes(3, (1800, 1350), blur=8.0)}


@pytest.mark.parametrize("fs", ["exfat", "vfat"])
def test_ingest_from_block_device_clears_the_card(
        fs: str, tmp_path: Path, vault: Path, loop_card: Callable[..., LoopCard]) -> None:
    photos = card_photos()
    card = loop_card(fs=fs, label="CAMCARD", size=48 << 20, files=photos)
    r = ingest(tmp_path, vault, card.loop, "--discard", "none")
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["retained"] == 3
    wipe = out["wipe"]
    assert wipe["mode"] == "device" and wipe["residue"] == 0 and wipe["complete"]
    assert "Clear" in wipe["words"] and "residue scan: no fragment" in wipe["words"]
    # Independent check of the card image: no 4 KiB block of any original, anywhere.
    assert blocks_found(card.image, original_blocks(photos.values())) == 0
    info = blkid(card.loop)
    assert info.get("LABEL") == "CAMCARD"
    assert info.get("TYPE") == fs
    log = (vault / "audit" / "log.jsonl").read_text()
    assert '"cleared":true' in log and '"residue":0' in log


def test_unarchived_file_stops_the_whole_card_wipe_unless_confirmed(
        tmp_path: Path, vault: Path, loop_card: Callable[..., LoopCard]) -> None:
    photos = card_photos()
    files = {**photos, "NOTES.TXT": b"operator notes, not an image\n" * 200}
    card = loop_card(fs="exfat", label="CAMCARD", size=48 << 20, files=files)
    r = ingest(tmp_path, vault, card.loop, "--discard", "none")
    assert r.returncode == 1, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert "whole-card wipe NOT run" in out["wipe"]["words"]
    assert "NOTES.TXT" in out["wipe"]["words"]
    assert out["wipe"]["files"] == 3  # the per-file pass still ran
    assert out["wipe"]["residue"] == 0  # and removed every block of the session's images


def test_read_only_card_keeps_the_archive_and_says_the_card_was_not_wiped(
        tmp_path: Path, vault: Path, loop_card: Callable[..., LoopCard]) -> None:
    photos = card_photos()
    card = loop_card(fs="exfat", label="LOCKED", size=48 << 20, files=photos,
                     read_only=True)
    before = card.sha256()
    r = ingest(tmp_path, vault, card.loop, "--discard", "none")
    assert r.returncode == 1, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["retained"] == 3 and out["wipe"]["read_only"]
    assert "write-protected" in out["wipe"]["words"]
    assert card.sha256() == before
    with Vault.open(vault, actor="test") as v:
        (record,) = list(v.catalog.iter_sessions())
        assert len(record["objects"]) == 3


def test_the_vaults_own_disk_is_refused_even_with_accept_loop(
        tmp_path: Path, loop_card: Callable[..., LoopCard]) -> None:
    card = loop_card(fs="ext4", label="VAULTDISK", size=32 << 20)
    where = tmp_path / "mnt"
    where.mkdir()
    subprocess.run(["mount", card.loop, str(where)], check=True)
    try:
        v, _ = Vault.init(where / "vault", "cust", TEST_PASSPHRASE, scrypt_log_n=12)
        v.close()
        r = ingest(tmp_path, where / "vault", card.loop)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "system or the vault" in r.stderr
        assert os.listdir(where / "vault" / "journal") == []
    finally:
        subprocess.run(["umount", str(where)], check=False)
