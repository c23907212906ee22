"""The parts of the whole-card wipe that need no device: keyed passes and their read-back,
fingerprints, the residue scan at every sector offset, the MBR we write back, the words.

Why on plain files: a regular file behaves like a block device for pread/pwrite, so the
search and the verification logic are tested everywhere; tests/e2e runs them on devices.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import struct
import tempfile
from pathlib import Path

import pytest

from core.media.devices import MediaCandidate
from core.wipe_device import (
    FINGERPRINT_LEN,
    KEY_BYTES,
    DeviceWipeOutcome,
    Keystream,
    block_fingerprints,
    mbr_sector,
    overwrite_pass,
    residue_scan,
    verify_pass,
)

KiB = 1024


def prints_of(data: bytes) -> set[bytes]:
    with tempfile.TemporaryFile() as fh:
        fh.write(data)
        fh.seek(0)
        return block_fingerprints(fh, read_size=8 * KiB)


def test_fingerprints_skip_uniform_blocks_and_the_partial_tail() -> None:
    data = bytes(4096) + b"\xff" * 4096 + os.urandom(4096) + os.urandom(100)
    prints = prints_of(data)
    assert len(prints) == 1
    (p,) = prints
    assert len(p) == FINGERPRINT_LEN
    assert p[:16] == hashlib.sha256(data[8192:12288]).digest()[:16]


def test_fingerprints_do_not_depend_on_the_read_size() -> None:
    data = os.urandom(50_000)
    with tempfile.TemporaryFile() as fh:
        fh.write(data)
        fh.seek(0)
        small = block_fingerprints(fh, read_size=4096)
        fh.seek(0)
        big = block_fingerprints(fh)
    assert small == big and len(big) == 50_000 // 4096


def test_residue_scan_finds_blocks_at_any_sector_offset(tmp_path: Path) -> None:
    original = os.urandom(40 * KiB)
    # A block whose first sector is all zeros still has a usable anchor (a later sector).
    original = original[:4096] + bytes(512) + original[4096 + 512:]
    prints = prints_of(original)
    assert len(prints) == 10
    device = bytearray(os.urandom(3 << 20))
    placements = [512 * 9, 20480 + 512 * 3, (1 << 20) - 1024, (2 << 20) + 512 * 3,
                  (3 << 20) - 4096]
    blocks = [original[i * 4096:(i + 1) * 4096] for i in range(10)]
    for k, off in enumerate(placements):  # block k at offset off
        device[off:off + 4096] = blocks[k]
    img = tmp_path / "card.img"
    img.write_bytes(device)
    # Small chunks: some planted blocks straddle a chunk boundary.
    assert residue_scan(str(img), prints, chunk=64 * KiB) == len(placements)
    assert residue_scan(str(img), prints) == len(placements)


def test_residue_scan_of_a_clean_device_is_zero_and_reports_progress(tmp_path: Path) -> None:
    prints = prints_of(os.urandom(64 * KiB))
    img = tmp_path / "clean.img"
    img.write_bytes(bytes(1 << 20) + os.urandom(1 << 20))  # zeros are no evidence either
    seen: list[tuple[str, int, int]] = []
    assert residue_scan(str(img), prints, progress=lambda *a: seen.append(a)) == 0
    assert seen[-1] == ("residue", 2 << 20, 2 << 20)


def test_residue_scan_refuses_foreign_fingerprints(tmp_path: Path) -> None:
    img = tmp_path / "x.img"
    img.write_bytes(bytes(8192))
    with pytest.raises(ValueError):
        residue_scan(str(img), {hashlib.sha256(b"x").digest()})


def test_overwrite_then_verify_and_a_flipped_byte_is_found(tmp_path: Path) -> None:
    size = (3 << 20) + 512 * 5  # not a whole number of chunks
    img = tmp_path / "dev.img"
    img.write_bytes(bytes(size))
    key = secrets.token_bytes(KEY_BYTES)
    fd = os.open(img, os.O_RDWR)
    try:
        done: list[int] = []
        assert overwrite_pass(fd, size, key, chunk=1 << 20, on_chunk=done.append) == size
        assert done[-1] == size and done == sorted(done)
        assert verify_pass(fd, size, key, chunk=1 << 20) is None
        assert verify_pass(fd, size, secrets.token_bytes(KEY_BYTES), chunk=1 << 20) == 0
        os.pwrite(fd, bytes([os.pread(fd, 1, 2_500_001)[0] ^ 0x40]), 2_500_001)
        assert verify_pass(fd, size, key, chunk=1 << 20) == 2_500_001
    finally:
        os.close(fd)
    data = img.read_bytes()
    assert data.count(0) < size // 100  # random, not zeros


def test_keystream_is_reproducible_and_keyed() -> None:
    import mmap

    key = secrets.token_bytes(KEY_BYTES)
    a, b = mmap.mmap(-1, 8192), mmap.mmap(-1, 8192)
    Keystream(key).fill(a, 4096)
    Keystream(key).fill(b, 4096)
    assert a[:4096] == b[:4096]
    Keystream(secrets.token_bytes(KEY_BYTES)).fill(b, 4096)
    assert a[:4096] != b[:4096]


def candidate(**kw: object) -> MediaCandidate:
    base = dict(devnode="/dev/sdb1", sys_path="/x", devnum=(8, 17), fs_type="vfat",
                fs_version="FAT32", label="CAM", uuid="1234-ABCD", size_bytes=1 << 30,
                serial="S", bus="usb", kind="USB stick", disk_devnode="/dev/sdb",
                disk_devnum=(8, 16), is_partition=True, part_scheme="dos", part_type="0xc",
                part_number=1, part_offset=8192, part_size=2_000_000, part_flags="0x80")
    base.update(kw)
    return MediaCandidate(**base)  # type: ignore[arg-type]


def test_mbr_puts_back_the_partition_as_it_was() -> None:
    mbr = mbr_sector(candidate())
    assert len(mbr) == 512 and mbr[510:] == b"\x55\xaa"
    entry = mbr[446:462]
    assert entry[0] == 0x80 and entry[4] == 0x0C
    assert struct.unpack("<II", entry[8:16]) == (8192, 2_000_000)
    assert mbr[462:510] == bytes(48)  # the other three entries are empty
    second = mbr_sector(candidate(part_number=2, part_flags="", part_type="0x7"))
    assert second[446:462] == bytes(16) and second[462 + 4] == 0x07 and second[462] == 0


def test_summary_words_say_what_was_done_and_no_more() -> None:
    ok = DeviceWipeOutcome("/dev/sdb", 16 << 30, passes_done=2, bytes_written=32 << 30,
                           verified=True, fs_recreated=True, fs_type="exfat", label="CAM")
    assert ok.cleared
    assert ok.summary().startswith("whole card cleared (NIST SP 800-88 Clear)")
    assert "not a Purge" in ok.summary() and "'CAM'" in ok.summary()
    stopped = DeviceWipeOutcome("/dev/sdb", 1 << 30, passes_done=0, bytes_written=5 << 20,
                                stopped="the card was removed during pass 1")
    assert not stopped.cleared and "NOT cleared" in stopped.summary()
    bad = DeviceWipeOutcome("/dev/sdb", 1 << 30, passes_done=2, mismatch_at=4096)
    assert not bad.cleared and "differs at byte 4096" in bad.summary()
    no_mkfs = DeviceWipeOutcome("/dev/sdb", 1 << 30, passes_done=2, verified=True,
                                fs_error="the file system was not re-created (x)")
    assert no_mkfs.cleared and "format the card in the camera" in no_mkfs.summary()
    assert DeviceWipeOutcome("/dev/sdb", 1, read_only=True).summary().startswith(
        "card is write-protected")


def test_layouts_we_cannot_put_back_are_refused_before_writing() -> None:
    from core.wipe_device import WipeRefused, _check_layout

    absent = {"devnum": (4095, 1), "disk_devnum": (4095, 0)}  # no such device in sysfs
    with pytest.raises(WipeRefused, match="gpt partition table"):
        _check_layout(candidate(part_scheme="gpt", **absent))
    with pytest.raises(WipeRefused, match="not a primary partition"):
        _check_layout(candidate(part_number=5, **absent))
    with pytest.raises(WipeRefused, match="0 partitions"):  # the partition has vanished
        _check_layout(candidate(**absent))
    assert _check_layout(candidate(is_partition=False, part_scheme="", part_number=0,
                                   **absent)) == []
