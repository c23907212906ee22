"""Which block devices are camera cards: a pure classifier and a thin pyudev watcher.

Why a pure classifier: the rule "never touch a disk that is not removable media" is the most
important safety property of the product, so it is a function of udev properties alone
(tested on recorded ``udevadm info`` dumps), not of whatever hardware the test machine has.
The rules follow systemd's 60-persistent-storage and udisks' rules: USB is a ``usb``
ancestor or ``ID_USB_DRIVER`` (enclosures report ``ID_BUS=ata``), SD is an ``mmcblk`` under
an ``mmc`` ancestor or ``ID_DRIVE_FLASH_SD``; device-mapper, RAM disks, udisks' ignore and
system hints, loop devices (unless configured for tests) and, always, the disk holding ``/``
or the vault are refused.

Why the watcher starts the monitor before it enumerates: a card inserted between the two
would otherwise be missed; events for devices already enumerated are dropped by comparing
the classification per ``sys_path``. A loop device detached, or a card pulled from a USB
reader, does not remove the block device (only its medium): the watcher reports that as
``remove`` too, since for the session the card is gone either way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import select
import stat
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.errors import BadInput

log = logging.getLogger(__name__)

DEFAULT_FS_TYPES = ("vfat", "exfat", "ntfs", "ext4", "ext3", "ext2", "hfsplus")
MOUNTINFO = "/proc/self/mountinfo"
SYSFS_DEV_BLOCK = "/sys/dev/block"
# Mount points whose file systems belong to the running system, besides the vault's.
SYSTEM_MOUNT_POINTS = ("/", "/boot", "/boot/efi", "/efi", "/usr", "/var", "/home", "/opt",
                       "/srv", "/tmp")

Props = Mapping[str, str]
DevNum = tuple[int, int]


@dataclass(frozen=True)
class MediaCandidate:
    """A file system on removable media that the kiosk may read (and later wipe)."""

    devnode: str
    sys_path: str
    devnum: DevNum
    fs_type: str
    fs_version: str
    label: str
    uuid: str
    size_bytes: int
    serial: str
    bus: str
    """``usb``, ``sd`` (an SD card in a slot or in a USB reader) or ``loop`` (tests, demo)."""
    kind: str
    """Words for the screen: "SD card", "SD card in a USB reader", "USB stick"..."""
    disk_devnode: str
    disk_devnum: DevNum
    is_partition: bool
    part_scheme: str = ""
    """``dos`` or ``gpt`` for a partition, empty for a file system on the whole disk."""
    part_type: str = ""
    part_number: int = 0
    part_offset: int = 0
    """Start of the partition in 512-byte sectors."""
    part_size: int = 0
    part_flags: str = ""
    vendor: str = ""
    model: str = ""
    diskseq: int | None = None

    def describe(self) -> str:
        """One line for the operator: what, how big, which file system."""
        name = " ".join(w for w in (self.vendor, self.model) if w)
        what = f"{name} {self.kind}" if name else self.kind
        label = f" '{self.label}'" if self.label else ""
        return f"{what}, {human_size(self.size_bytes)}, {self.fs_type}{label} ({self.devnode})"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["devnum"] = f"{self.devnum[0]}:{self.devnum[1]}"
        d["disk_devnum"] = f"{self.disk_devnum[0]}:{self.disk_devnum[1]}"
        return d


@dataclass(frozen=True)
class Rejection:
    """A block device that is not a card, and why, in plain words."""

    devnode: str
    reason: str
    sys_path: str = ""
    quiet: bool = False
    """Noise nobody needs to see by default (an unattached loop device, a RAM disk)."""

    def as_dict(self) -> dict[str, Any]:
        return {"devnode": self.devnode, "reason": self.reason, "sys_path": self.sys_path}


Classification = MediaCandidate | Rejection


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" or size >= 100 else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"  # pragma: no cover


# -- the pure classifier ---------------------------------------------------------------------

_UDEV_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")


def _decode(value: str) -> str:
    """udev's ``*_ENC`` values escape bytes as ``\\xNN``; models are padded with spaces."""
    return _UDEV_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), value).strip()


def _words(props: Props, key: str) -> str:
    if props.get(f"{key}_ENC"):
        return _decode(props[f"{key}_ENC"])
    return props.get(key, "").replace("_", " ").strip()


def _devnum(props: Props) -> DevNum | None:
    try:
        return int(props["MAJOR"]), int(props["MINOR"])
    except (KeyError, ValueError):
        return None


def _num(d: DevNum | None) -> str:
    return f"{d[0]}:{d[1]}" if d else ""


def _kernel_name(props: Props) -> str:
    name = props.get("DEVNAME") or props.get("DEVPATH", "")
    return os.path.basename(name)


def _flag(props: Props, key: str) -> bool:
    return props.get(key, "").strip().lower() in ("1", "true", "yes", "y")


def classify(
    props: Props,
    *,
    parents: Sequence[Props] = (),
    system_disks: Collection[str] = frozenset(),
    accept_loop: bool = False,
    fs_types: Collection[str] = DEFAULT_FS_TYPES,
    size_bytes: int | None = None,
    has_partitions: bool = False,
) -> Classification:
    """Decide from udev properties whether a block device is a card the kiosk may use.

    *parents* are the ancestors' properties (each with ``SUBSYSTEM``), nearest first;
    *system_disks* holds ``"major:minor"`` numbers and kernel names (``"vda"``) of the disks
    under ``/`` and the vault (see :func:`system_disk_ids`); *size_bytes* is the sysfs size
    (0 means no medium) and *has_partitions* whether a whole disk has partition devices.
    """
    devnode = props.get("DEVNAME", "") or "?"
    sys_path = props.get("DEVPATH", "")

    def reject(reason: str, quiet: bool = False) -> Rejection:
        return Rejection(devnode, reason, sys_path, quiet)

    if props.get("SUBSYSTEM", "block") != "block":
        return reject("not a block device")
    devtype = props.get("DEVTYPE", "")
    if devtype not in ("disk", "partition"):
        return reject(f"not a disk or partition ({devtype or 'no type'})")
    name = _kernel_name(props)
    devnum = _devnum(props)
    disk_props: Props = props
    if devtype == "partition":
        disk_props = next((p for p in parents if p.get("SUBSYSTEM") == "block"
                           and p.get("DEVTYPE") == "disk"), {})
    disk_name = _kernel_name(disk_props) if disk_props else ""
    disk_devnum = _devnum(disk_props) if disk_props else None

    # 1. Never the system's or the vault's disk, whatever else is true of it.
    mine = {_num(devnum), name, _num(disk_devnum), disk_name,
            props.get("ID_PART_ENTRY_DISK", "")} - {""}
    if mine & set(system_disks):
        return reject("holds the system or the vault (never a card)")

    # 2. Kinds of block device that are never removable media.
    if name.startswith("dm-") or props.get("DM_NAME"):
        return reject("device-mapper volume (LVM or encrypted), not a card")
    if name.startswith(("zram", "ram")):
        return reject("RAM disk, not a card", quiet=True)
    if name.startswith("md"):
        return reject("software RAID array, not a card")
    if name.startswith(("sr", "fd")):
        return reject("optical or floppy drive, not a card", quiet=True)
    if re.fullmatch(r"mmcblk\d+(boot\d+|rpmb|gp\d+)", name):
        return reject("built-in eMMC boot or RPMB area, not a card", quiet=True)
    for p in (props, disk_props):
        if _flag(p, "UDISKS_IGNORE"):
            return reject("udisks is configured to ignore it (UDISKS_IGNORE)")
        if _flag(p, "UDISKS_SYSTEM"):
            return reject("marked as a system device (UDISKS_SYSTEM)")

    # 3. The bus: loop (tests only), SD (slot or reader) or USB.
    loop = name.startswith("loop") or disk_name.startswith("loop")
    usb = (any(p.get("SUBSYSTEM") == "usb" for p in parents)
           or bool(props.get("ID_USB_DRIVER") or disk_props.get("ID_USB_DRIVER")))
    mmc = next((p for p in parents if p.get("SUBSYSTEM") == "mmc"), None)
    sd_flag = _flag(props, "ID_DRIVE_FLASH_SD") or _flag(disk_props, "ID_DRIVE_FLASH_SD")
    if loop:
        if size_bytes == 0:
            return reject("loop device with nothing attached", quiet=True)
        if not accept_loop:
            return reject("loop device (accepted only with [media] accept_loop = true, "
                          "for tests and the demo)")
        bus, kind = "loop", "loop device (test card)"
    elif mmc is not None and name.startswith("mmcblk"):
        if mmc.get("MMC_TYPE", "SD").upper() not in ("SD", "SDIO", "SDCOMBO"):
            return reject("built-in eMMC storage, not an SD card")
        bus, kind = "sd", "SD card"
    elif sd_flag:
        bus, kind = "sd", "SD card in a USB reader" if usb else "SD card"
    elif usb:
        bus = "usb"
        if _flag(props, "ID_DRIVE_THUMB") or _flag(disk_props, "ID_DRIVE_THUMB"):
            kind = "USB stick"
        elif props.get("ID_BUS") == "ata" or props.get("ID_ATA"):
            kind = "USB disk"
        else:
            kind = "USB drive"
    else:
        return reject("not on a USB or SD bus (a built-in disk)")

    # 4. A medium with a file system cameras use.
    if size_bytes == 0:
        return reject("no card in the reader (no medium)")
    if devtype == "disk" and has_partitions:
        return reject("whole disk with partitions (its partitions are listed separately)",
                      quiet=True)
    usage = props.get("ID_FS_USAGE", "")
    fs_type = props.get("ID_FS_TYPE", "")
    if not fs_type:
        return reject("no file system (blank or unformatted)")
    if usage == "crypto":
        return reject(f"encrypted volume ({fs_type}), not a camera file system")
    if usage != "filesystem":
        return reject(f"holds {usage or 'unknown'} data ({fs_type}), not a file system")
    allowed = set(fs_types)
    if fs_type not in allowed:
        return reject(f"file system {fs_type} is not one cameras use "
                      f"(allowed: {', '.join(sorted(allowed))})")
    if devnum is None:
        return reject("udev gave no device number")

    is_partition = devtype == "partition"
    try:
        part_number = int(props.get("ID_PART_ENTRY_NUMBER") or props.get("PARTN") or 0)
        part_offset = int(props.get("ID_PART_ENTRY_OFFSET", "0") or 0)
        part_size = int(props.get("ID_PART_ENTRY_SIZE", "0") or 0)
    except ValueError:
        part_number = part_offset = part_size = 0
    vendor = _words(props, "ID_VENDOR") or _words(disk_props, "ID_VENDOR")
    model = (_words(props, "ID_MODEL") or _words(disk_props, "ID_MODEL")
             or props.get("ID_NAME", "") or disk_props.get("ID_NAME", ""))
    serial = (props.get("ID_SERIAL_SHORT") or props.get("ID_SERIAL")
              or disk_props.get("ID_SERIAL_SHORT") or disk_props.get("ID_SERIAL") or "")
    diskseq = props.get("DISKSEQ") or disk_props.get("DISKSEQ")
    return MediaCandidate(
        devnode=devnode, sys_path=sys_path, devnum=devnum, fs_type=fs_type,
        fs_version=props.get("ID_FS_VERSION", ""),
        label=_decode(props["ID_FS_LABEL_ENC"]) if props.get("ID_FS_LABEL_ENC")
        else props.get("ID_FS_LABEL", ""),
        uuid=props.get("ID_FS_UUID", ""), size_bytes=size_bytes or 0, serial=serial,
        bus=bus, kind=kind,
        disk_devnode=(disk_props.get("DEVNAME", "") if is_partition else devnode),
        disk_devnum=(disk_devnum or devnum) if is_partition else devnum,
        is_partition=is_partition,
        part_scheme=props.get("ID_PART_ENTRY_SCHEME", "") if is_partition else "",
        part_type=props.get("ID_PART_ENTRY_TYPE", "") if is_partition else "",
        part_number=part_number if is_partition else 0,
        part_offset=part_offset if is_partition else 0,
        part_size=part_size if is_partition else 0,
        part_flags=props.get("ID_PART_ENTRY_FLAGS", "") if is_partition else "",
        vendor=vendor, model=model,
        diskseq=int(diskseq) if diskseq and diskseq.isdigit() else None)


# -- which disks hold the system and the vault -----------------------------------------------

@dataclass(frozen=True)
class MountEntry:
    """One line of /proc/self/mountinfo."""

    mount_id: int
    devnum: DevNum
    root: str
    mount_point: str
    options: str
    fs_type: str
    source: str
    super_options: str

    @property
    def read_only(self) -> bool:
        return "ro" in self.options.split(",")


def _unescape_mountinfo(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def read_mountinfo(path: str = MOUNTINFO) -> list[MountEntry]:
    """Parse mountinfo (proc(5)); fields with spaces come octal-escaped and are decoded."""
    entries = []
    with open(path, encoding="utf-8", errors="surrogateescape") as fh:
        for line in fh:
            left, _, right = line.rstrip("\n").partition(" - ")
            a = left.split(" ")
            b = right.split(" ")
            if len(a) < 6 or len(b) < 3:
                continue
            major, _, minor = a[2].partition(":")
            entries.append(MountEntry(
                mount_id=int(a[0]), devnum=(int(major), int(minor)),
                root=_unescape_mountinfo(a[3]), mount_point=_unescape_mountinfo(a[4]),
                options=a[5], fs_type=b[0], source=_unescape_mountinfo(b[1]),
                super_options=b[2]))
    return entries


def _mount_of(path: str, entries: Sequence[MountEntry]) -> MountEntry | None:
    """The mount that holds *path* (the deepest visible mount point above it)."""
    real = os.path.realpath(path)
    while not os.path.exists(real) and real != "/":
        real = os.path.dirname(real)
    try:
        dev = os.stat(real).st_dev
    except OSError:
        return None
    best: MountEntry | None = None
    for e in entries:
        if os.makedev(*e.devnum) != dev:
            continue
        mp = e.mount_point.rstrip("/") or "/"
        if (real == mp or real.startswith(mp.rstrip("/") + "/")) and (
                best is None or len(mp) >= len(best.mount_point)):
            best = e
    return best


def _sysfs_dir(devnum: DevNum) -> Path | None:
    p = Path(SYSFS_DEV_BLOCK) / f"{devnum[0]}:{devnum[1]}"
    try:
        return p.resolve(strict=True)
    except OSError:
        return None


def _read_devnum(path: Path) -> DevNum | None:
    try:
        major, minor = path.read_text().strip().split(":")
        return int(major), int(minor)
    except (OSError, ValueError):
        return None


def _add_block_device(devnum: DevNum, out: set[str], depth: int = 0) -> None:
    """Add *devnum*, its disk (for a partition) and what it is built on (dm/md slaves)."""
    if depth > 8:
        return
    out.add(_num(devnum))
    d = _sysfs_dir(devnum)
    if d is None:
        return
    out.add(d.name)
    disk = d.parent if (d / "partition").exists() else d
    if disk != d:
        disk_num = _read_devnum(disk / "dev")
        if disk_num:
            out.add(_num(disk_num))
        out.add(disk.name)
    for holder_base in {d, disk}:
        slaves = holder_base / "slaves"
        with contextlib.suppress(OSError):
            for s in slaves.iterdir():
                num = _read_devnum(s / "dev")
                if num:
                    _add_block_device(num, out, depth + 1)


def _block_devnum_of_mount(e: MountEntry, entries: Sequence[MountEntry],
                           depth: int = 0) -> list[DevNum]:
    if e.fs_type == "overlay" and depth < 4:
        found: list[DevNum] = []
        for opt in e.super_options.split(","):
            key, _, value = opt.partition("=")
            if key in ("upperdir", "lowerdir", "workdir") and value:
                for part in value.split(":"):
                    inner = _mount_of(part, entries)
                    if inner is not None and inner is not e:
                        found.extend(_block_devnum_of_mount(inner, entries, depth + 1))
        return found
    if e.source.startswith("/"):
        with contextlib.suppress(OSError):
            st = os.stat(e.source)
            if stat.S_ISBLK(st.st_mode):
                return [(os.major(st.st_rdev), os.minor(st.st_rdev))]
    if e.devnum[0] != 0:
        return [e.devnum]
    return []


def system_disk_ids(vault_path: str | os.PathLike[str] | None = None, *,
                    mountinfo: str = MOUNTINFO) -> set[str]:
    """``"major:minor"`` numbers and kernel names of every block device that holds ``/``,
    the vault, the usual system mount points or active swap, with their whole disks and,
    for device-mapper or RAID volumes, the devices under them."""
    entries = read_mountinfo(mountinfo)
    out: set[str] = set()
    paths = [p for p in SYSTEM_MOUNT_POINTS if os.path.exists(p)]
    if vault_path:
        paths.append(os.fspath(vault_path))
    for path in paths:
        e = _mount_of(path, entries)
        if e is not None:
            for num in _block_devnum_of_mount(e, entries):
                _add_block_device(num, out)
    with contextlib.suppress(OSError), open("/proc/swaps", encoding="utf-8") as fh:
        for line in list(fh)[1:]:
            name = line.split()[0] if line.split() else ""
            with contextlib.suppress(OSError):
                st = os.stat(_unescape_mountinfo(name))
                if stat.S_ISBLK(st.st_mode):
                    _add_block_device((os.major(st.st_rdev), os.minor(st.st_rdev)), out)
    return out


# -- the pyudev adapter ----------------------------------------------------------------------

def _media_settings(config: Any) -> tuple[bool, tuple[str, ...], str | None]:
    media = config["media"] if isinstance(config, Mapping) else config.media
    vault = None
    with contextlib.suppress(KeyError, AttributeError, TypeError):
        vault = (config["vault"] if isinstance(config, Mapping) else config.vault)["path"] or None
    return bool(media["accept_loop"]), tuple(media["fs_types"]), vault


def _props_of(device: Any) -> dict[str, str]:
    props = {str(k): str(v) for k, v in device.properties.items()}
    if device.subsystem and "SUBSYSTEM" not in props:
        props["SUBSYSTEM"] = device.subsystem
    if device.device_type and "DEVTYPE" not in props:
        props["DEVTYPE"] = device.device_type
    if device.driver and "DRIVER" not in props:
        props["DRIVER"] = device.driver
    return props


def classify_device(device: Any, *, system_disks: Collection[str], accept_loop: bool,
                    fs_types: Collection[str]) -> Classification:
    """Classify a ``pyudev.Device`` (reads its ancestors and its sysfs size)."""
    props = _props_of(device)
    parents = [_props_of(a) for a in device.ancestors]
    size: int | None = None
    has_partitions = False
    sys_path = device.sys_path
    with contextlib.suppress(OSError, ValueError):
        size = int(Path(sys_path, "size").read_text().strip()) * 512
    if props.get("DEVTYPE") == "disk":
        with contextlib.suppress(OSError):
            has_partitions = any((Path(sys_path) / e / "partition").exists()
                                 for e in os.listdir(sys_path))
    return classify(props, parents=parents, system_disks=system_disks,
                    accept_loop=accept_loop, fs_types=fs_types, size_bytes=size,
                    has_partitions=has_partitions)


def list_media(config: Any, *, vault_path: str | os.PathLike[str] | None = None,
               context: Any = None) -> list[Classification]:
    """Every block device now present, classified, ordered by device node."""
    import pyudev

    accept_loop, fs_types, cfg_vault = _media_settings(config)
    system = system_disk_ids(vault_path or cfg_vault)
    ctx = context or pyudev.Context()
    out = []
    for dev in ctx.list_devices(subsystem="block"):
        try:
            out.append(classify_device(dev, system_disks=system, accept_loop=accept_loop,
                                       fs_types=fs_types))
        except Exception:  # a device removed while we looked at it
            log.debug("device %s vanished while classifying", dev.sys_path, exc_info=True)
    return sorted(out, key=lambda r: _natural_key(r.devnode))


def _natural_key(s: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def describe_device(devnode: str, config: Any, *,
                    vault_path: str | os.PathLike[str] | None = None) -> Classification:
    """Classify the block device at *devnode* (``/dev/sdb1``, ``/dev/loop3``)."""
    import pyudev

    try:
        st = os.stat(devnode)
    except FileNotFoundError:
        raise BadInput(f"device {devnode} does not exist",
                       "Check the card is inserted (clinivault devices lists cards)") from None
    if not stat.S_ISBLK(st.st_mode):
        raise BadInput(f"{devnode} is not a block device")
    accept_loop, fs_types, cfg_vault = _media_settings(config)
    ctx = pyudev.Context()
    dev = pyudev.Devices.from_device_number(ctx, "block", st.st_rdev)
    return classify_device(dev, system_disks=system_disk_ids(vault_path or cfg_vault),
                           accept_loop=accept_loop, fs_types=fs_types)


def candidate_for(devnode: str, config: Any, *,
                  vault_path: str | os.PathLike[str] | None = None) -> MediaCandidate:
    """The card at *devnode*, or :class:`BadInput` saying why that device is not one."""
    result = describe_device(devnode, config, vault_path=vault_path)
    if isinstance(result, Rejection):
        raise BadInput(f"{devnode} is not a card the kiosk may use: {result.reason}")
    return result


@dataclass(frozen=True)
class MediaEvent:
    """What the watcher saw: a card arrived, changed or went away, or a device was refused.

    ``action`` is ``add`` (a device seen for the first time, or one that became a card),
    ``change`` (classification changed but it stayed a card, or stayed refused) or
    ``remove`` (the device went away or is no longer a card: pulled from a reader, loop
    device detached). ``result`` is the new classification (``None`` after a udev remove).
    """

    action: str
    sys_path: str
    devnode: str
    result: Classification | None
    initial: bool = False
    """Found by the start-up enumeration rather than by an event."""

    @property
    def candidate(self) -> MediaCandidate | None:
        return self.result if isinstance(self.result, MediaCandidate) else None


class DeviceWatcher:
    """Report block devices as :class:`MediaEvent` to *callback*, from a thread of its own.

    ``start()`` opens the udev monitor (so nothing inserted from then on is missed), then the
    thread enumerates the devices already present and follows the monitor; ``ready`` is set
    once the enumeration is done. ``stop()`` handles the events already received, ends the
    thread and joins it. The callback runs in the watcher's thread; an exception it raises is
    logged and the watching goes on. Should the udev socket fail, ``error`` is set and
    *on_error* is called from the thread.
    """

    def __init__(self, callback: Callable[[MediaEvent], None], config: Any, *,
                 vault_path: str | os.PathLike[str] | None = None, context: Any = None,
                 on_error: Callable[[BaseException], None] | None = None) -> None:
        self._callback = callback
        self._on_error = on_error
        self._accept_loop, self._fs_types, cfg_vault = _media_settings(config)
        self._vault_path = vault_path or cfg_vault
        self._context = context
        self._known: dict[str, Classification] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop_r = self._stop_w = -1
        self._monitor: Any = None
        self.ready = threading.Event()
        self.error: BaseException | None = None

    def __enter__(self) -> DeviceWatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        import pyudev

        if self._thread is not None:
            raise RuntimeError("watcher already started")
        ctx = self._context or pyudev.Context()
        self._context = ctx
        monitor = pyudev.Monitor.from_netlink(ctx)
        monitor.filter_by("block")
        with contextlib.suppress(Exception):  # needs CAP_NET_ADMIN; the default is fine too
            monitor.set_receive_buffer_size(8 * 1024 * 1024)
        monitor.start()
        self._monitor = monitor
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._run, name="clinivault-devices",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is None:
            return
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")
        self._thread.join(timeout)
        if self._thread.is_alive():  # pragma: no cover - a callback that never returns
            raise RuntimeError("device watcher thread did not stop")
        self._thread = None
        for fd in (self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._stop_r = self._stop_w = -1
        self._monitor = None

    def current(self) -> list[MediaCandidate]:
        """The cards present now, as far as the watcher knows."""
        with self._lock:
            return [r for r in self._known.values() if isinstance(r, MediaCandidate)]

    def known(self) -> list[Classification]:
        with self._lock:
            return list(self._known.values())

    # -- the thread --------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            for dev in self._context.list_devices(subsystem="block"):
                self._handle(dev, "add", initial=True)
            self.ready.set()
            monitor = self._monitor
            while True:
                readable, _, _ = select.select([monitor.fileno(), self._stop_r], [], [])
                while True:  # everything received so far, also when asked to stop
                    dev = monitor.poll(timeout=0)
                    if dev is None:
                        break
                    self._handle(dev, dev.action or "change")
                if self._stop_r in readable:
                    return
        except BaseException as exc:  # pragma: no cover - netlink socket failure
            self.error = exc
            log.exception("device watcher stopped")
            if self._on_error is not None:
                self._on_error(exc)
        finally:
            self.ready.set()

    def _handle(self, dev: Any, action: str, *, initial: bool = False) -> None:
        sys_path = dev.sys_path
        devnode = dev.device_node or ""
        if action == "remove":
            with self._lock:
                prev = self._known.pop(sys_path, None)
            if prev is not None:
                self._emit(MediaEvent("remove", sys_path, devnode or prev.devnode, None))
            return
        if action not in ("add", "change", "online", "offline", "move", "bind"):
            return
        try:
            result = classify_device(
                dev, system_disks=system_disk_ids(self._vault_path),
                accept_loop=self._accept_loop, fs_types=self._fs_types)
        except Exception:
            log.debug("device %s vanished while classifying", sys_path, exc_info=True)
            return
        with self._lock:
            prev = self._known.get(sys_path)
            self._known[sys_path] = result
        if prev == result:
            return
        was_card = isinstance(prev, MediaCandidate)
        is_card = isinstance(result, MediaCandidate)
        if prev is None or (is_card and not was_card):
            kind = "add"
        elif was_card and not is_card:
            kind = "remove"
        else:
            kind = "change"
        self._emit(MediaEvent(kind, sys_path, devnode, result, initial))

    def _emit(self, event: MediaEvent) -> None:
        try:
            self._callback(event)
        except Exception:
            log.exception("device event callback failed for %s", event.devnode)
