"""Which card this is: recorded at insertion, checked again before anything writes to it.

Why: a card reader keeps its device node when the card in it is swapped, and a loop device
keeps its node when another image is attached. Wiping "/dev/sdb" an hour after the session
started could destroy a different patient's card. So the identity holds what the kernel and
the card say about themselves (device number, ``diskseq`` — a counter the kernel bumps for
every new medium —, size, serial, file-system type, UUID and label), and :func:`recheck`
compares all of them right before a write, reading the file-system superblock afresh with
``blkid -p`` rather than trusting udev's cache.

:func:`same_card` is the looser test for a card pulled and re-inserted mid-session: a new
insertion has a new ``diskseq`` and maybe a new node, but the same serial, size and
file-system UUID; the session then takes a fresh identity with :func:`identify`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.errors import FailedSafely
from core.media.devices import DevNum, MediaCandidate


class CardGone(FailedSafely):
    """The card is no longer in the reader (pulled, loop device detached)."""


class CardChanged(FailedSafely):
    """A different card (or a re-formatted one) is now at the device node."""


@dataclass(frozen=True)
class CardIdentity:
    devnode: str
    devnum: DevNum
    disk_devnode: str
    disk_devnum: DevNum
    disk_size: int
    diskseq: int | None
    serial: str
    fs_type: str
    fs_uuid: str
    label: str

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["devnum"] = list(self.devnum)
        d["disk_devnum"] = list(self.disk_devnum)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CardIdentity:
        return cls(devnode=d["devnode"], devnum=(int(d["devnum"][0]), int(d["devnum"][1])),
                   disk_devnode=d["disk_devnode"],
                   disk_devnum=(int(d["disk_devnum"][0]), int(d["disk_devnum"][1])),
                   disk_size=int(d["disk_size"]),
                   diskseq=None if d.get("diskseq") is None else int(d["diskseq"]),
                   serial=d.get("serial", ""), fs_type=d.get("fs_type", ""),
                   fs_uuid=d.get("fs_uuid", ""), label=d.get("label", ""))

    def describe(self) -> str:
        label = f" '{self.label}'" if self.label else ""
        return f"{self.fs_type}{label} UUID {self.fs_uuid or '?'} in {self.devnode}"


def _sysfs(devnum: DevNum) -> Path:
    return Path(f"/sys/dev/block/{devnum[0]}:{devnum[1]}")


def disk_size(devnum: DevNum) -> int:
    """Size in bytes from sysfs (always counted in 512-byte units); 0 = no medium."""
    try:
        return int((_sysfs(devnum) / "size").read_text().strip()) * 512
    except (OSError, ValueError):
        return 0


def diskseq(devnum: DevNum) -> int | None:
    try:
        return int((_sysfs(devnum) / "diskseq").read_text().strip())
    except (OSError, ValueError):
        return None


def probe_fs(devnode: str) -> dict[str, str]:
    """TYPE, UUID and LABEL read from the device itself now (``blkid -p``), or {}."""
    blkid = shutil.which("blkid") or shutil.which("blkid", path="/usr/sbin:/sbin")
    if not blkid:
        return {}
    try:
        out = subprocess.run([blkid, "-p", "-o", "export", devnode], capture_output=True,
                             text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return {}
    found: dict[str, str] = {}
    for line in out.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            found[key] = value
    return found


def _fs_now(devnode: str, devnum: DevNum) -> dict[str, str]:
    """The file system on the device now: blkid's probe, else udev's (cached) properties."""
    if shutil.which("blkid") or shutil.which("blkid", path="/usr/sbin:/sbin"):
        return probe_fs(devnode)
    try:
        import pyudev

        props = pyudev.Devices.from_device_number(pyudev.Context(), "block",
                                                  os.makedev(*devnum)).properties
        return {"TYPE": props.get("ID_FS_TYPE", ""), "UUID": props.get("ID_FS_UUID", ""),
                "LABEL": props.get("ID_FS_LABEL", "")}
    except Exception:
        return {}


def _udev_serial(devnum: DevNum) -> str | None:
    try:
        import pyudev

        dev = pyudev.Devices.from_device_number(pyudev.Context(), "block",
                                                os.makedev(*devnum))
        props = dev.properties
        return props.get("ID_SERIAL_SHORT") or props.get("ID_SERIAL") or ""
    except Exception:
        return None


def identify(candidate: MediaCandidate) -> CardIdentity:
    """The identity of the card as it is now (call at insertion, and after re-insertion)."""
    return CardIdentity(
        devnode=candidate.devnode, devnum=candidate.devnum,
        disk_devnode=candidate.disk_devnode, disk_devnum=candidate.disk_devnum,
        disk_size=disk_size(candidate.disk_devnum),
        diskseq=diskseq(candidate.disk_devnum) if candidate.diskseq is None
        else candidate.diskseq,
        serial=candidate.serial, fs_type=candidate.fs_type, fs_uuid=candidate.uuid,
        label=candidate.label)


def same_card(identity: CardIdentity, candidate: MediaCandidate) -> bool:
    """Is *candidate* the card of *identity*, perhaps pulled and re-inserted since?"""
    return (bool(identity.fs_uuid) and candidate.uuid == identity.fs_uuid
            and candidate.fs_type == identity.fs_type and candidate.label == identity.label
            and candidate.serial == identity.serial
            and disk_size(candidate.disk_devnum) == identity.disk_size)


def _check_node(path: str, devnum: DevNum, what: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CardGone(f"the card is no longer in the reader ({path} has gone)",
                       "Insert it again; nothing was written") from None
    if not stat.S_ISBLK(st.st_mode) or (os.major(st.st_rdev), os.minor(st.st_rdev)) != devnum:
        raise CardChanged(f"{path} is now a different device than the {what} inserted",
                          "Nothing was written; insert the session's card again")


def recheck(identity: CardIdentity) -> None:
    """Raise :class:`CardGone` or :class:`CardChanged` unless the same card, from the same
    insertion, is still at the recorded node. Call right before anything writes to it."""
    _check_node(identity.devnode, identity.devnum, "card")
    if identity.disk_devnode != identity.devnode:
        _check_node(identity.disk_devnode, identity.disk_devnum, "card")
    size = disk_size(identity.disk_devnum)
    if size == 0:
        raise CardGone(f"there is no card in {identity.disk_devnode} any more",
                       "Insert it again; nothing was written")
    where = identity.disk_devnode
    if size != identity.disk_size:
        raise CardChanged(f"the card now in {where} is not the session's card "
                          f"(size {size} bytes, expected {identity.disk_size})",
                          "Nothing was written; insert the session's card again")
    seq = diskseq(identity.disk_devnum)
    if identity.diskseq is not None and seq is not None and seq != identity.diskseq:
        raise CardChanged(f"the card in {where} was removed and a card inserted since the "
                          "session started",
                          "Nothing was written; check it is the session's card and start "
                          "again")
    if identity.serial:
        serial = _udev_serial(identity.disk_devnum)
        if serial is not None and serial != identity.serial:
            raise CardChanged(f"the card now in {where} is not the session's card "
                              f"(serial {serial or 'none'}, expected {identity.serial})",
                              "Nothing was written; insert the session's card again")
    fs = _fs_now(identity.devnode, identity.devnum)
    uuid, fs_type = fs.get("UUID", ""), fs.get("TYPE", "")
    if (uuid, fs_type) != (identity.fs_uuid, identity.fs_type):
        raise CardChanged(f"the card now in {where} is not the session's card "
                              f"(file system {fs_type or 'none'} UUID {uuid or 'none'}, "
                              f"expected {identity.fs_type} UUID {identity.fs_uuid})",
                              "Nothing was written; insert the session's card again")


def current_identity(devnode: str) -> CardIdentity | None:
    """What is at *devnode* now, as an identity (None when there is no block device)."""
    with contextlib.suppress(OSError):
        st = os.stat(devnode)
        if stat.S_ISBLK(st.st_mode):
            num = (os.major(st.st_rdev), os.minor(st.st_rdev))
            sys_dir = _sysfs(num).resolve()
            disk_dir = sys_dir.parent if (sys_dir / "partition").exists() else sys_dir
            disk_num = tuple(int(x) for x in (disk_dir / "dev").read_text().split(":"))
            dnum = (disk_num[0], disk_num[1])
            fs = _fs_now(devnode, num)
            return CardIdentity(devnode, num, f"/dev/{disk_dir.name}", dnum, disk_size(dnum),
                                diskseq(dnum), _udev_serial(dnum) or "", fs.get("TYPE", ""),
                                fs.get("UUID", ""), fs.get("LABEL", ""))
    return None
