"""The card a session reads and wipes: a mounted folder, or a block device we mount.

Why a separate piece: a session must not care whether its source is a directory (demo,
tests, a card the desktop mounted) or a removable block device (the kiosk). For a device
it records the card's identity at insertion, mounts it read-only, remounts it read-write
only for the wipe, and hands the whole-card wipe what it needs; for a directory those
steps are no-ops. After a remount the FUSE drivers give files new inode numbers, so the
session re-identifies its files (``core.session.reidentify``) before wiping.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.config import Config
from core.errors import BadInput
from core.media.devices import MediaCandidate, candidate_for
from core.media.identity import CardIdentity, identify
from core.media.mounts import MountedCard, mount_card


def is_block_device(source: str | os.PathLike[str]) -> bool:
    try:
        return stat.S_ISBLK(os.stat(source).st_mode)
    except OSError:
        return False


@dataclass
class CardSource:
    """Where the session's card is. ``root`` is the directory its files are read from."""

    root: Path
    candidate: MediaCandidate | None = None
    identity: CardIdentity | None = None
    mounted: MountedCard | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_device(self) -> bool:
        return self.candidate is not None

    @property
    def label(self) -> str | None:
        return self.candidate.label if self.candidate else None

    def journal_dict(self) -> dict[str, Any]:
        return {"root": os.fsdecode(self.root),
                "identity": self.identity.as_dict() if self.identity else None}

    def make_writable(self) -> bool:
        """Remount read-write for the per-file wipe; True when inode numbers survived.

        Raises ``core.media.mounts.CardReadOnly`` for a write-protected card."""
        if self.mounted is None or not self.mounted.read_only:
            return True
        self.mounted.remount_rw()
        self.root = self.mounted.path
        return self.mounted.stable_inodes

    def close(self) -> None:
        """Unmount what we mounted (a whole-card wipe has already done so)."""
        if self.mounted is not None and self.mounted.owned and self.mounted.mounted:
            self.mounted.unmount()


def open_card(source: str | os.PathLike[str], cfg: Config, *,
              vault_root: Path | None) -> CardSource:
    """A directory as it is, or a block device checked, identified and mounted read-only."""
    path = Path(source)
    if is_block_device(path):
        candidate = candidate_for(os.fspath(path), cfg, vault_path=vault_root)
        identity = identify(candidate)
        mounted = mount_card(candidate, read_only=True)
        return CardSource(root=mounted.path, candidate=candidate, identity=identity,
                          mounted=mounted)
    if not path.exists():
        raise BadInput(f"card path {path} does not exist")
    if not path.is_dir():
        raise BadInput(f"card path {path} is not a directory or a block device",
                       "Give the directory where the card is mounted, or its device")
    return CardSource(root=path)
