"""The session journal: one small JSON file per unfinished session, replaced atomically.

Why: a session must survive a crash at any point. The journal records the state reached
and what recovery needs to finish or roll back (the card root, each file's identity, the
object ids planned and verified) — and nothing identifying in plaintext: the patient ID and
consent travel only inside ``sealed`` (sealed to the vault public key).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core import crashpoints
from core.errors import VaultError
from core.fsutil import atomic_write_bytes, ensure_dir, fsync_dir


@dataclass
class Journal:
    path: Path
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, directory: Path, session: str, data: dict[str, Any]) -> Journal:
        ensure_dir(directory)
        j = cls(directory / f"{session}.json", {"session": session, **data})
        j.write(data.get("state", "new"))
        return j

    @classmethod
    def load(cls, path: Path) -> Journal:
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise VaultError(f"session journal {path.name} is unreadable: {exc}",
                             "Run 'clinivault check' and keep the card until it is resolved"
                             ) from None
        if not isinstance(data, dict) or "session" not in data or "state" not in data:
            raise VaultError(f"session journal {path.name} is not a clinivault journal")
        return cls(path, data)

    @property
    def state(self) -> str:
        return str(self.data.get("state"))

    def write(self, state: str, **changes: Any) -> None:
        """Record *state* (and *changes*) durably; a crash point follows every transition."""
        self.data.update(changes)
        self.data["state"] = state
        atomic_write_bytes(self.path, json.dumps(self.data, sort_keys=True,
                                                 ensure_ascii=True).encode())
        crashpoints.reached(f"journal.{state}")

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        fsync_dir(self.path.parent)


def unfinished(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("*.json") if not p.name.startswith("."))
