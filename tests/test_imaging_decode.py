"""core.imaging.decode on real camera files, the shared hostile files and generated edge cases.

Run in-process here (the pool tests run the same function in workers): what matters is what
``analyse_image`` reports for each file, and that no file makes it raise.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps, TiffImagePlugin

from core.config import Config
from core.imaging.decode import (
    DecodeLimits,
    ImageAnalysis,
    analyse_image,
    exif_datetime,
    failure_reason,
)
from core.media.safe_open import FileIdentity

LIMITS = DecodeLimits(max_pixels=200_000_000, timeout_s=30.0, memory_mb=1024)
HAVE_QUALITY = importlib.util.find_spec("core.quality") is not None


def analyse(path: Path, limits: DecodeLimits = LIMITS,
            identity: FileIdentity | None = None) -> ImageAnalysis:
    """How ``clinivault assess FILE`` calls it: the parent folder as root, the name as parts."""
    result = analyse_image(str(path.parent), (path.name,), identity, limits)
    assert result.parts == (path.name,)
    return result


def thumbnail(result: ImageAnalysis) -> Image.Image:
    assert result.thumbnail_jpeg is not None
    img = Image.open(io.BytesIO(result.thumbnail_jpeg))
    assert img.format == "JPEG" and img.mode == "RGB"
    img.load()
    return img


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that declares ``width`` x ``height`` but carries one row of pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    idat = zlib.compress(b"\0" * (width + 1))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
                     + chunk(b"IEND", b""))
    return path


def halves(size: tuple[int, int] = (64, 32)) -> Image.Image:
    """Left half red, right half blue: any rotation or mirror shows in the colours."""
    img = Image.new("RGB", size, (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, size[0] // 2, size[1]))
    return img


def exif_with(**tags: object) -> Image.Exif:
    exif = Image.Exif()
    sub = exif.get_ifd(0x8769)
    names = {"DateTime": 0x0132, "Make": 0x010F, "Model": 0x0110, "Orientation": 0x0112}
    sub_names = {"DateTimeOriginal": 0x9003, "OffsetTimeOriginal": 0x9011,
                 "SubSecTimeOriginal": 0x9291}
    for name, value in tags.items():
        if name in names:
            exif[names[name]] = value
        else:
            sub[sub_names[name]] = value
    return exif


# -- real camera files -----------------------------------------------------------------------


def camera_entries() -> list[dict[str, object]]:
    manifest = Path(__file__).resolve().parents[2] / "shared" / "media" / "manifest.json"
    if not manifest.is_file():
        return []
    return [e for e in json.loads(manifest.read_text()) if e["kind"] in ("gps", "plain")]


@pytest.mark.parametrize("entry", camera_entries(), ids=lambda e: str(e["file"]))
def test_camera_file_described_as_the_manifest_says(media_dir: Path,
                                                    entry: dict[str, object]) -> None:
    result = analyse(media_dir / str(entry["file"]))
    assert result.ok, result.reason
    assert (result.format, result.width, result.height) == (
        entry["format"], entry["width"], entry["height"])
    orientation = entry["orientation"] or 1
    assert result.orientation == orientation
    swapped = orientation >= 5
    assert (result.display_width, result.display_height) == (
        (result.height, result.width) if swapped else (result.width, result.height))
    if entry["capture_time"]:
        date, clock = str(entry["capture_time"]).split(" ")
        assert result.captured is not None
        assert result.captured.startswith(f"{date.replace(':', '-')}T{clock}")
        assert result.captured_source == "exif"
    else:
        assert (result.captured, result.captured_source) == (None, "file-time")
    assert result.make == (" ".join(str(entry["make"]).split()) if entry["make"] else None)
    assert result.model == (" ".join(str(entry["model"]).split()) if entry["model"] else None)
    assert result.has_gps is entry["has_gps"]
    thumb = thumbnail(result)
    assert max(thumb.size) == min(320, max(result.width, result.height))
    display_aspect = result.display_width / result.display_height
    assert abs(thumb.width / thumb.height - display_aspect) < 0.02
    assert result.decode_ms > 0
    if HAVE_QUALITY:
        assert result.metrics is not None
    else:
        assert result.metrics is None


def test_canon_subsecond_capture_time(media_dir: Path) -> None:
    result = analyse(media_dir / "gps" / "gps11_canon-eos-600d.jpg")
    assert result.captured == "2015-06-11T10:29:26.690000"  # SubSecTimeOriginal "69"


@pytest.mark.parametrize("name", ["gps02_apple-iphone5.jpg", "gps04_samsung-gt-i9000.jpg"])
def test_thumbnail_is_shown_the_way_the_camera_was_held(media_dir: Path, name: str) -> None:
    path = media_dir / "gps" / name
    result = analyse(path)
    assert result.orientation in (3, 6)
    thumb = np.asarray(thumbnail(result), dtype=np.float64)
    with Image.open(path) as original:
        upright = ImageOps.exif_transpose(original).convert("RGB")
        as_stored = original.convert("RGB")
    size = (thumb.shape[1], thumb.shape[0])
    want = np.asarray(upright.resize(size, Image.Resampling.BICUBIC), dtype=np.float64)
    wrong = np.asarray(as_stored.resize(as_stored.size if result.orientation == 6 else size,
                                        Image.Resampling.BICUBIC), dtype=np.float64)
    assert np.abs(thumb - want).mean() < 6  # JPEG q80 and resampling noise only
    if wrong.shape == thumb.shape:  # orientation 3: same shape, upside down
        assert np.abs(thumb - wrong).mean() > 3 * np.abs(thumb - want).mean()


# -- hostile files ---------------------------------------------------------------------------

HOSTILE = {
    "hostile01_truncated_jpeg.jpg": "truncated image",
    "hostile03_truncated_image.png": "truncated image",
    "hostile04_png_decompression_dos.png": "decompression bomb: a PNG text chunk",
    "hostile08_jpeg_zero-height.jpg": "not a recognised image format (damaged JPEG header)",
    "hostile10_mislabelled_rw2-tiff-named-jpg.jpg": "not a recognised image format (camera RAW",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_file_is_unreadable_with_a_reason(media_dir: Path, name: str) -> None:
    result = analyse(media_dir / "hostile" / name)
    assert not result.ok
    assert result.reason is not None and result.reason.startswith(HOSTILE[name])
    assert result.thumbnail_jpeg is None and result.metrics is None


def test_decompression_bomb_header_refused_before_decoding(tmp_path: Path) -> None:
    bomb = png_header_only(tmp_path / "bomb.png", 50_000, 50_000)
    # With 16 MB of headroom any attempt to allocate 2.5 GB would fail as out of memory instead.
    result = analyse(bomb, DecodeLimits(max_pixels=200_000_000, timeout_s=5, memory_mb=16))
    assert not result.ok
    assert result.reason == "decompression bomb: 2.5 gigapixels exceeds the 200 MP limit"
    assert bomb.stat().st_size < 1000


def test_warning_level_bomb_is_an_error_too(tmp_path: Path) -> None:
    # 225 MP is above MAX_IMAGE_PIXELS but below twice it: Pillow only warns unless told not to.
    result = analyse(png_header_only(tmp_path / "big.png", 15_000, 15_000))
    assert not result.ok
    assert result.reason == "decompression bomb: 225 MP exceeds the 200 MP limit"


def test_max_pixels_comes_from_the_limits(tmp_path: Path) -> None:
    path = tmp_path / "two-mp.png"
    Image.new("L", (2000, 1000), 128).save(path)
    assert analyse(path).ok
    small = analyse(path, DecodeLimits(max_pixels=1_000_000, timeout_s=5, memory_mb=256))
    assert small.reason == "decompression bomb: 2.0 MP exceeds the 1.0 MP limit"


def test_file_too_large_is_never_decoded(tmp_path: Path) -> None:
    path = tmp_path / "MVI_0001.jpg"
    with path.open("wb") as fh:
        fh.write(b"\xff\xd8\xff\xe0")
        fh.truncate(600 * 1024 * 1024)  # sparse: a video-sized file without the disk use
    result = analyse(path)
    assert not result.ok
    assert result.reason == "file too large for an image (629 MB)"
    assert result.format is None  # no decoder looked at it


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "IMG_0002.JPG"
    path.touch()
    assert analyse(path).reason == "empty file (0 bytes)"


def test_truncated_large_jpeg_is_caught_by_the_reduced_decode(tmp_path: Path) -> None:
    noise = np.random.default_rng(7).integers(0, 256, (1500, 2000, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "JPEG", quality=90)
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) * 6 // 10])
    result = analyse(path)
    assert (result.ok, result.reason, result.format) == (False, "truncated image", "JPEG")


@pytest.mark.parametrize(("fmt", "words"), [
    ("GIF", "GIF files are not accepted"),
    ("BMP", "BMP files are not accepted"),
    ("WEBP", "WebP files are not accepted"),
])
def test_formats_off_the_allow_list_are_refused(tmp_path: Path, fmt: str, words: str) -> None:
    path = tmp_path / "IMG_0003.JPG"  # the name does not matter; the content does
    Image.new("RGB", (40, 30), "green").save(path, fmt)
    assert Image.open(path).format == fmt  # Pillow itself would happily open it
    result = analyse(path)
    assert (result.ok, result.reason) == (False, f"not a recognised image format ({words})")


def test_eps_never_reaches_ghostscript(tmp_path: Path) -> None:
    path = tmp_path / "scan.jpg"
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    result = analyse(path)
    assert result.reason == "not a recognised image format (PostScript/EPS files are not accepted)"


def test_recognised_by_content_not_by_name(tmp_path: Path) -> None:
    path = tmp_path / "IMG_0004.JPG"
    Image.new("RGB", (50, 40), "white").save(path, "PNG")
    result = analyse(path)
    assert (result.ok, result.format, result.width, result.height) == (True, "PNG", 50, 40)


def test_heif_is_accepted(tmp_path: Path) -> None:
    pillow_heif = pytest.importorskip("pillow_heif")
    if not pillow_heif.libheif_info().get("HEIF"):
        pytest.skip("this libheif build has no HEIF encoder to make a test file")
    pillow_heif.register_heif_opener()
    path = tmp_path / "IMG_0005.HEIC"
    exif = exif_with(DateTimeOriginal="2024:05:06 07:08:09", Make="Apple")
    halves((96, 64)).save(path, "HEIF", quality=90, exif=exif.tobytes())
    result = analyse(path)
    assert result.ok, result.reason
    assert (result.format, result.width, result.height) == ("HEIF", 96, 64)
    assert (result.captured, result.make) == ("2024-05-06T07:08:09", "Apple")
    assert thumbnail(result).size == (96, 64)


# -- orientation -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF", "PNG"])
def test_orientation_6_applied_exactly_once(tmp_path: Path, fmt: str) -> None:
    # Pillow's TIFF loader rotates while loading and drops the tag; JPEG and PNG do not.
    path = tmp_path / f"turned.{fmt.lower()}"
    if fmt == "TIFF":
        info = TiffImagePlugin.ImageFileDirectory_v2()
        info[0x0112] = 6
        halves().save(path, fmt, tiffinfo=info)
    else:
        halves().save(path, fmt, exif=exif_with(Orientation=6))
    result = analyse(path)
    assert result.ok, result.reason
    assert (result.orientation, result.width, result.height) == (6, 64, 32)
    assert (result.display_width, result.display_height) == (32, 64)
    thumb = thumbnail(result)
    assert thumb.size == (32, 64)
    top, bottom = thumb.getpixel((16, 8)), thumb.getpixel((16, 56))
    assert top[0] > 200 and top[2] < 60  # the stored left (red) half is on top when upright
    assert bottom[2] > 200 and bottom[0] < 60


# -- capture time and labels -----------------------------------------------------------------


def test_capture_time_with_offset_and_subseconds(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    exif = exif_with(DateTime="2024:03:06 09:00:00", DateTimeOriginal="2024:03:05 14:07:09",
                     OffsetTimeOriginal="+13:00", SubSecTimeOriginal="25")
    Image.new("RGB", (32, 32)).save(path, exif=exif)
    result = analyse(path)
    assert (result.captured, result.captured_source) == (
        "2024-03-05T14:07:09.250000+13:00", "exif")


def test_capture_time_falls_back_to_datetime(tmp_path: Path) -> None:
    path = tmp_path / "b.jpg"
    exif = exif_with(DateTime="2023:01:02 03:04:05", DateTimeOriginal="0000:00:00 00:00:00")
    Image.new("RGB", (32, 32)).save(path, exif=exif)
    assert analyse(path).captured == "2023-01-02T03:04:05"


def test_no_capture_time_leaves_it_to_the_file_time(tmp_path: Path) -> None:
    path = tmp_path / "c.jpg"
    Image.new("RGB", (32, 32)).save(path, exif=exif_with(DateTime="    :  :     :  :  "))
    result = analyse(path)
    assert (result.ok, result.captured, result.captured_source) == (True, None, "file-time")


@pytest.mark.parametrize(("value", "offset", "subsec", "expected"), [
    ("2008:10:22 16:28:39", None, None, "2008-10-22T16:28:39"),
    ("2008:10:22 16:28:39\x00", "-05:30", "5", "2008-10-22T16:28:39.500000-05:30"),
    (b"2008:10:22 16:28:39", "+99:00", "abc", "2008-10-22T16:28:39"),  # bad extras ignored
    ("2008:02:30 16:28:39", None, None, None),  # no such day
    ("yesterday", None, None, None),
    ((2008, 10, 22), None, None, None),
])
def test_exif_datetime(value: object, offset: object, subsec: object,
                       expected: str | None) -> None:
    assert exif_datetime(value, offset, subsec) == expected


def test_camera_labels_are_sanitised(tmp_path: Path) -> None:
    path = tmp_path / "d.jpg"
    exif = exif_with(Make="Evil\x1b[2J\nCam\x00\x00", Model="M" * 500)
    Image.new("RGB", (32, 32)).save(path, exif=exif)
    result = analyse(path)
    assert result.make == "Evil[2JCam"
    assert result.model == "M" * 64


BROKEN_EXIF = b"Exif\x00\x00II*\xb1\x08\x00\x00\x00" + b"\x00" * 24  # bad TIFF header


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_unparseable_exif_leaves_the_pixels_usable(tmp_path: Path, fmt: str) -> None:
    # Pillow's JPEG plugin silently drops an EXIF block it cannot parse; PNG raises. Either way
    # the photograph decodes, so it stays readable: no orientation, time from the file.
    path = tmp_path / f"e.{fmt.lower()}"
    halves().save(path, fmt, exif=BROKEN_EXIF)
    with Image.open(path) as img:
        assert img.info["exif"].endswith(BROKEN_EXIF[6:])  # the damage is really in the file
    result = analyse(path)
    assert result.ok, result.reason
    assert (result.orientation, result.captured, result.captured_source, result.make) == (
        1, None, "file-time", None)
    assert thumbnail(result).size == (64, 32)


def test_gps_in_xmp_only_counts(tmp_path: Path) -> None:
    path = tmp_path / "f.jpg"
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description '
           b'exif:GPSLatitude="41,24.5N" exif:GPSLongitude="2,10.8E"/></rdf:RDF></x:xmpmeta>')
    Image.new("RGB", (32, 32)).save(path, xmp=xmp)
    assert analyse(path).has_gps is True
    Image.new("RGB", (32, 32)).save(path)
    assert analyse(path).has_gps is False


# -- unusual pixels --------------------------------------------------------------------------


def test_sixteen_bit_grey_png_gets_a_real_thumbnail(tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(0, 65535, 400).astype(np.uint16), (300, 1))
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    result = analyse(path)
    assert result.ok, result.reason
    grey = np.asarray(thumbnail(result).convert("L"), dtype=np.float64)
    assert grey[:, :20].mean() < 30 and grey[:, -20:].mean() > 220  # a ramp, not all white


def test_transparent_png_thumbnail_is_on_white(tmp_path: Path) -> None:
    path = tmp_path / "clear.png"
    Image.new("RGBA", (100, 100), (0, 0, 0, 0)).save(path)
    thumb = thumbnail(analyse(path))
    assert min(thumb.getpixel((50, 50))) > 240


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "print.jpg"
    Image.new("CMYK", (400, 200), (0, 255, 255, 0)).save(path)  # red ink
    result = analyse(path)
    assert (result.ok, result.format) == (True, "JPEG")
    red = thumbnail(result).getpixel((100, 50))
    assert red[0] > 200 and red[1] < 80
    assert thumbnail(result).size == (320, 160)


# -- the card boundary -----------------------------------------------------------------------


def test_file_changed_since_scan_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "IMG_0006.JPG"
    Image.new("RGB", (32, 32)).save(path)
    identity = FileIdentity.from_stat(os.stat(path))
    assert analyse(path, identity=identity).ok
    with path.open("ab") as fh:
        fh.write(b"more")
    result = analyse(path, identity=identity)
    assert (result.ok, result.reason) == (False, "has changed since the card was scanned")


def test_symlink_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside.jpg"
    Image.new("RGB", (32, 32)).save(outside)
    card = tmp_path / "card"
    card.mkdir()
    (card / "IMG_0007.JPG").symlink_to(outside)
    result = analyse_image(str(card), ("IMG_0007.JPG",), None, LIMITS)
    assert (result.ok, result.reason) == (False, "is a symbolic link (not followed)")


def test_nested_card_path(tmp_path: Path) -> None:
    folder = tmp_path / "DCIM" / "100CANON"
    folder.mkdir(parents=True)
    Image.new("RGB", (48, 32)).save(folder / "IMG_0008.JPG")
    result = analyse_image(str(tmp_path), ("DCIM", "100CANON", "IMG_0008.JPG"), None, LIMITS)
    assert (result.ok, result.parts, result.width) == (
        True, ("DCIM", "100CANON", "IMG_0008.JPG"), 48)


# -- limits and reasons ----------------------------------------------------------------------


def test_limits_from_config(cfg: Config) -> None:
    limits = DecodeLimits.from_config(cfg)
    assert limits == DecodeLimits.from_config(cfg.imaging)
    assert (limits.max_pixels, limits.timeout_s, limits.memory_mb) == (
        cfg.imaging.max_pixels, cfg.imaging.decode_timeout_s, cfg.imaging.decode_memory_mb)
    with pytest.raises(ValueError, match="timeout_s must be positive"):
        DecodeLimits(max_pixels=1, timeout_s=0, memory_mb=1)


def test_card_read_errors_are_not_called_corrupt() -> None:
    assert failure_reason(OSError(5, "Input/output error"), LIMITS) == (
        "could not read the file: Input/output error")
    assert failure_reason(SyntaxError("broken PNG file"), LIMITS) == (
        "corrupt image data: broken PNG file")


# -- the measure() contract ------------------------------------------------------------------


def grey_native_measure(img: Image.Image) -> None:
    """What core.quality may do: a grey decode at native size (skips chroma: the fastest)."""
    img.draft("L", None)
    img.load()


def tiny_measure(img: Image.Image) -> None:
    img.draft("RGB", (60, 60))
    img.load()


@pytest.mark.parametrize("measure", [grey_native_measure, tiny_measure])
def test_thumbnail_stays_colour_and_sharp_whatever_measure_decoded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, measure: object) -> None:
    from core.imaging import decode

    decode.prepare_decoders()
    monkeypatch.setattr(decode, "_measure_fn", measure)
    path = tmp_path / "turned.jpg"
    halves((1600, 800)).save(path, exif=exif_with(Orientation=6), quality=95)
    result = analyse(path)
    assert result.ok, result.reason
    thumb = thumbnail(result)
    assert thumb.size == (160, 320)  # from a colour decode big enough for 320 px, oriented
    top, bottom = thumb.getpixel((80, 40)), thumb.getpixel((80, 280))
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60


def test_thumbnail_from_a_ycbcr_decode_keeps_its_colours() -> None:
    from core.imaging.decode import make_thumbnail

    buf = io.BytesIO()
    halves((1600, 800)).save(buf, "JPEG", quality=95)
    with Image.open(buf) as img:
        img.draft("YCbCr", None)
        img.load()
        assert img.mode == "YCbCr"
        thumb = Image.open(io.BytesIO(make_thumbnail(img)))
    assert thumb.size == (320, 160)
    left, right = thumb.getpixel((40, 80)), thumb.getpixel((280, 80))
    assert left[0] > 200 and left[2] < 60 and right[2] > 200 and right[0] < 60
