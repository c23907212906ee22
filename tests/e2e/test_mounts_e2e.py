"""Mounting real loop cards: read-only and inert, writable only when asked, always cleaned up;
a write-protected card gives the read-only outcome."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from core.config import Config
from core.media.devices import candidate_for, read_mountinfo
from core.media.identity import identify
from core.media.mounts import (
    CardReadOnly,
    MountedCard,
    find_mounts,
    holders,
    mount_card,
    runtime_dir,
)
from core.wipe_device import wipe_device
from tests.e2e.conftest import LoopCard, fuse_mount_rw, unmount

PHOTO = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 40


def entry_of(m: MountedCard) -> set[str]:
    e = m.entry()
    assert e is not None, f"{m.path} is not mounted"
    return set(e.options.split(","))


@pytest.mark.parametrize("fs", ["exfat", "vfat"])
def test_read_only_mount_is_private_inert_and_cleaned_up(
        fs: str, cfg: Config, loop_card: Callable[..., LoopCard]) -> None:
    card = loop_card(fs=fs, label="RO", files={"DCIM/100TEST/IMG_0001.JPG": PHOTO})
    c = candidate_for(card.loop, cfg)
    with mount_card(c) as m:
        assert m.owned and m.read_only
        assert m.method.startswith("fuse:")  # this kernel has no exFAT/FAT driver
        assert m.path.parent == runtime_dir()
        st = os.lstat(m.path.parent)
        assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
        assert {"ro", "nosuid", "nodev", "noexec"} <= entry_of(m)
        assert (m.path / "DCIM/100TEST/IMG_0001.JPG").read_bytes() == PHOTO
        with pytest.raises(OSError) as exc:
            (m.path / "new.txt").write_bytes(b"no")
        assert exc.value.errno == errno.EROFS
        path = m.path
    assert not m.mounted
    assert all(e.mount_point != str(path) for e in read_mountinfo())
    assert not path.exists()
    assert holders({c.devnum}) == {}


@pytest.mark.parametrize("fs", ["exfat", "vfat"])
def test_remount_rw_for_the_wipe_then_unmount(
        fs: str, cfg: Config, loop_card: Callable[..., LoopCard]) -> None:
    card = loop_card(fs=fs, label="RW", files={"DCIM/IMG_0001.JPG": PHOTO})
    c = candidate_for(card.loop, cfg)
    m = mount_card(c)
    try:
        m.remount_rw()
        assert not m.read_only and "rw" in entry_of(m)
        assert {"nosuid", "nodev", "noexec"} <= entry_of(m)
        assert not m.stable_inodes and m.generation == 1  # a FUSE remount is a fresh mount
        (m.path / "DCIM/IMG_0001.JPG").unlink()
        m.remount_ro()
        assert m.read_only and "ro" in entry_of(m)
        assert not (m.path / "DCIM/IMG_0001.JPG").exists()
    finally:
        m.unmount()
    assert find_mounts(c.devnum) == []
    with mount_card(c) as again:  # the change reached the card
        assert (again.path / "DCIM").is_dir()
        assert not (again.path / "DCIM/IMG_0001.JPG").exists()


def test_kernel_mount_of_ext4_skips_the_journal_and_keeps_inodes(
        cfg: Config, loop_card: Callable[..., LoopCard]) -> None:
    card = loop_card(fs="ext4", label="EXT", files={"a.jpg": PHOTO})
    c = candidate_for(card.loop, cfg)
    with mount_card(c) as m:
        assert m.method == "mount"
        e = m.entry()
        assert e is not None and "norecovery" in e.super_options.split(",")
        before = os.stat(m.path / "a.jpg")
        m.remount_rw()
        after = os.stat(m.path / "a.jpg")
        assert (before.st_dev, before.st_ino) == (after.st_dev, after.st_ino)
        assert m.stable_inodes


def test_existing_mount_is_used_and_left_alone(cfg: Config, tmp_path: Path,
                                               loop_card: Callable[..., LoopCard]) -> None:
    card = loop_card(fs="exfat", label="THEIRS", files={"x.jpg": PHOTO})
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    fuse_mount_rw(card.loop, "exfat", theirs)
    try:
        c = candidate_for(card.loop, cfg)
        m = mount_card(c)
        assert (m.method, m.owned, m.path) == ("existing", False, theirs)
        m.unmount()
        assert any(e.mount_point == str(theirs) for e in read_mountinfo())
    finally:
        unmount(theirs, card.loop)


def test_write_protected_card_gives_the_read_only_outcome(
        cfg: Config, tmp_path: Path, loop_card: Callable[..., LoopCard]) -> None:
    card = loop_card(fs="exfat", label="LOCKED", files={"DCIM/IMG_0001.JPG": PHOTO},
                     read_only=True)
    before = card.sha256()
    c = candidate_for(card.loop, cfg)
    with mount_card(c) as m:
        assert (m.path / "DCIM/IMG_0001.JPG").read_bytes() == PHOTO
        with pytest.raises(CardReadOnly) as exc:
            m.remount_rw()
        assert "write-protected" in exc.value.user_message()
        assert card.loop in exc.value.user_message()
        assert m.read_only and m.mounted
    outcome = wipe_device(c, identify(c), vault_path=tmp_path / "vault")
    assert outcome.read_only and not outcome.cleared and outcome.bytes_written == 0
    assert "write-protected" in outcome.summary()
    assert card.sha256() == before
