"""The card classifier on recorded udev dumps, each rule on its own, and the watcher's events.

Why dumps: the rule "never touch a disk that is not removable media" must hold for hardware
the test machine does not have (USB sticks, SD slots, card readers, enclosures, NVMe).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from core.media.devices import (
    DeviceWatcher,
    MediaCandidate,
    MediaEvent,
    Rejection,
    classify,
    read_mountinfo,
    system_disk_ids,
)

DUMPS = Path(__file__).parent / "data" / "udev"


@dataclass
class Dump:
    name: str
    props: dict[str, str]
    parents: list[dict[str, str]]
    expect: str
    size: int | None = None
    system: set[str] = field(default_factory=set)
    accept_loop: bool = False
    partitions: bool = False


def load_dump(path: Path) -> Dump:
    headers: dict[str, str] = {}
    records: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            key, _, value = line[1:].strip().partition(":")
            if key in ("expect", "size", "system", "accept_loop", "partitions"):
                headers[key] = value.strip()
            continue
        if not line.strip():
            current = None
            continue
        if current is None:
            current = {}
            records.append(current)
        if line.startswith("E: "):
            k, _, v = line[3:].partition("=")
            current[k] = v
    return Dump(path.stem, records[0], records[1:], headers["expect"],
                int(headers["size"]) if "size" in headers else None,
                set(headers.get("system", "").split()),
                headers.get("accept_loop") == "true", headers.get("partitions") == "true")


def run(d: Dump, **over: Any) -> MediaCandidate | Rejection:
    kw: dict[str, Any] = {"parents": d.parents, "system_disks": d.system,
                          "accept_loop": d.accept_loop, "size_bytes": d.size,
                          "has_partitions": d.partitions}
    kw.update(over)
    props = over.pop("props", None) or d.props
    kw.pop("props", None)
    return classify(props, **kw)


ALL = sorted(DUMPS.glob("*.txt"))


def test_every_documented_device_has_a_dump() -> None:
    names = {p.stem for p in ALL}
    assert {"usb_stick_partition", "usb_stick_unpartitioned", "sd_mmc_slot", "sd_usb_reader",
            "usb_hdd_ata", "system_disk", "loop_exfat", "dm_lvm", "zram"} <= names


@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_dump_is_classified_as_recorded(path: Path) -> None:
    d = load_dump(path)
    verdict, _, rest = d.expect.partition(" ")
    result = run(d)
    if verdict == "accept":
        bus, _, kind = rest.partition(" ")
        assert isinstance(result, MediaCandidate), result
        assert result.bus == bus
        assert result.kind == kind
        assert result.devnode == d.props["DEVNAME"]
        assert result.fs_type == d.props["ID_FS_TYPE"]
        assert result.uuid == d.props["ID_FS_UUID"]
    else:
        assert isinstance(result, Rejection), result
        assert rest in result.reason
        assert result.devnode == d.props["DEVNAME"]


def dump(name: str) -> Dump:
    return load_dump(DUMPS / f"{name}.txt")


def test_usb_partition_candidate_carries_what_the_wipe_and_screen_need() -> None:
    c = run(dump("usb_stick_partition"))
    assert isinstance(c, MediaCandidate)
    assert c.devnum == (8, 17) and c.disk_devnum == (8, 16)
    assert c.disk_devnode == "/dev/sdb" and c.is_partition
    assert (c.part_scheme, c.part_type, c.part_number) == ("dos", "0xc", 1)
    assert (c.part_offset, c.part_size, c.part_flags) == (32, 31277024, "0x80")
    assert (c.vendor, c.model) == ("SanDisk", "Cruzer Blade")
    assert c.serial == "4C530001230818118241"
    assert (c.label, c.fs_version, c.diskseq) == ("CAMERA", "FAT32", 31)
    assert c.describe() == "SanDisk Cruzer Blade USB stick, 16.0 GB, vfat 'CAMERA' (/dev/sdb1)"
    assert c.as_dict()["devnum"] == "8:17"


def test_unpartitioned_stick_is_its_own_disk() -> None:
    c = run(dump("usb_stick_unpartitioned"))
    assert isinstance(c, MediaCandidate)
    assert not c.is_partition and c.disk_devnode == c.devnode == "/dev/sdc"
    assert c.disk_devnum == c.devnum == (8, 32)
    assert c.part_scheme == "" and c.part_number == 0


def test_sd_in_slot_uses_the_card_name() -> None:
    c = run(dump("sd_mmc_slot"))
    assert isinstance(c, MediaCandidate)
    assert (c.bus, c.model, c.serial, c.disk_devnode) == ("sd", "SN64G", "0x8f3c21a4",
                                                          "/dev/mmcblk0")


def test_escaped_label_is_decoded() -> None:
    c = run(dump("usb_hdd_ata"))
    assert isinstance(c, MediaCandidate)
    assert c.label == "My Passport"
    assert c.model == "WDC WD10JMVW-11AJGS1"


# -- each rule on its own ----------------------------------------------------------------------

def test_usb_ancestor_alone_is_enough() -> None:
    d = dump("usb_hdd_ata")
    props = {k: v for k, v in d.props.items() if not k.startswith("ID_USB")}
    c = run(d, props=props)
    assert isinstance(c, MediaCandidate) and c.bus == "usb"


def test_id_usb_driver_alone_is_enough() -> None:
    d = dump("usb_hdd_ata")
    parents = [p for p in d.parents if p.get("SUBSYSTEM") != "usb"]
    disk = dict(parents[0])
    disk.pop("ID_USB_DRIVER")
    c = run(d, parents=[disk, *parents[1:]])
    assert isinstance(c, MediaCandidate) and c.bus == "usb"


def test_neither_usb_nor_sd_is_refused() -> None:
    d = dump("usb_hdd_ata")
    props = {k: v for k, v in d.props.items() if not k.startswith("ID_USB")}
    parents = [p for p in d.parents if p.get("SUBSYSTEM") != "usb"]
    disk = {k: v for k, v in parents[0].items() if k != "ID_USB_DRIVER"}
    r = run(d, props=props, parents=[disk, *parents[1:]])
    assert isinstance(r, Rejection) and "not on a USB or SD bus" in r.reason


def test_sd_flag_on_the_disk_only_counts() -> None:
    d = dump("sd_usb_reader")
    props = {k: v for k, v in d.props.items() if k != "ID_DRIVE_FLASH_SD"}
    c = run(d, props=props)
    assert isinstance(c, MediaCandidate) and c.bus == "sd"


def test_emmc_is_not_an_sd_card() -> None:
    d = dump("sd_mmc_slot")
    parents = [dict(p) for p in d.parents]
    parents[1]["MMC_TYPE"] = "MMC"
    r = run(d, parents=parents)
    assert isinstance(r, Rejection) and "eMMC" in r.reason


def test_emmc_boot_area_is_refused() -> None:
    d = dump("sd_mmc_slot")
    props = dict(d.parents[0], DEVNAME="/dev/mmcblk0boot0", ID_FS_TYPE="vfat",
                 ID_FS_USAGE="filesystem")
    r = run(d, props=props, parents=d.parents[1:])
    assert isinstance(r, Rejection) and "boot" in r.reason


@pytest.mark.parametrize("flag", ["UDISKS_IGNORE", "UDISKS_SYSTEM"])
def test_udisks_hints_refuse(flag: str) -> None:
    d = dump("usb_stick_partition")
    r = run(d, props={**d.props, flag: "1"})
    assert isinstance(r, Rejection) and flag in r.reason
    parents = [dict(d.parents[0], **{flag: "1"}), *d.parents[1:]]
    r2 = run(d, parents=parents)  # on the disk, the partition inherits it
    assert isinstance(r2, Rejection) and flag in r2.reason


def test_vault_on_a_usb_disk_makes_that_disk_refused() -> None:
    d = dump("usb_stick_partition")
    assert isinstance(run(d), MediaCandidate)
    for ident in ("8:16", "sdb", "8:17"):
        r = run(d, system_disks={ident})
        assert isinstance(r, Rejection) and "system or the vault" in r.reason, ident


def test_system_disk_is_refused_even_with_accept_loop_for_loop_devices() -> None:
    d = dump("loop_exfat_accepted")
    assert isinstance(run(d), MediaCandidate)
    r = run(d, system_disks={"7:0"})
    assert isinstance(r, Rejection) and "system or the vault" in r.reason


def test_file_system_must_be_in_the_allow_list() -> None:
    d = dump("usb_stick_unpartitioned")
    r = run(d, fs_types=("vfat",))
    assert isinstance(r, Rejection) and "exfat is not one cameras use" in r.reason
    r2 = run(d, props={**d.props, "ID_FS_TYPE": "btrfs"})
    assert isinstance(r2, Rejection) and "btrfs" in r2.reason


def test_blank_medium_is_refused() -> None:
    d = dump("usb_stick_unpartitioned")
    props = {k: v for k, v in d.props.items() if not k.startswith("ID_FS_")}
    r = run(d, props=props)
    assert isinstance(r, Rejection) and "no file system" in r.reason


def test_disk_with_partitions_defers_to_them() -> None:
    d = dump("usb_stick_unpartitioned")
    r = run(d, has_partitions=True)
    assert isinstance(r, Rejection) and "partitions" in r.reason and r.quiet


def test_not_a_block_device_or_wrong_type() -> None:
    d = dump("usb_stick_partition")
    assert isinstance(run(d, props={**d.props, "SUBSYSTEM": "usb"}), Rejection)
    r = run(d, props={**d.props, "DEVTYPE": "scsi_device"})
    assert isinstance(r, Rejection) and "not a disk or partition" in r.reason


# -- which disks hold the system -----------------------------------------------------------

def test_root_file_system_device_is_a_system_disk() -> None:
    st = os.stat("/")
    ids = system_disk_ids()
    if os.major(st.st_dev) == 0:
        pytest.skip("/ is not on a block device here (overlay or tmpfs root)")
    assert f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}" in ids


def test_mountinfo_escapes_are_decoded(tmp_path: Path) -> None:
    f = tmp_path / "mountinfo"
    f.write_text("42 27 7:0 / /run/media/A\\040card ro,nosuid - fuseblk /dev/loop0 ro\n"
                 "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n")
    entries = read_mountinfo(str(f))
    assert entries[0].mount_point == "/run/media/A card"
    assert entries[0].devnum == (7, 0) and entries[0].read_only
    assert not entries[1].read_only and entries[1].source == "/dev/vda"


# -- the watcher's event semantics, with fake pyudev devices -------------------------------

@dataclass
class FakeDevice:
    sys_path: str
    properties: Mapping[str, str]
    ancestors: list[Any] = field(default_factory=list)
    action: str | None = None

    @property
    def device_node(self) -> str:
        return self.properties.get("DEVNAME", "")

    @property
    def subsystem(self) -> str:
        return self.properties.get("SUBSYSTEM", "")

    @property
    def device_type(self) -> str:
        return self.properties.get("DEVTYPE", "")

    driver = None


class FakeContext:
    def __init__(self, devices: list[FakeDevice]) -> None:
        self.devices = devices

    def list_devices(self, subsystem: str) -> list[FakeDevice]:
        return list(self.devices)


def test_watcher_reports_add_change_remove_once_each(tmp_path: Path, cfg: Any) -> None:
    sysdir = tmp_path / "loop0"
    sysdir.mkdir()
    (sysdir / "size").write_text("131072\n")
    d = dump("loop_exfat_accepted")
    dev = FakeDevice(str(sysdir), d.props)
    events: list[MediaEvent] = []
    watcher = DeviceWatcher(events.append, cfg, context=FakeContext([dev]))
    # Drive the thread's handler directly: the real monitor is exercised in tests/e2e.
    watcher._handle(dev, "add", initial=True)
    watcher._handle(dev, "change")  # the same device again: no new event
    assert [(e.action, e.initial) for e in events] == [("add", True)]
    assert events[0].candidate is not None and events[0].candidate.label == "CARD"

    relabelled = FakeDevice(str(sysdir), {**d.props, "ID_FS_LABEL": "NEW",
                                          "ID_FS_LABEL_ENC": "NEW"})
    watcher._handle(relabelled, "change")
    assert events[-1].action == "change" and events[-1].candidate.label == "NEW"  # type: ignore[union-attr]

    (sysdir / "size").write_text("0\n")  # detached: no medium any more
    watcher._handle(relabelled, "change")
    assert events[-1].action == "remove" and isinstance(events[-1].result, Rejection)
    assert watcher.current() == []

    (sysdir / "size").write_text("131072\n")
    watcher._handle(dev, "change")
    assert events[-1].action == "add" and len(watcher.current()) == 1
    watcher._handle(dev, "remove")
    assert events[-1].action == "remove" and events[-1].result is None
    watcher._handle(dev, "remove")  # unknown now: nothing more
    assert len(events) == 5


def test_watcher_survives_a_failing_callback(tmp_path: Path, cfg: Any) -> None:
    sysdir = tmp_path / "loop1"
    sysdir.mkdir()
    (sysdir / "size").write_text("131072\n")
    calls = threading.Semaphore(0)

    def bad(_e: MediaEvent) -> None:
        calls.release()
        raise RuntimeError("screen went away")

    d = dump("loop_exfat_accepted")
    watcher = DeviceWatcher(bad, cfg, context=FakeContext([]))
    watcher._handle(FakeDevice(str(sysdir), d.props), "add")
    watcher._handle(FakeDevice(str(sysdir), {**d.props, "ID_FS_UUID": "X"}), "change")
    assert calls.acquire(timeout=0) and calls.acquire(timeout=0)
