"""core.config: defaults load; a site file overrides; every bad key or type is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import load_config
from core.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "site.toml"
    p.write_text(text)
    return p


def test_defaults_load_with_every_section() -> None:
    cfg = load_config(use_env=False)
    assert set(cfg) >= {"vault", "patient_id", "consent", "quality", "imaging", "media",
                        "wipe", "kiosk"}
    assert cfg.patient_id.allow_test_ids is False
    assert cfg.vault.scrypt_log_n >= 17
    assert "photographs" in cfg.consent.statement


def test_site_file_overrides_and_int_is_accepted_for_float(tmp_path: Path) -> None:
    site = write(tmp_path, "[patient_id]\nscheme = 'nhs'\n[quality]\ndark_highlight_max = 100\n")
    cfg = load_config(site, use_env=False)
    assert cfg.patient_id.scheme == "nhs"
    assert cfg.quality.dark_highlight_max == 100.0
    assert isinstance(cfg.quality.dark_highlight_max, float)
    assert cfg.sources[-1] == site


def test_env_variable_names_the_site_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    site = write(tmp_path, "[kiosk]\nidle_lock_minutes = 2\n")
    monkeypatch.setenv("CLINIVAULT_CONFIG", str(site))
    assert load_config().kiosk.idle_lock_minutes == 2


@pytest.mark.parametrize("text, words", [
    ("[patient_id]\nschme = 'nhs'\n", ["unknown key", "[patient_id] schme", "site.toml"]),
    ("[patients]\nscheme = 'nhs'\n", ["unknown section", "[patients]"]),
    ("[kiosk]\nidle_lock_minutes = 'five'\n", ["[kiosk] idle_lock_minutes", "whole number"]),
    ("[patient_id]\nallow_test_ids = 1\n", ["allow_test_ids", "true/false"]),
    ("[media]\nfs_types = ['vfat', 3]\n", ["fs_types", "text"]),
    ("[kiosk\n", ["not valid TOML"]),
])
def test_bad_site_file_names_key_and_file(tmp_path: Path, text: str, words: list[str]) -> None:
    site = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(site, use_env=False)
    message = str(err.value)
    for w in words:
        assert w in message
    assert err.value.exit_code == 2


def test_missing_site_file_is_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", use_env=False)


def test_overrides_are_validated_like_a_site_file() -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(use_env=False, overrides={"vault": {"colour": "red"}})
