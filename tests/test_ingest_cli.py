"""The headless ingest, end to end through the CLI: real card files, real vault, real crypto.

Asserts the vault, catalog and audit log afterwards, and that each kind of bad input gets a
one-line message, exit code 2, and changes nothing on the card or in the vault.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.demo import make_sample_card
from tests.conftest import TEST_PASSPHRASE
from tests.helpers.cards import digests, small_card, vault_bytes_contain

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tui.main", *args], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, **(env or {})})


@pytest.fixture
def site(tmp_path: Path) -> Path:
    p = tmp_path / "site.toml"
    p.write_text("[patient_id]\nallow_test_ids = true\n[vault]\nscrypt_log_n = 12\n")
    return p


@pytest.fixture
def new_vault(tmp_path: Path, site: Path) -> tuple[Path, Path, Path]:
    """(vault, passphrase file, audit key file) made with `clinivault init`."""
    pw = tmp_path / "pass"
    pw.write_bytes(TEST_PASSPHRASE + b"\n")
    key = tmp_path / "audit.key"
    vault = tmp_path / "vault"
    r = run_cli("--config", str(site), "init", str(vault), "--custodian", "cust",
                "--passphrase-file", str(pw), "--audit-key-file", str(key))
    assert r.returncode == 0, r.stderr
    return vault, pw, key


def ingest_args(site: Path, vault: Path, card: Path, *extra: str, patient: str = "ZAC5361",
                consent: str = "record,teaching") -> list[str]:
    return ["--config", str(site), "ingest", str(vault), "--source", str(card),
            "--patient", patient, "--consent", consent, "--method", "written",
            "--obtained-by", "R. Nurse", "--operator", "nurse1", "--yes", "--json", *extra]


def test_full_ingest_archives_kept_discards_poor_and_wipes_card(
        tmp_path: Path, site: Path, new_vault: tuple[Path, Path, Path]) -> None:
    vault, pw, key = new_vault
    card = make_sample_card(tmp_path / "card")
    r = run_cli(*ingest_args(site, vault, card.root, "--keyword", "eczema"))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["taken"] == 9
    assert out["retained"] == 6
    assert out["discarded"] == {"blurred": 1, "dark": 1, "duplicate": 1}
    assert [x["file"].endswith("IMG_0010.JPG") for x in out["rejected"]] == [True]
    assert out["wipe"]["mode"] == "files" and out["wipe"]["files"] == 10  # 9 images + 1 THM
    assert out["note"].startswith("9 images taken; 6 retained; 3 deleted (")
    assert "consent: health record, teaching (written)" in out["note"]
    # The card keeps only what could not be read.
    left = sorted(p.name for p in card.root.rglob("*") if p.is_file())
    assert left == ["IMG_0010.JPG"]
    # The vault holds 7 objects (6 images + the sidecar), all verify, no plaintext patient ID.
    check = run_cli("check", str(vault), "--passphrase-file", str(pw), "--json")
    assert check.returncode == 0, check.stdout + check.stderr
    assert json.loads(check.stdout)["objects"] == 7
    assert vault_bytes_contain(vault, b"ZAC5361") == []
    assert vault_bytes_contain(vault, b"eczema") == []
    verify = run_cli("audit", "verify", str(vault), "--key-file", str(key))
    assert verify.returncode == 0, verify.stdout
    events = [json.loads(line)["event"] for line in
              (vault / "audit" / "log.jsonl").read_text().splitlines()]
    for e in ("session.started", "consent.recorded", "patient.identified", "image.discarded",
              "archive.verified", "wipe.done", "session.finished"):
        assert e in events
    assert events.count("image.discarded") == 3


def test_consent_refused_archives_nothing_and_wipes_every_image(
        tmp_path: Path, site: Path, new_vault: tuple[Path, Path, Path]) -> None:
    vault, _pw, key = new_vault
    small_card(tmp_path / "card", sharp=2, blurred=0)
    r = run_cli(*ingest_args(site, vault, tmp_path / "card", "--witness", "W. Itness",
                             consent="none"))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["retained"] == 0 and out["archived_bytes"] == 0
    assert out["wipe"]["files"] == 2
    assert "refused" in out["note"]
    assert not [p for p in (tmp_path / "card").rglob("*") if p.is_file()]
    assert not list((vault / "objects").rglob("*/*"))
    log = (vault / "audit" / "log.jsonl").read_text()
    assert '"consent.refused"' in log and '"wipe.done"' in log
    assert run_cli("audit", "verify", str(vault), "--key-file", str(key)).returncode == 0


@pytest.mark.parametrize("change, words", [
    ({"patient": "ZAC5362"}, "check"),
    ({"scheme": "xyz"}, "unknown patient ID scheme 'xyz'"),
    ({"drop": "--method"}, "--method is required"),
    ({"consent": "record,gossip"}, "gossip"),
    ({"consent": "teaching"}, "health record"),
    ({"drop": "--yes"}, "--yes"),
])
def test_bad_input_is_refused_before_anything_changes(
        tmp_path: Path, site: Path, new_vault: tuple[Path, Path, Path],
        change: dict[str, str], words: str) -> None:
    vault, _pw, _key = new_vault
    small_card(tmp_path / "card", sharp=1, blurred=0)
    before_card, before_vault = digests(tmp_path / "card"), digests(vault)
    args = ingest_args(site, vault, tmp_path / "card",
                       patient=change.get("patient", "ZAC5361"),
                       consent=change.get("consent", "record,teaching"))
    if "scheme" in change:
        args += ["--scheme", change["scheme"]]
    if "drop" in change:
        args.remove(change["drop"])
        if change["drop"] == "--method":
            args.remove("written")
    r = run_cli(*args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert words in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2
    assert digests(tmp_path / "card") == before_card
    assert digests(vault) == before_vault


def test_empty_card_and_card_that_is_not_a_directory(
        tmp_path: Path, site: Path, new_vault: tuple[Path, Path, Path]) -> None:
    vault, _pw, _key = new_vault
    (tmp_path / "empty").mkdir()
    r = run_cli(*ingest_args(site, vault, tmp_path / "empty"))
    assert r.returncode == 2 and "no images on the card" in r.stderr
    (tmp_path / "file").write_bytes(b"x")
    r = run_cli(*ingest_args(site, vault, tmp_path / "file"))
    assert r.returncode == 2 and "not a directory" in r.stderr
    assert not list((vault / "journal").iterdir())


def test_symlink_fifo_and_outside_file_are_never_touched(
        tmp_path: Path, site: Path, new_vault: tuple[Path, Path, Path]) -> None:
    vault, _pw, _key = new_vault
    card = tmp_path / "card"
    small_card(card, sharp=1, blurred=0)
    outside = tmp_path / "outside.jpg"
    outside.write_bytes((card / "DCIM" / "100TEST" / "IMG_0001.JPG").read_bytes())
    before = outside.read_bytes()
    (card / "DCIM" / "100TEST" / "IMG_0099.JPG").symlink_to(outside)
    os.mkfifo(card / "DCIM" / "fifo.jpg")
    r = run_cli(*ingest_args(site, vault, card))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["retained"] == 1 and out["wipe"]["files"] == 1
    reasons = " ".join(x["reason"] for x in out["rejected"])
    assert "symbolic link" in reasons and "FIFO" in reasons
    assert outside.read_bytes() == before
    assert (card / "DCIM" / "100TEST" / "IMG_0099.JPG").is_symlink()


def test_existing_vault_is_never_overwritten(tmp_path: Path, site: Path,
                                             new_vault: tuple[Path, Path, Path]) -> None:
    vault, pw, _key = new_vault
    before = digests(vault)
    r = run_cli("--config", str(site), "init", str(vault), "--custodian", "x",
                "--passphrase-file", str(pw))
    assert r.returncode == 2 and "already a vault" in r.stderr
    assert digests(vault) == before


def test_wrong_passphrase_is_one_line_exit_2(tmp_path: Path,
                                             new_vault: tuple[Path, Path, Path]) -> None:
    vault, _pw, _key = new_vault
    bad = tmp_path / "bad"
    bad.write_text("not the passphrase\n")
    r = run_cli("check", str(vault), "--passphrase-file", str(bad))
    assert r.returncode == 2
    assert "passphrase" in r.stderr.lower() and "Traceback" not in r.stderr
    assert '"unlock.failed"' in (vault / "audit" / "log.jsonl").read_text()
