"""Shared by the custodian tests: real vaults, real ingests, and the CLI run in-process.

The CLI runs in this process through ``core.cli.main``, so the tests are quick enough to
run many commands; it is still the real argument parsing, real vault, real crypto.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from collections.abc import Iterable, Sequence
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import consent as consentmod
from core.config import Config
from core.patient_id import parse_patient_id
from core.vault.vault import Vault
from tests.conftest import TEST_PASSPHRASE

SITE_TOML = "[patient_id]\nallow_test_ids = true\n[vault]\nscrypt_log_n = 12\n"


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def run_cli(*argv: str) -> CliResult:
    """Run ``clinivault ARGV`` in this process; capture stdout, stderr and the exit code."""
    from core.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse usage errors
            code = int(exc.code or 0)
    return CliResult(code, out.getvalue(), err.getvalue())


@dataclass
class VaultFiles:
    """A closed vault made for a test, with its passphrase file, site config and audit key."""

    root: Path
    passphrase_file: Path
    site: Path
    k0: bytes
    key_file: Path

    def unlock_args(self) -> list[str]:
        return ["--passphrase-file", str(self.passphrase_file)]


def new_vault(base: Path, cfg: Config) -> VaultFiles:
    base.mkdir(parents=True, exist_ok=True)
    v, k0 = Vault.init(base / "vault", "custodian", TEST_PASSPHRASE,
                       scrypt_log_n=cfg.vault.scrypt_log_n)
    v.close()
    pw = base / "pass"
    pw.write_bytes(TEST_PASSPHRASE + b"\n")
    site = base / "site.toml"
    site.write_text(SITE_TOML)
    key = base / "audit.key"
    key.write_text(k0.hex() + "\n")
    return VaultFiles(base / "vault", pw, site, k0, key)


def make_card(root: Path, files: dict[str, bytes | Path]) -> Path:
    """A card directory: DCIM/100TEST/<name> for each file (bytes, or a file to copy)."""
    dcim = root / "DCIM" / "100TEST"
    dcim.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        if isinstance(content, Path):
            shutil.copyfile(content, dcim / name)
        else:
            (dcim / name).write_bytes(content)
    return root


def ingest(root: Path, cfg: Config, card: Path, *, patient: str = "ZAC5361",
           scheme: str = "nhi", scopes: Sequence[str] = ("record", "teaching"),
           keywords: Iterable[str] = (), body_areas: Sequence[str] = ("left forearm",),
           per_item: dict[int, dict[str, Any]] | None = None) -> str:
    """One full ingest in-process, keeping every readable image; return the session id.

    *per_item* sets the TUI's per-image fields (``keywords``, ``body_site``) by item index.
    The card is not wiped (``--wipe none``): tests compare exports with the card's files.
    """
    from core.session import IngestSession

    with Vault.open(root, actor="nurse1") as vault:
        s = IngestSession(vault, cfg, card, "nurse1")
        s.scan()
        s.assess()
        s.record_consent(consentmod.grant(
            scopes=scopes, method="written", obtained_by_name="R. Nurse",
            obtained_by_role="Registered nurse", body_areas=list(body_areas),
            statement=cfg.consent.statement))
        s.identify(parse_patient_id(patient, scheme, allow_test_ids=True))
        s.keep_all()
        for index, fields in (per_item or {}).items():
            for name, value in fields.items():
                setattr(s.items[index], name, value)
        s.finish_review(keywords)
        s.archive()
        s.skip_wipe("test")
        return s.id


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def audit_events(root: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in
            (root / "audit" / "log.jsonl").read_text().splitlines()]
