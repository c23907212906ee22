"""Whole-card sanitising: overwrite every sector twice, verify, re-format; then a residue scan.

Why whole-card: a per-file overwrite cannot reach what the file system no longer points at
(deleted copies, cluster slack) nor, on flash, blocks the controller has remapped. Overwriting
every user-addressable sector of the card and reading the last pass back is what NIST SP
800-88 calls **Clear** for flash media; it is not **Purge** (sectors the controller has
retired stay out of reach of any overwrite), and the summary says so. ISM control 0359 and
SP 800-88's removable-flash guidance ask for two passes: a keyed random stream (AES-CTR
under a random key held only in memory), then a second stream under a second key. The last
pass is verified by reading it back past the page cache (``O_DIRECT``) and regenerating the
stream, as nwipe does, so a card that silently drops writes is caught.

Before writing: the card's identity is re-checked (a swapped card is never wiped), the disk
must not hold the system or the vault, every partition is unmounted, the whole disk is opened
``O_EXCL`` and fstat must show the expected block device. A udev ``remove`` (or EIO/ENODEV)
during the wipe stops it with a message saying the card is partly overwritten. Afterwards the
file system is re-created with its type and label (and the MBR entry, for a partitioned card),
so the card goes back into the camera empty.

The residue scan reads the whole device and looks for every 4 KiB block of every archived and
discarded file at every 512-byte offset (file systems align file data to sectors, not to
4 KiB). Hashing 4 KiB at every sector offset would be 8 SHA-256 per 4 KiB read (~50 MB/s), so
each fingerprint carries an anchor: a 64-bit linear hash of one 512-byte sector of the block,
computed for every device sector with one numpy dot product; only sectors whose anchor matches
are confirmed with SHA-256. A chance anchor match costs one hash, never a wrong answer.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import mmap
import os
import secrets
import shutil
import stat
import struct
import subprocess
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from core.errors import FailedSafely
from core.media.devices import DevNum, MediaCandidate, human_size, system_disk_ids
from core.media.identity import CardIdentity, probe_fs, recheck
from core.media.mounts import MountedCard, device_read_only, unmount_all

BLKRRPART = 0x125F
BLKFLSBUF = 0x1261
BLKSSZGET = 0x1268
SECTOR = 512
BLOCK = 4096
CHUNK = 2 << 20  # small enough to stay in the CPU cache between AES and the write
PASSES = 2
KEY_BYTES = 16

PHASE_PASS = "pass {}"
PHASE_VERIFY = "verify"
PHASE_RESIDUE = "residue"
ProgressFn = Callable[[str, int, int], None]
"""``progress(phase, done_bytes, total_bytes)``; phase is "pass 1", "pass 2", "verify" or
"residue"."""

CLEAR_WORDS = ("whole card cleared (NIST SP 800-88 Clear): every addressable sector "
               "overwritten twice and verified")
NOT_PURGE_WORDS = ("not a Purge: sectors the card's controller has retired are out of reach "
                   "of any overwrite")
PER_FILE_WORDS = ("files overwritten and removed; on flash media this is not a sanitisation "
                  "of the card")

_GONE_ERRNOS = frozenset({errno.EIO, errno.ENODEV, errno.ENXIO, errno.ENOMEDIUM,
                          errno.ESHUTDOWN})
_RO_ERRNOS = frozenset({errno.EROFS, errno.EPERM})

MKFS: dict[str, str] = {"exfat": "mkfs.exfat", "vfat": "mkfs.vfat", "ext4": "mkfs.ext4",
                        "ext3": "mkfs.ext3", "ext2": "mkfs.ext2", "ntfs": "mkfs.ntfs",
                        "hfsplus": "mkfs.hfsplus"}


class WipeRefused(FailedSafely):
    """The whole-card wipe did not start: nothing was written. The message says why."""


@dataclass
class DeviceWipeOutcome:
    """What the whole-card wipe did; :meth:`summary` says it in SP 800-88's words."""

    devnode: str
    size_bytes: int
    mode: str = "device"
    passes_done: int = 0
    bytes_written: int = 0
    verified: bool = False
    mismatch_at: int | None = None
    fs_recreated: bool = False
    fs_type: str = ""
    label: str = ""
    new_uuid: str = ""
    fs_devnode: str = ""
    """Where the new file system is (the partition's node may have changed)."""
    fs_error: str | None = None
    read_only: bool = False
    stopped: str | None = None

    @property
    def cleared(self) -> bool:
        return self.passes_done == PASSES and self.verified and not self.stopped

    def summary(self) -> str:
        if self.read_only:
            return "card is write-protected: the whole-card wipe did not run"
        if self.stopped:
            partly = ("the card is partly overwritten and NOT cleared"
                      if self.bytes_written else "nothing was overwritten")
            return f"whole-card wipe stopped: {self.stopped}; {partly}"
        if self.mismatch_at is not None:
            return (f"card overwritten twice but the read-back differs at byte "
                    f"{self.mismatch_at}: NOT cleared; the card may be failing, destroy it")
        text = f"{CLEAR_WORDS} ({human_size(self.size_bytes)})"
        if self.fs_recreated:
            label = f" '{self.label}'" if self.label else ""
            text += f"; empty {self.fs_type} file system{label} re-created"
        elif self.fs_error:
            text += f"; {self.fs_error}: format the card in the camera before use"
        return f"{text}; {NOT_PURGE_WORDS}"

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "device": self.devnode, "size_bytes": self.size_bytes,
                "passes": self.passes_done, "bytes_written": self.bytes_written,
                "verified": self.verified, "cleared": self.cleared,
                "mismatch_at": self.mismatch_at, "fs_recreated": self.fs_recreated,
                "fs_type": self.fs_type, "label": self.label, "new_uuid": self.new_uuid,
                "fs_devnode": self.fs_devnode,
                "fs_error": self.fs_error, "read_only": self.read_only,
                "stopped": self.stopped, "words": self.summary()}


class _Stop(Exception):
    def __init__(self, words: str) -> None:
        super().__init__(words)
        self.words = words


# -- the keyed stream ------------------------------------------------------------------------

class Keystream:
    """AES-128-CTR keystream from offset 0: the same key regenerates it for the read-back.

    AES-128 rather than -256: the stream only has to be unpredictable to the card (so it
    cannot fake the read-back) for the minutes of the wipe, and it is 30% cheaper, which
    matters when the overwrite competes with the kernel for the kiosk's CPU.

    The stream is made by encrypting zeros in 256 KiB pieces: a zero buffer that stays in
    the CPU cache makes this about 1.5 times faster than encrypting a whole chunk of zeros.
    """

    PIECE = 256 << 10

    def __init__(self, key: bytes) -> None:
        self._enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
        self._zeros = memoryview(bytes(self.PIECE))

    def fill(self, buf: mmap.mmap, n: int) -> None:
        """Write the next *n* bytes of the stream into *buf* (which has 16 bytes spare)."""
        out = memoryview(buf)
        try:
            for at in range(0, n, self.PIECE):
                step = min(self.PIECE, n - at)
                self._enc.update_into(self._zeros[:step], out[at:at + step + 15])
        finally:
            out.release()

    def xor_into(self, data: memoryview, out: mmap.mmap) -> None:
        """*data* XOR the next ``len(data)`` bytes of the stream, into *out*."""
        self._enc.update_into(data, out)


def _buffers(count: int, size: int) -> list[mmap.mmap]:
    # Anonymous maps are page-aligned, as O_DIRECT needs; 4 KiB spare for update_into.
    return [mmap.mmap(-1, size + BLOCK) for _ in range(count)]


def _pwrite_all(fd: int, data: memoryview, offset: int) -> int:
    done = 0
    while done < len(data):
        n = os.pwrite(fd, data[done:], offset + done)
        if n <= 0:
            raise OSError(errno.EIO, "short write")
        done += n
    return done


def _pread_exact(fd: int, buf: mmap.mmap, n: int, offset: int) -> int:
    view = memoryview(buf)
    done = 0
    while done < n:
        got = os.preadv(fd, [view[done:n]], offset + done)
        if got <= 0:
            break
        done += got
    view.release()
    return done


def overwrite_pass(fd: int, size: int, key: bytes, *, chunk: int = CHUNK,
                   on_chunk: Callable[[int], None] | None = None) -> int:
    """Write the keystream of *key* over bytes ``[0, size)`` of *fd*; return bytes written.

    Encryption (holding the GIL) in this thread overlaps the write system call (which
    releases it) in a worker thread, with three buffers in flight. *on_chunk(done)* runs
    after each completed write; an exception from it stops the pass.
    """
    stream = Keystream(key)
    bufs = _buffers(3, chunk)
    pending: deque[tuple[Future[int], int]] = deque()
    written = 0
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="clinivault-wipe") as pool:
            try:
                for i, offset in enumerate(range(0, size, chunk)):
                    if len(pending) == len(bufs):
                        fut, _n = pending.popleft()
                        written += fut.result()
                        if on_chunk:
                            on_chunk(written)
                    n = min(chunk, size - offset)
                    buf = bufs[i % len(bufs)]
                    stream.fill(buf, n)
                    pending.append((pool.submit(_pwrite_all, fd, memoryview(buf)[:n], offset),
                                    n))
                while pending:
                    fut, _n = pending.popleft()
                    written += fut.result()
                    if on_chunk:
                        on_chunk(written)
            finally:
                for fut, _n in pending:  # let in-flight writes finish before buffers go
                    with contextlib.suppress(BaseException):
                        fut.result()
    finally:
        for b in bufs:
            with contextlib.suppress(BufferError):
                b.close()
    return written


def verify_pass(fd: int, size: int, key: bytes, *, chunk: int = CHUNK,
                on_chunk: Callable[[int], None] | None = None) -> int | None:
    """Read ``[0, size)`` back and compare with the keystream of *key*.

    Returns None when every byte matches, else the offset of the first byte that differs.
    Reads run in a worker thread, one chunk ahead of the comparison.
    """
    stream = Keystream(key)
    bufs = _buffers(2, chunk)
    out = _buffers(1, chunk)[0]
    offsets = list(range(0, size, chunk))
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="clinivault-verify") as pool:
            ahead: Future[int] | None = None
            if offsets:
                ahead = pool.submit(_pread_exact, fd, bufs[0], min(chunk, size), 0)
            for i, offset in enumerate(offsets):
                n = min(chunk, size - offset)
                assert ahead is not None
                got = ahead.result()
                ahead = None
                if i + 1 < len(offsets):
                    nxt = offsets[i + 1]
                    ahead = pool.submit(_pread_exact, fd, bufs[(i + 1) % 2],
                                        min(chunk, size - nxt), nxt)
                if got < n:
                    return offset + got
                view = memoryview(bufs[i % 2])[:n]
                stream.xor_into(view, out)
                view.release()
                diff = np.frombuffer(out, dtype=np.uint8, count=n)
                if diff.any():
                    return offset + int(np.flatnonzero(diff)[0])
                if on_chunk:
                    on_chunk(offset + n)
            return None
    finally:
        for b in [*bufs, out]:
            with contextlib.suppress(BufferError):
                b.close()


# -- removal while wiping --------------------------------------------------------------------

class RemovalWatch:
    """Notices the card going away: a udev ``remove`` (or a media change leaving no medium)
    for the disk or one of its partitions, or the kernel's size dropping to 0."""

    def __init__(self, disk_devnum: DevNum) -> None:
        self.disk_devnum = disk_devnum
        self.sys_path = str(Path(f"/sys/dev/block/{disk_devnum[0]}:{disk_devnum[1]}")
                            .resolve())
        self.monitor: Any = None
        try:
            import pyudev

            ctx = pyudev.Context()
            self.monitor = pyudev.Monitor.from_netlink(ctx)
            self.monitor.filter_by("block")
            self.monitor.start()
        except Exception:  # no udev: the size check and I/O errors still catch a pull
            self.monitor = None

    def close(self) -> None:
        self.monitor = None  # pyudev closes the netlink socket when the monitor goes

    def _ours(self, sys_path: str) -> bool:
        return sys_path == self.sys_path or sys_path.startswith(self.sys_path + "/")

    def gone(self) -> str | None:
        if self.monitor is not None:
            while True:
                dev = self.monitor.poll(timeout=0)
                if dev is None:
                    break
                if not self._ours(dev.sys_path):
                    continue
                if dev.action == "remove":
                    return "the card was removed"
                if (dev.action == "change" and dev.properties.get("DISK_MEDIA_CHANGE") == "1"
                        and _sysfs_size(self.disk_devnum) == 0):
                    return "the card was removed"
        if _sysfs_size(self.disk_devnum) == 0:
            return "the card was removed"
        return None

    def wait_for_uuid(self, uuid: str, timeout: float = 5.0) -> bool:
        """Wait for udev to have seen the new file system (so a re-listing shows it)."""
        if self.monitor is None or not uuid or not os.path.exists("/run/udev/control"):
            return False  # no udevd to wait for
        import time

        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            dev = self.monitor.poll(timeout=left)
            if dev is None:
                return False
            if self._ours(dev.sys_path) and dev.properties.get("ID_FS_UUID") == uuid:
                return True
        return False


def _sysfs_size(devnum: DevNum) -> int:
    try:
        return int(Path(f"/sys/dev/block/{devnum[0]}:{devnum[1]}/size").read_text()) * 512
    except (OSError, ValueError):
        return 0


# -- the whole-card wipe ---------------------------------------------------------------------

def _partitions(disk_devnum: DevNum) -> list[tuple[str, DevNum]]:
    base = Path(f"/sys/dev/block/{disk_devnum[0]}:{disk_devnum[1]}")
    out = []
    with contextlib.suppress(OSError):
        for entry in sorted(base.resolve().iterdir()):
            if (entry / "partition").exists():
                major, minor = (entry / "dev").read_text().strip().split(":")
                out.append((entry.name, (int(major), int(minor))))
    return out


def _check_layout(candidate: MediaCandidate) -> list[DevNum]:
    """Refuse layouts we cannot put back; return the devnums of the disk's partitions."""
    parts = _partitions(candidate.disk_devnum)
    nums = [num for _name, num in parts]
    if candidate.is_partition:
        if candidate.part_scheme != "dos":
            raise WipeRefused(f"{candidate.disk_devnode} has a {candidate.part_scheme or 'unknown'}"
                              " partition table, which cameras do not write; the whole-card "
                              "wipe was refused", "Nothing was written")
        if not 1 <= candidate.part_number <= 4 or not candidate.part_size:
            raise WipeRefused(f"{candidate.devnode} is not a primary partition; the whole-card "
                              "wipe was refused", "Nothing was written")
        if nums != [candidate.devnum]:
            raise WipeRefused(f"{candidate.disk_devnode} has {len(nums)} partitions and only "
                              f"{candidate.devnode} was read; the whole-card wipe would destroy "
                              "the others", "Nothing was written")
    elif nums:
        raise WipeRefused(f"{candidate.disk_devnode} has partitions besides the file system "
                          "that was read", "Nothing was written")
    return nums


def _open_disk(path: str, devnum: DevNum) -> int:
    flags = os.O_RDWR | os.O_EXCL | os.O_CLOEXEC
    try:
        fd = os.open(path, flags | os.O_DIRECT)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISBLK(st.st_mode) or (os.major(st.st_rdev), os.minor(st.st_rdev)) != devnum:
            raise WipeRefused(f"{path} is not the expected block device "
                              f"{devnum[0]}:{devnum[1]}", "Nothing was written")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _flush(fd: int) -> None:
    os.fsync(fd)
    with contextlib.suppress(OSError):  # needs CAP_SYS_ADMIN; O_DIRECT reads skip it anyway
        fcntl.ioctl(fd, BLKFLSBUF)


def _logical_sector(fd: int) -> int:
    try:
        buf = fcntl.ioctl(fd, BLKSSZGET, b"\0\0\0\0")
        return struct.unpack("i", buf)[0] or SECTOR
    except OSError:
        return SECTOR


def _chs(lba: int) -> bytes:
    cyl, rem = divmod(lba, 255 * 63)
    head, sec = divmod(rem, 63)
    if cyl > 1023:
        cyl, head, sec = 1023, 254, 62
    return bytes([head, ((sec + 1) & 0x3F) | ((cyl >> 2) & 0xC0), cyl & 0xFF])


def mbr_sector(candidate: MediaCandidate, logical_sector: int = SECTOR) -> bytes:
    """A fresh MBR holding only the card's partition, as it was (start, size, type, flag)."""
    scale = logical_sector // SECTOR
    start, count = candidate.part_offset // scale, candidate.part_size // scale
    ptype = int(candidate.part_type, 16) if candidate.part_type else 0x0C
    boot = 0x80 if candidate.part_flags.lower() in ("0x80", "128") else 0x00
    entry = (bytes([boot]) + _chs(start) + bytes([ptype]) + _chs(start + count - 1)
             + struct.pack("<II", start, count))
    mbr = bytearray(logical_sector)
    mbr[440:444] = secrets.token_bytes(4)
    slot = 446 + 16 * (candidate.part_number - 1)
    mbr[slot:slot + 16] = entry
    mbr[510:512] = b"\x55\xaa"
    return bytes(mbr)


def _mkfs_argv(fs_type: str, fs_version: str, label: str, devnode: str,
               whole_disk: bool) -> list[str] | None:
    tool = MKFS.get(fs_type)
    path = tool and (shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin"))
    if not path:
        return None
    if fs_type == "exfat":
        return [path, *(["-L", label] if label else []), devnode]
    if fs_type == "vfat":
        bits = {"FAT12": "12", "FAT16": "16", "FAT32": "32"}.get(fs_version.upper())
        named = label and label.upper() != "NO NAME"
        return [path, *(["-F", bits] if bits else []), *(["-I"] if whole_disk else []),
                *(["-n", label] if named else []), devnode]
    if fs_type in ("ext4", "ext3", "ext2"):
        return [path, "-q", "-F", *(["-L", label] if label else []), devnode]
    if fs_type == "ntfs":
        return [path, "-Q", "-F", *(["-L", label] if label else []), devnode]
    if fs_type == "hfsplus":
        return [path, *(["-v", label] if label else []), devnode]
    return None


def wipe_device(
    candidate: MediaCandidate,
    identity: CardIdentity,
    *,
    vault_path: str | os.PathLike[str] | None,
    mounted: MountedCard | None = None,
    progress: ProgressFn | None = None,
    recreate_fs: bool = True,
    chunk: int = CHUNK,
) -> DeviceWipeOutcome:
    """Overwrite the whole card twice, verify, re-create its file system.

    Raises :class:`WipeRefused` (or :class:`~core.media.identity.CardChanged` /
    :class:`~core.media.identity.CardGone`) before writing anything when the card may not
    be wiped. Once writing has started, a pulled card, an I/O error or a failed read-back is
    reported in the outcome (``stopped``, ``mismatch_at``), not raised. *mounted* is the
    session's mount of the card, unmounted here; any other mount of the card is refused.
    """
    disk, disk_num = identity.disk_devnode, identity.disk_devnum
    recheck(identity)
    if (candidate.devnum, candidate.disk_devnum) != (identity.devnum, identity.disk_devnum):
        raise WipeRefused(f"{candidate.devnode} is not the card of this session",
                          "Nothing was written")
    system = system_disk_ids(vault_path)
    mine = {f"{disk_num[0]}:{disk_num[1]}", f"{identity.devnum[0]}:{identity.devnum[1]}",
            os.path.basename(disk)}
    if mine & system:
        raise WipeRefused(f"{disk} holds the system or the vault; it is never wiped",
                          "Nothing was written")
    part_nums = _check_layout(candidate)
    outcome = DeviceWipeOutcome(devnode=disk, size_bytes=identity.disk_size,
                                fs_type=candidate.fs_type, label=candidate.label)
    if device_read_only(disk_num) or device_read_only(identity.devnum):
        outcome.read_only = True
        return outcome

    if mounted is not None and mounted.mounted:
        mounted.unmount()
    unmount_all({disk_num, *part_nums})
    watch = RemovalWatch(disk_num)
    # udev must not probe or re-read the partition table under us until the new file system
    # is written (systemd.io/BLOCK_DEVICE_LOCKING): hold a BSD lock on the whole disk.
    lock_fd = _lock_disk(disk)
    try:
        try:
            fd = _open_disk(disk, disk_num)
        except OSError as exc:
            if exc.errno == errno.EROFS or device_read_only(disk_num):
                outcome.read_only = True
                return outcome
            if exc.errno == errno.EBUSY:
                raise WipeRefused(f"{disk} is in use (mounted or opened by another program)",
                                  "Nothing was written") from None
            if exc.errno in _GONE_ERRNOS or exc.errno == errno.ENOENT:
                raise WipeRefused(f"the card in {disk} is not responding: {exc.strerror}",
                                  "Nothing was written") from None
            raise
        try:
            size = os.lseek(fd, 0, os.SEEK_END)
            if size != identity.disk_size or (
                    identity.diskseq is not None and _diskseq(disk_num) != identity.diskseq):
                raise WipeRefused(f"the card in {disk} changed while it was being opened",
                                  "Nothing was written")
            _run_passes(fd, size, outcome, watch, progress, chunk)
            if outcome.cleared and candidate.is_partition:
                _write_mbr(fd, candidate, outcome)
        finally:
            os.close(fd)
        if outcome.cleared and recreate_fs:
            _recreate_fs(candidate, outcome)
        if outcome.fs_recreated:
            os.close(lock_fd)  # release the lock: udev now sees the new file system
            lock_fd = -1
            watch.wait_for_uuid(outcome.new_uuid)
    finally:
        if lock_fd >= 0:
            os.close(lock_fd)
        watch.close()
    return outcome


def _lock_disk(disk: str) -> int:
    fd = os.open(disk, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        os.close(fd)
        raise
    return fd


def _diskseq(devnum: DevNum) -> int | None:
    try:
        return int(Path(f"/sys/dev/block/{devnum[0]}:{devnum[1]}/diskseq").read_text())
    except (OSError, ValueError):
        return None


def _run_passes(fd: int, size: int, outcome: DeviceWipeOutcome, watch: RemovalWatch,
                progress: ProgressFn | None, chunk: int) -> None:
    key = b""
    phase = ""

    def tick(done: int) -> None:
        if progress:
            progress(phase, done, size)
        why = watch.gone()
        if why:
            raise _Stop(why)

    try:
        for n in range(1, PASSES + 1):
            phase = PHASE_PASS.format(n)
            key = secrets.token_bytes(KEY_BYTES)
            tick(0)
            base = outcome.bytes_written

            def written(done: int, base: int = base) -> None:
                outcome.bytes_written = base + done
                tick(done)

            outcome.bytes_written = base + overwrite_pass(fd, size, key, chunk=chunk,
                                                          on_chunk=written)
            _flush(fd)
            outcome.passes_done = n
        phase = PHASE_VERIFY
        tick(0)
        outcome.mismatch_at = verify_pass(fd, size, key, chunk=chunk, on_chunk=tick)
        outcome.verified = outcome.mismatch_at is None
    except _Stop as stop:
        outcome.stopped = f"{stop.words} during {phase}"
    except OSError as exc:
        if exc.errno in _GONE_ERRNOS:
            why = watch.gone() or f"the card stopped responding ({exc.strerror})"
            outcome.stopped = f"{why} during {phase}"
        elif exc.errno in _RO_ERRNOS:
            outcome.stopped = f"the card became read-only during {phase}"
        else:
            outcome.stopped = f"writing to the card failed ({exc.strerror or exc}) during {phase}"
    finally:
        key = b""


def _write_mbr(fd: int, candidate: MediaCandidate, outcome: DeviceWipeOutcome) -> None:
    lbs = _logical_sector(fd)
    buf = _buffers(1, BLOCK)[0]
    try:
        sector = mbr_sector(candidate, lbs)
        buf[:lbs] = sector
        view = memoryview(buf)[:lbs]
        _pwrite_all(fd, view, 0)
        view.release()
        os.fsync(fd)
        try:
            fcntl.ioctl(fd, BLKRRPART)
        except OSError as exc:
            outcome.fs_error = (f"the partition table was written but the kernel did not "
                                f"re-read it ({exc.strerror})")
    finally:
        buf.close()


def _partition_node(disk_devnum: DevNum, number: int) -> tuple[str, DevNum] | None:
    """The partition *number* of the disk now (its minor may differ after the re-read)."""
    base = Path(f"/sys/dev/block/{disk_devnum[0]}:{disk_devnum[1]}").resolve()
    for name, num in _partitions(disk_devnum):
        with contextlib.suppress(OSError, ValueError):
            if int((base / name / "partition").read_text()) == number:
                return f"/dev/{name}", num
    return None


def _recreate_fs(candidate: MediaCandidate, outcome: DeviceWipeOutcome) -> None:
    if outcome.fs_error:
        return
    if candidate.is_partition:
        found = _partition_node(candidate.disk_devnum, candidate.part_number)
        if found is None:
            outcome.fs_error = "the partition did not come back after the table was written"
            return
        target, target_num = found
    else:
        target, target_num = candidate.disk_devnode, candidate.disk_devnum
    try:
        st = os.stat(target)
        ok = stat.S_ISBLK(st.st_mode) and (os.major(st.st_rdev),
                                           os.minor(st.st_rdev)) == target_num
    except OSError:
        ok = False
    if not ok:
        outcome.fs_error = f"{target} is not the card's device any more"
        return
    argv = _mkfs_argv(candidate.fs_type, candidate.fs_version, candidate.label, target,
                      not candidate.is_partition)
    if argv is None:
        tool = MKFS.get(candidate.fs_type, f"mkfs for {candidate.fs_type}")
        outcome.fs_error = f"the file system was not re-created ({tool} is not installed)"
        return
    env = {**os.environ, "LOCK_BLOCK_DEVICE": "0"}  # we hold the disk's lock ourselves
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False,
                          stdin=subprocess.DEVNULL, env=env)
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip() or "no message").splitlines()[-1]
        outcome.fs_error = f"the file system was not re-created ({argv[0]}: {last[:160]})"
        return
    fs = probe_fs(target)
    outcome.fs_recreated = fs.get("TYPE") == candidate.fs_type
    outcome.new_uuid = fs.get("UUID", "")
    outcome.label = fs.get("LABEL", "")
    outcome.fs_devnode = target
    if not outcome.fs_recreated:
        outcome.fs_error = "the new file system could not be read back"


# -- fingerprints and the residue scan -------------------------------------------------------

def _anchor_multipliers() -> np.ndarray:
    seed = b"".join(hashlib.sha256(b"clinivault residue anchor v1 %d" % i).digest()
                    for i in range(16))
    return np.frombuffer(seed, dtype=np.uint64)[:64] | np.uint64(1)


_MULT = _anchor_multipliers()
FINGERPRINT_LEN = 25
"""16 bytes of SHA-256 of the 4 KiB block, its 8-byte anchor, the anchor's sector index."""


def sector_keys(data: np.ndarray) -> np.ndarray:
    """The anchor hash (uint64) of every 512-byte sector of *data* (uint8, whole sectors)."""
    return data.view(np.uint64).reshape(-1, SECTOR // 8).dot(_MULT)


def _uniform_rows(rows: np.ndarray) -> np.ndarray:
    return (rows == rows[:, :1]).all(axis=1)


def block_fingerprints(fileobj: IO[bytes], *, read_size: int = 4 << 20) -> set[bytes]:
    """Fingerprints of every full 4 KiB block of *fileobj*, read from where it is to EOF.

    Blocks of one repeated byte (all zeros, all 0xFF) are skipped: they are no evidence of
    the file. Each fingerprint is :data:`FINGERPRINT_LEN` opaque bytes for
    :func:`residue_scan`; its first 16 bytes are the start of the block's SHA-256.
    """
    out: set[bytes] = set()
    carry = b""
    read_size -= read_size % BLOCK
    while True:
        data = fileobj.read(read_size)
        if not data:
            break
        data = carry + data
        whole = len(data) - len(data) % BLOCK
        carry = data[whole:]
        if whole:
            _fingerprint_blocks(memoryview(data)[:whole], out)
    return out


def _fingerprint_blocks(view: memoryview, out: set[bytes]) -> None:
    arr = np.frombuffer(view, dtype=np.uint8)
    blocks = arr.reshape(-1, BLOCK)
    uniform_block = _uniform_rows(blocks)
    sectors = arr.reshape(-1, SECTOR)
    keys = sector_keys(arr).reshape(-1, BLOCK // SECTOR)
    uniform_sector = _uniform_rows(sectors).reshape(-1, BLOCK // SECTOR)
    for i in np.flatnonzero(~uniform_block):
        i = int(i)
        good = np.flatnonzero(~uniform_sector[i])
        j = int(good[0]) if len(good) else 0
        digest = hashlib.sha256(view[i * BLOCK:(i + 1) * BLOCK]).digest()[:16]
        out.add(digest + int(keys[i, j]).to_bytes(8, "little") + bytes([j]))


def _open_for_reading(devnode: str) -> int:
    try:
        return os.open(devnode, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECT)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return os.open(devnode, os.O_RDONLY | os.O_CLOEXEC)


def residue_scan(devnode: str, fingerprints: Iterable[bytes], *,
                 progress: ProgressFn | None = None, chunk: int = 16 << 20) -> int:
    """How many 4 KiB windows of *devnode*, at any 512-byte offset, match a fingerprint.

    Pass the whole disk (``candidate.disk_devnode``): a fragment can be anywhere on the card.
    Reads the device past the page cache. Returns 0 when no block of any file remains.
    Raises :class:`FailedSafely` when the device cannot be read.
    """
    prints = set(fingerprints)
    bad = {len(p) for p in prints} - {FINGERPRINT_LEN}
    if bad:
        raise ValueError(f"fingerprints must come from block_fingerprints (got length {bad})")
    anchors: dict[int, list[tuple[int, bytes]]] = {}
    for p in prints:
        anchors.setdefault(int.from_bytes(p[16:24], "little"), []).append((p[24], p[:16]))
    keys_sorted = np.array(sorted(anchors), dtype=np.uint64)
    try:
        fd = _open_for_reading(devnode)
    except OSError as exc:
        raise FailedSafely(f"cannot read {devnode} for the residue scan: {exc.strerror}") from None
    try:
        return _scan(fd, keys_sorted, anchors, progress, chunk - chunk % BLOCK or BLOCK)
    except OSError as exc:
        raise FailedSafely(f"the residue scan of {devnode} failed: {exc.strerror}") from None
    finally:
        os.close(fd)


def _scan(fd: int, keys_sorted: np.ndarray, anchors: dict[int, list[tuple[int, bytes]]],
          progress: ProgressFn | None, chunk: int) -> int:
    size = os.lseek(fd, 0, os.SEEK_END)
    matched: set[int] = set()
    if not len(keys_sorted) or size < BLOCK:
        if progress:
            progress(PHASE_RESIDUE, size, size)
        return 0
    bufs = _buffers(2, chunk)
    spare = _buffers(1, 2 * BLOCK)[0]
    offsets = list(range(0, size, chunk))
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="clinivault-residue") as pool:
            ahead: Future[int] | None = pool.submit(_pread_exact, fd, bufs[0],
                                                    min(chunk, size), 0)
            for i, offset in enumerate(offsets):
                n = min(chunk, size - offset)
                assert ahead is not None
                got = ahead.result()
                ahead = None
                if i + 1 < len(offsets):
                    nxt = offsets[i + 1]
                    ahead = pool.submit(_pread_exact, fd, bufs[(i + 1) % 2],
                                        min(chunk, size - nxt), nxt)
                if got < n:
                    raise OSError(errno.EIO, f"short read at byte {offset + got}")
                buf = bufs[i % 2]
                whole = n - n % SECTOR
                data = np.frombuffer(buf, dtype=np.uint8, count=whole)
                keys = sector_keys(data)
                pos = np.searchsorted(keys_sorted, keys)
                pos[pos >= len(keys_sorted)] = 0
                for s in np.flatnonzero(keys_sorted[pos] == keys):
                    at = offset + int(s) * SECTOR
                    for j, digest in anchors[int(keys[s])]:
                        w = at - j * SECTOR
                        if w < 0 or w + BLOCK > size or w in matched:
                            continue
                        if offset <= w and w + BLOCK <= offset + n:
                            window = buf[w - offset:w - offset + BLOCK]
                        else:
                            window = _read_window(fd, spare, w, size)
                        if hashlib.sha256(window).digest()[:16] == digest:
                            matched.add(w)
                del data
                if progress:
                    progress(PHASE_RESIDUE, offset + n, size)
    finally:
        for b in [*bufs, spare]:
            with contextlib.suppress(BufferError):
                b.close()
    return len(matched)


def _read_window(fd: int, spare: mmap.mmap, w: int, size: int) -> bytes:
    start = w - w % BLOCK
    n = min(2 * BLOCK, size - start)
    got = _pread_exact(fd, spare, n, start)
    if got < w - start + BLOCK:
        return b""
    return spare[w - start:w - start + BLOCK]
