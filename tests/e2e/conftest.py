"""End-to-end fixtures: real loop devices, real udev events, real FUSE mounts.

Why real devices: detection, mounting and the whole-card wipe are about what the kernel, udev
and the FUSE helpers actually do (event order, O_EXCL, read-only flags, partition re-reads),
which no mock shows. Everything created here (images, loop devices, mounts) is removed in a
``finally``, also when a test fails. Without root or the tools, each test is skipped with the
reason; CI runs them as root after ``.ci/setup.sh --e2e``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

TOOLS = ("losetup", "blkid", "udevadm", "mkfs.exfat", "mkfs.vfat", "mount.exfat-fuse",
         "fusefat", "mkfs.ext4")
UDEVD = "/lib/systemd/systemd-udevd"
SBIN = "/usr/sbin:/sbin:/usr/bin:/bin"


def which(tool: str) -> str | None:
    return shutil.which(tool) or shutil.which(tool, path=SBIN)


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (loop devices, mounts); CI runs tests/e2e as root"
    if not os.path.exists("/dev/loop-control"):
        return "no loop device support (/dev/loop-control missing)"
    if not os.path.exists("/dev/fuse"):
        return "no FUSE (/dev/fuse missing)"
    missing = [t for t in TOOLS if which(t) is None]
    if missing:
        return (f"missing tools: {', '.join(missing)} (.ci/setup.sh --e2e installs "
                "exfatprogs dosfstools exfat-fuse fusefat udev e2fsprogs)")
    if subprocess.run([which("losetup") or "losetup", "-f"], capture_output=True,
                      check=False).returncode != 0:
        return "no free loop device (losetup -f fails: a container without loop devices?)"
    if not udev_running() and not os.access(UDEVD, os.X_OK):
        return f"udevd is not running and {UDEVD} is not installed"
    return None


def udev_running() -> bool:
    tool = which("udevadm")
    if tool is None:
        return False
    proc = subprocess.run([tool, "control", "--ping", "--timeout=5"], capture_output=True,
                          check=False)
    return proc.returncode == 0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def udevd() -> None:
    """udevd running (started here if needed, and left running: it is a system daemon)."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    if not udev_running():
        subprocess.run([UDEVD, "--daemon"], check=False, capture_output=True)
        if not udev_running():
            pytest.skip("udevd could not be started")


@pytest.fixture(autouse=True)
def _e2e_ready(udevd: None) -> None:
    """Every e2e test needs root, the tools and udevd (skipped with the reason otherwise)."""


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    prog = which(argv[0]) or argv[0]
    # Output to a file, not a pipe: FUSE helpers' daemons would keep a pipe open.
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.run([prog, *argv[1:]], stdout=out, stderr=out, check=False,
                              stdin=subprocess.DEVNULL)
        out.seek(0)
        text = out.read()
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {text}")
    return subprocess.CompletedProcess(argv, proc.returncode, text, "")


def settle() -> None:
    run("udevadm", "settle", "--timeout=30")


def blkid(dev: str) -> dict[str, str]:
    out = run("blkid", "-p", "-o", "export", dev, check=False).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def dev_holders(dev: str) -> list[int]:
    """Pids with *dev* open (to wait for a FUSE daemon to let go of it)."""
    rdev = os.stat(dev).st_rdev
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (p / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd).startswith("/dev/") and os.stat(fd).st_rdev == rdev:
                        pids.append(int(p.name))
                        break
    return pids


def wait_released(dev: str, timeout: float = 10.0) -> None:
    import select

    fds = []
    for pid in dev_holders(dev):
        with contextlib.suppress(ProcessLookupError):
            fds.append(os.pidfd_open(pid))
    try:
        for fd in fds:
            select.select([fd], [], [], timeout)
    finally:
        for fd in fds:
            os.close(fd)


def mbr_with_one_partition(start: int, count: int, ptype: int) -> bytes:
    """An MBR (written here, independently of core) with one primary partition."""
    entry = bytes([0x00, 0xFE, 0xFF, 0xFF, ptype, 0xFE, 0xFF, 0xFF]) + struct.pack(
        "<II", start, count)
    mbr = bytearray(512)
    mbr[440:444] = b"CVT1"
    mbr[446:462] = entry
    mbr[510:512] = b"\x55\xaa"
    return bytes(mbr)


@dataclass
class LoopCard:
    """A card image, attached (or not) to a loop device."""

    image: Path
    fs: str
    label: str
    partitioned: bool
    files: dict[str, bytes]
    loop: str = ""
    read_only: bool = False

    @property
    def fs_node(self) -> str:
        return f"{self.loop}p1" if self.partitioned else self.loop

    def attach(self, *, read_only: bool = False, node: str | None = None,
               wait: bool = True) -> str:
        args = ["losetup", "--show"]
        if self.partitioned:
            args.append("-P")
        if read_only:
            args.append("-r")
        args += [node, str(self.image)] if node else ["-f", str(self.image)]
        out = run(*args).stdout.strip().splitlines()
        self.loop = node or out[-1]
        self.read_only = read_only
        if wait:
            settle()
        return self.loop

    def detach(self, *, wait: bool = True) -> None:
        if self.loop:
            run("losetup", "-d", self.loop, check=False)
            self.loop = ""
            if wait:
                settle()

    def sha256(self) -> str:
        return hashlib.sha256(self.image.read_bytes()).hexdigest()


def fuse_mount_rw(dev: str, fs: str, where: Path) -> None:
    if fs == "exfat":
        run("mount.exfat-fuse", "-o", "rw", dev, str(where))
    elif fs == "vfat":
        run("fusefat", "-o", "rw+", dev, str(where))
    elif fs in ("ext4", "ext2"):
        run("mount", "-t", fs, dev, str(where))
    else:  # pragma: no cover
        raise ValueError(fs)


def unmount(where: Path | str, dev: str | None = None) -> None:
    if run("umount", str(where), check=False).returncode != 0:
        run("fusermount", "-u", str(where), check=False)
    if dev and os.path.exists(dev):
        wait_released(dev)


def populate(card: LoopCard, files: dict[str, bytes], *, delete: Iterable[str] = ()) -> None:
    """Write *files* onto the attached card through its driver, then delete *delete*."""
    with tempfile.TemporaryDirectory(prefix="cv-populate-") as tmp:
        where = Path(tmp)
        fuse_mount_rw(card.fs_node, card.fs, where)
        try:
            for rel, data in files.items():
                p = where / rel
                p.parent.mkdir(parents=True, exist_ok=True)
                with open(p, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
            for rel in delete:
                (where / rel).unlink()
        finally:
            unmount(where, card.fs_node)


@pytest.fixture
def loop_card(tmp_path: Path) -> Iterator[Callable[..., LoopCard]]:
    """``loop_card(fs="exfat"|"vfat"|"ext4", label=..., size=..., files={...},
    partitioned=False, read_only=False, attach=True, deleted={...}, folder=None)``: a
    populated card, its image in *folder* (default: the test's tmp_path).

    *deleted* files are written and then deleted again (data left in free space, as a
    camera's own "delete" leaves it). Everything is detached and unmounted at the end.
    """
    made: list[LoopCard] = []

    def make(fs: str = "exfat", label: str = "CARD", size: int = 32 << 20,
             files: dict[str, bytes] | None = None, partitioned: bool = False,
             read_only: bool = False, attach: bool = True,
             deleted: dict[str, bytes] | None = None, folder: Path | None = None) -> LoopCard:
        image = (folder or tmp_path) / f"card{len(made)}-{fs}.img"
        with open(image, "wb") as fh:
            fh.truncate(size)
            if partitioned:
                ptype = {"exfat": 0x07, "vfat": 0x0E}.get(fs, 0x83)
                fh.write(mbr_with_one_partition(2048, size // 512 - 2048, ptype))
        card = LoopCard(image, fs, label, partitioned, dict(files or {}))
        made.append(card)
        card.attach(wait=True)
        if partitioned and not os.path.exists(card.fs_node):
            pytest.skip("this kernel does not read MBR partition tables "
                        "(CONFIG_MSDOS_PARTITION is not set)")
        if fs == "exfat":
            run("mkfs.exfat", "-L", label, card.fs_node)
        elif fs == "vfat":
            run("mkfs.vfat", "-n", label, card.fs_node)
        else:
            run(f"mkfs.{fs}", "-q", "-F", "-L", label, card.fs_node)
        if card.files or deleted:
            populate(card, {**card.files, **(deleted or {})}, delete=list(deleted or ()))
        if read_only or not attach:
            card.detach()
            if read_only:
                card.attach(read_only=True)
        else:
            settle()
        return card

    try:
        yield make
    finally:
        cleanup_cards(made)


def cleanup_cards(cards: list[LoopCard]) -> None:
    """Unmount anything mounted from our loop devices, then detach them all."""
    from core.media.devices import read_mountinfo

    for card in cards:
        out = run("losetup", "-n", "-O", "NAME", "-j", str(card.image), check=False).stdout
        loops = [ln.strip() for ln in out.splitlines() if ln.strip()]
        nodes = list(loops)
        for loop in loops:
            name = os.path.basename(loop)
            nodes += [f"/dev/{p.name}" for p in Path(f"/sys/block/{name}").glob(f"{name}p*")]
        nums = set()
        for node in nodes:
            with contextlib.suppress(OSError):
                st = os.stat(node)
                nums.add((os.major(st.st_rdev), os.minor(st.st_rdev)))
        points = {e.mount_point for e in read_mountinfo()
                  if e.devnum in nums or e.source in nodes}
        for node in nodes:  # FUSE mounts that do not name the device (fusefat)
            with contextlib.suppress(OSError):
                for pid in dev_holders(node):
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(
                        errors="replace").split("\0")
                    points |= {a for a in argv[1:] if a.startswith("/") and a not in nodes
                               and os.path.isdir(a)}
        for mp in sorted(points, key=len, reverse=True):
            if run("umount", mp, check=False).returncode != 0:
                run("umount", "-l", mp, check=False)
            if mp.startswith("/run/clinivault/"):
                with contextlib.suppress(OSError):
                    os.rmdir(mp)
        for loop in loops:
            with contextlib.suppress(OSError):
                wait_released(loop, 5)
            run("losetup", "-d", loop, check=False)
    with contextlib.suppress(Exception):
        settle()


# -- the independent residue check (deliberately not using core.wipe_device) ----------------

def original_blocks(datas: Iterable[bytes]) -> set[bytes]:
    """SHA-256 of every full 4 KiB block of each original that is not one repeated byte."""
    out = set()
    for data in datas:
        for i in range(0, len(data) - 4095, 4096):
            block = data[i:i + 4096]
            if block.count(block[:1]) != 4096:
                out.add(hashlib.sha256(block).digest())
    return out


def blocks_found(image: Path, blocks: set[bytes]) -> int:
    """How many 4 KiB windows of *image*, at any 512-byte offset, equal an original block."""
    data = image.read_bytes()
    view = memoryview(data)
    sha = hashlib.sha256
    return sum(1 for off in range(0, len(data) - 4095, 512)
               if sha(view[off:off + 4096]).digest() in blocks)
