"""The whole-card wipe on real loop cards, checked by a scan of the image file that does not use
core.wipe_device; refusals leave the card untouched; the residue scan finds what a per-file
wipe leaves behind (positive control) and nothing after the whole-card wipe."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from core.config import Config
from core.errors import FailedSafely
from core.media.devices import MediaCandidate, candidate_for, describe_device
from core.media.identity import CardChanged, identify, same_card
from core.media.mounts import find_mounts, mount_card
from core.media.scan import scan_card
from core.wipe import wipe_files
from core.wipe_device import (
    NOT_PURGE_WORDS,
    WipeRefused,
    block_fingerprints,
    residue_scan,
    wipe_device,
)
from tests.e2e.conftest import (
    LoopCard,
    blkid,
    blocks_found,
    original_blocks,
    run,
    settle,
    unmount,
)
from tests.helpers.cards import jpeg_bytes

SIZE = 32 << 20


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    return {f"DCIM/100TEST/IMG_{i + 1:04d}.JPG": jpeg_bytes(200 + i) for i in range(3)}


def fingerprints_of(root: Path, names: list[str]) -> set[bytes]:
    """What the session computes while archiving: block fingerprints of each card file."""
    prints: set[bytes] = set()
    for name in names:
        with open(root / name, "rb") as fh:
            prints |= block_fingerprints(fh)
    return prints


def partition_entry(image: Path) -> tuple[int, int, int]:
    """(type, start LBA, sectors) of MBR entry 1, read from the image."""
    mbr = image.read_bytes()[:512]
    assert mbr[510:512] == b"\x55\xaa"
    e = mbr[446:462]
    return e[4], int.from_bytes(e[8:12], "little"), int.from_bytes(e[12:16], "little")


@pytest.mark.parametrize(("fs", "partitioned"), [("exfat", False), ("vfat", False),
                                                 ("ext4", False), ("exfat", True),
                                                 ("vfat", True)],
                         ids=["exfat", "vfat", "ext4", "exfat-mbr", "vfat-mbr"])
def test_whole_card_wipe_leaves_no_block_of_any_original(
        fs: str, partitioned: bool, cfg: Config, tmp_path: Path, photos: dict[str, bytes],
        loop_card: Callable[..., LoopCard]) -> None:
    card = loop_card(fs=fs, label="CAM_01", size=SIZE, files=photos, partitioned=partitioned)
    blocks = original_blocks(photos.values())
    found_before = blocks_found(card.image, blocks)
    assert found_before >= len(blocks) > 500  # the independent scanner sees every block

    c = candidate_for(card.fs_node, cfg)
    ident = identify(c)
    m = mount_card(c)
    prints = fingerprints_of(m.path, list(photos))
    assert len(prints) == len(blocks)
    assert residue_scan(c.disk_devnode, prints) == found_before
    if partitioned:
        entry_before = partition_entry(card.image)

    seen: list[tuple[str, int, int]] = []
    outcome = wipe_device(c, ident, vault_path=tmp_path / "vault", mounted=m,
                          progress=lambda phase, done, total: seen.append((phase, done, total)))

    assert outcome.cleared, outcome.summary()
    assert outcome.passes_done == 2 and outcome.verified
    assert outcome.bytes_written == 2 * ident.disk_size == 2 * SIZE
    assert outcome.fs_recreated and outcome.fs_error is None
    assert "NIST SP 800-88 Clear" in outcome.summary() and NOT_PURGE_WORDS in outcome.summary()
    assert not m.mounted and find_mounts(c.devnum) == []
    phases = [p for p, _d, _t in seen]
    assert phases.index("pass 1") < phases.index("pass 2") < phases.index("verify")
    for phase in ("pass 1", "pass 2", "verify"):
        assert max(d for p, d, _t in seen if p == phase) == SIZE

    # The independent check: no 4 KiB block of any original at any 512-byte offset.
    assert blocks_found(card.image, blocks) == 0
    assert residue_scan(c.disk_devnode, prints) == 0

    fs_node = outcome.fs_devnode
    assert fs_node == card.fs_node
    now = blkid(fs_node)
    assert now["TYPE"] == fs and now["LABEL"] == "CAM_01"
    assert now["UUID"] == outcome.new_uuid != c.uuid
    if partitioned:
        assert partition_entry(card.image) == entry_before
    settle()
    fresh = candidate_for(fs_node, cfg)
    assert fresh.uuid == outcome.new_uuid
    with mount_card(fresh) as again:
        names = set(os.listdir(again.path))
    if fs == "vfat":  # fusefat lists the volume label entry as an empty file
        assert names <= {"CAM_01"}
        check = run("fsck.vfat", "-n", fs_node).stdout
        assert re.search(r"\b0/\d+ clusters", check), check  # no cluster in use
    elif fs == "ext4":
        assert names == {"lost+found"}
    else:
        assert names == set()


def test_a_different_card_at_the_same_node_is_never_wiped(
        cfg: Config, tmp_path: Path, photos: dict[str, bytes],
        loop_card: Callable[..., LoopCard]) -> None:
    card = loop_card(fs="exfat", label="PATIENT_A", size=SIZE, files=photos)
    c = candidate_for(card.loop, cfg)
    ident = identify(c)
    node = card.loop
    card.detach()

    # A byte-for-byte clone (same file-system UUID and label) in the same loop device: only
    # the kernel's disk sequence number tells that it is another insertion.
    clone = loop_card(fs="exfat", label="CLONE", size=SIZE, attach=False)
    clone.image.write_bytes(card.image.read_bytes())
    clone.attach(node=node)
    before = clone.sha256()
    clone_c = candidate_for(node, cfg)
    assert clone_c.uuid == c.uuid and same_card(ident, clone_c)  # would resume a session
    with pytest.raises(CardChanged) as exc:
        wipe_device(c, ident, vault_path=tmp_path / "vault")
    assert "removed and a card inserted" in exc.value.user_message()
    assert "Nothing was written" in exc.value.user_message()
    assert clone.sha256() == before
    clone.detach()

    other = loop_card(fs="exfat", label="PATIENT_B", size=SIZE, attach=False)
    other.attach(node=node)
    before = other.sha256()
    other_c = candidate_for(node, cfg)
    assert not same_card(ident, other_c)
    with pytest.raises(CardChanged):
        wipe_device(c, ident, vault_path=tmp_path / "vault")
    assert other.sha256() == before


def test_the_vaults_own_disk_is_refused_even_with_accept_loop(
        cfg: Config, tmp_path: Path, loop_card: Callable[..., LoopCard]) -> None:
    card = loop_card(fs="ext4", label="VAULTDISK", size=SIZE)
    c = describe_device(card.loop, cfg)  # a card, as far as the classifier alone can tell
    assert isinstance(c, MediaCandidate) and cfg.media.accept_loop
    ident = identify(c)
    where = tmp_path / "vaultdisk"
    where.mkdir()
    run("mount", "-t", "ext4", card.loop, str(where))
    try:
        vault = where / "vault"
        vault.mkdir()
        (vault / "keep.bin").write_bytes(b"vault data")
        os.sync()  # (ext4 itself writes on mount and unmount: compare while mounted)
        before = hashlib.sha256(card.image.read_bytes()).hexdigest()
        with pytest.raises(WipeRefused) as exc:
            wipe_device(c, ident, vault_path=vault)
        assert "holds the system or the vault" in exc.value.user_message()
        os.sync()
        assert hashlib.sha256(card.image.read_bytes()).hexdigest() == before
        assert find_mounts(c.devnum)  # still mounted: nothing was unmounted either
        assert (vault / "keep.bin").read_bytes() == b"vault data"
    finally:
        run("umount", str(where), check=False)


def test_a_card_mounted_by_another_program_is_refused(
        cfg: Config, tmp_path: Path, photos: dict[str, bytes],
        loop_card: Callable[..., LoopCard]) -> None:
    card = loop_card(fs="exfat", label="BUSY", size=SIZE, files=photos)
    c = candidate_for(card.loop, cfg)
    ident = identify(c)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    # Read-only: a read-write exFAT FUSE mount sets its dirty flag on the image in its own
    # time, which would change the bytes this test compares whatever the wipe does.
    run("mount.exfat-fuse", "-o", "ro", card.loop, str(theirs))
    try:
        before = card.sha256()
        with pytest.raises(FailedSafely) as exc:
            wipe_device(c, ident, vault_path=tmp_path / "vault")
        assert f"mounted at {theirs} by another program" in exc.value.user_message()
        assert card.sha256() == before
    finally:
        unmount(theirs, card.loop)


def test_residue_scan_finds_what_a_per_file_wipe_leaves(
        cfg: Config, tmp_path: Path, photos: dict[str, bytes],
        loop_card: Callable[..., LoopCard]) -> None:
    """Positive control: the camera's own "delete" left a copy of a photo in free space; the
    per-file wipe overwrites the file it can see, the residue scan still finds the copy, and
    only the whole-card wipe removes it."""
    name = "DCIM/100TEST/IMG_0001.JPG"
    data = photos[name]
    card = loop_card(fs="exfat", label="CAM", size=SIZE, files={name: data},
                     deleted={"DCIM/100TEST/IMG_0000.JPG": data})
    blocks = original_blocks([data])
    c = candidate_for(card.loop, cfg)
    ident = identify(c)
    m = mount_card(c)
    prints = fingerprints_of(m.path, [name])
    not_wiped = residue_scan(c.disk_devnode, prints)
    assert not_wiped == blocks_found(card.image, blocks) >= 2 * len(blocks)  # file + copy

    m.remount_rw()
    scan = scan_card(m.path)
    files = [item.primary for item in scan.items]
    assert [f.parts for f in files] == [tuple(name.split("/"))]
    per_file = wipe_files(m.path, files)
    assert per_file.wiped == [tuple(name.split("/"))]
    m.remount_ro()
    assert not (m.path / name).exists()

    left = residue_scan(c.disk_devnode, prints)
    assert 0 < left < not_wiped
    assert blocks_found(card.image, blocks) == left  # the independent scan agrees

    outcome = wipe_device(c, ident, vault_path=tmp_path / "vault", mounted=m)
    assert outcome.cleared
    assert residue_scan(c.disk_devnode, prints) == 0
    assert blocks_found(card.image, blocks) == 0


def test_a_remove_event_during_the_wipe_stops_it(
        cfg: Config, tmp_path: Path, photos: dict[str, bytes],
        loop_card: Callable[..., LoopCard]) -> None:
    import pyudev

    card = loop_card(fs="vfat", label="PULLED", size=SIZE, files=photos)
    c = candidate_for(card.loop, cfg)
    ident = identify(c)
    uevent = Path(f"/sys/block/{os.path.basename(card.loop)}/uevent")
    probe = pyudev.Monitor.from_netlink(pyudev.Context())
    probe.filter_by("block")
    probe.start()
    pulled: list[int] = []

    def progress(phase: str, done: int, total: int) -> None:
        if phase == "pass 1" and done >= total // 4 and not pulled:
            pulled.append(done)
            uevent.write_text("remove")  # udev announces the card gone, as on a real pull
            while True:  # wait until udev has broadcast it (the wipe's monitor has it too)
                dev = probe.poll(timeout=5)
                assert dev is not None, "udev did not announce the remove"
                if dev.action == "remove" and dev.device_node == card.loop:
                    return

    try:
        outcome = wipe_device(c, ident, vault_path=tmp_path / "vault", progress=progress,
                              chunk=1 << 20)
    finally:
        uevent.write_text("add")
        settle()
    assert pulled, "the wipe never reached a quarter of pass 1"
    assert not outcome.cleared and not outcome.fs_recreated
    assert outcome.stopped == "the card was removed during pass 1"
    assert 0 < outcome.bytes_written < SIZE
    assert "partly overwritten and NOT cleared" in outcome.summary()


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "tmpfs"
    where.mkdir()
    run("mount", "-t", "tmpfs", "-o", "size=12m,mode=0700", "tmpfs", str(where))
    try:
        yield where
    finally:
        run("umount", "-l", str(where), check=False)


def test_a_card_that_fails_writes_stops_the_wipe(
        cfg: Config, tmp_path: Path, small_tmpfs: Path,
        loop_card: Callable[..., LoopCard]) -> None:
    """A 32 MiB loop device backed by a file on a 12 MiB tmpfs: writes past 12 MiB fail in
    the device, as on a failing card. The wipe stops, says so, and re-creates nothing."""
    card = loop_card(fs="exfat", label="FAILING", size=SIZE,
                     files={"a.jpg": jpeg_bytes(5, size=(400, 300))}, folder=small_tmpfs)
    c = candidate_for(card.loop, cfg)
    outcome = wipe_device(c, identify(c), vault_path=tmp_path / "vault", chunk=1 << 20)
    assert not outcome.cleared and not outcome.fs_recreated
    assert outcome.stopped is not None and "during pass 1" in outcome.stopped
    assert "failed" in outcome.stopped or "stopped responding" in outcome.stopped
    assert 0 < outcome.bytes_written < SIZE
    assert "NOT cleared" in outcome.summary()

