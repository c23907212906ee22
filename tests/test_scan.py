"""Scanning a card: a safe walk that finds images by content and leaves everything else."""

from __future__ import annotations

import os
import shutil
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from core.errors import BadInput
from core.media.safe_open import card_file
from core.media.scan import CardFile, ScanResult, Skipped, scan_card

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 4 + b"\xff\xd9"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64)
TIFF = b"II*\x00\x08\x00\x00\x00" + bytes(64)
CR2 = b"II*\x00\x10\x00\x00\x00CR\x02\x00" + bytes(64)
MP4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isommp41" + bytes(64)
XMP = b"<x:xmpmeta xmlns:x='adobe:ns:meta/'></x:xmpmeta>\n"


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def real_jpeg(name: str) -> bytes:
    path = MEDIA / "gps" / name
    if not path.is_file():
        pytest.skip(f"shared test media {path} is not available")
    return path.read_bytes()


def by_parts(result: ScanResult) -> dict[tuple[str, ...], Skipped]:
    return {s.parts: s for s in result.skipped}


def test_camera_card_tree(tmp_path: Path) -> None:
    card = tmp_path / "card"
    dcim = card / "DCIM" / "100CANON"
    write(dcim / "IMG_0001.JPG", real_jpeg("gps11_canon-eos-600d.jpg"))
    write(dcim / "IMG_0001.CR2", CR2)
    write(dcim / "IMG_0001.THM", JPEG)
    write(dcim / "IMG_0002.JPG", real_jpeg("gps01_nikon-coolpix-p6000.jpg"))
    write(dcim / "IMG_0002.JPG.xmp", XMP)  # darktable-style sidecar name
    write(dcim / "img_0003.cr2", CR2)  # a RAW with no JPEG stands alone
    write(dcim / "MVI_0004.MP4", MP4)
    write(card / "DCIM" / "101APPLE" / "IMG_0005.PNG", PNG)
    write(card / "DCIM" / "101APPLE" / "IMG_0005.AAE", b"<?xml version='1.0'?><plist/>")
    write(card / "DCIM" / ".hidden" / "IMG_0006.JPG", JPEG)  # camera system dirs are walked
    write(card / "MISC" / "AUTPRINT.MRK", b"[HDR]\nGEN REV = 01.10\n")
    write(card / "DCIM" / "100CANON" / "zero.jpg", b"")
    write(card / "DCIM" / "100CANON" / "fake.jpg", TIFF)

    result = scan_card(card)

    assert result.root == card
    assert result.root_dev == card.stat().st_dev
    assert result.complete
    summary = [
        (it.primary.parts[-1], it.primary.kind, it.primary.fmt,
         it.raw.parts[-1] if it.raw else None, [s.parts[-1] for s in it.sidecars])
        for it in result.items
    ]
    assert summary == [
        ("IMG_0006.JPG", "image", "jpeg", None, []),
        ("IMG_0001.JPG", "image", "jpeg", "IMG_0001.CR2", ["IMG_0001.THM"]),
        ("IMG_0002.JPG", "image", "jpeg", None, ["IMG_0002.JPG.xmp"]),
        ("img_0003.cr2", "raw", "cr2", None, []),
        ("IMG_0005.PNG", "image", "png", None, ["IMG_0005.AAE"]),
    ]
    assert [it.primary.parts for it in result.items] == sorted(
        it.primary.parts for it in result.items
    )
    assert [v.parts for v in result.videos] == [("DCIM", "100CANON", "MVI_0004.MP4")]
    assert result.videos[0].fmt == "mp4"
    skipped = by_parts(result)
    assert skipped[("DCIM", "100CANON", "zero.jpg")].reason == "zero-byte file"
    assert skipped[("DCIM", "100CANON", "fake.jpg")].reason == (
        "extension says .jpg but content is TIFF")
    assert skipped[("MISC", "AUTPRINT.MRK")].category == "not_image"
    assert skipped[("DCIM", "100CANON", "zero.jpg")].category == "empty"
    assert {s.parts[-1] for s in result.rejected} == {"fake.jpg"}
    assert result.total_bytes == sum(f.identity.size for f in result.files())
    assert result.entries == 18  # 5 folders + 13 files
    # identities are what the files are now
    for f in result.files():
        st = card.joinpath(*f.parts).stat()
        assert (f.identity.ino, f.identity.size, f.identity.mtime_ns) == (
            st.st_ino, st.st_size, st.st_mtime_ns)


def test_scan_only_reads_and_changes_nothing(tmp_path: Path) -> None:
    card = tmp_path / "card"
    write(card / "DCIM" / "IMG_0001.JPG", JPEG)
    write(card / "DCIM" / "IMG_0001.CR2", CR2)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in card.rglob("*") if p.is_file()}
    scan_card(card)
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in card.rglob("*") if p.is_file()}
    assert after == before


def test_symlinks_are_never_followed(tmp_path: Path) -> None:
    card = tmp_path / "card"
    outside = tmp_path / "outside"
    write(outside / "secret.jpg", JPEG)
    write(outside / "deep" / "IMG_9999.JPG", JPEG)
    write(card / "DCIM" / "IMG_0001.JPG", JPEG)
    (card / "DCIM" / "link.jpg").symlink_to(outside / "secret.jpg")
    (card / "DCIM" / "dirlink").symlink_to(outside)
    (card / "DCIM" / "loop_a").symlink_to("loop_b")
    (card / "DCIM" / "loop_b").symlink_to("loop_a")
    (card / "DCIM" / "self").symlink_to(".")
    (card / "DCIM" / "up").symlink_to("..")
    (card / "DCIM" / "dangling.jpg").symlink_to(card / "nowhere")

    result = scan_card(card)

    assert [f.parts for f in result.files()] == [("DCIM", "IMG_0001.JPG")]
    links = ["link.jpg", "dirlink", "loop_a", "loop_b", "self", "up", "dangling.jpg"]
    skipped = by_parts(result)
    for name in links:
        assert skipped[("DCIM", name)].reason == "symbolic link (not followed)"
        assert skipped[("DCIM", name)].category == "unsafe"
    assert not any("IMG_9999" in p for s in result.skipped for p in s.parts)


def test_hard_links_are_skipped_with_a_reason(tmp_path: Path) -> None:
    card = tmp_path / "card"
    outside = write(tmp_path / "outside.jpg", JPEG)
    write(card / "DCIM" / "IMG_0001.JPG", JPEG)
    os.link(outside, card / "DCIM" / "IMG_0002.JPG")
    write(card / "DCIM" / "IMG_0003.JPG", JPEG)
    os.link(card / "DCIM" / "IMG_0003.JPG", card / "DCIM" / "IMG_0004.JPG")

    result = scan_card(card)

    assert [f.parts[-1] for f in result.files()] == ["IMG_0001.JPG"]
    skipped = by_parts(result)
    for name in ("IMG_0002.JPG", "IMG_0003.JPG", "IMG_0004.JPG"):
        assert skipped[("DCIM", name)].reason.startswith("hard link (shared with another file)")
    assert outside.read_bytes() == JPEG


@pytest.mark.timeout(20)
def test_fifo_and_socket_are_skipped_without_hanging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    card = tmp_path / "card"
    write(card / "IMG_0001.JPG", JPEG)
    os.mkfifo(card / "IMG_0002.JPG")
    monkeypatch.chdir(card)  # AF_UNIX paths are short: bind by relative name
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind("IMG_0003.JPG")
        result = scan_card(card)
    assert [f.parts for f in result.files()] == [("IMG_0001.JPG",)]
    assert {s.parts: (s.reason, s.category) for s in result.skipped} == {
        ("IMG_0002.JPG",): ("FIFO (named pipe): not opened", "unsafe"),
        ("IMG_0003.JPG",): ("socket: not opened", "unsafe"),
    }


def test_device_nodes_are_skipped(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("device nodes can only be created as root (os.mknod)")
    card = tmp_path / "card"
    write(card / "IMG_0001.JPG", JPEG)
    os.mknod(card / "IMG_0002.JPG", stat.S_IFCHR | 0o600, os.makedev(1, 3))  # like /dev/null
    os.mknod(card / "IMG_0003.JPG", stat.S_IFBLK | 0o600, os.makedev(7, 0))  # like loop0
    result = scan_card(card)
    assert [f.parts for f in result.files()] == [("IMG_0001.JPG",)]
    assert {s.parts: s.reason for s in result.skipped} == {
        ("IMG_0002.JPG",): "device node: not opened",
        ("IMG_0003.JPG",): "device node: not opened",
    }


def test_odd_names_are_kept_exact_and_shown_escaped(tmp_path: Path) -> None:
    card = tmp_path / "card"
    (card / "DCIM").mkdir(parents=True)
    raw_names = {
        b"new\nline.jpg": "new\\nline.jpg",
        b"esc\x1b[31mred.jpg": "esc\\x1b[31mred.jpg",
        b"bad\xff\xfe.jpg": "bad\\xff\\xfe.jpg",
    }
    base = os.fsencode(card / "DCIM")
    for i, raw in enumerate(raw_names):
        with open(os.path.join(base, raw), "wb") as fh:
            fh.write(JPEG + bytes([i]))

    result = scan_card(card)

    found = {os.fsencode(f.name): f for f in result.files()}
    assert set(found) == set(raw_names)
    for i, (raw, shown) in enumerate(raw_names.items()):
        f = found[raw]
        assert f.display == "DCIM/" + shown
        assert f.display.isprintable()
        with card_file(card, f.parts, expect=f.identity) as fh:
            assert fh.read() == JPEG + bytes([i])


def test_mislabelled_real_file_is_rejected(tmp_path: Path) -> None:
    src = MEDIA / "hostile" / "hostile10_mislabelled_rw2-tiff-named-jpg.jpg"
    if not src.is_file():
        pytest.skip(f"shared test media {src} is not available")
    card = tmp_path / "card"
    (card / "DCIM").mkdir(parents=True)
    shutil.copyfile(src, card / "DCIM" / "P1000001.JPG")
    write(card / "DCIM" / "notes.jpg", b"this is not a photograph\n")

    result = scan_card(card)

    assert result.items == []
    assert {s.parts[-1]: s.reason for s in result.rejected} == {
        "P1000001.JPG": "extension says .jpg but content is Panasonic RW2 raw",
        "notes.jpg": "extension says .jpg but content is text",
    }


def test_empty_card_gives_an_empty_result(tmp_path: Path) -> None:
    card = tmp_path / "card"
    card.mkdir()
    result = scan_card(card)
    assert (result.items, result.videos, result.skipped, result.total_bytes) == ([], [], [], 0)
    assert result.complete


@pytest.mark.parametrize("kind", ["missing", "file", "symlink"])
def test_bad_roots_are_bad_input(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "card"
    if kind == "file":
        target.write_bytes(JPEG)
    elif kind == "symlink":
        (tmp_path / "real").mkdir()
        target.symlink_to(tmp_path / "real")
    with pytest.raises(BadInput) as info:
        scan_card(target)
    assert "\n" not in str(info.value)
    assert "card folder" in str(info.value)


def test_depth_limit(tmp_path: Path) -> None:
    card = tmp_path / "card"
    deep = card.joinpath(*[f"d{i}" for i in range(6)])
    write(deep / "IMG_0001.JPG", JPEG)
    write(card / "d0" / "IMG_0002.JPG", JPEG)

    result = scan_card(card, max_depth=3)

    assert [f.parts for f in result.files()] == [("d0", "IMG_0002.JPG")]
    (limit,) = result.skipped
    assert limit.parts == ("d0", "d1", "d2", "d3")
    assert limit.reason == "folder nested more than 3 levels deep (not scanned)"
    assert limit.category == "limit"
    assert result.complete  # the rest of the card was scanned
    assert len(scan_card(card).files()) == 2  # the default limit is far deeper


@pytest.mark.timeout(60)
def test_entry_limit_stops_with_a_reason(tmp_path: Path) -> None:
    card = tmp_path / "card"
    for i in range(30):
        write(card / "DCIM" / f"IMG_{i:04d}.JPG", JPEG)

    result = scan_card(card, max_entries=10)

    assert not result.complete
    limits = [s for s in result.skipped if s.category == "limit"]
    assert len(limits) == 1
    assert limits[0].parts == ("DCIM",)
    assert "more than 10 files and folders" in limits[0].reason
    assert len(result.files()) == 9  # the DCIM folder counts as one entry


def test_other_file_system_inside_the_card_is_not_scanned(
    tmp_path: Path, mount_tmpfs: Callable[..., Path]
) -> None:
    card = tmp_path / "card"
    write(card / "IMG_0001.JPG", JPEG)
    inner = mount_tmpfs(card / "MOUNTED")
    write(inner / "IMG_0002.JPG", JPEG)

    result = scan_card(card)

    assert [f.parts for f in result.files()] == [("IMG_0001.JPG",)]
    assert by_parts(result)[("MOUNTED",)].reason == "folder on another file system (not scanned)"


def test_file_mounted_over_a_card_file_is_not_opened(
    tmp_path: Path, mount_tmpfs: Callable[..., Path]
) -> None:
    card = tmp_path / "card"
    write(card / "IMG_0001.JPG", JPEG)
    target = write(card / "IMG_0002.JPG", JPEG)
    other = mount_tmpfs(tmp_path / "elsewhere")
    write(other / "secret.jpg", JPEG)
    mount_tmpfs(target, bind_from=other / "secret.jpg")

    result = scan_card(card)

    assert [f.parts for f in result.files()] == [("IMG_0001.JPG",)]
    assert by_parts(result)[("IMG_0002.JPG",)].reason == "on another file system: not opened"


def test_card_on_its_own_file_system(tmp_path: Path, mount_tmpfs: Callable[..., Path]) -> None:
    card = mount_tmpfs(tmp_path / "card")
    write(card / "DCIM" / "IMG_0001.JPG", JPEG)
    result = scan_card(card)
    assert result.root_dev != tmp_path.stat().st_dev
    assert [f.identity.dev for f in result.files()] == [result.root_dev]


def test_sidecar_pairing_rules(tmp_path: Path) -> None:
    card = tmp_path / "card"
    d = card / "DCIM"
    write(d / "IMG_0001.JPG", JPEG)
    write(d / "img_0001.cr2", CR2)  # pairs regardless of case, as on FAT
    write(d / "IMG_0001.XMP", XMP)
    write(d / "MVI_0002.MP4", MP4)
    write(d / "MVI_0002.THM", JPEG)  # a video's thumbnail
    write(d / "IMG_0003.XMP", XMP)  # orphan
    write(d / "IMG_0004.HEIC", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic")
    write(d / "IMG_0004.JPG", JPEG)
    write(d / "IMG_0004.AAE", b"<?xml version='1.0'?><plist/>")
    write(d / "IMG_0005.XMP", b"\x00binary\x00")  # not XML: not a sidecar

    result = scan_card(card)

    items = [(it.primary.name, it.raw.name if it.raw else None,
              [s.name for s in it.sidecars]) for it in result.items]
    assert items == [
        ("IMG_0001.JPG", "img_0001.cr2", ["IMG_0001.XMP"]),
        ("IMG_0004.HEIC", None, []),
        ("IMG_0004.JPG", None, ["IMG_0004.AAE"]),  # JPEG first in a group
    ]
    skipped = by_parts(result)
    assert skipped[("DCIM", "MVI_0002.THM")].reason == (
        "sidecar of the video MVI_0002.MP4 (left on the card with it)")
    assert skipped[("DCIM", "IMG_0003.XMP")].reason == (
        "sidecar with no image of the same name (left on the card)")
    assert skipped[("DCIM", "IMG_0005.XMP")].category == "rejected"
    assert result.items[0].files() == [result.items[0].primary, result.items[0].raw,
                                       *result.items[0].sidecars]


def test_oversized_sidecar_is_rejected(tmp_path: Path) -> None:
    from core.media.filetypes import MAX_SIDECAR_BYTES

    card = tmp_path / "card"
    write(card / "IMG_0001.JPG", JPEG)
    with (card / "IMG_0001.XMP").open("wb") as fh:
        fh.write(XMP + b"\n" * 8192)
        fh.truncate(MAX_SIDECAR_BYTES + 1)  # sparse after the text: cheap to make
    result = scan_card(card)
    assert result.items[0].sidecars == []
    assert by_parts(result)[("IMG_0001.XMP",)].reason.startswith("too large for a .xmp sidecar")


def test_content_decides_when_the_name_says_nothing(tmp_path: Path) -> None:
    card = tmp_path / "card"
    write(card / "IMG_0001", JPEG)
    write(card / "scan.bin", PNG)
    result = scan_card(card)
    assert [(f.name, f.fmt) for f in result.files()] == [("IMG_0001", "jpeg"), ("scan.bin", "png")]


def test_order_is_deterministic(tmp_path: Path) -> None:
    card = tmp_path / "card"
    names = ["b/IMG_2.JPG", "a/IMG_9.JPG", "a/IMG_10.JPG", "IMG_1.JPG", "c/d/IMG_0.JPG"]
    for n in names:
        write(card / n, JPEG)
    first = scan_card(card)
    assert [f.parts for f in first.files()] == sorted(tuple(n.split("/")) for n in names)
    assert first == scan_card(card)


def test_progress_counts_entries(tmp_path: Path) -> None:
    card = tmp_path / "card"
    for i in range(600):
        write(card / "DCIM" / f"IMG_{i:04d}.JPG", JPEG)
    seen: list[int] = []
    result = scan_card(card, progress=seen.append)
    assert seen == sorted(seen)
    assert seen[-1] == result.entries == 601
    assert len(seen) >= 3  # every 256 entries, and once at the end


def test_unreadable_folder_is_skipped_when_not_root(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads a folder whatever its permission bits")
    card = tmp_path / "card"
    write(card / "IMG_0001.JPG", JPEG)
    write(card / "LOCKED" / "IMG_0002.JPG", JPEG)
    (card / "LOCKED").chmod(0)
    try:
        result = scan_card(card)
    finally:
        (card / "LOCKED").chmod(0o755)
    assert [f.parts for f in result.files()] == [("IMG_0001.JPG",)]
    assert by_parts(result)[("LOCKED",)].category == "unreadable"


def test_card_file_display_and_item_helpers(tmp_path: Path) -> None:
    card = tmp_path / "card"
    write(card / "DCIM" / "IMG_0001.JPG", JPEG)
    write(card / "DCIM" / "IMG_0001.CR2", CR2)
    (item,) = scan_card(card).items
    assert isinstance(item.primary, CardFile)
    assert item.display == "DCIM/IMG_0001.JPG"
    assert item.primary.name == "IMG_0001.JPG"
    assert item.size == len(JPEG) + len(CR2)
