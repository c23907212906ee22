"""Where each part of a vault lives on disk, in one place.

```
VAULT/
  vault.json          version, public key, custodian key slots, sealed audit key K0
  lock                flock'd by the one process that owns the vault
  objects/ab/<id>     encrypted objects (docs/FORMAT.md), written once, never modified
  catalog/            TinyDB files (atomic storage)
  audit/log.jsonl     hash-chained, forward-secure audit log
  audit/key.json      the current evolving audit key state (replaced atomically)
  journal/<session>.json  state of unfinished sessions (crash recovery)
  users.json          operator / custodian / auditor accounts (hashed PINs)
  tmp/                temp files; anything here at start-up is crash debris
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class VaultLayout:
    root: Path

    @property
    def keyfile(self) -> Path:
        return self.root / "vault.json"

    @property
    def lockfile(self) -> Path:
        return self.root / "lock"

    @property
    def objects(self) -> Path:
        return self.root / "objects"

    @property
    def catalog(self) -> Path:
        return self.root / "catalog"

    @property
    def audit_dir(self) -> Path:
        return self.root / "audit"

    @property
    def audit_log(self) -> Path:
        return self.audit_dir / "log.jsonl"

    @property
    def audit_key(self) -> Path:
        return self.audit_dir / "key.json"

    @property
    def journal(self) -> Path:
        return self.root / "journal"

    @property
    def users(self) -> Path:
        return self.root / "users.json"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    def object_path(self, object_id: str) -> Path:
        return self.objects / object_id[:2] / object_id

    def directories(self) -> list[Path]:
        return [self.objects, self.catalog, self.audit_dir, self.journal, self.tmp]
