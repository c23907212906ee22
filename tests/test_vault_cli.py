"""`clinivault init`, `custodian add` and `audit anchor|verify|show` through core.cli.main.

Each refusal is one line on stderr, exit code 2, and leaves the disk as it was.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from core.cli import main
from tests.conftest import TEST_PASSPHRASE
from tests.helpers.cards import digests


@pytest.fixture
def site(tmp_path: Path) -> Path:
    p = tmp_path / "site.toml"
    p.write_text("[vault]\nscrypt_log_n = 12\n")
    return p


@pytest.fixture
def pw(tmp_path: Path) -> Path:
    p = tmp_path / "pw"
    p.write_bytes(TEST_PASSPHRASE + b"\n")
    return p


def init(site: Path, vault: Path, pw: Path, *extra: str) -> int:
    return main(["--config", str(site), "init", str(vault), "--custodian", "alice",
                 "--passphrase-file", str(pw), *extra])


def test_init_prints_key_once_writes_key_file_0600_and_verifies(
        tmp_path: Path, site: Path, pw: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "audit.key"
    assert init(site, tmp_path / "v", pw, "--audit-key-file", str(key)) == 0
    out = capsys.readouterr().out
    k0 = key.read_text().strip()
    assert len(k0) == 64 and k0 in out and "OFFLINE" in out
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    for p in (tmp_path / "v").rglob("*"):
        assert stat.S_IMODE(p.stat().st_mode) in (0o600, 0o700), p
    assert k0 not in (tmp_path / "v" / "vault.json").read_text()  # sealed, not plain
    assert main(["audit", "verify", str(tmp_path / "v"), "--key-file", str(key)]) == 0
    assert "1 entries verified" in capsys.readouterr().out


def test_init_refusals_change_nothing(tmp_path: Path, site: Path, pw: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert init(site, tmp_path / "v", pw) == 0
    before = digests(tmp_path / "v")
    capsys.readouterr()
    assert init(site, tmp_path / "v", pw) == 2
    assert "already a vault" in capsys.readouterr().err
    assert digests(tmp_path / "v") == before
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    assert init(site, tmp_path / "full", pw) == 2
    assert "not empty" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / "full")) == ["x"]
    assert init(site, tmp_path / "no" / "such" / "parent", pw) == 2
    assert "does not exist" in capsys.readouterr().err
    short = tmp_path / "short"
    short.write_text("abc\n")
    assert init(site, tmp_path / "v2", short) == 2
    assert "8" in capsys.readouterr().err
    assert not (tmp_path / "v2").exists()


def test_init_in_unwritable_directory_is_refused(tmp_path: Path, site: Path, pw: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes through permission bits; covered for non-root users")
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    assert init(site, ro / "v", pw) == 2
    assert "not writable" in capsys.readouterr().err


def test_custodian_add_then_either_unlocks(tmp_path: Path, site: Path, pw: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert init(site, tmp_path / "v", pw) == 0
    pw2 = tmp_path / "pw2"
    pw2.write_text("bob's own passphrase\n")
    assert main(["--config", str(site), "custodian", "add", str(tmp_path / "v"), "bob",
                 "--passphrase-file", str(pw), "--new-passphrase-file", str(pw2)]) == 0
    assert "2 key slots" in capsys.readouterr().out
    for secret in (pw, pw2):
        assert main(["check", str(tmp_path / "v"), "--passphrase-file", str(secret)]) == 0
    bad = tmp_path / "bad"
    bad.write_text("wrong passphrase\n")
    capsys.readouterr()
    assert main(["--config", str(site), "custodian", "add", str(tmp_path / "v"), "carol",
                 "--passphrase-file", str(bad), "--new-passphrase-file", str(pw2)]) == 2
    assert "passphrase" in capsys.readouterr().err
    assert len(json.loads((tmp_path / "v" / "vault.json").read_text())["slots"]) == 2


def test_audit_verify_names_the_first_bad_line(tmp_path: Path, site: Path, pw: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "k"
    assert init(site, tmp_path / "v", pw, "--audit-key-file", str(key)) == 0
    assert main(["check", str(tmp_path / "v"), "--passphrase-file", str(pw)]) == 0
    capsys.readouterr()
    assert main(["audit", "anchor", str(tmp_path / "v")]) == 0
    anchor = capsys.readouterr().out.strip()
    log = tmp_path / "v" / "audit" / "log.jsonl"
    lines = log.read_text().splitlines()
    lines[1] = lines[1].replace('"startup"', '"startuq"')
    log.write_text("\n".join(lines) + "\n")
    assert main(["audit", "verify", str(tmp_path / "v"), "--key-file", str(key),
                 "--anchor", anchor]) == 1
    assert "line 2" in capsys.readouterr().out
    assert main(["audit", "show", str(tmp_path / "v")]) == 0
    assert "vault.init" in capsys.readouterr().out


def test_second_process_gets_the_lock_message(tmp_path: Path, site: Path, pw: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from core.vault.vault import Vault

    assert init(site, tmp_path / "v", pw) == 0
    with Vault.open(tmp_path / "v"):
        capsys.readouterr()
        assert main(["audit", "anchor", str(tmp_path / "v")]) == 2
        assert "in use" in capsys.readouterr().err
