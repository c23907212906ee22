"""Quality assessment throughput on 12 MP JPEGs (issue 7 item 2: >= 25 images/s on 2 cores).

Why a ratio against a plain Pillow decode: images/s depends on the machine; the time for
``Image.open(f).load()`` of the same files, single-threaded in this process, is the floor any
Pillow-based assessment pays per image, so "pool images/s / plain decode images/s" (and that
per core) shows what the sandboxed workers and the analysis add or save. Three pool rows:

* ``analyse_image`` as shipped: safe open, metadata, ``core.quality.measure()`` when it exists
  (without it only a reduced-size JPEG decode plus thumbnail, so the figure flatters: it says so),
  thumbnail;
* a stand-in for a ``measure()`` that needs native resolution: full-size decode + thumbnail in
  the same workers, i.e. the floor for the shipped row once quality is wired;
* the shipped row again including worker start-up (a session's first files pay it).

The files (default 60, 4000x3000, textured noise + gradients + shapes, quality 90, 3-6 MB)
are generated in a temp folder and read from the page cache by every row alike.

    .venv/bin/python bench/quality_throughput.py [--count 60] [--workers 0] [--keep DIR]

``run()`` returns the rows for bench/run_all.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.imaging.decode import (
    ALLOWED_FORMATS,
    DecodeLimits,
    ImageAnalysis,
    make_thumbnail,
    prepare_decoders,
)
from core.imaging.pool import DecodePool
from core.media.safe_open import FileIdentity, card_file

TARGET_IMAGES_PER_S = 25.0
SIZE = (4000, 3000)
LIMITS = DecodeLimits(max_pixels=200_000_000, timeout_s=30.0, memory_mb=1024)


@dataclass
class Row:
    name: str
    images_per_s: float
    vs_plain: float  # images/s divided by the single-threaded plain decode's images/s
    vs_plain_per_core: float  # the same, divided by the number of workers
    target: float | None
    cores_used: float | None = None  # worker CPU seconds / wall seconds: < workers = starved

    @property
    def passed(self) -> bool | None:
        return None if self.target is None else self.images_per_s >= self.target


# -- material --------------------------------------------------------------------------------


class Generator:
    """Photo-like 12 MP frames: lighting gradient, mid-frequency texture, shapes, sensor grain.

    The texture and grain fields are drawn once at a larger size and cropped at a different
    offset per frame, so 60 distinct frames cost seconds, not a minute.
    """

    def __init__(self, seed: int = 12) -> None:
        self.rng = np.random.default_rng(seed)
        w, h = SIZE
        small = self.rng.integers(0, 256, ((h + 400) // 8, (w + 400) // 8, 3), dtype=np.uint8)
        texture = Image.fromarray(small).resize((w + 400, h + 400), Image.Resampling.BICUBIC)
        self.texture = (np.asarray(texture, dtype=np.float32) - 128.0) * 0.6
        self.grain = self.rng.integers(-12, 13, (h + 400, w + 400, 3), dtype=np.int8)
        self.gx = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :, None]
        self.gy = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]

    def frame(self) -> Image.Image:
        rng, (w, h) = self.rng, SIZE
        light = (rng.uniform(70, 180, 3) + rng.uniform(-50, 50, 3) * self.gx
                 + rng.uniform(-50, 50, 3) * self.gy).astype(np.float32)
        ty, tx = rng.integers(0, 400, 2)
        img = Image.fromarray(np.clip(light + self.texture[ty:ty + h, tx:tx + w], 0, 255)
                              .astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(30):
            x, y, s = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(60, 900))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            box = (x, y, x + s, y + int(s * rng.uniform(0.4, 1.5)))
            match int(rng.integers(0, 3)):
                case 0:
                    draw.ellipse(box, fill=colour)
                case 1:
                    draw.rectangle(box, fill=colour)
                case _:
                    draw.line((x, y, x + s, y + s // 2), fill=colour,
                              width=int(rng.integers(2, 30)))
        gy, gx = rng.integers(0, 400, 2)
        noisy = np.asarray(img, dtype=np.int16) + self.grain[gy:gy + h, gx:gx + w]
        return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def make_files(folder: Path, count: int) -> list[str]:
    names = [f"IMG_{i:04d}.JPG" for i in range(count)]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        generator = Generator()
        for name in names:  # the same sequence every time, so kept files are reused as-is
            img = generator.frame()
            if name in missing:
                buf = io.BytesIO()
                img.save(buf, "JPEG", quality=90)
                (folder / name).write_bytes(buf.getvalue())
    return names


# -- the rows --------------------------------------------------------------------------------


def full_decode_task(root: str, parts: tuple[str, ...], identity: FileIdentity | None,
                     limits: DecodeLimits) -> ImageAnalysis:
    """Stand-in for analyse_image with a measure() that decodes at native resolution."""
    started = time.perf_counter()
    prepare_decoders()
    Image.MAX_IMAGE_PIXELS = limits.max_pixels
    with (card_file(root, parts, expect=identity) as fh,
          Image.open(fh, formats=ALLOWED_FORMATS) as img):
        img.load()
        thumb = make_thumbnail(img)
        width, height = img.size
    return ImageAnalysis(parts, ok=True, format="JPEG", width=width, height=height,
                         thumbnail_jpeg=thumb,
                         decode_ms=round((time.perf_counter() - started) * 1000, 1))


def plain_decode(folder: Path, names: list[str]) -> float:
    """Seconds for Image.open(f).load() of every file, one after the other, in this process."""
    started = time.perf_counter()
    for name in names:
        with Image.open(folder / name) as img:
            img.load()
    return time.perf_counter() - started


def pool_run(pool: DecodePool, folder: Path, names: list[str]) -> tuple[float, float]:
    """(wall seconds, worker CPU seconds) for analysing every file once."""
    items = [((n,), FileIdentity.from_stat(os.stat(folder / n))) for n in names]
    cpu_before = _cpu_seconds(pool.worker_pids())
    started = time.perf_counter()
    results = list(pool.analyse(folder, items))
    elapsed = time.perf_counter() - started
    cpu = _cpu_seconds(pool.worker_pids()) - cpu_before
    bad = [r for r in results if not r.ok]
    if len(results) != len(names) or bad:
        raise SystemExit(f"pool run failed: {len(results)} results, first failure {bad[:1]}")
    return elapsed, cpu


def _cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def run(count: int = 60, workers: int = 0, keep: Path | None = None) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="clinivault-bench-") as tmp:
        folder = keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        names = make_files(folder, count)
        sizes = [(folder / n).stat().st_size / 1e6 for n in names]
        print(f"{count} JPEGs {SIZE[0]}x{SIZE[1]} q90, {min(sizes):.1f}-{max(sizes):.1f} MB "
              f"(mean {sum(sizes) / len(sizes):.1f} MB) in {folder}")
        plain_decode(folder, names[:3])  # warm the page cache and Pillow
        plain = count / plain_decode(folder, names)

        with DecodePool(LIMITS, workers=workers) as pool:  # cold: pays for worker start-up
            size = pool.size
            started = time.perf_counter()
            list(pool.analyse(folder, [((n,), None) for n in names]))
            cold = count / (time.perf_counter() - started)
        with DecodePool(LIMITS, workers=workers) as pool:
            pool_run(pool, folder, names[: size * 2])  # start and warm every worker
            warm = pool_run(pool, folder, names)
        with DecodePool(LIMITS, workers=workers, task=full_decode_task) as pool:
            pool_run(pool, folder, names[: size * 2])
            full = pool_run(pool, folder, names)
        return [Row("plain Image.open().load(), 1 thread", plain, 1.0, 1.0, None, 1.0),
                _row("pool: analyse_image (warm workers)", warm, count, plain, size,
                     TARGET_IMAGES_PER_S),
                _row("pool: full-size decode + thumbnail (measure stand-in)", full, count,
                     plain, size, None),
                Row("pool: analyse_image incl. worker start", cold, cold / plain,
                    cold / plain / size, None)]


def _row(name: str, run: tuple[float, float], count: int, plain: float, workers: int,
         target: float | None) -> Row:
    elapsed, cpu = run
    rate = count / elapsed
    return Row(name, rate, rate / plain, rate / plain / workers, target, cpu / elapsed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=60)
    parser.add_argument("--workers", type=int, default=0, help="0 = one per core")
    parser.add_argument("--keep", type=Path, help="generate into (and reuse) this folder")
    args = parser.parse_args()
    quality = importlib.util.find_spec("core.quality") is not None
    workers = args.workers or len(os.sched_getaffinity(0))
    load = os.getloadavg()
    print(f"workers: {workers}; core.quality.measure(): "
          + ("present" if quality else "ABSENT - analyse_image = reduced decode + thumbnail only"))
    rows = run(args.count, args.workers, args.keep)
    print(f"\n{'row':56} {'img/s':>6} {'x plain':>8} {'x plain/core':>13} {'cores':>6}  target")
    for row in rows:
        verdict = "" if row.passed is None else (
            f">= {row.target:g}: {'PASS' if row.passed else 'FAIL'}")
        cores = "" if row.cores_used is None else f"{row.cores_used:.2f}"
        print(f"{row.name:56} {row.images_per_s:6.1f} {row.vs_plain:8.2f} "
              f"{row.vs_plain_per_core:13.2f} {cores:>6}  {verdict}")
    print(f"\n'cores' = CPU the workers got / wall time (of {workers}); load average before: "
          f"{load[0]:.2f}. Below {workers} means other processes took CPU during the run.")
    if not quality:
        print("\nnote: without core.quality the first pool row measures decode + thumbnail only; "
              "the measure stand-in row is the floor once quality is wired.")


if __name__ == "__main__":
    main()
