"""``clinivault demo`` and ``clinivault kiosk`` up to the point where the app would take the
terminal (``KioskApp.run`` is replaced by a recorder): what they build, check and recover.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from core.config import load_config
from core.media.sources import FolderSource
from core.session import IngestSession
from core.users import UserStore
from core.vault.vault import Vault
from tests.tui.conftest import TEST_PASSPHRASE, TUI_OVERRIDES
from tui.app import KioskApp, run_demo, run_kiosk


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[KioskApp]:
    apps: list[KioskApp] = []

    def fake_run(self: KioskApp, *args: Any, **kwargs: Any) -> int:
        apps.append(self)
        return 0

    monkeypatch.setattr(KioskApp, "run", fake_run)
    return apps


def site_config(tmp_path: Path, vault: Path) -> Path:
    lines = [f'[vault]\npath = "{vault}"\nscrypt_log_n = 10\n',
             "[patient_id]\nallow_test_ids = true\n"]
    path = tmp_path / "site.toml"
    path.write_text("\n".join(lines))
    return path


def test_demo_builds_a_vault_a_card_and_accounts(tmp_path: Path, started: list[KioskApp],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert run_demo(["demo", "--dir", str(tmp_path / "demo")]) == 0
    (app,) = started
    base = tmp_path / "demo"
    assert app.demo_hint is not None and "nurse1 / 1234" in app.demo_hint
    assert sorted(u.id for u in UserStore.for_vault(base / "vault", app.config).users()) == [
        "audit1", "lead1", "nurse1"]
    assert app.audit_key_hint == str(base / "audit-key.txt")
    assert len((base / "audit-key.txt").read_text().strip()) == 64
    (card,) = app.source.current()
    assert card.usable and card.label == "DEMO card"
    assert any((base / "card").rglob("*.JPG"))
    assert f"kept in {base}" in capsys.readouterr().err


def test_kiosk_needs_a_vault(tmp_path: Path, started: list[KioskApp],
                             capsys: pytest.CaptureFixture[str]) -> None:
    assert run_kiosk(["kiosk", "--vault", str(tmp_path / "nowhere")]) == 2
    assert "no vault at" in capsys.readouterr().err
    assert started == []


def test_kiosk_needs_accounts(tmp_path: Path, started: list[KioskApp],
                              capsys: pytest.CaptureFixture[str]) -> None:
    vault, _k0 = Vault.init(tmp_path / "vault", "custodian", TEST_PASSPHRASE, scrypt_log_n=10)
    vault.close()
    cfg = site_config(tmp_path, tmp_path / "vault")
    assert run_kiosk(["--config", str(cfg), "kiosk"]) == 2
    assert "clinivault user add" in capsys.readouterr().err
    assert started == []


def test_kiosk_recovers_an_unfinished_session_before_anyone_signs_in(
        tmp_path: Path, started: list[KioskApp], card_template: Path) -> None:
    import shutil

    cfg = load_config(use_env=False, overrides=TUI_OVERRIDES)
    vault, _k0 = Vault.init(tmp_path / "vault", "custodian", TEST_PASSPHRASE, scrypt_log_n=10)
    UserStore.for_vault(vault.root, cfg).add("nurse1", "operator", "1234")
    card = tmp_path / "card"
    shutil.copytree(card_template, card)
    session = IngestSession(vault, cfg, card, "nurse1")
    session.scan()  # then the kiosk lost power
    vault.close()

    config = site_config(tmp_path, tmp_path / "vault")
    assert run_kiosk(["kiosk", "--config", str(config), "--card", str(card)]) == 0
    (app,) = started
    assert len(app.notices) == 1 and "abandoned before archiving" in app.notices[0]
    assert isinstance(app.source, FolderSource)
    assert not any((tmp_path / "vault" / "journal").iterdir())
    log = (tmp_path / "vault" / "audit" / "log.jsonl").read_text().splitlines()
    assert json.loads(log[-1])["event"] in ("session.abandoned", "startup")
    assert any(json.loads(line)["event"] == "session.abandoned" for line in log)
