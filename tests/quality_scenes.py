"""Labelled test material for core.quality: generated scenes and photographic degradations.

Why a shared module: the tests (tests/test_quality*.py) and the accuracy bench
(bench/quality_accuracy.py) must judge the quality measures on exactly the same material, so
the scene generator and the degradations (Gaussian and motion blur, exposure shifts in linear
light, bursts) live here once. Everything is seeded and deterministic. Not collected by pytest
(no ``test_`` prefix); the bench puts ``tests/`` on ``sys.path`` to import it.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

#: The shared real photographs (README.md and manifest.json there); never copied into the repo.
MEDIA_DIR = Path(__file__).resolve().parents[2] / "shared" / "media"

#: Blur sizes in the targets are given for a 12 MP (4000 px long side) frame.
REFERENCE_LONG_SIDE = 4000

SCENE_KINDS = ("shapes", "texture", "lines", "skin", "dark_subject", "mixed")


# --------------------------------------------------------------------------------------------
# Colour and encoding helpers


def srgb_to_linear(v: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in 0..1 -> linear light (IEC 61966-2-1)."""
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(v: np.ndarray) -> np.ndarray:
    """Linear light in 0..1 -> sRGB-encoded values in 0..1."""
    v = np.clip(v, 0.0, 1.0)
    return np.where(v <= 0.0031308, v * 12.92, 1.055 * np.power(v, 1 / 2.4) - 0.055)


def to_image(rgb: np.ndarray) -> Image.Image:
    """Float RGB in 0..255 (any shape h x w x 3) -> 8-bit RGB image, rounded and clipped."""
    return Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), "RGB")


def jpeg_bytes(img: Image.Image, quality: int = 92) -> bytes:
    """Encode as a camera would: baseline JPEG, 4:2:0 chroma subsampling."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality, subsampling=2)
    return buf.getvalue()


def open_jpeg(data: bytes) -> Image.Image:
    """An opened, not yet loaded image, as core.imaging hands it to quality.measure()."""
    return Image.open(io.BytesIO(data))


def scaled(size_px_at_12mp: float, long_side: int) -> float:
    """A blur size given for a 12 MP frame, scaled to an image with this long side."""
    return size_px_at_12mp * long_side / REFERENCE_LONG_SIDE


# --------------------------------------------------------------------------------------------
# Degradations (the variants of issue 9)


def gaussian_blur(img: Image.Image, sigma: float) -> Image.Image:
    """Gaussian blur with standard deviation *sigma* px (Pillow's extended-box approximation)."""
    if sigma <= 0:
        return img.copy()
    return img.filter(ImageFilter.GaussianBlur(radius=sigma))


def motion_blur(img: Image.Image, length: float, angle_deg: float = 0.0) -> Image.Image:
    """Linear motion blur: the mean of the image shifted along a rasterised line kernel.

    *length* is the extent of the smear in pixels; *angle_deg* 0 is horizontal.
    """
    n = max(1, round(length))
    if n == 1:
        return img.copy()
    a = np.asarray(img.convert("RGB"), dtype=np.float32)
    h, w, _ = a.shape
    dx, dy = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    offs = [(round((i - (n - 1) / 2) * dy), round((i - (n - 1) / 2) * dx)) for i in range(n)]
    pad = max(max(abs(oy), abs(ox)) for oy, ox in offs)
    p = np.pad(a, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    acc = np.zeros_like(a)
    for oy, ox in offs:
        acc += p[pad + oy : pad + oy + h, pad + ox : pad + ox + w]
    return to_image(acc / n)


def exposure(img: Image.Image, ev: float) -> Image.Image:
    """Exposure change of *ev* stops in linear light: decode sRGB, multiply, clip, encode.

    Pointwise on 8-bit values, so it is exactly a 256-entry lookup table per channel."""
    v = np.arange(256, dtype=np.float64) / 255.0
    lut = np.rint(linear_to_srgb(srgb_to_linear(v) * (2.0**ev)) * 255.0).astype(int)
    return img.convert("RGB").point(lut.tolist() * 3)


def add_noise(img: Image.Image, sigma: float, seed: int) -> Image.Image:
    """Sensor-like noise: Gaussian, independent per pixel and channel, *sigma* grey levels."""
    if sigma <= 0:
        return img.copy()
    rng = np.random.default_rng(seed)
    a = np.asarray(img.convert("RGB"), dtype=np.float32)
    a += rng.standard_normal(a.shape, dtype=np.float32) * np.float32(sigma)
    return to_image(a)


@dataclass(frozen=True)
class BurstShot:
    name: str
    image: Image.Image
    blurred: bool


def burst(img: Image.Image, seed: int, blur_sigma_12mp: float = 1.5) -> list[BurstShot]:
    """Three near-copies as a camera burst gives them: each a 97% window shifted by 1-2% of the
    frame; the last one also slightly blurred (Gaussian *blur_sigma_12mp* px at 12 MP scale)."""
    rng = np.random.default_rng(seed)
    w, h = img.size
    cw, ch = round(w * 0.97), round(h * 0.97)
    shots: list[BurstShot] = []
    x0, y0 = (w - cw) // 2, (h - ch) // 2
    for i in range(3):
        if i:
            step = rng.uniform(0.01, 0.02)
            sx, sy = rng.choice([-1, 1], size=2)
            x = int(np.clip(x0 + sx * step * w, 0, w - cw))
            y = int(np.clip(y0 + sy * step * h * rng.uniform(0.3, 1.0), 0, h - ch))
        else:
            x, y = x0, y0
        shot = img.crop((x, y, x + cw, y + ch))
        blurred = i == 2
        if blurred:
            shot = gaussian_blur(shot, scaled(blur_sigma_12mp, max(w, h)))
        shots.append(BurstShot(f"burst{i}", shot, blurred))
    return shots


# --------------------------------------------------------------------------------------------
# Generated scenes


def _fractal(rng: np.random.Generator, h: int, w: int, octaves: int, base: int,
             persistence: float) -> np.ndarray:
    """1/f-like noise in about 0..1: random grids upsampled bicubically and summed."""
    acc = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    cells = base
    for _ in range(octaves):
        gh, gw = max(2, cells * h // max(h, w) + 2), max(2, cells * w // max(h, w) + 2)
        grid = rng.random((gh, gw), dtype=np.float32)
        layer = Image.fromarray(grid, "F").resize((w, h), Image.BICUBIC)
        acc += amp * np.asarray(layer, np.float32)
        total += amp
        amp *= persistence
        cells *= 2
        if cells > max(h, w) / 2:
            break
    acc /= total
    return (acc - acc.min()) / max(1e-6, float(acc.max() - acc.min()))


def _dead_leaves(rng: np.random.Generator, size: tuple[int, int], rmin: float,
                 rmax: float) -> Image.Image:
    """Dead leaves: overlapping discs with radii distributed as r^-3 between *rmin* and *rmax*
    (fractions of the long side). It has the scale-invariant statistics of natural images and
    sharp occlusion edges at every scale: the standard target for camera texture sharpness."""
    w, h = size
    s = max(w, h)
    lo, hi = rmin * s, rmax * s
    mean_area = math.pi * 2 * lo * lo * math.log(hi / lo)
    n = int(3 * w * h / mean_area)
    u = rng.random(n)
    radii = (lo ** -2 - u * (lo ** -2 - hi ** -2)) ** -0.5
    xs, ys = rng.uniform(-hi, w + hi, n), rng.uniform(-hi, h + hi, n)
    base = np.array(_colour(rng, 60, 200), np.float32)
    tones = np.clip(base[None, :] * rng.uniform(0.25, 1.3, (n, 1))
                    + rng.normal(0, 18, (n, 3)), 0, 255).astype(int)
    img = Image.new("RGB", size, tuple(int(v) for v in base))
    d = ImageDraw.Draw(img)
    for x, y, r, c in zip(xs, ys, radii, tones, strict=True):
        d.ellipse((x - r, y - r, x + r, y + r), fill=(int(c[0]), int(c[1]), int(c[2])))
    return img


def _colour(rng: np.random.Generator, lo: int = 30, hi: int = 230) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi, 3))  # type: ignore[return-value]


def _draw_shapes(draw: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int,
                 n: int) -> None:
    s = max(w, h)
    for _ in range(n):
        kind = rng.integers(0, 4)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(0.01, 0.12) * s
        fill = _colour(rng)
        if kind == 0:
            draw.ellipse((cx - r, cy - r * rng.uniform(0.4, 1), cx + r, cy + r), fill=fill)
        elif kind == 1:
            draw.rectangle((cx - r, cy - r / 2, cx + r, cy + r / 2), fill=fill)
        elif kind == 2:
            pts = [(cx + r * math.cos(t), cy + r * math.sin(t))
                   for t in np.sort(rng.uniform(0, 2 * math.pi, int(rng.integers(3, 7))))]
            draw.polygon(pts, fill=fill)
        else:
            draw.line((cx, cy, cx + rng.uniform(-2, 2) * r, cy + rng.uniform(-2, 2) * r),
                      fill=fill, width=max(1, int(rng.uniform(0.001, 0.006) * s)))


def render_scene(kind: str, size: tuple[int, int], seed: int) -> Image.Image:
    """A synthetic, perfectly sharp scene of the given *kind* (see SCENE_KINDS).

    Content is defined relative to the frame, so the same seed at two sizes is the same scene
    at two resolutions (as two cameras would see it).
    """
    w, h = size
    rng = np.random.default_rng(seed)
    s = max(w, h)
    if kind == "shapes":
        img = Image.new("RGB", size, _colour(rng, 60, 200))
        _draw_shapes(ImageDraw.Draw(img), rng, w, h, 60)
    elif kind == "texture":  # foliage, fabric, gravel: the "dead leaves" model of natural texture
        img = _dead_leaves(rng, size, 0.0015, 0.08)
    elif kind == "lines":  # instruments, text, rulers, hair: thin high-contrast strokes
        img = Image.new("RGB", size, _colour(rng, 150, 240))
        d = ImageDraw.Draw(img)
        for _ in range(150):
            x, y = rng.uniform(0, w), rng.uniform(0, h)
            ang, ln = rng.uniform(0, math.pi), rng.uniform(0.02, 0.3) * s
            d.line((x, y, x + ln * math.cos(ang), y + ln * math.sin(ang)),
                   fill=_colour(rng, 0, 120), width=max(1, int(rng.uniform(0.0005, 0.004) * s)))
        _draw_shapes(d, rng, w, h, 10)
    elif kind == "skin":  # smooth low-contrast surface: faint pores, a few moles, soft shading
        shade = _fractal(rng, h, w, 3, 2, 0.5)
        pores = _fractal(rng, h, w, 9, 32, 0.9)
        lum = 150 + 50 * (shade - 0.5) + 12 * (pores - 0.5)
        skin = np.array([1.0, 0.78, 0.66], np.float32)
        img = to_image(lum[..., None] * skin[None, None, :] * 1.25)
        d = ImageDraw.Draw(img)
        for _ in range(8):
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.002, 0.012) * s
            d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(110, 70, 50))
    elif kind == "dark_subject":  # a lit subject on a black drape (dermatology, the moon)
        img = Image.new("RGB", size, (6, 6, 8))
        base = _fractal(rng, h, w, 9, 8, 0.8)
        tex = to_image((80 + 140 * base)[..., None] * np.array([1.0, 0.85, 0.75])[None, None])
        mask = Image.new("L", size, 0)
        r = rng.uniform(0.12, 0.25) * s
        cx, cy = w / 2 + rng.uniform(-0.1, 0.1) * w, h / 2 + rng.uniform(-0.1, 0.1) * h
        ImageDraw.Draw(mask).ellipse((cx - r, cy - r * 0.8, cx + r, cy + r * 0.8), fill=255)
        img.paste(tex, (0, 0), mask)
    elif kind == "mixed":  # textured background, objects in front, soft lighting across it
        img = _dead_leaves(rng, size, 0.003, 0.05)
        _draw_shapes(ImageDraw.Draw(img), rng, w, h, 25)
        shade = 0.55 + 0.45 * _fractal(rng, h, w, 2, 2, 0.5)
        img = to_image(np.asarray(img, np.float32) * shade[..., None])
    else:
        raise ValueError(f"unknown scene kind {kind!r}")
    return img


def shallow_focus(scene: Image.Image, subject_share: float, background_sigma: float,
                  seed: int) -> Image.Image:
    """Shallow depth of field: the scene sharp inside an ellipse covering *subject_share* of
    the frame, Gaussian-blurred by *background_sigma* px outside it (a close-up of a lesion)."""
    rng = np.random.default_rng(seed)
    w, h = scene.size
    ry = math.sqrt(subject_share * w * h / math.pi / 1.3)
    rx = 1.3 * ry
    cx, cy = w / 2 + rng.uniform(-0.15, 0.15) * w, h / 2 + rng.uniform(-0.15, 0.15) * h
    mask = Image.new("L", scene.size, 0)
    ImageDraw.Draw(mask).ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=255)
    mask = mask.filter(ImageFilter.GaussianBlur(background_sigma / 2))
    return Image.composite(scene, gaussian_blur(scene, background_sigma), mask)


def auto_exposure_ev(scene: Image.Image, highlight: float = 235.0) -> float:
    """The exposure shift (stops) that puts the brightest 0.5% of the scene's colour channels
    at *highlight* (of 255): a highlight-priority auto exposure, so originals are well exposed."""
    small = scene.convert("RGB").reduce(max(1, max(scene.size) // 512))
    top = float(np.quantile(np.asarray(small).max(axis=2), 0.995)) / 255.0
    lin_top = float(srgb_to_linear(np.array(max(top, 1e-3))))
    lin_target = float(srgb_to_linear(np.array(highlight / 255.0)))
    return math.log2(lin_target / lin_top)


def camera(scene: Image.Image, blur_sigma: float = 0.0, ev: float = 0.0, noise: float = 2.0,
           seed: int = 0, quality: int = 92, optics_sigma: float = 0.7,
           highlight: float = 235.0) -> bytes:
    """Photograph a rendered scene: lens blur (the camera's own *optics_sigma* combined with
    a defocus of *blur_sigma* px), exposure (auto exposure putting highlights at *highlight*,
    then shifted by *ev* stops, clipped), sensor noise (added after the blur, as in a real
    out-of-focus photograph), then JPEG. Returns the file bytes."""
    auto = auto_exposure_ev(scene, highlight)
    img = gaussian_blur(scene, math.hypot(optics_sigma, blur_sigma))
    if auto + ev:
        img = exposure(img, auto + ev)
    img = add_noise(img, noise, seed)
    return jpeg_bytes(img, quality)


# --------------------------------------------------------------------------------------------
# The shared real photographs


@dataclass(frozen=True)
class Photo:
    file: str            # relative to MEDIA_DIR
    width: int
    height: int
    kind: str            # manifest kind: gps, plain, hostile
    decodes: bool

    @property
    def path(self) -> Path:
        return MEDIA_DIR / self.file

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6


def media_photos() -> list[Photo]:
    """The photographs listed in the shared manifest; empty when the folder is absent."""
    manifest = MEDIA_DIR / "manifest.json"
    if not manifest.is_file():
        return []
    rows = json.loads(manifest.read_text())
    return [Photo(r["file"], r["width"] or 0, r["height"] or 0, r["kind"], bool(r["decodes"]))
            for r in rows]


@dataclass(frozen=True)
class Material:
    """One test original: a real photograph, or a crop of one standing in for another photo.

    A crop is "another photo from the same camera": its variants are made on the source photo
    (blur sizes scaled by the source's long side) and then cropped and resized exactly like the
    original crop, so a blurred crop is a crop of a blurred photograph. A crop resized by
    ``scale`` stands for a camera with that many fewer pixels; its blur shrinks with it.
    """

    name: str
    source: Image.Image
    box: tuple[int, int, int, int]
    scale: float = 1.0

    @property
    def source_long_side(self) -> int:
        """Long side of the source photo: variants are made on its pixels."""
        return max(self.source.size)

    @property
    def frame_long_side(self) -> float:
        """Long side of the frame this material stands for, in its own (resized) pixels."""
        return max(self.source.size) * self.scale

    def _finish(self, region: Image.Image) -> Image.Image:
        if self.scale == 1.0:
            return region
        w, h = region.size
        return region.resize((round(w * self.scale), round(h * self.scale)), Image.LANCZOS)

    def original(self) -> Image.Image:
        return self._finish(self.source.crop(self.box))

    def variant(self, degrade: Callable[[Image.Image], Image.Image], margin: int) -> Image.Image:
        """Apply *degrade* (working in source pixels) to the box plus *margin*, then crop."""
        x0, y0, x1, y1 = self.box
        W, H = self.source.size
        mx0, my0 = max(0, x0 - margin), max(0, y0 - margin)
        mx1, my1 = min(W, x1 + margin), min(H, y1 + margin)
        region = degrade(self.source.crop((mx0, my0, mx1, my1)))
        return self._finish(region.crop((x0 - mx0, y0 - my0, x1 - mx0, y1 - my0)))


def _load_rgb(path: Path) -> Image.Image:
    with Image.open(path) as im:
        im.load()
        return im.convert("RGB")


#: Crops of the >= 2 MP photographs: (photo stem, name, box as fractions, scale), chosen by
#: content: the moon (detail on black), flowers, foliage and stems, the bright wall and water,
#: and scaled-down frames (a 2 MP / 4 MP camera of the same scene).
CROPS: tuple[tuple[str, str, tuple[float, float, float, float], float], ...] = (
    ("plain02", "moon_native", (0.30, 0.22, 0.70, 0.78), 1.0),
    ("plain02", "moon_half", (0.15, 0.05, 0.85, 0.95), 0.5),
    ("gps02", "flowers_native", (0.25, 0.05, 0.75, 0.55), 1.0),
    ("gps02", "foliage_native", (0.45, 0.50, 0.95, 1.00), 1.0),
    ("gps02", "wall_water_native", (0.00, 0.40, 0.50, 0.90), 1.0),
    ("gps02", "stems_native", (0.30, 0.45, 0.80, 0.95), 1.0),
    ("gps02", "whole_2mp", (0.0, 0.0, 1.0, 1.0), 0.5),
    ("gps02", "flowers_0.7", (0.10, 0.00, 0.90, 0.70), 0.7),
)


def real_photos(min_megapixels: float = 2.0) -> list[Photo]:
    """The decodable non-hostile photographs of at least *min_megapixels* present on disk."""
    return [p for p in media_photos()
            if p.decodes and p.kind != "hostile" and p.megapixels >= min_megapixels
            and p.path.is_file()]


def real_material(include_crops: bool = True) -> list[Material]:
    """Each >= 2 MP photograph, whole, and (optionally) its content crops."""
    out: list[Material] = []
    for p in real_photos():
        img = _load_rgb(p.path)
        stem = Path(p.file).stem.split("_")[0]
        out.append(Material(stem, img, (0, 0, *img.size)))
        if include_crops:
            w, h = img.size
            for src, name, (a, b, c, d), scale in CROPS:
                if src == stem:
                    box = (round(a * w), round(b * h), round(c * w), round(d * h))
                    out.append(Material(f"{stem}:{name}", img, box, scale))
    return out
