"""Image quality: sharpness, exposure, resolution and near-duplicates, as suggestions to discard.

Why it is built this way (docs/QUALITY.md has the measurements):

* Sharpness is judged on native-resolution detail. On real photographs a blur measure taken on a
  reduced image (variance of the Laplacian, or the blur effect on a 1024 px or JPEG-draft
  decode) does not separate sharp from blurred across content, because downscaling hides a blur
  of a few pixels. So the full-resolution luminance is decoded (for JPEG only the Y channel,
  which is about twice as fast as RGB) and the Crete-Roffet blur effect is computed on the most
  structured 128 px tiles only, in four directions (motion blur has one), and summarised by a
  low quantile over those tiles (the in-focus part of the photo is what matters). Flat tiles
  (smooth skin, black drape) carry no focus information and are skipped; pixel differences
  that are only noise are masked out, so sensor noise does not pass for detail.
* Exposure is judged on the brightest and darkest parts of the picture rather than its mean,
  so a well-lit subject on a black drape is not "dark" and a pale background is not "bright".
* Everything is a pure function of the pixels: values in, values out; ``assess`` turns numbers
  into flags with thresholds from config. The result is a suggestion; the operator decides.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import numpy as np
from PIL import Image

from core.errors import ConfigError

REASONS = ("blurred", "dark", "bright", "low_resolution", "duplicate", "unreadable")

# --- sharpness method constants (tuned in docs/QUALITY.md; not site settings) ---------------
_TILE = 128           # native-resolution tile side, px
_MAX_TILES = 64       # most structured tiles measured (bounds the time for any image size)
_REDUCE = 4           # the coarse structure map is taken at 1/4 resolution
_FLAT = 1.0           # mean |gradient| at 1/4 scale (grey levels) below which a tile is flat
_BOX = 5              # re-blur box length of the blur effect, px
_EDGE_MIN = 6         # |difference across the box| below which a pixel is noise, grey levels
_MIN_EDGE_PIXELS = 100  # a direction of a tile needs this many edge pixels to count
_ROW_STRIDE = 2       # measure every second line of a tile
_QUANTILE = 0.10      # low quantile of the tile blur: the sharpest tenth of the measured tiles
#: Blur effect of a typical sharp photograph (median over the sharp test material); the
#: plain-words message compares against it.
TYPICAL_SHARP_BLUR = 0.60

_EXPOSURE_SIDE = 512  # exposure and hash work on a reduced colour copy about this long
_LIT = 32             # luma above which a pixel is part of the lit picture (not black drape)
_CLIP_HIGH = 250      # a colour channel at or above this is blown out
_CLIP_LOW = 4         # all channels at or below this: crushed to black


@dataclass(frozen=True)
class QualityMetrics:
    """The numbers behind the flags, for one image. Picklable; ``asdict`` gives JSON.

    ``sharpness`` is the blur effect (Crete-Roffet) of the sharpest structured parts of the
    image at native resolution: 0 = crisp, 1 = all fine detail gone. ``detail`` is the share of
    the frame with enough structure to judge focus (0 = featureless: sharpness is not judged).
    ``shake`` is how much more blurred the worst direction is than the best (0 = the same in
    every direction, as out of focus; large = directional, as camera shake).
    Luminance levels are 0..255 (Rec. 601 luma as JPEG stores it).
    """

    width: int
    height: int
    sharpness: float
    detail: float
    shake: float
    mean_luma: float
    shadow_level: float       # luma below which the darkest 0.5% of the picture lies
    highlight_level: float    # brightest colour channel above which the brightest 0.5% lies
    shadows_clipped: float    # share of pixels crushed to black (every channel <= 4)
    highlights_clipped: float  # share of pixels blown out (some channel >= 250)
    lit_clipped: float        # the same share among the lit pixels (brighter than a quarter
    #                           of highlight_level and than 32)
    phash: int                # 64-bit perceptual hash of the whole image (see _phash)


@dataclass(frozen=True)
class Flag:
    reason: str            # one of REASONS
    message: str           # plain words for the review screen
    metric: float | None   # the number the decision was made on


@dataclass(frozen=True)
class QualityThresholds:
    """Decision thresholds; the shipped values live in config/default.toml [quality]."""

    min_long_side: int = 1600
    blur_effect_max: float = 0.67
    dark_highlight_max: float = 128.0
    bright_lit_clipped_share: float = 0.2
    duplicate_max_distance: int = 12
    duplicate_window_s: float = 10.0

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> QualityThresholds:
        """Read the [quality] section. Keys this version does not use are ignored; keys it
        needs but the section lacks keep the defaults above."""
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in section:
                default = getattr(cls, f.name)
                value = section[f.name]
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ConfigError(f"[quality] {f.name} must be a number, not {value!r}")
                kwargs[f.name] = type(default)(value)
        return cls(**kwargs)


# --------------------------------------------------------------------------------------------
# Decoding: full-resolution luminance for sharpness, a small colour copy for exposure

_JPEG_FORMATS = ("JPEG", "MPO")


def _to_luma(img: Image.Image) -> Image.Image:
    """8-bit luma ("L") of a loaded image of any mode; 16-bit and float data are scaled."""
    mode = img.mode
    if mode == "L":
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(img.convert("F") if mode.startswith("I;16") else img, dtype=np.float32)
        top = float(a.max()) if a.size else 0.0
        if mode == "F" and top <= 1.0:
            a = a * 255.0
        elif top > 255.0:
            a = a / 257.0
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    return _to_rgb(img).convert("L")


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        return _to_luma(img).convert("RGB")
    return img.convert("RGB")


def _reduce_to(img: Image.Image, side: int) -> Image.Image:
    factor = max(1, round(max(img.size) / side))
    return img.reduce(factor) if factor > 1 else img


def _decode(img: Image.Image) -> tuple[Image.Image, Image.Image]:
    """(full-resolution luma, colour copy about _EXPOSURE_SIDE px long) of an opened image.

    A JPEG is decoded twice. The luma from a copy of its bytes, Y channel only at full
    resolution (``draft("L")``: no chroma upsampling or colour conversion, about half the time
    of an RGB decode). The colour at 1/8 scale (DCT scaling: no inverse transform) on *img*
    itself, because clipping is a per-channel matter a luma-only decode cannot see: *img* is
    left loaded as that reduced colour image (about 500 px long at 12 MP), big enough for
    core.imaging to make its 320 px thumbnail without decoding the file a third time.
    Any other format is loaded in place and converted.
    """
    fp = getattr(img, "fp", None)
    if img.format in _JPEG_FORMATS and img.tile and fp is not None:
        fp.seek(0)
        data = fp.read()
        full = Image.open(io.BytesIO(data), formats=[img.format])
        if full.mode in ("RGB", "YCbCr"):
            full.draft("L", full.size)
        full.load()
        w, h = img.size
        scale = 8
        while scale > 1 and max(w, h) // scale < _EXPOSURE_SIDE // 2:
            scale //= 2
        img.draft("RGB", (max(1, w // scale), max(1, h // scale)))
        img.load()
        return _to_luma(full), _reduce_to(_to_rgb(img), _EXPOSURE_SIDE)
    img.load()
    luma = _to_luma(img)
    return luma, _reduce_to(_to_rgb(img), _EXPOSURE_SIDE)


# --------------------------------------------------------------------------------------------
# Sharpness: blur effect of the most structured native tiles


def _direction_sums(stack: np.ndarray, direction: int) -> tuple[np.ndarray, np.ndarray,
                                                                 np.ndarray]:
    """Per tile: sum of 1-px luminance steps, sum of the steps a box re-blur removes, and the
    count of edge pixels, over edge pixels only, in one direction (0 -, 1 |, 2 \\, 3 /).

    *stack* is int16 (tiles, rows, cols); for direction 1 pass the transposed stack. Every
    second line is used (neighbouring lines say the same about focus; half the time).
    """
    h = _BOX
    a, b = (h + 1) // 2, h - (h + 1) // 2
    f = stack[:, :, ::-1] if direction == 3 else stack
    _n, rows, cols = f.shape
    r = _ROW_STRIDE
    if direction in (0, 1):
        g = f[:, ::r, :]
        step = g[:, :, a:cols - b] - g[:, :, a - 1:cols - b - 1]
        across = g[:, :, h:] - g[:, :, :cols - h]
    else:
        step = f[:, a:rows - b:r, a:cols - b] - f[:, a - 1:rows - b - 1:r, a - 1:cols - b - 1]
        across = f[:, h::r, h:] - f[:, :rows - h:r, :cols - h]
    np.abs(step, out=step)
    np.abs(across, out=across)
    edge = across >= _EDGE_MIN
    kept = step * h
    kept -= across
    np.maximum(kept, 0, out=kept)               # h x (step minus the re-blurred step)
    step *= edge
    kept *= edge
    s_step = step.sum(axis=(1, 2), dtype=np.int32).astype(np.float64)
    s_kept = kept.sum(axis=(1, 2), dtype=np.int32).astype(np.float64) / h
    return s_step, s_kept, np.count_nonzero(edge, axis=(1, 2))


def _tile_side(cols: int, rows: int) -> int:
    tile = _TILE
    while tile > 32 and (rows // tile < 2 or cols // tile < 2):
        tile //= 2
    return tile


def _structure(coarse: np.ndarray, tile: int, red: int, ny: int, nx: int) -> np.ndarray:
    """Mean |gradient| of the reduced image *coarse* over each tile: where the picture has
    structure at a scale blur does not erase (so the same tiles are chosen, sharp or not)."""
    rt = tile // red
    r = coarse[: ny * rt, : nx * rt].astype(np.int16)
    gx = np.pad(np.abs(np.diff(r, axis=1)), ((0, 0), (0, 1)))
    gy = np.pad(np.abs(np.diff(r, axis=0)), ((0, 1), (0, 0)))
    return (gx + gy).reshape(ny, rt, nx, rt).mean(axis=(1, 3)).ravel()


def _sharpness(luma: Image.Image, coarse: np.ndarray | None) -> tuple[float, float, float]:
    """(blur effect, share of structured tiles, directional spread) of a luma image.

    *coarse* is the luma reduced by _REDUCE (or None to compute it here).
    """
    cols, rows = luma.size
    tile = _tile_side(cols, rows)
    ny, nx = rows // tile, cols // tile
    if ny < 1 or nx < 1:
        return 0.0, 0.0, 0.0
    red = _REDUCE if tile >= 8 * _REDUCE else 2
    if coarse is None or red != _REDUCE:
        coarse = np.asarray(luma.reduce(red))
    structure = _structure(coarse, tile, red, ny, nx)
    structured = structure > _FLAT
    detail = float(structured.mean())
    if not structured.any():
        return 0.0, 0.0, 0.0
    order = np.argsort(structure)[::-1][: min(_MAX_TILES, int(structured.sum()))]
    stack = np.empty((len(order), tile, tile), np.int16)
    for k, idx in enumerate(order):
        j, i = divmod(int(idx), nx)
        stack[k] = np.asarray(luma.crop((i * tile, j * tile, (i + 1) * tile, (j + 1) * tile)))
    transposed = np.ascontiguousarray(stack.transpose(0, 2, 1))
    per_dir: list[float] = []
    for d in range(4):
        s_step, s_kept, n_edge = _direction_sums(transposed if d == 1 else stack, d)
        ok = (n_edge >= _MIN_EDGE_PIXELS) & (s_step > 0)
        if ok.any():
            per_dir.append(float(np.quantile(1.0 - s_kept[ok] / s_step[ok], _QUANTILE)))
    if not per_dir:
        # Structure, but no edge stronger than noise anywhere: nothing sharp survives.
        return 1.0, detail, 0.0
    return max(per_dir), detail, max(per_dir) - min(per_dir)


# --------------------------------------------------------------------------------------------
# Exposure and perceptual hash (on a reduced copy)

_DCT16 = np.cos(np.pi * np.outer(np.arange(16), 2 * np.arange(16) + 1) / 32)


def _phash(luma_small: Image.Image) -> int:
    """64-bit perceptual hash: for each quadrant of a 32x32 copy, whether it is brighter than
    the whole, then the signs of its 15 lowest-frequency DCT coefficients.

    A variant of pHash (which takes the 8x8 lowest DCT frequencies of the whole frame against
    their median): with a subject centred on a plain background, as clinical photographs are,
    the symmetry of the frame makes most of those coefficients nearly zero, so their bits flip
    at random between two shots of a burst (measured: up to 32 of 64 bits on the moon photo).
    Per quadrant the subject is off-centre and the bits are stable (at most 13 bits between
    burst shots shifted 1-4%, against at least 18 between different scenes in 99% of pairs).
    """
    px = np.asarray(luma_small.resize((32, 32), Image.LANCZOS), dtype=np.float64)
    whole = px.mean()
    bits: list[bool] = []
    for qy in (0, 16):
        for qx in (0, 16):
            block = px[qy:qy + 16, qx:qx + 16]
            low = (_DCT16 @ block @ _DCT16.T)[:4, :4].ravel()
            bits.append(bool(block.mean() > whole))
            bits.extend(bool(v > 0) for v in low[1:])
    return int("".join("1" if bit else "0" for bit in bits), 2)


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two perceptual hashes."""
    return (a ^ b).bit_count()


# --------------------------------------------------------------------------------------------
# Public API


def measure(img: Image.Image) -> QualityMetrics:
    """Measure an opened (not yet loaded) image; decodes it at full resolution.

    A JPEG's luminance is decoded from a copy of its bytes; *img* itself is left loaded as a
    reduced colour image (1/8 scale, about 500 px long at 12 MP): thumbnails can be made from
    it, but its ``size`` is then the reduced one (the metrics keep the stored size). Any other
    format is loaded in place. Memory: the file's bytes, one 8-bit luminance plane (12 MB at
    12 MP, 50 MB at 50 MP) and copies of at most a megapixel; docs/QUALITY.md has the peaks.
    Raises what Pillow raises for a damaged file (OSError, ValueError, ...): the caller
    reports those as ``unreadable``.
    """
    width, height = img.size
    luma, colour = _decode(img)
    coarse_img = luma.reduce(_REDUCE) if min(luma.size) >= 8 * _REDUCE else luma
    coarse = np.asarray(coarse_img) if coarse_img is not luma else None
    blur, detail, shake = _sharpness(luma, coarse)
    small = colour.convert("L")
    y = np.asarray(small)
    rgb = np.asarray(colour)
    top = np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])
    hist = np.bincount(y.ravel(), minlength=256).astype(np.float64)
    total = max(1.0, float(y.size))
    cdf = np.cumsum(hist) / total
    # Highlights on the brightest channel, not luma: a well-exposed saturated blue or green
    # has its top channel near white but a luma under mid-grey. -2.5 EV caps every channel at
    # sRGB 118, so this catches it whatever the colour.
    top_cdf = np.cumsum(np.bincount(top.ravel(), minlength=256)) / total
    highlight = float(np.searchsorted(top_cdf, 0.995))
    # The lit picture: what is brighter than a quarter of the highlights (and than _LIT), so
    # a black drape lifted to dark grey by overexposure does not dilute the blown subject.
    lit = y > max(_LIT, highlight / 4)
    n_lit = int(lit.sum())
    clipped = top >= _CLIP_HIGH
    return QualityMetrics(
        width=width,
        height=height,
        sharpness=round(blur, 4),
        detail=round(detail, 4),
        shake=round(shake, 4),
        mean_luma=round(float(y.mean()) if y.size else 0.0, 2),
        shadow_level=float(np.searchsorted(cdf, 0.005)),
        highlight_level=highlight,
        shadows_clipped=round(float((top <= _CLIP_LOW).sum()) / total, 4),
        highlights_clipped=round(float(clipped.sum()) / total, 4),
        lit_clipped=round(float((clipped & lit).sum()) / n_lit, 4) if n_lit else 0.0,
        phash=_phash(small),
    )


def weaker_detail_factor(sharpness: float) -> float:
    """How many times weaker the fine detail is than in a typical sharp photograph.

    (1 - blur effect) is the share of edge contrast carried by fine detail; this is the ratio
    of that share for a typical sharp photo to this image's.
    """
    return (1.0 - TYPICAL_SHARP_BLUR) / max(1e-3, 1.0 - sharpness)


def assess(m: QualityMetrics, t: QualityThresholds) -> list[Flag]:
    """Flags for one image: blurred, dark, bright, low_resolution (duplicates: find_duplicates)."""
    flags: list[Flag] = []
    if m.detail > 0 and m.sharpness > t.blur_effect_max:
        factor = weaker_detail_factor(m.sharpness)
        kind = "camera shake (blurred in one direction)" if m.shake > 0.1 else "out of focus"
        flags.append(Flag("blurred",
                          f"Blurred, {kind}: even the sharpest part has fine detail "
                          f"{factor:.1f}x weaker than a typical sharp photo",
                          m.sharpness))
    if m.highlight_level < t.dark_highlight_max:
        flags.append(Flag("dark",
                          "Too dark: even the brightest parts are darker than mid-grey "
                          f"(the brightest parts reach {m.highlight_level:.0f} of 255)",
                          m.highlight_level))
    if m.lit_clipped > t.bright_lit_clipped_share:
        flags.append(Flag("bright",
                          f"Too bright: {100 * m.lit_clipped:.0f}% of the lit picture is "
                          "blown out, with no detail left",
                          m.lit_clipped))
    long_side = max(m.width, m.height)
    if long_side < t.min_long_side:
        flags.append(Flag("low_resolution",
                          f"Low resolution: {m.width} x {m.height} pixels; at least "
                          f"{t.min_long_side} on the long side are needed",
                          float(long_side)))
    return flags


@dataclass(frozen=True)
class BurstCandidate:
    key: str
    captured: datetime | None
    metrics: QualityMetrics


def _same_burst(a: BurstCandidate, b: BurstCandidate, t: QualityThresholds) -> bool:
    if hamming(a.metrics.phash, b.metrics.phash) > t.duplicate_max_distance:
        return False
    if a.captured is not None and b.captured is not None:
        return abs((a.captured - b.captured).total_seconds()) <= t.duplicate_window_s
    return True


def _rank(c: BurstCandidate) -> tuple[float, float, str]:
    """Sort key: sharpest first (lowest blur effect), then more detail, then name."""
    return (c.metrics.sharpness, -c.metrics.detail, c.key)


def find_duplicates(items: Sequence[BurstCandidate], t: QualityThresholds) -> dict[str, str]:
    """Group near-identical shots into bursts and keep the sharpest of each.

    Two images are in one burst when their perceptual hashes differ in at most
    ``t.duplicate_max_distance`` bits and (when both capture times are known) they were taken
    at most ``t.duplicate_window_s`` apart; bursts are the connected groups of that relation.
    Returns ``{key: key of the kept image}`` for every image that is not kept.
    """
    n = len(items)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            if _same_burst(items[i], items[j], t):
                ri, rj = find(i), find(j)
                if ri != rj:
                    parent[rj] = ri
    groups: dict[int, list[BurstCandidate]] = {}
    for i, c in enumerate(items):
        groups.setdefault(find(i), []).append(c)
    out: dict[str, str] = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        kept = min(members, key=_rank)
        for c in members:
            if c.key != kept.key:
                out[c.key] = kept.key
    return out


_EXPLANATIONS = {
    "blurred": "Blurred: even the sharpest part of the photo has much weaker fine detail than "
               "a sharp photo of this kind (out of focus, or the camera moved).",
    "dark": "Too dark: even the brightest parts of the photo are darker than mid-grey, so "
            "detail is lost in the shadows.",
    "bright": "Too bright: a large part of the lit picture is pure white, so detail there is "
              "lost for good.",
    "low_resolution": "Low resolution: the photo has too few pixels to show clinical detail.",
    "duplicate": "Duplicate: a near-identical photo taken moments apart is sharper; this one "
                 "adds nothing.",
    "unreadable": "Unreadable: the file is damaged, incomplete or not an image this station "
                  "can open; it is left on the card.",
}


def explain(flag_reason: str) -> str:
    """The plain-words explanation of a reason, for the review screen."""
    try:
        return _EXPLANATIONS[flag_reason]
    except KeyError:
        raise ValueError(f"unknown quality reason {flag_reason!r}") from None


__all__ = [
    "REASONS",
    "TYPICAL_SHARP_BLUR",
    "BurstCandidate",
    "Flag",
    "QualityMetrics",
    "QualityThresholds",
    "assess",
    "explain",
    "find_duplicates",
    "hamming",
    "measure",
    "weaker_detail_factor",
]
