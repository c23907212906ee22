"""Decode one untrusted image and summarise it: format, size, orientation, capture time, camera,
GPS presence, quality metrics and a thumbnail.

Why this shape: ``analyse_image`` runs inside a worker process of ``core.imaging.pool``, never in
the session's own process. It opens the file through ``core.media.safe_open`` (a card root plus
path parts: no symlinks, the same file as scanned), lets Pillow try only an allow-list of formats
(no EPS, no PSD, nothing else), turns ``DecompressionBombWarning`` into an error, checks the file
size before any decoder sees it, and turns every failure into ``ImageAnalysis(ok=False,
reason=...)`` with a short reason for the operator: a hostile card must not stop a session. Only
``MemoryError`` (and an environment fault such as a missing module) escapes, so the pool can
retire the worker whose heap it came from.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import struct
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import IO, TYPE_CHECKING, Any

from PIL import ExifTags, Image, ImageFile, UnidentifiedImageError

from core.errors import ClinivaultError, ConfigError
from core.media.safe_open import FileIdentity, card_file

if TYPE_CHECKING:
    from core.quality import QualityMetrics

# Formats handed to Image.open(formats=...). Pillow reports an MPO (a JPEG with extra images,
# written by some cameras) as "MPO"; it is opened by the JPEG plugin and reported here as JPEG.
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "TIFF", "HEIF")
_EXPECTED_OPENERS = {
    "JPEG": "PIL.JpegImagePlugin",
    "PNG": "PIL.PngImagePlugin",
    "TIFF": "PIL.TiffImagePlugin",
    "HEIF": "pillow_heif.as_plugin",
}
THUMBNAIL_SIZE = 320
THUMBNAIL_QUALITY = 80
MIB = 1024 * 1024

NOT_RECOGNISED = "not a recognised image format"
TRUNCATED = "truncated image"
OUT_OF_MEMORY = "decoder ran out of memory"


@dataclass(frozen=True)
class DecodeLimits:
    """What one decode may use. ``memory_mb`` is enforced by the pool (RLIMIT_AS headroom)."""

    max_pixels: int
    timeout_s: float
    memory_mb: int
    max_file_mb: int = 512  # larger than any camera image; stops a video reaching a decoder

    def __post_init__(self) -> None:
        for name in ("max_pixels", "timeout_s", "memory_mb", "max_file_mb"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"DecodeLimits.{name} must be positive, not {value!r}")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> DecodeLimits:
        """From a loaded ``core.config.Config`` or its ``[imaging]`` section."""
        imaging = cfg.get("imaging", cfg)
        try:
            return cls(max_pixels=int(imaging["max_pixels"]),
                       timeout_s=float(imaging["decode_timeout_s"]),
                       memory_mb=int(imaging["decode_memory_mb"]))
        except ValueError as exc:
            raise ConfigError(f"[imaging] {exc}") from None


@dataclass(frozen=True)
class ImageMetadata:
    """What the EXIF (and XMP) of an image says, already sanitised."""

    orientation: int = 1  # EXIF 1..8, relative to the pixels as Pillow opens them (before load)
    captured: str | None = None  # ISO 8601, with offset and fraction when the camera wrote them
    make: str | None = None
    model: str | None = None
    has_gps: bool = False


@dataclass(frozen=True)
class ImageAnalysis:
    """The outcome for one file; picklable, sent from a worker to the session.

    ``width``/``height`` are the pixels as stored, ``display_width``/``display_height`` after
    the EXIF orientation. When ``ok`` is False, ``reason`` says why in a few words and the
    fields learnt before the failure (often format and size) are kept. ``captured`` is None
    when the image carries no usable capture time: ``captured_source`` is then "file-time"
    and the caller uses the file's mtime (it has it in ``FileIdentity``).
    """

    parts: tuple[str, ...]
    ok: bool
    reason: str | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None
    display_width: int | None = None
    display_height: int | None = None
    orientation: int = 1
    captured: str | None = None
    captured_source: str = "file-time"
    make: str | None = None
    model: str | None = None
    has_gps: bool = False
    metrics: QualityMetrics | None = None
    thumbnail_jpeg: bytes | None = field(default=None, repr=False)
    decode_ms: float = 0.0


class _Refused(Exception):
    """A failure whose user-facing reason is already known."""


# ---------------------------------------------------------------------------------------------
# Worker set-up


_prepared = False
_measure_fn: Callable[[Image.Image], Any] | None = None


def prepare_decoders() -> None:
    """Register the allowed decoders and load ``core.quality`` once per process.

    The pool calls this before a worker reports ready, so the first task's deadline is not spent
    importing. pillow-heif is told not to substitute embedded thumbnails in ``draft()`` (the
    metrics must see the real image) and to decode on one thread (the pool provides parallelism).
    """
    global _prepared, _measure_fn
    if _prepared:
        return
    import pillow_heif
    from PIL import JpegImagePlugin, PngImagePlugin, TiffImagePlugin  # noqa: F401 (register)

    pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False,
                                     decode_threads=1)
    for fmt, module in _EXPECTED_OPENERS.items():  # handbook S-2: nobody replaced a parser
        factory = Image.OPEN[fmt][0]
        if factory.__module__ != module:
            raise RuntimeError(f"the {fmt} decoder comes from {factory.__module__}, not {module}")
    try:
        from core.quality import measure
    except ModuleNotFoundError as exc:
        if exc.name != "core.quality":
            raise
        measure = None  # not written yet: analyses carry no metrics
    _measure_fn = measure
    _prepared = True


# ---------------------------------------------------------------------------------------------
# The task


def analyse_image(root: str, parts: tuple[str, ...], identity: FileIdentity | None,
                  limits: DecodeLimits) -> ImageAnalysis:
    """Open ``root``/``parts`` safely, decode it once and describe it.

    For a file outside any card (``clinivault assess FILE``) pass its parent directory as
    ``root`` and ``(name,)`` as ``parts``. ``identity`` (from the scan) makes the open fail if
    the file was swapped since. ``core.quality.measure`` receives the open, not yet loaded image:
    it may call ``draft()`` and ``load()`` as it sees fit; the thumbnail is then made from what it
    loaded (re-opened at reduced size only if it decoded to grey or below thumbnail size).
    """
    started = time.perf_counter()
    prepare_decoders()
    facts: dict[str, Any] = {}
    try:
        with card_file(root, parts, expect=identity) as fh:
            _analyse_file(fh, limits, facts)
        result = ImageAnalysis(parts=parts, ok=True, **facts)
    except (MemoryError, ImportError):
        raise
    except _Refused as exc:
        result = ImageAnalysis(parts=parts, ok=False, reason=str(exc), **facts)
    except Exception as exc:
        result = ImageAnalysis(parts=parts, ok=False, reason=failure_reason(exc, limits), **facts)
    return replace(result, decode_ms=round((time.perf_counter() - started) * 1000, 1))


@contextlib.contextmanager
def _pillow_safety(limits: DecodeLimits) -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's chatter ("Possibly corrupt EXIF data") ...
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # ... but not this
        Image.MAX_IMAGE_PIXELS = limits.max_pixels
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        yield


def _analyse_file(fh: IO[bytes], limits: DecodeLimits, facts: dict[str, Any]) -> None:
    size = os.fstat(fh.fileno()).st_size
    if size == 0:
        raise _Refused("empty file (0 bytes)")
    if size > limits.max_file_mb * MIB:
        raise _Refused(f"file too large for an image ({_human_bytes(size)})")

    with _pillow_safety(limits):
        try:
            img = Image.open(fh, formats=ALLOWED_FORMATS)
        except UnidentifiedImageError:
            fh.seek(0)
            raise _Refused(unrecognised_reason(fh.read(16))) from None
        with img:
            fmt = "JPEG" if img.format == "MPO" else img.format
            if fmt not in ALLOWED_FORMATS:  # cannot happen with formats=...; belt and braces
                raise _Refused(NOT_RECOGNISED)
            width, height = _stored_size(img)
            facts.update(format=fmt, width=width, height=height)
            if width <= 0 or height <= 0:
                raise _Refused(f"image has no pixels ({width}x{height})")
            if width * height > limits.max_pixels:
                raise _Refused(bomb_reason(width * height, limits.max_pixels))
            opened_mode = img.mode

            if fmt == "PNG":
                img.load()  # Pillow looks for PNG EXIF after the pixel data: decode errors first
            try:
                meta = read_metadata(img)
            except MemoryError:
                raise
            except Exception:  # e.g. a broken TIFF header inside the EXIF block
                meta = ImageMetadata()  # as Pillow's JPEG plugin does: pixels ok, no metadata
            swap = meta.orientation >= 5
            facts.update(orientation=meta.orientation, captured=meta.captured,
                         captured_source="exif" if meta.captured else "file-time",
                         make=meta.make, model=meta.model, has_gps=meta.has_gps,
                         display_width=height if swap else width,
                         display_height=width if swap else height)

            metrics = _measure(img)
            if _measure_fn is None:  # no metrics wanted: a scaled JPEG decode is enough
                img.draft("RGB", (2 * THUMBNAIL_SIZE, 2 * THUMBNAIL_SIZE))
            img.load()  # no-op when measure() loaded it; still decodes (and checks) every byte

            if _usable_for_thumbnail(img, opened_mode, (width, height)):
                thumbnail = make_thumbnail(img, _pending_orientation(img, meta.orientation))
            else:  # measure() decoded to grey or tiny: a reduced colour decode for the thumbnail
                fh.seek(0)
                with Image.open(fh, formats=(fmt,)) as again:
                    again.draft("RGB", (2 * THUMBNAIL_SIZE, 2 * THUMBNAIL_SIZE))
                    again.load()
                    thumbnail = make_thumbnail(again,
                                               _pending_orientation(again, meta.orientation))
            facts.update(metrics=metrics, thumbnail_jpeg=thumbnail)


_DECODE_ERRORS = (OSError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError,
                  Image.DecompressionBombWarning)


def _measure(img: Image.Image) -> QualityMetrics | None:
    if _measure_fn is None:
        return None
    try:
        return _measure_fn(img)
    except (MemoryError, *_DECODE_ERRORS):
        raise  # a decoding failure inside measure(): classified like any other
    except Exception as exc:
        raise _Refused(f"quality assessment failed: {_short(exc)}") from exc


# ---------------------------------------------------------------------------------------------
# Metadata


_TAG_ORIENTATION = ExifTags.Base.Orientation
_TAG_DATETIME = ExifTags.Base.DateTime
_TAG_DATETIME_ORIGINAL = ExifTags.Base.DateTimeOriginal
_TAG_OFFSET_TIME = ExifTags.Base.OffsetTime
_TAG_OFFSET_TIME_ORIGINAL = ExifTags.Base.OffsetTimeOriginal
_TAG_SUBSEC_TIME = ExifTags.Base.SubsecTime
_TAG_SUBSEC_TIME_ORIGINAL = ExifTags.Base.SubsecTimeOriginal
_EXIF_DATETIME = re.compile(r"(\d{4})[:/-](\d{2})[:/-](\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_EXIF_OFFSET = re.compile(r"([+-])(\d{2}):(\d{2})")
_MAX_LABEL = 64


def read_metadata(img: Image.Image) -> ImageMetadata:
    """Orientation, capture time, camera and GPS presence from an open image's EXIF/XMP.

    Values are untrusted (handbook T-1): text is stripped of control characters and capped in
    length, times are parsed, not passed through. Capture time is DateTimeOriginal with
    OffsetTimeOriginal and SubSecTimeOriginal from the Exif IFD (0x8769), else DateTime.
    """
    exif = img.getexif()
    sub = exif.get_ifd(ExifTags.IFD.Exif)
    captured = exif_datetime(sub.get(_TAG_DATETIME_ORIGINAL), sub.get(_TAG_OFFSET_TIME_ORIGINAL),
                             sub.get(_TAG_SUBSEC_TIME_ORIGINAL))
    if captured is None:
        captured = exif_datetime(exif.get(_TAG_DATETIME), sub.get(_TAG_OFFSET_TIME),
                                 sub.get(_TAG_SUBSEC_TIME))
    return ImageMetadata(orientation=_orientation_of(exif), captured=captured,
                         make=_label(exif.get(ExifTags.Base.Make)),
                         model=_label(exif.get(ExifTags.Base.Model)),
                         has_gps=_has_gps(exif, img.info))


def exif_datetime(value: object, offset: object = None, subsec: object = None) -> str | None:
    """``"2008:10:22 16:28:39"`` (+ ``"+13:00"``, ``"25"``) -> ISO 8601, or None if unusable."""
    text = _text(value)
    match = _EXIF_DATETIME.fullmatch(text) if text else None
    if match is None:
        return None
    try:
        when = datetime(*(int(g) for g in match.groups()))
    except ValueError:  # "0000:00:00 00:00:00" from a camera whose clock was never set
        return None
    fraction = _text(subsec)
    if fraction and fraction.isdigit():
        when = when.replace(microsecond=int(fraction[:6].ljust(6, "0")))
    zone = _text(offset)
    zone_match = _EXIF_OFFSET.fullmatch(zone) if zone else None
    if zone_match:
        hours, minutes = int(zone_match[2]), int(zone_match[3])
        if hours <= 14 and minutes < 60:
            sign = -1 if zone_match[1] == "-" else 1
            when = when.replace(tzinfo=timezone(sign * timedelta(hours=hours, minutes=minutes)))
    return when.isoformat()


def _orientation_of(exif: Image.Exif) -> int:
    value = exif.get(_TAG_ORIENTATION, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str):
        return None
    cleaned = "".join(ch for ch in value if ch.isprintable()).strip()
    return cleaned or None


def _label(value: object) -> str | None:
    text = _text(value)
    return " ".join(text.split())[:_MAX_LABEL] if text else None


def _has_gps(exif: Image.Exif, info: Mapping[str, Any]) -> bool:
    if ExifTags.Base.GPSInfo in exif:
        return True
    xmp = info.get("xmp") or info.get("XML:com.adobe.xmp")
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8", "replace")
    return isinstance(xmp, bytes) and (b"GPSLatitude" in xmp or b"GPSLongitude" in xmp)


# ---------------------------------------------------------------------------------------------
# Thumbnail

# Same table as ImageOps.exif_transpose, applied to the small image instead of the full one.
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _stored_size(img: Image.Image) -> tuple[int, int]:
    """Pixels as stored in the file: Pillow's TIFF plugin reports ``size`` already oriented."""
    tags = getattr(img, "tag_v2", None)
    if tags is not None:
        width, height = tags.get(256), tags.get(257)  # ImageWidth, ImageLength
        if isinstance(width, int) and isinstance(height, int):
            return width, height
    return img.size


def _pending_orientation(img: Image.Image, orientation: int) -> int:
    """The orientation still to apply to *loaded* pixels.

    Pillow's TIFF loader applies it during load (and drops the tag), pillow-heif hands out
    oriented pixels with the tag reset to 1, and a ``measure()`` that called
    ``ImageOps.exif_transpose(in_place=True)`` drops it too; JPEG and PNG keep it.
    """
    return orientation if _orientation_of(img.getexif()) == orientation else 1


def _usable_for_thumbnail(img: Image.Image, opened_mode: str, stored: tuple[int, int]) -> bool:
    lost_colour = (Image.getmodebase(opened_mode) == "RGB"
                   and Image.getmodebase(img.mode) != "RGB")
    too_small = max(img.size) < min(THUMBNAIL_SIZE, max(stored))
    return not (lost_colour or too_small)


def make_thumbnail(img: Image.Image, orientation: int = 1) -> bytes:
    """JPEG bytes (quality 80) of ``img`` fitted within 320x320, RGB, oriented, no metadata."""
    small = _eight_bit(img)
    width, height = small.size
    scale = min(THUMBNAIL_SIZE / width, THUMBNAIL_SIZE / height, 1.0)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size != small.size:
        small = small.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)
    if small.mode in ("RGBA", "LA"):  # transparent areas show as white, not what they hide
        backdrop = Image.new("RGBA", small.size, (255, 255, 255, 255))
        small = Image.alpha_composite(backdrop, small.convert("RGBA"))
    if orientation in _TRANSPOSE:
        small = small.transpose(_TRANSPOSE[orientation])
    if small.mode != "RGB":
        small = small.convert("RGB")
    out = io.BytesIO()
    small.save(out, "JPEG", quality=THUMBNAIL_QUALITY)
    return out.getvalue()


# 8-bit modes Pillow resizes directly: shrink first, convert the small image afterwards.
_RESIZABLE = frozenset({"RGB", "L", "RGBA", "LA", "YCbCr", "CMYK", "RGBX"})


def _eight_bit(img: Image.Image) -> Image.Image:
    """``img`` in a mode that resizes directly (16-bit and float scaled down to L)."""
    mode = img.mode
    if mode in _RESIZABLE:
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        wide = img if mode in ("I", "F") else img.convert("I")
        high = wide.getextrema()[1]
        scale = 255.0 / float(high) if float(high) > 255 else 1.0
        return wide.point(lambda v: v * scale).convert("L")
    if "A" in img.getbands() or "transparency" in img.info:
        return img.convert("RGBA")
    return img.convert("RGB")


# ---------------------------------------------------------------------------------------------
# Reasons


_PIXELS = re.compile(r"\((\d+) pixels\)")

# Files that are not images we accept, named so the operator knows what was on the card.
_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"GIF8", "GIF files are not accepted"),
    (0, b"BM", "BMP files are not accepted"),
    (8, b"WEBP", "WebP files are not accepted"),
    (0, b"%!PS", "PostScript/EPS files are not accepted"),
    (0, b"\xc5\xd0\xd3\xc6", "EPS files are not accepted"),
    (0, b"8BPS", "Photoshop files are not accepted"),
    (0, b"%PDF", "PDF files are not accepted"),
    (4, b"ftypavif", "AVIF files are not accepted"),
    (0, b"IIU\x00", "camera RAW files are not decoded"),
    (0, b"\xff\xd8", "damaged JPEG header"),
    (0, b"\x89PNG", "damaged PNG header"),
    (0, b"II*\x00", "damaged TIFF header"),
    (0, b"MM\x00*", "damaged TIFF header"),
)


def unrecognised_reason(head: bytes) -> str:
    """The reason for a file no allowed decoder accepted, naming what it looks like."""
    for offset, magic, why in _MAGIC:
        if head[offset:offset + len(magic)] == magic:
            return f"{NOT_RECOGNISED} ({why})"
    return NOT_RECOGNISED


def bomb_reason(pixels: int, max_pixels: int) -> str:
    found, limit = _pixels_text(pixels), _pixels_text(max_pixels)
    return f"decompression bomb: {found} exceeds the {limit} limit"


def failure_reason(exc: BaseException, limits: DecodeLimits) -> str:
    """A short, human reason for an exception raised while opening or decoding an image."""
    message = str(exc)
    if isinstance(exc, ClinivaultError):  # safe_open: CardFileError (the file), BadInput (root)
        return getattr(exc, "words", None) or exc.user_message()
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        found = _PIXELS.search(message)
        if found:
            return bomb_reason(int(found[1]), limits.max_pixels)
        return f"decompression bomb: image exceeds the {_pixels_text(limits.max_pixels)} limit"
    if isinstance(exc, ValueError) and "Decompressed data too large" in message:
        return "decompression bomb: a PNG text chunk inflates past the safe limit"
    if isinstance(exc, UnidentifiedImageError):
        return NOT_RECOGNISED
    if isinstance(exc, OSError) and exc.errno is not None:  # the card, not the image
        return f"could not read the file: {exc.strerror or message}"
    if isinstance(exc, EOFError) or "truncated" in message.lower():
        return TRUNCATED
    return f"corrupt image data: {_short(exc)}"


def _short(exc: BaseException, limit: int = 100) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _pixels_text(pixels: int) -> str:
    if pixels >= 1_000_000_000:
        return f"{pixels / 1e9:.1f} gigapixels"
    return f"{pixels / 1e6:.0f} MP" if pixels >= 10_000_000 else f"{pixels / 1e6:.1f} MP"


def _human_bytes(size: int) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 1_000_000_000 else f"{size / 1e6:.0f} MB"
