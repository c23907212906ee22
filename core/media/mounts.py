"""Mount a card read-only at a private mount point; writable only for the wipe.

Why read-only first: the card is not written until every kept image is verified in the vault,
and a read-write mount of exFAT or FAT already writes (the volume-dirty flag), as does an ext4
mount replaying its journal (hence ``noload``). Why a private mount point (a 0700 directory
under a runtime directory only we own): nothing else on the kiosk should see the patient's
photographs, and ``nosuid,nodev,noexec`` keep a hostile card's contents inert.

How: an existing mount of the same device (by major:minor in /proc/self/mountinfo, or by its
source) is used as it is; otherwise udisks (``udisksctl``) when it is installed and we are not
root, mount(8) when we are root and the kernel has the file-system driver, else the FUSE
helpers (``mount.exfat-fuse``, ``fusefat``, ``ntfs-3g``, ``fuse2fs``) where the kernel lacks the
driver. A FUSE helper cannot be remounted read-write in place: :meth:`MountedCard.remount_rw`
unmounts and mounts again, so inode numbers (and, for fusefat, the device number) change;
``stable_inodes`` says whether they were kept.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import select
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import BadInput, FailedSafely
from core.media.devices import DevNum, MediaCandidate, MountEntry, read_mountinfo

RUN_DIR_ROOT = Path("/run/clinivault/media")
HELPER_TIMEOUT_S = 60.0
BASE_OPTIONS = "nosuid,nodev,noexec"

# FUSE helpers: file system -> (program, read-only options, read-write options).
FUSE_HELPERS: dict[str, tuple[str, str, str]] = {
    "exfat": ("mount.exfat-fuse", "ro,nosuid,nodev", "rw,nosuid,nodev"),
    "vfat": ("fusefat", "ro,nosuid,nodev,noexec", "rw+,nosuid,nodev,noexec"),
    "ntfs": ("ntfs-3g", "ro,nosuid,nodev,noexec", "rw,nosuid,nodev,noexec"),
    "ext4": ("fuse2fs", "ro,nosuid,nodev,noexec", "rw,nosuid,nodev,noexec"),
    "ext3": ("fuse2fs", "ro,nosuid,nodev,noexec", "rw,nosuid,nodev,noexec"),
    "ext2": ("fuse2fs", "ro,nosuid,nodev,noexec", "rw,nosuid,nodev,noexec"),
}
# Process names (as /proc/PID/comm truncates them) of the FUSE helpers' daemons.
FUSE_COMMS = frozenset({"mount.exfat-fus", "fusefat", "ntfs-3g", "fuse2fs"})
# Read-only kernel mounts of these skip the journal (noload): writable means a fresh mount.
NO_RW_REMOUNT = frozenset({"ext4", "ext3"})
# Kernel drivers that go by another name than blkid's type.
KERNEL_FS_NAMES = {"ntfs": ("ntfs3", "ntfs")}


class CardReadOnly(FailedSafely):
    """The card refuses writing (write-protect switch, read-only loop device)."""


class MountError(FailedSafely):
    """The card could not be mounted or unmounted; the message names the device."""


def runtime_dir() -> Path:
    """The private directory our mount points live in (created 0700, checked to be ours)."""
    if os.geteuid() == 0:
        base = RUN_DIR_ROOT
    elif os.environ.get("XDG_RUNTIME_DIR"):
        base = Path(os.environ["XDG_RUNTIME_DIR"]) / "clinivault" / "media"
    else:
        base = Path(tempfile.gettempdir()) / f"clinivault-{os.geteuid()}" / "media"
    for d in (base.parent, base):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=0o700, parents=True)
        st = os.lstat(d)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise FailedSafely(f"runtime directory {d} is not a directory owned by this user",
                               "Remove it and try again")
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(d, 0o700)
    return base


def is_ours(mount_point: str | os.PathLike[str]) -> bool:
    """Is *mount_point* one of our private mount points (possibly left by a crash)?"""
    try:
        return Path(mount_point).resolve().parent == runtime_dir().resolve()
    except OSError:
        return False


def device_read_only(devnum: DevNum) -> bool:
    """The kernel's read-only flag for the device (write-protect switch, ``losetup -r``)."""
    try:
        return Path(f"/sys/dev/block/{devnum[0]}:{devnum[1]}/ro").read_text().strip() == "1"
    except OSError:
        return False


def _rdev(path: str) -> DevNum | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISBLK(st.st_mode):
        return None
    return os.major(st.st_rdev), os.minor(st.st_rdev)


def find_mounts(devnum: DevNum, *, entries: list[MountEntry] | None = None) -> list[MountEntry]:
    """Every mount of the block device *devnum*: by major:minor (kernel file systems and
    fuseblk) or by a source path naming the device (other FUSE mounts)."""
    found = []
    for e in entries if entries is not None else read_mountinfo():
        if e.devnum == devnum or (e.source.startswith("/dev/") and _rdev(e.source) == devnum):
            found.append(e)
    return found


def holders(devnums: set[DevNum], *, exclude_self: bool = True,
            writers_only: bool = False) -> dict[int, str]:
    """Processes with one of *devnums* open (pid -> command name), from /proc/*/fd.

    With *writers_only*, only those that opened it for writing (a FUSE daemon that may still
    flush, another wipe): readers such as udev's probe cannot harm a wipe.
    """
    wanted = {os.makedev(*d) for d in devnums}
    me = os.getpid()
    out: dict[int, str] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if exclude_self and pid == me:
            continue
        try:
            for fd in os.scandir(f"/proc/{pid}/fd"):
                try:
                    # Only stat what links into /dev: a file on a hung FUSE mount would block.
                    if not os.readlink(fd.path).startswith("/dev/"):
                        continue
                    st = os.stat(fd.path)
                    if not (stat.S_ISBLK(st.st_mode) and st.st_rdev in wanted):
                        continue
                    if writers_only and not _opened_for_writing(pid, fd.name):
                        continue
                except OSError:
                    continue
                out[pid] = _comm(pid)
                break
        except OSError:
            continue
    return out


def _opened_for_writing(pid: int, fd: str) -> bool:
    try:
        for line in Path(f"/proc/{pid}/fdinfo/{fd}").read_text().splitlines():
            if line.startswith("flags:"):
                return int(line.split()[1], 8) & os.O_ACCMODE != os.O_RDONLY
    except (OSError, ValueError, IndexError):
        pass
    return True


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def wait_for_exit(pids: list[int], timeout: float) -> list[int]:
    """Wait (on pidfds, not by polling) until *pids* have exited; return those still alive."""
    fds: dict[int, int] = {}
    for pid in pids:
        try:
            fds[os.pidfd_open(pid)] = pid
        except ProcessLookupError:
            continue
        except OSError:  # pragma: no cover - kernels before 5.3
            fds[-pid - 1] = pid
    deadline = time.monotonic() + timeout
    try:
        while fds:
            waitable = [fd for fd in fds if fd >= 0]
            left = deadline - time.monotonic()
            if left <= 0 or not waitable:
                break
            ready, _, _ = select.select(waitable, [], [], left)
            for fd in ready:
                os.close(fd)
                del fds[fd]
        return sorted(fds.values())
    finally:
        for fd in fds:
            if fd >= 0:
                os.close(fd)


def _releasing(devnums: set[DevNum]) -> dict[int, str]:
    writers = holders(devnums, writers_only=True)
    daemons = {p: n for p, n in holders(devnums).items() if n in FUSE_COMMS}
    return {**daemons, **writers}


def wait_until_released(devnums: set[DevNum], timeout: float = 10.0) -> dict[int, str]:
    """After an unmount, wait for FUSE daemons (which flush on their way out) and anything
    else writing to the device to exit; return those still there. Readers such as udev's
    probe are not waited for: they cannot harm the card."""
    held = _releasing(devnums)
    if held:
        wait_for_exit(list(held), timeout)
        held = _releasing(devnums)
    return held


def _kernel_has(fs_type: str) -> bool:
    names = KERNEL_FS_NAMES.get(fs_type, (fs_type,))
    try:
        lines = Path("/proc/filesystems").read_text().splitlines()
    except OSError:
        return False
    known = {line.split()[-1] for line in lines if line.strip()}
    if any(n in known for n in names):
        return True
    modprobe = shutil.which("modprobe")
    if os.geteuid() == 0 and modprobe:
        for n in names:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run([modprobe, "-q", n], capture_output=True, timeout=10)
        with contextlib.suppress(OSError):
            known = {line.split()[-1] for line in
                     Path("/proc/filesystems").read_text().splitlines() if line.strip()}
        return any(n in known for n in names)
    return False


def _kernel_name(fs_type: str) -> str:
    names = KERNEL_FS_NAMES.get(fs_type, (fs_type,))
    try:
        known = {line.split()[-1] for line in
                 Path("/proc/filesystems").read_text().splitlines() if line.strip()}
    except OSError:
        known = set()
    return next((n for n in names if n in known), names[0])


def _kernel_options(fs_type: str, read_only: bool) -> str:
    opts = ["ro" if read_only else "rw", BASE_OPTIONS]
    uid, gid = os.geteuid(), os.getegid()
    if fs_type in ("vfat", "exfat"):
        opts.append(f"uid={uid},gid={gid},umask=077")
        if fs_type == "vfat":
            opts.append("utf8,shortname=mixed")
    elif fs_type in ("ext4", "ext3") and read_only:
        opts.append("noload")  # a read-only mount must not replay (write) the journal
    return ",".join(opts)


def _run(argv: list[str], what: str, devnode: str) -> subprocess.CompletedProcess[str]:
    """Run a mount helper. Its output goes to a file, not a pipe: a FUSE helper's daemon
    would hold a pipe open forever and ``communicate`` would never return."""
    with tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace") as out:
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                  timeout=HELPER_TIMEOUT_S, check=False)
        except FileNotFoundError:
            raise MountError(f"cannot {what} {devnode}: {argv[0]} is not installed") from None
        except subprocess.TimeoutExpired:
            raise MountError(f"cannot {what} {devnode}: {argv[0]} did not finish") from None
        out.seek(0)
        text = out.read()
    return subprocess.CompletedProcess(argv, proc.returncode, text, "")


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    useful = [ln for ln in lines if re.search(r"(?i)error|fail|cannot|denied|protect|read-only|"
                                              r"invalid|unknown|wrong|busy", ln)]
    return (useful or lines or ["no message"])[-1][:200]


@dataclass
class MountedCard:
    """A card's file system mounted for the session: ``with mount_card(c) as m: m.path``.

    ``owned`` is False when the card was already mounted by something else: we read from
    that mount and never unmount it. Leaving the ``with`` block unmounts an owned mount.
    """

    devnode: str
    devnum: DevNum
    fs_type: str
    path: Path
    method: str
    """``existing``, ``mount``, ``udisks`` or ``fuse:<helper>``."""
    owned: bool
    read_only: bool
    label: str = ""
    uuid: str = ""
    stable_inodes: bool = True
    """False after a remount that was a fresh mount (FUSE, udisks): inode numbers changed."""
    generation: int = 0
    """Incremented by every fresh mount at ``path``."""
    _mounted: bool = field(default=True, repr=False)

    def __enter__(self) -> MountedCard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.unmount()

    @property
    def mounted(self) -> bool:
        return self._mounted

    def entry(self) -> MountEntry | None:
        """Our mount as the kernel lists it now (None when it has gone)."""
        for e in read_mountinfo():
            if e.mount_point == str(self.path):
                return e
        return None

    def remount_rw(self) -> None:
        """Make the card writable for the wipe; :class:`CardReadOnly` when it cannot be."""
        if not self._mounted:
            raise MountError(f"{self.devnode} is not mounted", "Insert the card again")
        if not self.read_only:
            return
        if device_read_only(self.devnum):
            raise CardReadOnly(f"the card in {self.devnode} is write-protected (read-only)",
                               "Slide the card's lock switch to unlock and insert it again")
        if not self.owned:
            raise MountError(f"{self.devnode} is mounted read-only at {self.path} by another "
                             "program", "Unmount it there and insert the card again")
        if self.method == "mount" and self.fs_type not in NO_RW_REMOUNT:
            proc = _run(["mount", "-o", "remount,rw", str(self.path)], "remount", self.devnode)
            if proc.returncode != 0:
                self._raise_write_error(proc.stdout, "make writable")
            self.read_only = False
            return
        self._fresh_mount(read_only=False)

    def remount_ro(self) -> None:
        """Back to read-only (after the per-file wipe, before a residue scan)."""
        if not self._mounted or self.read_only or not self.owned:
            return
        if self.method == "mount":
            proc = _run(["mount", "-o", "remount,ro", str(self.path)], "remount", self.devnode)
            if proc.returncode != 0:
                raise MountError(f"cannot make {self.devnode} read-only again: "
                                 f"{_last_line(proc.stdout)}")
            self.read_only = True
            return
        self._fresh_mount(read_only=True)

    def _raise_write_error(self, text: str, doing: str) -> None:
        if re.search(r"(?i)write-protect|read-only", text) or device_read_only(self.devnum):
            raise CardReadOnly(f"the card in {self.devnode} is write-protected (read-only)",
                               "Slide the card's lock switch to unlock and insert it again")
        raise MountError(f"cannot {doing} {self.devnode}: {_last_line(text)}")

    def _fresh_mount(self, *, read_only: bool) -> None:
        self._unmount_only()
        self._mounted = False
        try:
            _mount_at(self, read_only=read_only)
        except BaseException:
            with contextlib.suppress(Exception):  # leave it readable, as it was, if we can
                _mount_at(self, read_only=True)
            raise
        # ext* keep inode numbers on disk; FUSE helpers and udisks' vfat/exfat do not.
        self.stable_inodes = self.stable_inodes and self.method == "mount"
        self.generation += 1

    def _unmount_only(self) -> None:
        if self.method == "udisks":
            proc = _run(["udisksctl", "unmount", "--no-user-interaction", "-b", self.devnode],
                        "unmount", self.devnode)
        elif os.geteuid() == 0 or self.method == "mount":
            proc = _run(["umount", str(self.path)], "unmount", self.devnode)
        else:
            fm = shutil.which("fusermount3") or shutil.which("fusermount") or "fusermount"
            proc = _run([fm, "-u", str(self.path)], "unmount", self.devnode)
        if proc.returncode != 0 and self.entry() is not None and self._gone():
            # A pulled card: detach the mount now, the kernel finishes when it can.
            proc = _run(["umount", "-l", str(self.path)], "unmount", self.devnode)
        if proc.returncode != 0 and self.entry() is not None:
            busy = "busy" in proc.stdout.lower()
            raise MountError(f"cannot unmount {self.devnode} from {self.path}: "
                             f"{_last_line(proc.stdout)}",
                             "Close any program using the card" if busy else None)
        if self.method.startswith("fuse:"):
            left = wait_until_released({self.devnum})
            if left:
                raise MountError(f"{self.devnode} is still open by "
                                 + ", ".join(f"{n} (pid {p})" for p, n in left.items()))

    def _gone(self) -> bool:
        """Has the card been pulled (node gone, or no medium)?"""
        try:
            size = Path(f"/sys/dev/block/{self.devnum[0]}:{self.devnum[1]}/size").read_text()
        except OSError:
            return True
        return _rdev(self.devnode) != self.devnum or size.strip() == "0"

    def unmount(self) -> None:
        """Unmount an owned mount and remove its mount point; a no-op otherwise. A pulled
        card's mount is detached lazily."""
        if not self._mounted or not self.owned:
            self._mounted = False
            return
        self._unmount_only()
        self._mounted = False
        if self.method != "udisks":
            with contextlib.suppress(OSError):
                self.path.rmdir()


def _mount_point_for(candidate_uuid: str, devnode: str) -> Path:
    base = runtime_dir()
    stem = re.sub(r"[^A-Za-z0-9_-]", "", candidate_uuid) or os.path.basename(devnode)
    path = base / f"{stem}-{secrets.token_hex(4)}"
    path.mkdir(mode=0o700)
    return path


def _mount_at(card: MountedCard, *, read_only: bool) -> None:
    """Mount *card* at ``card.path`` by ``card.method``; update read_only; raise on failure."""
    dev, path, fs = card.devnode, str(card.path), card.fs_type
    if card.method == "mount":
        proc = _run(["mount", "-t", _kernel_name(fs), "-o", _kernel_options(fs, read_only),
                     dev, path], "mount", dev)
    elif card.method == "udisks":
        opts = ("ro," if read_only else "rw,") + BASE_OPTIONS
        proc = _run(["udisksctl", "mount", "--no-user-interaction", "-b", dev, "-o", opts],
                    "mount", dev)
        m = re.search(r" at (/.+?)\.?\s*$", proc.stdout.strip())
        if proc.returncode == 0 and m:
            card.path = Path(m.group(1))
    else:
        helper = card.method.removeprefix("fuse:")
        prog, ro_opts, rw_opts = FUSE_HELPERS[fs]
        argv = [helper, "-o", ro_opts if read_only else rw_opts, dev, path]
        if prog == "fuse2fs":
            argv = [helper, dev, path, "-o", ro_opts if read_only else rw_opts]
        proc = _run(argv, "mount", dev)
    entry = card.entry()
    if proc.returncode != 0 or entry is None:
        if not read_only:
            card._raise_write_error(proc.stdout, "mount read-write")
        raise MountError(f"cannot mount {dev} ({fs}) with {card.method}: "
                         f"{_last_line(proc.stdout)}")
    if card.method.startswith("fuse:") and os.geteuid() == 0:
        # FUSE helpers ignore some flags (exfat-fuse drops noexec): set them on the mount.
        flags = ("ro," if read_only else "rw,") + BASE_OPTIONS
        _run(["mount", "-o", f"remount,bind,{flags}", path], "remount", dev)
        entry = card.entry() or entry
    opts = set(entry.options.split(","))
    if read_only and "ro" not in opts:
        raise MountError(f"{dev} was mounted but not read-only at {path}; it was left mounted",
                         "Unmount it by hand")
    card.read_only = "ro" in opts
    card._mounted = True


def choose_method(fs_type: str, *, fuse_only: bool = False) -> str:
    """How we would mount *fs_type* here: ``udisks``, ``mount`` or ``fuse:<helper>``."""
    root = os.geteuid() == 0
    if not fuse_only and not root and shutil.which("udisksctl"):
        return "udisks"
    if not fuse_only and root and _kernel_has(fs_type):
        return "mount"
    if fs_type in FUSE_HELPERS:
        prog = FUSE_HELPERS[fs_type][0]
        path = shutil.which(prog) or shutil.which(prog, path="/usr/sbin:/sbin")
        if path:
            return f"fuse:{path}"
    if root and shutil.which("udisksctl"):
        return "udisks"
    raise MountError(f"no way to mount a {fs_type} card here: the kernel has no {fs_type} "
                     "driver and no FUSE helper is installed",
                     f"Install {FUSE_HELPERS[fs_type][0]}" if fs_type in FUSE_HELPERS else None)


def mount_card(candidate: MediaCandidate, *, read_only: bool = True,
               method: str | None = None) -> MountedCard:
    """The card's file system, mounted (read-only unless asked) or found already mounted."""
    devnum = candidate.devnum
    if _rdev(candidate.devnode) != devnum:
        raise BadInput(f"{candidate.devnode} is no longer the card that was detected",
                       "Insert the card again")
    existing = find_mounts(devnum)
    for e in existing:
        if e.root == "/" and os.path.isdir(e.mount_point):
            ours = is_ours(e.mount_point)  # left by a session that crashed: take it over
            how = "existing"
            if ours:
                how = "mount" if not e.fs_type.startswith("fuse") else \
                    choose_method(candidate.fs_type, fuse_only=True)
            return MountedCard(candidate.devnode, devnum, candidate.fs_type,
                               Path(e.mount_point), how, owned=ours,
                               read_only=e.read_only, label=candidate.label,
                               uuid=candidate.uuid)
    how = method or choose_method(candidate.fs_type)
    path = _mount_point_for(candidate.uuid, candidate.devnode)
    card = MountedCard(candidate.devnode, devnum, candidate.fs_type, path, how, owned=True,
                       read_only=read_only, label=candidate.label, uuid=candidate.uuid,
                       _mounted=False)
    try:
        _mount_at(card, read_only=read_only)
    except BaseException:
        with contextlib.suppress(OSError):
            path.rmdir()
        raise
    if card.method == "udisks" and card.path != path:
        with contextlib.suppress(OSError):
            path.rmdir()
    return card


def unmount_all(devnums: set[DevNum], *, allow_foreign: bool = False) -> list[str]:
    """Unmount every mount of *devnums*; return the mount points unmounted.

    Mounts that are not ours (not under :func:`runtime_dir`) are refused with
    :class:`FailedSafely` unless *allow_foreign*. Waits for FUSE daemons to close the device.
    """
    done = []
    entries = read_mountinfo()
    mine = [e for d in devnums for e in find_mounts(d, entries=entries)]
    foreign = [e for e in mine if not is_ours(e.mount_point)]
    if foreign and not allow_foreign:
        e = foreign[0]
        raise FailedSafely(f"the card is mounted at {e.mount_point} by another program",
                           "Unmount it there first; nothing was written")
    for e in sorted(mine, key=lambda e: -len(e.mount_point)):
        proc = _run(["umount", e.mount_point], "unmount", e.source)
        if proc.returncode != 0:
            fm = shutil.which("fusermount3") or shutil.which("fusermount")
            if e.fs_type.startswith("fuse") and fm:
                proc = _run([fm, "-u", e.mount_point], "unmount", e.source)
        if proc.returncode != 0 and any(x.mount_id == e.mount_id for x in read_mountinfo()):
            raise MountError(f"cannot unmount {e.source} from {e.mount_point}: "
                             f"{_last_line(proc.stdout)}", "Close any program using the card")
        done.append(e.mount_point)
        if is_ours(e.mount_point):
            with contextlib.suppress(OSError):
                os.rmdir(e.mount_point)
    left = wait_until_released(devnums)
    if left:
        raise MountError("the card is still open by "
                         + ", ".join(f"{n} (pid {p})" for p, n in left.items()),
                         "Close that program; nothing was written")
    return done

