"""Content sniffing: images are recognised by their bytes, and names that lie are rejected."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from core.media.filetypes import HEAD_BYTES, classify, sniff, split_ext

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(64)
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(32)
TIFF_LE = b"II*\x00\x08\x00\x00\x00" + bytes(32)
TIFF_BE = b"MM\x00*\x00\x00\x00\x08" + bytes(32)
CR2 = b"II*\x00\x10\x00\x00\x00CR\x02\x00" + bytes(32)
RW2 = b"IIU\x00\x18\x00\x00\x00" + bytes(32)
ORF = b"IIRO\x08\x00\x00\x00" + bytes(32)
RAF = b"FUJIFILMCCD-RAW 0201FF383501" + bytes(32)


def ftyp(major: bytes, *compatible: bytes) -> bytes:
    body = major + b"\x00\x00\x00\x00" + b"".join(compatible)
    return (8 + len(body)).to_bytes(4, "big") + b"ftyp" + body + b"\x00\x00\x00\x08free"


def encoded(fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, format=fmt, **params)
    return buf.getvalue()[:HEAD_BYTES]


@pytest.mark.parametrize(
    ("head", "fmt", "kind"),
    [
        (JPEG, "jpeg", "image"),
        (PNG, "png", "image"),
        (TIFF_LE, "tiff", "image"),
        (TIFF_BE, "tiff", "image"),
        (CR2, "cr2", "raw"),
        (RW2, "rw2", "raw"),
        (ORF, "orf", "raw"),
        (b"IIRS\x08\x00\x00\x00", "orf", "raw"),
        (RAF, "raf", "raw"),
        (ftyp(b"crx ", b"crx ", b"isom"), "cr3", "raw"),
        (ftyp(b"heic", b"mif1", b"heic"), "heif", "image"),
        (ftyp(b"heix", b"mif1"), "heif", "image"),
        (ftyp(b"mif1", b"heic", b"miaf"), "heif", "image"),
        (ftyp(b"msf1", b"hevc"), "heif", "image"),
        (ftyp(b"avif", b"avif", b"mif1", b"miaf"), "avif", "other"),
        (ftyp(b"mif1", b"avif", b"miaf"), "avif", "other"),
        (ftyp(b"isom", b"isom", b"iso2", b"mp41"), "mp4", "video"),
        (ftyp(b"mp42", b"mp42", b"isom"), "mp4", "video"),
        (ftyp(b"qt  ", b"qt  "), "mov", "video"),
        (ftyp(b"3gp4", b"3gp4"), "3gp", "video"),
        (ftyp(b"M4A ", b"M4A ", b"mp42"), "m4a", "other"),
        (b"\x00\x00\x00\x08wide\x00\x00\x00\x10mdat", "mov", "video"),
        (b"RIFF\x00\x10\x00\x00AVI LIST", "avi", "video"),
        (b"RIFF\x00\x10\x00\x00WEBPVP8 ", "webp", "other"),
        (b"RIFF\x00\x10\x00\x00WAVEfmt ", "wav", "other"),
        (b"GIF89a\x01\x00", "gif", "other"),
        (b"%PDF-1.7\n", "pdf", "other"),
        (b"PK\x03\x04\x14\x00", "zip", "other"),
        (b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X", "appledouble", "other"),
        (b"<?xpacket begin='' id='W5M0MpCehiHzreSzNTczkc9d'?>", "xml", "other"),
        (b"\xef\xbb\xbf<?xml version='1.0'?><plist/>", "xml", "other"),
        (b"Dear diary,\nno images today.\n", "text", "other"),
    ],
)
def test_sniff_recognises_magic(head: bytes, fmt: str, kind: str) -> None:
    found = sniff(head)
    assert found is not None
    assert (found.fmt, found.kind) == (fmt, kind)


def test_sniff_recognises_avchd_transport_stream() -> None:
    packet = b"\x00\x00\x00\x00" + b"\x47" + bytes(187)
    found = sniff(packet * 4)
    assert found is not None and (found.fmt, found.kind) == ("m2ts", "video")


@pytest.mark.parametrize("head", [b"", b"\x00" * 64, b"\x01\x02\x03\x04\xfe\xff" * 20])
def test_sniff_unknown_content_is_none(head: bytes) -> None:
    assert sniff(head) is None


@pytest.mark.parametrize(
    ("fmt", "params", "expected"),
    [
        ("JPEG", {}, "jpeg"),
        ("PNG", {}, "png"),
        ("TIFF", {}, "tiff"),
        ("TIFF", {"compression": "tiff_lzw"}, "tiff"),
        ("GIF", {}, "gif"),
        ("WEBP", {}, "webp"),
    ],
)
def test_sniff_real_encoder_output(fmt: str, params: dict[str, object], expected: str) -> None:
    found = sniff(encoded(fmt, **params))
    assert found is not None and found.fmt == expected


def test_sniff_real_heic_from_libheif() -> None:
    pillow_heif = pytest.importorskip("pillow_heif")
    if not pillow_heif.libheif_info().get("encoders", {}).get("x265"):
        pytest.skip("libheif here has no HEVC encoder to make a HEIC with")
    buf = io.BytesIO()
    pillow_heif.from_pillow(Image.new("RGB", (16, 16), "blue")).save(buf, format="HEIF")
    found = sniff(buf.getvalue()[:HEAD_BYTES])
    assert found is not None and (found.fmt, found.kind) == ("heif", "image")
    assert classify("IMG_0001.HEIC", buf.getvalue()).kind == "image"


def test_real_avif_is_not_archived() -> None:
    from PIL import features

    if not features.check("avif"):
        pytest.skip("this Pillow has no AVIF encoder")
    verdict = classify("IMG_0001.avif", encoded("AVIF"))
    assert verdict.kind is None
    assert verdict.reason == "not an image we archive (content is AVIF image)"


@pytest.mark.parametrize(
    ("name", "head", "kind", "fmt"),
    [
        ("IMG_0001.JPG", JPEG, "image", "jpeg"),
        ("img_0001.jpeg", JPEG, "image", "jpeg"),
        ("scan.PNG", PNG, "image", "png"),
        ("scan.tif", TIFF_LE, "image", "tiff"),
        ("IMG_0001.CR2", CR2, "raw", "cr2"),
        ("DSC_0001.NEF", TIFF_LE, "raw", "nef"),
        ("DSC01234.ARW", TIFF_LE, "raw", "arw"),
        ("PXL_0001.dng", TIFF_BE, "raw", "dng"),
        ("P1000001.RW2", RW2, "raw", "rw2"),
        ("PA010001.ORF", ORF, "raw", "orf"),
        ("DSCF0001.RAF", RAF, "raw", "raf"),
        ("IMG_0001.CR3", ftyp(b"crx ", b"crx "), "raw", "cr3"),
        ("IMG_0001.HEIC", ftyp(b"heic", b"mif1", b"heic"), "image", "heif"),
        ("IMG_0001.HIF", ftyp(b"mif1", b"heic"), "image", "heif"),
        ("MVI_0001.MP4", ftyp(b"isom", b"mp41"), "video", "mp4"),
        ("IMG_0001.MOV", ftyp(b"qt  ", b"qt  "), "video", "mov"),
        ("MVI_0001.AVI", b"RIFF\x00\x10\x00\x00AVI LIST", "video", "avi"),
        ("IMG_0001.THM", JPEG, "sidecar", "thm"),
        ("IMG_0001.XMP", b"<x:xmpmeta xmlns:x='adobe:ns:meta/'>", "sidecar", "xmp"),
        ("IMG_0001.AAE", b"<?xml version='1.0'?><plist/>", "sidecar", "aae"),
        # content decides when the name promises nothing
        ("IMG_0001", JPEG, "image", "jpeg"),
        ("photo.bin", PNG, "image", "png"),
        ("P1000001.xyz", RW2, "raw", "rw2"),
    ],
)
def test_classify_accepts(name: str, head: bytes, kind: str, fmt: str) -> None:
    verdict = classify(name, head)
    assert (verdict.kind, verdict.fmt, verdict.reason) == (kind, fmt, None)


@pytest.mark.parametrize(
    ("name", "head", "reason"),
    [
        ("IMG_0001.JPG", TIFF_LE, "extension says .jpg but content is TIFF"),
        ("IMG_0001.jpg", RW2, "extension says .jpg but content is Panasonic RW2 raw"),
        ("IMG_0001.jpg", PNG, "extension says .jpg but content is PNG"),
        ("IMG_0001.PNG", JPEG, "extension says .png but content is JPEG"),
        ("IMG_0001.jpg", b"hello\n", "extension says .jpg but content is text"),
        ("IMG_0001.jpg", b"\x01\x02\x03\xfe" * 8,
         "extension says .jpg but the content is not a JPEG"),
        ("IMG_0001.tif", CR2, "extension says .tif but content is Canon CR2 raw"),
        ("DSC_0001.NEF", JPEG, "extension says .nef but content is JPEG"),
        ("IMG_0001.CR2", TIFF_LE, "extension says .cr2 but content is TIFF"),
        ("IMG_0001.HEIC", ftyp(b"avif", b"avif"), "extension says .heic but content is AVIF image"),
        ("MVI_0001.MP4", JPEG, "extension says .mp4 but content is JPEG"),
        ("IMG_0001.THM", PNG, "extension says .thm but content is PNG"),
        ("IMG_0001.XMP", JPEG, "extension says .xmp but content is JPEG"),
    ],
)
def test_classify_rejects_mislabelled(name: str, head: bytes, reason: str) -> None:
    verdict = classify(name, head)
    assert verdict.kind is None
    assert verdict.category == "rejected"
    assert verdict.reason == reason


@pytest.mark.parametrize(
    ("name", "head", "reason"),
    [
        ("README.TXT", b"Camera manual\n", "not an image we archive (content is text)"),
        ("anim.gif", b"GIF89a\x01\x00", "not an image we archive (content is GIF image)"),
        ("._IMG_0001.JPG.x", b"\x00\x05\x16\x07\x00\x02", "not an image we archive "
         "(content is macOS metadata (AppleDouble))"),
        ("NIKON001.DSC", b"\x00\x01\x02\x03\xfe\xfd" * 4, "not an image (content not recognised)"),
    ],
)
def test_classify_other_files_are_not_images(name: str, head: bytes, reason: str) -> None:
    verdict = classify(name, head)
    assert (verdict.kind, verdict.category, verdict.reason) == (None, "not_image", reason)


def test_split_ext_lowercases_and_keeps_dotfiles_whole() -> None:
    assert split_ext("IMG_0001.JPG") == ("IMG_0001", ".jpg")
    assert split_ext("IMG_0001.JPG.xmp") == ("IMG_0001.JPG", ".xmp")
    assert split_ext(".hidden") == (".hidden", "")
    assert split_ext("noext") == ("noext", "")


def _shared(rel: str) -> Path:
    path = MEDIA / rel
    if not path.is_file():
        pytest.skip(f"shared test media {path} is not available")
    return path


@pytest.mark.parametrize(
    "rel",
    [
        "gps/gps01_nikon-coolpix-p6000.jpg",
        "gps/gps02_apple-iphone5.jpg",
        "gps/gps11_canon-eos-600d.jpg",
        "plain/plain05_nikon-e950.jpg",
        # broken inside, but a JPEG by its header: the decoder reports it, not the sniffer
        "hostile/hostile01_truncated_jpeg.jpg",
        "hostile/hostile08_jpeg_zero-height.jpg",
    ],
)
def test_real_camera_jpegs_are_jpeg(rel: str) -> None:
    path = _shared(rel)
    verdict = classify(path.name, path.read_bytes()[:HEAD_BYTES])
    assert (verdict.kind, verdict.fmt) == ("image", "jpeg")


def test_real_png_is_png() -> None:
    path = _shared("plain/plain07_hopper.png")
    assert classify(path.name, path.read_bytes()[:HEAD_BYTES]).fmt == "png"


def test_real_mislabelled_rw2_named_jpg_is_rejected() -> None:
    path = _shared("hostile/hostile10_mislabelled_rw2-tiff-named-jpg.jpg")
    verdict = classify(path.name, path.read_bytes()[:HEAD_BYTES])
    assert verdict.kind is None
    assert verdict.reason == "extension says .jpg but content is Panasonic RW2 raw"
