"""Tell images from everything else by their first bytes, not by their names.

Why content and not extension: a card is hostile input, and a name is just a label. A TIFF or
a Panasonic RAW named ``.jpg`` would be sent to the JPEG decoder (the exiv2 CVE-2018-11531
reproducer is exactly that), and a text file named ``.JPG`` would be archived as a clinical
photograph. So the first bytes decide what a file is; the extension is only used to

* refuse a file whose extension promises one format and whose content is another
  ("mislabelled": reported, left on the card, never archived or wiped),
* tell TIFF-based camera RAWs apart (NEF, ARW, DNG, PEF... all start ``II*\\0``/``MM\\0*``),
* recognise sidecars (.THM .XMP .AAE), which are small metadata files with no magic of
  their own worth trusting; their content is still checked to be what a sidecar holds.

What we archive: JPEG, PNG, TIFF, HEIC/HEIF and camera RAW (with their sidecars); videos are
recognised and listed as other media. AVIF is deliberately *not* an archived format: no
clinical camera writes it, and the decoder allow-list (Pillow's security handbook: decode only
what you need) does not include it; an AVIF file is listed as "not an image we archive" and
left on the card. Anything else is listed the same way. Whether an accepted file actually
decodes (truncated, corrupt, decompression bomb) is for the decoder to find out, not this
module: it only reads the first :data:`HEAD_BYTES` bytes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

HEAD_BYTES = 4096
"""How much of a file :func:`classify` needs (an ISO-BMFF ``ftyp`` box fits easily)."""

MAX_SIDECAR_BYTES = 16 * 1024 * 1024
"""A .THM/.XMP/.AAE larger than this is not a sidecar (they are kilobytes): rejected."""

ContentKind = Literal["image", "raw", "video", "other"]
FileKind = Literal["image", "raw", "sidecar", "video", "other"]
Category = Literal["rejected", "not_image"]


@dataclass(frozen=True)
class Sniffed:
    """What the first bytes say: ``fmt`` is a short format id, ``label`` words for people."""

    fmt: str
    kind: ContentKind
    label: str


@dataclass(frozen=True)
class Verdict:
    """What a card file is. ``kind`` None means it is not taken: ``reason`` says why.

    ``category`` is ``"rejected"`` for files that pretend to be an image and are not
    (mislabelled, unrecognised content under an image extension) and ``"not_image"`` for
    everything that is honestly something else.
    """

    kind: FileKind | None
    fmt: str | None
    reason: str | None = None
    category: Category | None = None


# -- content -------------------------------------------------------------------------------

HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"})
GENERIC_HEIF_BRANDS = frozenset({b"mif1", b"msf1", b"miaf", b"mif2"})
AVIF_BRANDS = frozenset({b"avif", b"avis"})
AUDIO_BRANDS = frozenset({b"M4A ", b"M4B ", b"M4P ", b"F4A ", b"F4B "})
QUICKTIME_ATOMS = frozenset({b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"})


def _ftyp(head: bytes) -> Sniffed | None:
    """ISO base media file format (HEIF, AVIF, CR3, MP4, MOV, 3GP) from its ``ftyp`` box."""
    if len(head) < 12 or head[4:8] != b"ftyp":
        return None
    size = int.from_bytes(head[0:4], "big")
    end = min(len(head), size if size >= 16 else 16)
    major = head[8:12]
    brands = [major] + [head[i : i + 4] for i in range(16, end - 3, 4)]
    if major == b"crx ":
        return Sniffed("cr3", "raw", "Canon CR3 raw")
    if major in HEIF_BRANDS:
        return Sniffed("heif", "image", "HEIF/HEIC")
    if major in AVIF_BRANDS:
        return Sniffed("avif", "other", "AVIF image")
    if major in GENERIC_HEIF_BRANDS:
        if any(b in HEIF_BRANDS for b in brands) or not any(b in AVIF_BRANDS for b in brands):
            return Sniffed("heif", "image", "HEIF/HEIC")
        return Sniffed("avif", "other", "AVIF image")
    if major.startswith(b"qt"):
        return Sniffed("mov", "video", "QuickTime video")
    if major in AUDIO_BRANDS:
        return Sniffed("m4a", "other", "MPEG-4 audio")
    if major.startswith(b"jp2") or major == b"jpx ":
        return Sniffed("jp2", "other", "JPEG 2000")
    if major.startswith(b"3g"):
        return Sniffed("3gp", "video", "3GP video")
    return Sniffed("mp4", "video", "MP4 video")


def _tiff(head: bytes) -> Sniffed | None:
    if head[:4] in (b"II*\0", b"MM\0*"):
        if head[8:10] == b"CR" and head[:2] == b"II":
            return Sniffed("cr2", "raw", "Canon CR2 raw")
        return Sniffed("tiff", "image", "TIFF")
    if head[:4] in (b"II+\0", b"MM\0+"):
        return Sniffed("tiff", "image", "BigTIFF")
    if head[:4] == b"IIU\0":
        return Sniffed("rw2", "raw", "Panasonic RW2 raw")
    if head[:4] in (b"IIRO", b"IIRS", b"MMOR"):
        return Sniffed("orf", "raw", "Olympus ORF raw")
    return None


_PREFIXES: tuple[tuple[bytes, Sniffed], ...] = (
    (b"\xff\xd8\xff", Sniffed("jpeg", "image", "JPEG")),
    (b"\x89PNG\r\n\x1a\n", Sniffed("png", "image", "PNG")),
    (b"FUJIFILMCCD-RAW", Sniffed("raf", "raw", "Fujifilm RAF raw")),
    (b"FOVb", Sniffed("x3f", "raw", "Sigma X3F raw")),
    (b"\x00MRM", Sniffed("mrw", "raw", "Minolta MRW raw")),
    (b"GIF87a", Sniffed("gif", "other", "GIF image")),
    (b"GIF89a", Sniffed("gif", "other", "GIF image")),
    (b"%PDF", Sniffed("pdf", "other", "PDF document")),
    (b"PK\x03\x04", Sniffed("zip", "other", "ZIP archive")),
    (b"\x1f\x8b", Sniffed("gzip", "other", "gzip archive")),
    (b"\x7fELF", Sniffed("elf", "other", "program (ELF)")),
    (b"MZ", Sniffed("exe", "other", "Windows program")),
    (b"ID3", Sniffed("mp3", "other", "MP3 audio")),
    (b"\x00\x05\x16\x07", Sniffed("appledouble", "other", "macOS metadata (AppleDouble)")),
    (b"\xff\x0a", Sniffed("jxl", "other", "JPEG XL image")),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", Sniffed("jxl", "other", "JPEG XL image")),
    (b"SQLite format 3\x00", Sniffed("sqlite", "other", "SQLite database")),
    (b"8BPS", Sniffed("psd", "other", "Photoshop document")),
)


def _riff(head: bytes) -> Sniffed | None:
    if head[:4] != b"RIFF" or len(head) < 12:
        return None
    form = head[8:12]
    if form == b"AVI ":
        return Sniffed("avi", "video", "AVI video")
    if form == b"WEBP":
        return Sniffed("webp", "other", "WebP image")
    if form == b"WAVE":
        return Sniffed("wav", "other", "WAV audio")
    return Sniffed("riff", "other", "RIFF data")


def _transport_stream(head: bytes) -> Sniffed | None:
    """MPEG transport stream: AVCHD .MTS/.M2TS (192-byte packets) or plain .TS (188)."""
    if len(head) > 4 + 192 * 2 and all(head[4 + 192 * i] == 0x47 for i in range(3)):
        return Sniffed("m2ts", "video", "AVCHD/MPEG-TS video")
    if len(head) > 188 * 2 and all(head[188 * i] == 0x47 for i in range(3)):
        return Sniffed("m2ts", "video", "AVCHD/MPEG-TS video")
    return None


def _text(head: bytes) -> Sniffed | None:
    if not head or b"\0" in head:
        return None
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # a multi-byte character cut at the end is still text
            return None
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped.startswith(b"<"):
        return Sniffed("xml", "other", "XML/text")
    return Sniffed("text", "other", "text")


def sniff(head: bytes) -> Sniffed | None:
    """Identify a file from its first bytes (:data:`HEAD_BYTES` is plenty); None if unknown."""
    for found in (_ftyp(head), _tiff(head), _riff(head)):
        if found is not None:
            return found
    for prefix, sniffed in _PREFIXES:
        if head.startswith(prefix):
            return sniffed
    if head[6:14] == b"HEAPCCDR":
        return Sniffed("crw", "raw", "Canon CRW raw")
    if head[4:8] in QUICKTIME_ATOMS:
        return Sniffed("mov", "video", "QuickTime video")
    return _transport_stream(head) or _text(head)


# -- names ---------------------------------------------------------------------------------

# Image extension -> the one content format that keeps its promise.
_IMAGE_EXTS: dict[str, str] = {
    **dict.fromkeys((".jpg", ".jpeg", ".jpe", ".jfif"), "jpeg"),
    ".png": "png",
    **dict.fromkeys((".tif", ".tiff"), "tiff"),
    **dict.fromkeys((".heic", ".heif", ".hif"), "heif"),
}
_PROMISE = {"jpeg": "a JPEG", "png": "a PNG", "tiff": "a TIFF", "heif": "a HEIF/HEIC"}
# RAWs whose content has a magic of its own.
_RAW_MAGIC_EXTS: dict[str, str] = {
    ".cr2": "cr2",
    ".cr3": "cr3",
    ".crw": "crw",
    ".rw2": "rw2",
    ".rwl": "rw2",
    ".raf": "raf",
    ".orf": "orf",
    ".x3f": "x3f",
    ".mrw": "mrw",
}
# TIFF-based RAWs: the magic is plain TIFF, so the extension names the format.
_RAW_TIFF_EXTS = frozenset(
    {".nef", ".nrw", ".arw", ".srf", ".sr2", ".dng", ".pef", ".srw", ".erf", ".3fr",
     ".kdc", ".dcr", ".mef", ".mos", ".iiq", ".fff", ".raw"}
)
_VIDEO_EXTS = frozenset(
    {".mp4", ".m4v", ".mov", ".qt", ".3gp", ".3g2", ".avi", ".mts", ".m2ts", ".ts", ".lrv"}
)
SIDECAR_EXTS = frozenset({".thm", ".xmp", ".aae"})


def split_ext(name: str) -> tuple[str, str]:
    """``("IMG_0001", ".jpg")`` with the extension lower-cased; ``(".hidden", "")``."""
    stem, ext = os.path.splitext(name)
    return stem, ext.lower()


def _mislabelled(ext: str, found: Sniffed | None, promise: str) -> Verdict:
    if found is None:
        reason = f"extension says {ext} but the content is not {promise}"
    else:
        reason = f"extension says {ext} but content is {found.label}"
    return Verdict(None, None, reason, "rejected")


def classify(name: str, head: bytes) -> Verdict:
    """Decide what the file *name* with first bytes *head* is (zero bytes: the caller's job).

    Content decides; an extension that promises a different format is a rejection; a
    TIFF-based RAW gets its format from its extension (``fmt`` is then e.g. ``"nef"``).
    ``kind`` ``"raw"`` has ``fmt`` the RAW flavour (``"cr2"``, ``"nef"``, ...).
    """
    _, ext = split_ext(name)
    found = sniff(head)

    if ext in SIDECAR_EXTS:
        return _classify_sidecar(ext, found)
    if ext in _IMAGE_EXTS:
        if found is not None and found.fmt == _IMAGE_EXTS[ext]:
            return Verdict(found.kind, found.fmt)
        return _mislabelled(ext, found, _PROMISE[_IMAGE_EXTS[ext]])
    if ext in _RAW_MAGIC_EXTS:
        if found is not None and found.fmt == _RAW_MAGIC_EXTS[ext]:
            return Verdict("raw", found.fmt)
        return _mislabelled(ext, found, f"a {ext[1:].upper()} raw")
    if ext in _RAW_TIFF_EXTS:
        if found is not None and found.fmt == "tiff":
            return Verdict("raw", ext[1:])
        return _mislabelled(ext, found, f"a {ext[1:].upper()} raw (TIFF-based)")
    if ext in _VIDEO_EXTS:
        if found is not None and found.kind == "video":
            return Verdict("video", found.fmt)
        return _mislabelled(ext, found, "a video")

    # Unknown or no extension: the content alone decides.
    if found is None:
        return Verdict(None, None, "not an image (content not recognised)", "not_image")
    if found.kind in ("image", "raw", "video"):
        return Verdict(found.kind, found.fmt)
    return Verdict(None, None, f"not an image we archive (content is {found.label})", "not_image")


def _classify_sidecar(ext: str, found: Sniffed | None) -> Verdict:
    if ext == ".thm":  # a small JPEG thumbnail written by the camera
        if found is not None and found.fmt == "jpeg":
            return Verdict("sidecar", "thm")
        return _mislabelled(ext, found, "a JPEG thumbnail")
    if found is not None and found.fmt == "xml":  # .xmp and .aae are XML
        return Verdict("sidecar", ext[1:])
    return _mislabelled(ext, found, "XML metadata")
