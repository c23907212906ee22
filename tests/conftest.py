"""Shared fixtures: a fast test configuration, a vault, a simulated card, the shared media."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from core.config import Config, load_config

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
TEST_PASSPHRASE = b"correct horse battery staple"
# scrypt at 2**12 keeps tests quick; one test checks the shipped default's real cost.
TEST_OVERRIDES = {"patient_id": {"allow_test_ids": True}, "vault": {"scrypt_log_n": 12},
                  "media": {"accept_loop": True}}


@pytest.fixture
def cfg() -> Config:
    return load_config(use_env=False, overrides=TEST_OVERRIDES)


@pytest.fixture
def media_dir() -> Path:
    if not MEDIA.is_dir():
        pytest.skip(f"shared test media not found at {MEDIA}")
    return MEDIA


@pytest.fixture
def vault(tmp_path: Path, cfg: Config) -> Iterator[object]:
    from core.vault.vault import Vault

    v, k0 = Vault.init(tmp_path / "vault", "custodian", TEST_PASSPHRASE,
                       scrypt_log_n=cfg.vault.scrypt_log_n)
    v.k0 = k0  # type: ignore[attr-defined]
    try:
        yield v
    finally:
        v.close()


@pytest.fixture
def mount_tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Mount a fresh tmpfs (a separate file system) at a folder; unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted: list[Path] = []

    def mount(where: Path, bind_from: Path | None = None) -> Path:
        if bind_from is None:
            where.mkdir(parents=True, exist_ok=True)
            cmd = ["mount", "-t", "tmpfs", "-o", "size=16m", "cvtest", str(where)]
        else:  # bind-mount one file (or folder) over another
            cmd = ["mount", "--bind", str(bind_from), str(where)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
        mounted.append(where)
        return where

    try:
        yield mount
    finally:
        for where in reversed(mounted):
            if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(where)], capture_output=True)
