"""Scanner or person? Synthetic keystroke timings: people type 80-300 ms apart, a keyboard-wedge
scanner 5-20 ms apart, and anything mixed is not a scan."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.config import load_config
from core.scanner_wedge import MIN_SCAN_CHARS, WedgeDetector, WedgeResult

MAX_GAP = float(load_config(use_env=False).patient_id.scanner_max_gap_ms)


def play(text: str, gaps: Sequence[float], enter_gap: float, start: float = 1000.0,
         detector: WedgeDetector | None = None) -> WedgeResult:
    """Type *text* with *gaps* between consecutive keys, then Enter *enter_gap* ms later."""
    assert len(gaps) == max(len(text) - 1, 0)
    d = detector or WedgeDetector(MAX_GAP)
    t = start
    for i, key in enumerate(text):
        if i:
            t += gaps[i - 1]
        d.feed(key, t)
    return d.enter(t + enter_gap)


def test_shipped_gap_separates_scanners_from_people() -> None:
    assert 20 < MAX_GAP < 80


def test_scanner_burst_is_a_scan() -> None:
    r = play("9434765870", [8, 12, 5, 20, 9, 7, 15, 11, 6], enter_gap=10)
    assert r == WedgeResult("9434765870", scanned=True)


def test_person_typing_is_not_a_scan() -> None:
    r = play("9434765870", [180, 95, 240, 130, 300, 80, 150, 210, 120], enter_gap=250)
    assert r == WedgeResult("9434765870", scanned=False)


@pytest.mark.parametrize(("gaps", "enter_gap"), [
    ([150, 10, 10, 10, 10, 10], 10),      # typed the first key, scanned the rest
    ([10, 10, 10, 10, 10, 150], 10),      # scanned, then typed one more key
    ([10, 10, 10, 200, 10, 10], 10),      # two bursts
    ([10, 10, 10, 10, 10, 10], 200),      # scanned, Enter pressed by hand
])
def test_a_mix_is_not_a_scan(gaps: list[float], enter_gap: float) -> None:
    assert play("ZAC5361", gaps, enter_gap).scanned is False


def test_too_few_characters_is_not_a_scan() -> None:
    assert play("ZAC", [5, 5], 5).scanned is False
    assert play("ZAC5", [5, 5, 5], 5).scanned is True
    assert MIN_SCAN_CHARS == 4


def test_gap_equal_to_the_limit_counts_and_just_over_does_not() -> None:
    assert play("ABCDEF", [MAX_GAP] * 5, MAX_GAP).scanned is True
    assert play("ABCDEF", [MAX_GAP] * 4 + [MAX_GAP + 0.5], MAX_GAP).scanned is False
    assert play("ABCDEF", [MAX_GAP] * 5, MAX_GAP + 0.5).scanned is False


def test_key_auto_repeat_is_not_a_scan() -> None:
    """Holding a key repeats it about every 33 ms, but only after a delay of ~250-600 ms."""
    assert play("11111111", [400] + [33] * 6, 30).scanned is False


def test_time_running_backwards_is_not_a_scan() -> None:
    assert play("ABCDEF", [5, 5, -3, 5, 5], 5).scanned is False


def test_empty_enter() -> None:
    assert WedgeDetector(MAX_GAP).enter(0) == WedgeResult("", scanned=False)


def test_reset_forgets_the_entry_so_far() -> None:
    d = WedgeDetector(MAX_GAP)
    for i, key in enumerate("943"):
        d.feed(key, 200.0 * i)           # typed slowly ...
    d.reset()                            # ... then cleared
    for i, key in enumerate("9434765870"):
        d.feed(key, 1000.0 + 7 * i)      # and scanned
    assert d.text == "9434765870"
    assert d.enter(1000.0 + 7 * 10) == WedgeResult("9434765870", scanned=True)


def test_reset_after_a_fast_start_then_slow_typing_is_not_a_scan() -> None:
    d = WedgeDetector(MAX_GAP)
    for i, key in enumerate("ZAC53"):
        d.feed(key, 7.0 * i)
    d.reset()                            # backspace
    for i, key in enumerate("ZAC5361"):
        d.feed(key, 1000.0 + 150 * i)
    assert d.enter(1000.0 + 150 * 7).scanned is False


def test_each_enter_starts_a_new_entry() -> None:
    d = WedgeDetector(MAX_GAP)
    assert play("9434765870", [150] * 9, 150, detector=d).scanned is False
    assert d.text == ""
    assert play("9434765870", [6] * 9, 6, start=5000, detector=d).scanned is True
    assert play("9434765870", [150] * 9, 150, start=9000, detector=d).scanned is False


@pytest.mark.parametrize("key", ["", "ab", "\x08", "\r", "\x1b"])
def test_feed_takes_one_printable_character(key: str) -> None:
    with pytest.raises(ValueError, match="one printable character"):
        WedgeDetector(MAX_GAP).feed(key, 0)


@pytest.mark.parametrize("gap", [0, -5, float("nan"), float("inf")])
def test_max_gap_must_be_positive_and_finite(gap: float) -> None:
    with pytest.raises(ValueError, match="max_gap_ms"):
        WedgeDetector(gap)


IDS = st.text(st.sampled_from("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"), min_size=MIN_SCAN_CHARS,
              max_size=20)
SCANNER_GAP = st.floats(5, 20)
HUMAN_GAP = st.floats(80, 300)


@given(data=st.data(), text=IDS, start=st.floats(0, 1e9))
def test_any_scanner_burst_is_a_scan(data: st.DataObject, text: str, start: float) -> None:
    gaps = data.draw(st.lists(SCANNER_GAP, min_size=len(text) - 1, max_size=len(text) - 1))
    r = play(text, gaps, data.draw(SCANNER_GAP), start=start)
    assert r == WedgeResult(text, scanned=True)


@given(data=st.data(), text=IDS)
def test_any_human_typing_is_not_a_scan(data: st.DataObject, text: str) -> None:
    gaps = data.draw(st.lists(HUMAN_GAP, min_size=len(text) - 1, max_size=len(text) - 1))
    assert play(text, gaps, data.draw(HUMAN_GAP)).scanned is False


@given(data=st.data(), text=IDS)
def test_one_human_pause_anywhere_spoils_a_scan(data: st.DataObject, text: str) -> None:
    gaps = data.draw(st.lists(SCANNER_GAP, min_size=len(text) - 1, max_size=len(text) - 1))
    enter_gap = data.draw(SCANNER_GAP)
    where = data.draw(st.integers(0, len(gaps)))  # len(gaps) means the gap before Enter
    pause = data.draw(HUMAN_GAP)
    if where == len(gaps):
        enter_gap = pause
    else:
        gaps[where] = pause
    assert play(text, gaps, enter_gap).scanned is False


@given(text=st.text(st.sampled_from("0123456789"), max_size=MIN_SCAN_CHARS - 1))
def test_short_entries_are_never_scans(text: str) -> None:
    assert play(text, [1.0] * max(len(text) - 1, 0), 1.0).scanned is False
