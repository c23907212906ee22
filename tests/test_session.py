"""core.session driven in-process, step by step, as the kiosk drives it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.config import Config
from core.consent import grant
from core.errors import BadInput
from core.patient_id import parse_patient_id
from core.session import IngestSession, State
from core.session.model import review_counts_line
from tests.helpers.cards import small_card


def consent(cfg: Config, scopes: tuple[str, ...] = ("record",)):  # type: ignore[no-untyped-def]
    return grant(scopes=scopes, method="written", obtained_by_name="R. Nurse",
                 obtained_by_role="Registered nurse", body_areas=["left hand"],
                 statement=cfg.consent.statement)


@pytest.fixture
def card(tmp_path: Path) -> Path:
    small_card(tmp_path / "card", sharp=2, blurred=1)
    return tmp_path / "card"


def test_steps_in_order_with_operator_override(vault, cfg: Config, card: Path) -> None:  # type: ignore[no-untyped-def]
    s = IngestSession(vault, cfg, card, "nurse1")
    with pytest.raises(BadInput, match="step"):
        s.record_consent(consent(cfg))  # not assessed yet
    s.scan()
    progress = []
    s.assess(progress.append)
    assert progress[-1].done == progress[-1].total == 3
    flagged = [it for it in s.items if it.flags]
    assert [it.index for it in flagged] == [2] and flagged[0].flags[0].reason == "blurred"
    assert review_counts_line(s.items) == "kept 2 · discard 1 (1 blurred)"
    s.record_consent(consent(cfg))
    s.identify(parse_patient_id("ZAC5361", "nhi", allow_test_ids=True))
    s.set_decision(2, "keep")  # the operator decides: keep the blurred one
    s.set_decision(0, "discard")  # and discard a sharp one
    assert review_counts_line(s.items) == "kept 2 · discard 1 (1 by operator)"
    s.finish_review(["psoriasis"])
    s.archive()
    assert s.state == State.ARCHIVED
    outcome = s.wipe()
    assert len(outcome.wiped) == 3
    note = s.summary().note()
    assert note.startswith("3 images taken; 2 retained; 1 deleted (1 by operator)")
    record = vault.catalog.get_session(s.id)
    assert record["discarded"] == {"operator": 1} and record["retained"] == 2
    assert record["wipe"]["files"] == 3 and record["state"] == "done"
    assert "ZAC5361" not in json.dumps(record)


def test_file_changed_between_scan_and_wipe_is_not_wiped_and_is_reported(
        vault, cfg: Config, card: Path) -> None:  # type: ignore[no-untyped-def]
    s = IngestSession(vault, cfg, card, "nurse1")
    s.scan()
    s.assess()
    s.record_consent(consent(cfg))
    s.identify(parse_patient_id("ZAC5361", "nhi", allow_test_ids=True))
    s.finish_review()
    s.archive()
    discarded = next(it for it in s.items if it.decision == "discard")
    path = card.joinpath(*discarded.item.primary.parts)
    path.write_bytes(path.read_bytes() + b"edited by someone")
    outcome = s.wipe()
    assert len(outcome.wiped) == 2
    assert [p for p, _ in outcome.not_wiped] == [discarded.item.primary.parts]
    assert path.exists()
    summary = s.summary()
    assert summary.wipe is not None and summary.wipe.not_wiped
    assert vault.catalog.get_session(s.id)["wipe"]["not_wiped"] == 1


def test_unreadable_image_stays_on_card_and_cannot_be_kept(vault, cfg: Config,  # type: ignore[no-untyped-def]
                                                          card: Path) -> None:
    bad = card / "DCIM" / "100TEST" / "IMG_0009.JPG"
    bad.write_bytes((card / "DCIM" / "100TEST" / "IMG_0001.JPG").read_bytes()[:5000])
    s = IngestSession(vault, cfg, card, "nurse1")
    s.scan()
    s.assess()
    unreadable = [it for it in s.items if it.unreadable]
    assert len(unreadable) == 1 and "truncated" in (unreadable[0].unreadable_reason or "")
    with pytest.raises(BadInput, match="unreadable"):
        s.set_decision(unreadable[0].index, "keep")
    s.record_consent(consent(cfg))
    s.identify(parse_patient_id("ZAC5361", "nhi", allow_test_ids=True))
    s.finish_review()
    s.archive()
    s.wipe()
    assert bad.exists()
    assert "1 unreadable left on the card" in s.summary().note()
