"""core.quality on generated material: the issue-3 targets, and the API's edges.

Why generated scenes: their labels are exact (we made the blur and the exposure), and they
reach content the shared photographs lack (thin lines, smooth skin, a subject on black).
Blur is applied as a lens would, before sensor noise and JPEG, which is harder than blurring
a finished photograph (noise stays sharp). Real photographs: tests/test_quality_real_photos.py.
"""

from __future__ import annotations

import io
import json
import pickle
from dataclasses import asdict, replace
from datetime import datetime, timedelta

import numpy as np
import pytest
import quality_scenes as qs
from PIL import Image

from core.config import load_config
from core.errors import ConfigError
from core.quality import (
    REASONS,
    TYPICAL_SHARP_BLUR,
    BurstCandidate,
    Flag,
    QualityMetrics,
    QualityThresholds,
    assess,
    explain,
    find_duplicates,
    hamming,
    measure,
    weaker_detail_factor,
)

T = QualityThresholds()


def reasons(m: QualityMetrics) -> set[str]:
    return {f.reason for f in assess(m, T)}


def shoot(scene: Image.Image, sigma_12mp: float = 0.0, ev: float = 0.0, seed: int = 0
          ) -> QualityMetrics:
    return measure(qs.open_jpeg(qs.camera(scene, qs.scaled(sigma_12mp, max(scene.size)),
                                          ev=ev, seed=seed)))


# --------------------------------------------------------------------------------------------
# Issue 3: labelled generated scenes

#: Sizes and how many seeds per scene kind. 12 MP is the size the targets are written for;
#: smaller frames get proportionally smaller blur (sigma x long side / 4000), which is harder.
SIZES = [((4000, 3000), (1,)), ((3200, 2400), (2,)), ((2400, 1800), (3,))]
SIGMAS = (2, 3, 4, 6)


@pytest.fixture(scope="module")
def generated() -> dict[str, list[tuple[str, QualityMetrics]]]:
    """label -> [(scene name, metrics)] for sharp, blurred, motion-blurred and exposure-shifted
    shots of every scene kind at every size."""
    out: dict[str, list[tuple[str, QualityMetrics]]] = {}

    def add(label: str, name: str, m: QualityMetrics) -> None:
        out.setdefault(label, []).append((name, m))

    for size, seeds in SIZES:
        for kind in qs.SCENE_KINDS:
            for seed in seeds:
                scene = qs.render_scene(kind, size, seed)
                name = f"{kind}{seed}@{size[0]}"
                add("sharp", name, shoot(scene, seed=seed))
                sigmas = SIGMAS if size[0] < 4000 else (2, 4)
                for sigma in sigmas:
                    add("blurred", f"{name}/sigma{sigma}", shoot(scene, sigma, seed=seed))
                moved = qs.motion_blur(qs.gaussian_blur(scene, 0.7), qs.scaled(15, size[0]),
                                       37.0 * seed)
                add("motion", name, measure(qs.open_jpeg(
                    qs.camera(moved, 0.0, seed=seed, optics_sigma=0.0))))
                if size[0] < 4000:
                    add("ev-2.5", name, shoot(scene, ev=-2.5, seed=seed))
                    add("ev+2", name, shoot(scene, ev=2.0, seed=seed))
    return out


def _rate(rows: list[tuple[str, QualityMetrics]], reason: str) -> tuple[float, list[str]]:
    hits = [name for name, m in rows if reason in reasons(m)]
    misses = [name for name, m in rows if reason not in reasons(m)]
    return len(hits) / len(rows), misses


@pytest.mark.slow
def test_blurred_scenes_are_flagged(generated: dict) -> None:
    rate, misses = _rate(generated["blurred"], "blurred")
    assert len(generated["blurred"]) >= 48
    assert rate >= 0.95, f"blurred flagged {rate:.0%}; missed {misses}"


@pytest.mark.slow
def test_motion_blurred_scenes_are_flagged(generated: dict) -> None:
    rate, misses = _rate(generated["motion"], "blurred")
    assert rate >= 0.95, f"motion blur flagged {rate:.0%}; missed {misses}"


@pytest.mark.slow
def test_sharp_well_exposed_scenes_are_not_flagged(generated: dict) -> None:
    flagged = [(name, sorted(reasons(m))) for name, m in generated["sharp"] if reasons(m)]
    assert len(flagged) / len(generated["sharp"]) <= 0.05, flagged


@pytest.mark.slow
def test_exposure_shifts_are_flagged(generated: dict) -> None:
    dark, missed_dark = _rate(generated["ev-2.5"], "dark")
    bright, missed_bright = _rate(generated["ev+2"], "bright")
    assert dark >= 0.95, missed_dark
    assert bright >= 0.95, missed_bright
    # and the other way round never
    assert not any("bright" in reasons(m) for _, m in generated["ev-2.5"])
    assert not any("dark" in reasons(m) for _, m in generated["ev+2"])


@pytest.mark.slow
def test_every_blur_reads_blurrier_than_the_sharp_shot(generated: dict) -> None:
    sharp = dict(generated["sharp"])
    for name, m in generated["blurred"]:
        scene = name.partition("/sigma")[0]
        assert m.sharpness > sharp[scene].sharpness + 0.03, name


def test_shallow_focus_is_not_blurred() -> None:
    """A sharp subject on 10% of the frame, the rest heavily out of focus: the in-focus
    region is what matters, so this is a sharp photograph."""
    for kind, seed in (("texture", 5), ("mixed", 6), ("lines", 7)):
        scene = qs.render_scene(kind, (2400, 1800), seed)
        dof = qs.shallow_focus(scene, 0.10, qs.scaled(8, 2400), seed)
        m = measure(qs.open_jpeg(qs.camera(dof, 0.0, seed=seed)))
        assert "blurred" not in reasons(m), (kind, m.sharpness)


def test_subject_on_black_drape_is_neither_dark_nor_blurred() -> None:
    scene = qs.render_scene("dark_subject", (3000, 2000), 9)
    m = shoot(scene, seed=9)
    assert m.mean_luma < 60 and m.shadow_level < 20      # most of the frame is black...
    assert reasons(m) == set()                             # ...but the subject is fine


def test_camera_shake_is_told_apart_from_defocus() -> None:
    scene = qs.render_scene("shapes", (2400, 1800), 3)
    shaken = qs.motion_blur(qs.gaussian_blur(scene, 0.7), qs.scaled(20, 2400), 0)
    m_shake = measure(qs.open_jpeg(qs.camera(shaken, 0.0, seed=3, optics_sigma=0.0)))
    m_focus = shoot(scene, 4, seed=3)
    assert m_shake.shake > m_focus.shake
    (f_shake,) = [f for f in assess(m_shake, T) if f.reason == "blurred"]
    (f_focus,) = [f for f in assess(m_focus, T) if f.reason == "blurred"]
    assert "camera shake" in f_shake.message
    assert "out of focus" in f_focus.message


# --------------------------------------------------------------------------------------------
# measure(): inputs of every shape and mode


def _scene_small(size: tuple[int, int] = (800, 600)) -> Image.Image:
    return qs.render_scene("mixed", size, 21)


@pytest.mark.parametrize("size", [(1, 1), (200, 1), (1, 200), (7, 9), (33, 17), (100, 67),
                                  (640, 480)])
def test_tiny_and_thin_images_are_measured_and_low_resolution(size: tuple[int, int]) -> None:
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (size[1], size[0], 3),
                                                            dtype=np.uint8))
    m = measure(qs.open_jpeg(qs.jpeg_bytes(img)))
    assert (m.width, m.height) == size
    assert "low_resolution" in reasons(m)
    assert 0.0 <= m.sharpness <= 1.0 and 0.0 <= m.detail <= 1.0
    assert 0 <= m.phash < 2**64


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "LA", "1", "I;16", "I", "F"])
def test_every_pixel_mode_gives_the_same_picture(mode: str) -> None:
    base = _scene_small().convert("RGB")
    ref = measure(base.copy())
    if mode == "I;16":
        img = Image.fromarray(np.asarray(base.convert("L"), np.uint16) * 257)
    elif mode == "I":
        img = Image.fromarray(np.asarray(base.convert("L"), np.int32) * 257)
    elif mode == "F":
        img = Image.fromarray(np.asarray(base.convert("L"), np.float32) / 255.0)
    else:
        img = base.convert(mode)
    assert img.mode == mode
    m = measure(img)
    assert (m.width, m.height) == base.size
    if mode in ("1", "CMYK"):       # dithered / naive conversions: only sane, not equal
        assert 0 <= m.mean_luma <= 255
        return
    assert abs(m.mean_luma - ref.mean_luma) < 3, (mode, m.mean_luma, ref.mean_luma)
    assert hamming(m.phash, ref.phash) <= 4


def test_png_and_jpeg_of_one_picture_agree() -> None:
    scene = qs.render_scene("shapes", (2400, 1800), 4)
    jpeg = qs.open_jpeg(qs.camera(scene, 0.0, seed=4))
    rgb = jpeg.convert("RGB")
    buf = io.BytesIO()
    rgb.save(buf, "PNG", compress_level=1)
    m_jpeg = measure(qs.open_jpeg(qs.camera(scene, 0.0, seed=4)))
    m_png = measure(Image.open(io.BytesIO(buf.getvalue())))
    assert abs(m_jpeg.sharpness - m_png.sharpness) < 0.02
    assert abs(m_jpeg.mean_luma - m_png.mean_luma) < 2
    assert hamming(m_jpeg.phash, m_png.phash) <= 4


def test_measure_leaves_a_jpeg_loaded_small_and_in_colour_for_the_thumbnail() -> None:
    scene = qs.render_scene("mixed", (4000, 3000), 21)
    img = qs.open_jpeg(qs.camera(scene, 0.0))
    m = measure(img)
    assert (m.width, m.height) == (4000, 3000)       # the stored size, not the reduced one
    assert img.mode == "RGB" and img.size == (500, 375)  # the 1/8 colour decode, loaded
    img.load()                                          # no second decode needed
    img.thumbnail((320, 320))
    assert img.mode == "RGB" and img.size == (320, 240)


def test_featureless_image_is_not_judged_blurred() -> None:
    flat = Image.new("RGB", (2400, 1800), (170, 180, 175))
    m = measure(qs.open_jpeg(qs.jpeg_bytes(flat)))
    assert m.detail == 0.0
    assert reasons(m) == set()


def test_truncated_jpeg_raises_for_the_caller_to_report_unreadable() -> None:
    data = qs.camera(_scene_small(), 0.0)
    with pytest.raises(OSError):
        measure(qs.open_jpeg(data[: len(data) // 2]))


def test_metrics_pickle_and_json() -> None:
    m = measure(qs.open_jpeg(qs.camera(_scene_small(), 0.0)))
    assert pickle.loads(pickle.dumps(m)) == m
    d = json.loads(json.dumps(asdict(m)))
    assert QualityMetrics(**d) == m


# --------------------------------------------------------------------------------------------
# assess(), explain(), thresholds


def _metrics(**kw: float) -> QualityMetrics:
    base = dict(width=4000, height=3000, sharpness=0.5, detail=0.8, shake=0.02, mean_luma=110.0,
                shadow_level=8.0, highlight_level=230.0, shadows_clipped=0.0,
                highlights_clipped=0.01, lit_clipped=0.01, phash=0)
    base.update(kw)
    return QualityMetrics(**base)  # type: ignore[arg-type]


def test_assess_boundaries() -> None:
    assert assess(_metrics(), T) == []
    assert reasons(_metrics(sharpness=T.blur_effect_max)) == set()
    assert reasons(_metrics(sharpness=T.blur_effect_max + 0.001)) == {"blurred"}
    assert reasons(_metrics(sharpness=0.95, detail=0.0)) == set()  # nothing to judge focus on
    assert reasons(_metrics(highlight_level=T.dark_highlight_max)) == set()
    assert reasons(_metrics(highlight_level=T.dark_highlight_max - 1)) == {"dark"}
    assert reasons(_metrics(lit_clipped=T.bright_lit_clipped_share)) == set()
    assert reasons(_metrics(lit_clipped=T.bright_lit_clipped_share + 0.01)) == {"bright"}
    assert reasons(_metrics(width=1599, height=1200)) == {"low_resolution"}
    assert reasons(_metrics(width=1200, height=1600)) == set()


def test_flags_carry_reason_metric_and_plain_words() -> None:
    flags = assess(_metrics(sharpness=0.85, highlight_level=90, width=800, height=600), T)
    assert [f.reason for f in flags] == ["blurred", "dark", "low_resolution"]
    blurred, dark, low = flags
    assert blurred == Flag("blurred", blurred.message, 0.85)
    assert "2.7x weaker" in blurred.message          # (1 - 0.60) / (1 - 0.85)
    assert dark.metric == 90 and "90 of 255" in dark.message
    assert low.metric == 800 and "800 x 600" in low.message


def test_weaker_detail_factor() -> None:
    assert weaker_detail_factor(TYPICAL_SHARP_BLUR) == pytest.approx(1.0)
    assert weaker_detail_factor(0.85) == pytest.approx(0.4 / 0.15)
    assert weaker_detail_factor(1.0) > 100


def test_explain_every_reason() -> None:
    texts = {r: explain(r) for r in REASONS}
    assert len(set(texts.values())) == len(REASONS)
    assert all(len(t) > 40 and t.endswith(".") for t in texts.values())
    with pytest.raises(ValueError):
        explain("fuzzy")


def test_reasons_are_exactly_the_issue_vocabulary() -> None:
    assert REASONS == ("blurred", "dark", "bright", "low_resolution", "duplicate", "unreadable")


def test_thresholds_from_config_section() -> None:
    t = QualityThresholds.from_config({"min_long_side": 2000, "blur_effect_max": 1,
                                       "obsolete_key": 5})
    assert t.min_long_side == 2000 and t.blur_effect_max == 1.0
    assert isinstance(t.blur_effect_max, float)
    assert t.dark_highlight_max == QualityThresholds().dark_highlight_max
    with pytest.raises(ConfigError):
        QualityThresholds.from_config({"blur_effect_max": "sharp"})


def test_shipped_config_matches_measured_defaults() -> None:
    """config/default.toml [quality] must hold the thresholds docs/QUALITY.md measured."""
    section = load_config(use_env=False).quality
    assert QualityThresholds.from_config(section) == QualityThresholds()
    for key in ("dark_highlight_max", "bright_lit_clipped_share"):
        assert key in section, f"[quality] {key} missing from config/default.toml"


# --------------------------------------------------------------------------------------------
# Duplicates


def _cand(key: str, phash: int, sharpness: float, t: datetime | None) -> BurstCandidate:
    return BurstCandidate(key, t, _metrics(phash=phash, sharpness=sharpness))


T0 = datetime(2024, 5, 1, 9, 0, 0)


def test_burst_keeps_the_sharpest_and_maps_the_rest_to_it() -> None:
    items = [_cand("a", 0b1011, 0.60, T0), _cand("b", 0b1001, 0.50, T0 + timedelta(seconds=1)),
             _cand("c", 0b0011, 0.70, T0 + timedelta(seconds=2)),
             _cand("lone", 2**64 - 1, 0.2, T0 + timedelta(seconds=3))]
    assert find_duplicates(items, T) == {"a": "b", "c": "b"}


def test_time_window_splits_bursts_and_unknown_times_rely_on_the_hash() -> None:
    late = T0 + timedelta(seconds=T.duplicate_window_s + 1)
    assert find_duplicates([_cand("a", 5, 0.5, T0), _cand("b", 5, 0.6, late)], T) == {}
    assert find_duplicates([_cand("a", 5, 0.5, T0), _cand("b", 5, 0.6, None)], T) == {"b": "a"}
    assert find_duplicates([_cand("a", 5, 0.5, None), _cand("b", 5, 0.4, None)], T) == {"a": "b"}


def test_hash_distance_limit_is_inclusive() -> None:
    d = T.duplicate_max_distance
    near, far = (1 << d) - 1, (1 << (d + 1)) - 1
    assert find_duplicates([_cand("a", 0, 0.5, None), _cand("b", near, 0.6, None)], T) == {
        "b": "a"}
    assert find_duplicates([_cand("a", 0, 0.5, None), _cand("b", far, 0.6, None)], T) == {}


def test_bursts_chain_and_ties_are_deterministic() -> None:
    # a~b and b~c but a and c differ by more than the limit: still one burst (connected)
    d = T.duplicate_max_distance
    a, b, c = 0, (1 << d) - 1, ((1 << d) - 1) << d
    items = [_cand("x2", a, 0.5, None), _cand("x1", b, 0.5, None), _cand("x3", c, 0.5, None)]
    assert find_duplicates(items, T) == {"x2": "x1", "x3": "x1"}
    assert find_duplicates(list(reversed(items)), T) == {"x2": "x1", "x3": "x1"}


def test_real_burst_of_generated_scene_keeps_a_sharp_shot() -> None:
    scene = qs.render_scene("texture", (2400, 1800), 8)
    first = qs.open_jpeg(qs.camera(scene, 0.0, seed=8)).convert("RGB")
    shots = qs.burst(first, seed=8)
    cands = [BurstCandidate(s.name, T0 + timedelta(seconds=i),
                            measure(qs.open_jpeg(qs.jpeg_bytes(s.image))))
             for i, s in enumerate(shots)]
    dup = find_duplicates(cands, T)
    assert len(dup) == 2 and len(set(dup.values())) == 1
    assert set(dup.values()) != {"burst2"}   # the slightly blurred shot is never kept
    other = measure(qs.open_jpeg(qs.camera(qs.render_scene("texture", (2400, 1800), 9), 0.0)))
    assert hamming(other.phash, cands[0].metrics.phash) > T.duplicate_max_distance


def test_metrics_replace_keeps_frozen_contract() -> None:
    m = _metrics()
    with pytest.raises(AttributeError):
        m.sharpness = 0.1  # type: ignore[misc]
    assert replace(m, sharpness=0.1).sharpness == 0.1
