"""Sanitised copies for export: new pixels, new metadata built from an allow-list, checked.

Why rebuild instead of strip: a camera file carries location and identity in many places —
the GPS IFD, maker notes (serial numbers, sometimes location), XMP (a second copy of the GPS
position, editing history, names), IPTC (captions: sometimes the patient's name), JPEG
comments, and an embedded EXIF thumbnail that keeps the *unrotated, uncropped* picture with its
own metadata. Deleting the tags we know about leaves whatever we did not think of. So the
pixels are decoded, the orientation is applied to them (``ImageOps.exif_transpose``), and a
fresh JPEG is encoded from a fresh image object with an EXIF block made from nothing but:

* IFD0: Make, Model (camera type is not identifying and helps interpret colour and scale;
  printable ASCII only), Orientation = 1 (the pixels are already upright; writing 1 stops a
  viewer from rotating them a second time);
* Exif IFD: DateTimeOriginal, OffsetTimeOriginal, SubSecTimeOriginal — the capture time a
  referral needs — each re-validated, never copied as raw bytes;
* the ICC profile, when it describes the colour space of the pixels we write (a CMYK
  profile is converted through, not attached to RGB pixels).

Quality 95 with 4:4:4 chroma (no subsampling): a clinical photograph's colour edges (a
rash's margin) must survive the re-encode. Non-JPEG originals (PNG, TIFF, HEIF) are exported as
JPEG too: the referral format is one format.

Then :func:`verify_clean` walks the JPEG we wrote, segment by segment, and refuses anything but
JFIF, one EXIF block holding only the allowed tags and no second IFD (thumbnail), ICC chunks,
tables, the frame and the scan, ending at EOI. Belt and braces: if a Pillow upgrade ever starts
copying something new, export fails loudly instead of leaking.

Decoding happens in this process: the bytes come from the vault, and only images that already
decoded inside the ingest sandbox were archived; the decompression-bomb limit still applies.
"""

from __future__ import annotations

import contextlib
import io
import re
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import ExifTags, Image, ImageCms, ImageOps, UnidentifiedImageError

from core.errors import FailedSafely
from core.imaging.decode import ALLOWED_FORMATS, exif_datetime, prepare_decoders

JPEG_QUALITY = 95
JPEG_SUBSAMPLING = 0  # 4:4:4

TAG_MAKE = ExifTags.Base.Make
TAG_MODEL = ExifTags.Base.Model
TAG_ORIENTATION = ExifTags.Base.Orientation
TAG_EXIF_IFD = ExifTags.IFD.Exif  # 0x8769
TAG_GPS_IFD = ExifTags.IFD.GPSInfo  # 0x8825
TAG_MAKERNOTE = ExifTags.Base.MakerNote  # 0x927C
TAG_DTO = ExifTags.Base.DateTimeOriginal
TAG_OFFSET_DTO = ExifTags.Base.OffsetTimeOriginal
TAG_SUBSEC_DTO = ExifTags.Base.SubsecTimeOriginal

ALLOWED_IFD0 = frozenset({TAG_MAKE, TAG_MODEL, TAG_ORIENTATION, TAG_EXIF_IFD})
ALLOWED_EXIF_IFD = frozenset({TAG_DTO, TAG_OFFSET_DTO, TAG_SUBSEC_DTO})

_DTO_RE = re.compile(r"\d{4}:\d{2}:\d{2} \d{2}:\d{2}:\d{2}")
_OFFSET_RE = re.compile(r"[+-]\d{2}:\d{2}")
_SUBSEC_RE = re.compile(r"\d{1,9}")
_LABEL_MAX = 64


class SanitiseError(FailedSafely):
    """An image could not be made into a clean export copy; nothing of it was written."""


@dataclass(frozen=True)
class Sanitised:
    """A clean JPEG and what was done to make it."""

    data: bytes
    width: int
    height: int
    source_format: str
    orientation: int  # the EXIF orientation that was applied to the pixels (1 = none)
    icc_kept: bool
    icc_dropped: str | None  # why an ICC profile of the original was not kept
    date_time_original: str | None
    offset_time_original: str | None
    subsec_time_original: str | None

    @property
    def converted(self) -> bool:
        return self.source_format != "JPEG"


@contextlib.contextmanager
def _decode_limits(max_pixels: int) -> Iterator[None]:
    previous = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def sanitise_image(data: bytes, *, max_pixels: int) -> Sanitised:
    """Decode *data* (an archived original) and return a clean, upright JPEG of it."""
    prepare_decoders()
    try:
        with _decode_limits(max_pixels), Image.open(io.BytesIO(data),
                                                     formats=ALLOWED_FORMATS) as img:
            fmt = "JPEG" if img.format == "MPO" else str(img.format)
            source_exif = img.getexif()
            orientation = source_exif.get(TAG_ORIENTATION, 1)
            if not (isinstance(orientation, int) and 1 <= orientation <= 8):
                orientation = 1
            exif_sub = source_exif.get_ifd(TAG_EXIF_IFD)
            times = _capture_fields(exif_sub)
            make, model = _label(source_exif.get(TAG_MAKE)), _label(source_exif.get(TAG_MODEL))
            icc = img.info.get("icc_profile") or None
            upright = ImageOps.exif_transpose(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error,
            Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise SanitiseError(f"the archived {_kind(data)} could not be decoded for export "
                            f"({type(exc).__name__})",
                            "Run 'clinivault check'; the original stays in the vault") from None
    assert upright is not None
    pixels, icc, icc_dropped = _output_pixels(upright, icc)
    # A fresh image: nothing of the original's info (comment, XMP, dpi, ...) can ride along.
    clean = Image.frombytes(pixels.mode, pixels.size, pixels.tobytes())
    clean.info = {}
    exif = Image.Exif()
    if make:
        exif[TAG_MAKE] = make
    if model:
        exif[TAG_MODEL] = model
    exif[TAG_ORIENTATION] = 1
    if times[0]:
        sub = exif.get_ifd(TAG_EXIF_IFD)
        sub[TAG_DTO] = times[0]
        if times[1]:
            sub[TAG_OFFSET_DTO] = times[1]
        if times[2]:
            sub[TAG_SUBSEC_DTO] = times[2]
    params: dict[str, object] = {"quality": JPEG_QUALITY, "subsampling": JPEG_SUBSAMPLING,
                                 "optimize": True, "exif": exif.tobytes()}
    if icc:
        params["icc_profile"] = icc
    out = io.BytesIO()
    clean.save(out, "JPEG", **params)
    jpeg = out.getvalue()
    verify_clean(jpeg)
    return Sanitised(data=jpeg, width=clean.width, height=clean.height, source_format=fmt,
                     orientation=orientation, icc_kept=bool(icc), icc_dropped=icc_dropped,
                     date_time_original=times[0], offset_time_original=times[1],
                     subsec_time_original=times[2])


def _kind(data: bytes) -> str:
    return "JPEG" if data[:2] == b"\xff\xd8" else "image"


def _ascii(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str):
        return None
    text = value.strip("\x00 ").strip()
    return text if text.isascii() and text.isprintable() and text else None


def _label(value: object) -> str | None:
    text = _ascii(value)
    return " ".join(text.split())[:_LABEL_MAX] if text else None


def _capture_fields(sub: dict[int, object]) -> tuple[str | None, str | None, str | None]:
    """DateTimeOriginal (+ offset, sub-seconds) re-validated; junk or a zeroed clock -> None."""
    dto = _ascii(sub.get(TAG_DTO))
    if not dto or not _DTO_RE.fullmatch(dto) or exif_datetime(dto) is None:
        return None, None, None
    offset = _ascii(sub.get(TAG_OFFSET_DTO))
    subsec = _ascii(sub.get(TAG_SUBSEC_DTO))
    return (dto, offset if offset and _OFFSET_RE.fullmatch(offset) else None,
            subsec if subsec and _SUBSEC_RE.fullmatch(subsec) else None)


def _icc_space(icc: bytes) -> bytes:
    """The ICC header's data colour space signature (bytes 16-19), e.g. b"RGB "."""
    return icc[16:20] if len(icc) >= 128 else b""


def _output_pixels(img: Image.Image, icc: bytes | None
                   ) -> tuple[Image.Image, bytes | None, str | None]:
    """8-bit RGB or L pixels for the JPEG, and the ICC profile that still describes them."""
    mode = img.mode
    if mode == "CMYK":
        if icc and _icc_space(icc) == b"CMYK":
            try:
                srgb = ImageCms.createProfile("sRGB")
                rgb = ImageCms.profileToProfile(img, ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                                                srgb, outputMode="RGB")
                assert rgb is not None
                return rgb, ImageCms.ImageCmsProfile(srgb).tobytes(), None
            except (ImageCms.PyCMSError, OSError):
                return img.convert("RGB"), None, "the CMYK profile could not be applied"
        return img.convert("RGB"), None, None
    if mode.startswith("I;16") or mode in ("I", "F"):
        wide = img if mode in ("I", "F") else img.convert("I")
        high = 65535.0 if mode.startswith("I;16") else max(float(wide.getextrema()[1]), 1.0)
        out = wide.point(lambda v: v * (255.0 / high)).convert("L")
        target = "L"
    elif mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        backdrop = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        out = Image.alpha_composite(backdrop, rgba).convert("RGB")
        if mode == "LA":
            out = out.convert("L")
        target = "L" if mode == "LA" else "RGB"
    elif mode in ("L", "RGB"):
        out, target = img, mode
    elif mode == "1":
        out, target = img.convert("L"), "L"
    else:  # P, YCbCr, RGBX, LAB, HSV ...
        try:
            out, target = img.convert("RGB"), "RGB"
        except ValueError as exc:
            raise SanitiseError(f"images in colour mode {mode} cannot be exported",
                                "The original stays in the vault") from exc
    if icc is None:
        return out, None, None
    want = b"GRAY" if target == "L" else b"RGB "
    if _icc_space(icc) != want:
        return out, None, (f"its ICC profile is for {_icc_space(icc).decode('latin-1').strip()}"
                           f" data, not {target}")
    return out, icc, None


# -- checking what we wrote ------------------------------------------------------------------

_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
_FRAME_AND_TABLES = frozenset({0xC0, 0xC1, 0xC2, 0xC4, 0xDB, 0xDD})


def _problem(what: str) -> SanitiseError:
    return SanitiseError(f"the export copy would still carry {what}; nothing was exported",
                         "Report this as a bug: the sanitiser let metadata through")


def verify_clean(jpeg: bytes) -> None:
    """Raise SanitiseError unless *jpeg* holds only what :func:`sanitise_image` writes."""
    if jpeg[:2] != b"\xff\xd8":
        raise _problem("a non-JPEG start")
    pos = 2
    exif_blocks = 0
    while True:
        if pos + 4 > len(jpeg) or jpeg[pos] != 0xFF:
            raise _problem("a malformed JPEG segment")
        while jpeg[pos + 1] == 0xFF:  # fill bytes
            pos += 1
        marker = jpeg[pos + 1]
        if marker in _STANDALONE or marker == 0xD8:
            raise _problem(f"an unexpected marker 0xFF{marker:02X}")
        length = int.from_bytes(jpeg[pos + 2:pos + 4], "big")
        payload = jpeg[pos + 4:pos + 2 + length]
        if marker == 0xDA:
            break
        if marker == 0xE0 and payload.startswith(b"JFIF\x00"):
            pass
        elif marker == 0xE1 and payload.startswith(b"Exif\x00\x00"):
            exif_blocks += 1
            if exif_blocks > 1:
                raise _problem("a second EXIF block")
            _check_tiff(payload[6:])
            if b"\xff\xd8" in payload:
                raise _problem("an embedded thumbnail image")
        elif marker == 0xE2 and payload.startswith(b"ICC_PROFILE\x00"):
            pass
        elif marker == 0xE1:
            raise _problem("XMP or other APP1 metadata")
        elif marker == 0xED:
            raise _problem("IPTC / Photoshop metadata (APP13)")
        elif marker == 0xFE:
            raise _problem("a JPEG comment")
        elif 0xE0 <= marker <= 0xEF:
            raise _problem(f"an APP{marker - 0xE0} metadata segment")
        elif marker not in _FRAME_AND_TABLES:
            raise _problem(f"an unexpected segment 0xFF{marker:02X}")
        pos += 2 + length
    end = _end_of_scan(jpeg, pos + 2 + length)
    if end != len(jpeg):
        raise _problem(f"{len(jpeg) - end} bytes after the end of the image")


def _end_of_scan(jpeg: bytes, pos: int) -> int:
    """Offset just past the EOI that ends a baseline scan starting at *pos*."""
    while True:
        pos = jpeg.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(jpeg):
            raise _problem("a scan without an end-of-image marker")
        nxt = jpeg[pos + 1]
        if nxt == 0xD9:
            return pos + 2
        if nxt == 0x00 or 0xD0 <= nxt <= 0xD7 or nxt == 0xFF:
            pos += 1 if nxt == 0xFF else 2
            continue
        raise _problem(f"a marker 0xFF{nxt:02X} inside the image data")


def _check_tiff(tiff: bytes) -> None:
    if tiff[:4] not in (b"II*\x00", b"MM\x00*"):
        raise _problem("a malformed EXIF block")
    order = "<" if tiff[:2] == b"II" else ">"

    def ifd(offset: int, allowed: frozenset[int], where: str) -> tuple[dict[int, int], int]:
        if offset + 2 > len(tiff):
            raise _problem(f"a malformed EXIF {where}")
        (count,) = struct.unpack_from(order + "H", tiff, offset)
        tags: dict[int, int] = {}
        for n in range(count):
            at = offset + 2 + 12 * n
            if at + 12 > len(tiff):
                raise _problem(f"a malformed EXIF {where}")
            tag, _type, _count, value = struct.unpack_from(order + "HHII", tiff, at)
            tags[tag] = value
        at = offset + 2 + 12 * count
        (following,) = struct.unpack_from(order + "I", tiff, at) if at + 4 <= len(tiff) else (0,)
        # The worst finding first, so the message names what matters.
        if TAG_GPS_IFD in tags:
            raise _problem("GPS location (the GPS IFD)")
        if TAG_MAKERNOTE in tags:
            raise _problem("a maker note")
        if following and where == "IFD0":
            raise _problem("an embedded thumbnail (IFD1)")
        if following:
            raise _problem(f"an IFD chained after the {where}")
        extra = sorted(set(tags) - allowed)
        if extra:
            raise _problem(f"EXIF tag 0x{extra[0]:04X} in the {where}")
        return tags, following

    (first,) = struct.unpack_from(order + "I", tiff, 4)
    tags, _following = ifd(first, ALLOWED_IFD0, "IFD0")
    if TAG_EXIF_IFD in tags:
        ifd(tags[TAG_EXIF_IFD], ALLOWED_EXIF_IFD, "Exif IFD")
