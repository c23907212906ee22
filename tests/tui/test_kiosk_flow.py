"""The kiosk driven like a nurse drives it: keys only, on a simulated card of real JPEGs, into a
real vault. Each test then checks what is on disk: the vault's objects, the catalog, the
audit log (verified with K0) and what is left on the card.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual.pilot import Pilot

from core import audit as auditlog
from core.check import check_vault
from core.session.model import count_discards, review_counts_line
from tests.helpers.cards import vault_bytes_contain
from tests.tui.conftest import (
    PATIENT,
    TEST_PASSPHRASE,
    Kiosk,
    give_consent,
    run,
    scan,
    settle,
    shown,
    sign_in,
    type_text,
)
from tui.screens.consent import ConsentScreen
from tui.screens.modals import ConfirmScreen
from tui.screens.patient_id import PatientIdScreen
from tui.screens.progress import WipingScreen
from tui.screens.review import ReviewScreen
from tui.screens.summary import SummaryScreen
from tui.screens.waiting import WaitingScreen


def card_images(card: Path) -> list[str]:
    return sorted(p.name for p in card.rglob("*") if p.is_file())


def test_whole_flow_archives_kept_images_and_wipes_the_card(kiosk: Kiosk) -> None:
    app = kiosk.app()
    seen: dict[str, object] = {}

    async def scenario(pilot: Pilot[Any]) -> None:
        assert shown(app) == "SignInScreen"
        await sign_in(pilot)
        assert shown(app) == "WaitingScreen"
        assert [m.label for m in app.media] == ["TEST card"]

        await pilot.press("enter")  # start with the highlighted card
        await settle(pilot)
        assert isinstance(app.screen, ConsentScreen)
        assert app.check_action("quit_kiosk", ()) is None  # no quitting mid-session

        await give_consent(pilot, typed=True)
        assert app.screen.record is not None, app.screen.problem
        await pilot.press("f10")
        await settle(pilot)
        assert isinstance(app.screen, PatientIdScreen)

        # A scanner's burst ending in Enter is a confirmed entry: no second typing.
        await scan(pilot, PATIENT)
        assert app.screen.scanned and app.screen.patient is not None
        await pilot.press("f10")
        await settle(pilot)
        review = app.screen
        assert isinstance(review, ReviewScreen)
        session = review.session
        seen["session"] = session
        items = session.items
        # The quality check's suggestions (the demo card has a blurred, a dark and a
        # duplicate image, and a truncated one that cannot be read).
        suggested = count_discards(items)
        assert "blurred" in suggested
        assert [it.display for it in items if it.unreadable] == ["DCIM/100DEMO/IMG_0010.JPG"]
        assert str(review.query_one("#counts").render()) == review_counts_line(items)

        # The nurse marks the first kept image as the consent-form photo and discards the
        # next kept one.
        first, second = [it.index for it in items if it.decision == "keep"][:2]
        kept_before = len(session.kept())
        await pilot.press("home", *["right"] * first, "c", *["right"] * (second - first),
                          "space")
        assert items[first].consent_form
        assert items[second].decision == "discard" and items[second].reason == "operator"
        expected = {**suggested, "operator": suggested.get("operator", 0) + 1}
        seen.update(expected=expected, retained=kept_before - 1,
                    objects=sum(len(it.files()) for it in session.kept()))
        assert str(review.query_one("#counts").render()).startswith(
            f"kept {kept_before - 1} · discard {sum(expected.values())}")

        await pilot.press("f10")
        assert isinstance(app.screen, ConfirmScreen)  # nothing happens before this is answered
        assert kiosk.vault.catalog.get_session(session.id) is None
        await pilot.press("y")
        await settle(pilot)
        assert isinstance(app.screen, WipingScreen)
        assert app.screen.result is not None
        await pilot.press("f10")
        await settle(pilot)
        summary = app.screen
        assert isinstance(summary, SummaryScreen)
        note = summary.summary.note()
        assert note.startswith(f"9 images taken; {kept_before - 1} retained; "
                               f"{sum(expected.values())} deleted (")
        assert "1 by operator" in note and "1 unreadable left on the card" in note
        assert summary.query_one("#note").text == note  # type: ignore[attr-defined]

        await pilot.press("f10")
        await settle(pilot)
        assert isinstance(app.screen, WaitingScreen)
        assert app.flow.session is None

    run(app, scenario, (80, 24))
    # -- the vault: the kept images (with image 1's THM sidecar), all decrypt and verify
    session = seen["session"]
    record = kiosk.vault.catalog.get_session(session.id)  # type: ignore[attr-defined]
    assert record is not None
    assert record["state"] == "done"
    assert record["retained"] == seen["retained"]
    assert record["discarded"] == seen["expected"]
    assert len(record["objects"]) == seen["objects"]
    report = check_vault(kiosk.vault, kiosk.vault.unlock(TEST_PASSPHRASE, "custodian"))
    assert report.ok, report.lines()
    assert vault_bytes_contain(kiosk.vault.root, PATIENT.encode()) == []

    # -- the audit log: the session's story, verified under K0, with no patient ID in it
    events = [e["event"] for e in kiosk.audit_events()]
    for expected in ("signin", "session.started", "consent.recorded", "patient.identified",
                     "image.discarded", "archive.verified", "wipe.done", "session.finished"):
        assert expected in events
    assert events.count("image.discarded") == sum(seen["expected"].values())  # type: ignore[attr-defined]
    result = auditlog.verify_log(kiosk.vault.layout.audit_log, kiosk.k0,
                                 key_state_path=kiosk.vault.layout.audit_key)
    assert result.ok, result.reason
    assert PATIENT not in kiosk.vault.layout.audit_log.read_text()

    # -- the card: only the unreadable image is left
    assert card_images(kiosk.card) == ["IMG_0010.JPG"]


def test_consent_refused_archives_nothing_and_wipes_the_card(kiosk: Kiosk) -> None:
    app = kiosk.app()
    seen: dict[str, object] = {}

    async def scenario(pilot: Pilot[Any]) -> None:
        await sign_in(pilot)
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, ConsentScreen)
        assert app.flow.session is not None
        seen["session"] = app.flow.session.id

        await pilot.press("f5")  # Consent refused: who records it, who witnesses
        await type_text(pilot, "Jo Nurse")
        await pilot.press("tab")
        await type_text(pilot, "Registered nurse")
        await pilot.press("tab")
        await type_text(pilot, "Sam Witness")
        await pilot.press("f10")
        confirm = app.screen
        assert isinstance(confirm, ConfirmScreen)
        assert "All 9 images" in confirm._body and "Sam Witness" in confirm._body
        await pilot.press("y")
        await settle(pilot)
        assert isinstance(app.screen, WipingScreen)
        assert app.screen.refused
        await pilot.press("f10")
        await settle(pilot)
        assert isinstance(app.screen, SummaryScreen)
        note = app.screen.summary.note()
        assert note.startswith("9 images taken; 0 retained")
        assert "consent refused (witnessed by Sam Witness)" in note

    run(app, scenario, (80, 24))
    record = kiosk.vault.catalog.get_session(seen["session"])  # type: ignore[arg-type]
    assert record is not None and record["state"] == "refused"
    assert record["objects"] == [] and record["retained"] == 0
    assert not any(kiosk.vault.layout.objects.rglob("*/*"))
    events = [e["event"] for e in kiosk.audit_events()]
    assert "consent.refused" in events and "wipe.done" in events
    assert "archive.verified" not in events
    assert card_images(kiosk.card) == ["IMG_0010.JPG"]


def test_refusal_can_be_taken_back_before_the_wipe(kiosk: Kiosk) -> None:
    app = kiosk.app()
    before = card_images(kiosk.card)
    async def scenario(pilot: Pilot[Any]) -> None:
        await sign_in(pilot)
        await pilot.press("enter")
        await settle(pilot)
        await pilot.press("f5")
        await type_text(pilot, "Jo")
        await pilot.press("tab")
        await type_text(pilot, "RN")
        await pilot.press("tab")
        await type_text(pilot, "Sam")
        await pilot.press("f10", "n")
        await settle(pilot)
        assert isinstance(app.screen, ConsentScreen)

    run(app, scenario, (80, 24))
    assert card_images(kiosk.card) == before
    assert "consent.refused" not in [e["event"] for e in kiosk.audit_events()]


def test_wrong_check_digit_keeps_next_disabled(kiosk: Kiosk) -> None:
    app = kiosk.app()
    async def scenario(pilot: Pilot[Any]) -> None:
        await sign_in(pilot)
        await pilot.press("enter")
        await settle(pilot)
        await give_consent(pilot)
        await pilot.press("f10")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, PatientIdScreen)
        await type_text(pilot, "ZAC5362")  # the check digit of ZAC536 is 1
        await pilot.press("enter")
        feedback = str(screen.query_one("#pid-feedback").render())
        assert "check character does not match" in feedback
        assert screen.check_action("next", ()) is None  # shown dimmed in the footer
        footer_keys = {b.binding.key: b.enabled for b in screen.active_bindings.values()}
        assert footer_keys["f10"] is False
        await pilot.press("f10")
        await settle(pilot)
        assert app.screen is screen
        assert "patient.identified" not in [e["event"] for e in kiosk.audit_events()]

    run(app, scenario, (80, 24))


def test_typed_id_needs_a_second_entry(kiosk_factory: Callable[..., Kiosk]) -> None:
    # A gap limit no keyboard can meet: every entry counts as typed by hand.
    kiosk = kiosk_factory({"patient_id": {"scanner_max_gap_ms": 1}})
    app = kiosk.app()
    async def scenario(pilot: Pilot[Any]) -> None:
        await sign_in(pilot)
        await pilot.press("enter")
        await settle(pilot)
        await give_consent(pilot)
        await pilot.press("f10")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, PatientIdScreen)
        await type_text(pilot, PATIENT.lower())
        await pilot.press("enter")
        assert not screen.scanned
        assert screen.check_action("next", ()) is None
        await type_text(pilot, "ZAC5631")
        assert "differ" in str(screen.query_one("#pid2-feedback").render())
        assert screen.check_action("next", ()) is None
        await pilot.press(*["backspace"] * 7)
        await type_text(pilot, "zac 5361")
        assert screen.check_action("next", ()) is True
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, ReviewScreen)

    run(app, scenario, (80, 24))


def test_discard_counts_reach_the_summary(kiosk: Kiosk) -> None:
    app = kiosk.app()
    async def scenario(pilot: Pilot[Any]) -> None:
        await sign_in(pilot)
        await pilot.press("enter")
        await settle(pilot)
        await give_consent(pilot)
        await pilot.press("f10")
        await settle(pilot)
        await scan(pilot, PATIENT)
        await pilot.press("f10")
        await settle(pilot)
        review = app.screen
        assert isinstance(review, ReviewScreen)
        # Keep everything the check flagged, then discard images 1 and 2 by hand.
        flagged = [it.index for it in review.session.items if it.decision == "discard"]
        assert flagged  # the demo card has blurred, dark and duplicate images
        for index in flagged:
            await pilot.press("home", *["right"] * index, "space")
        await pilot.press("home", "space", "right", "space")
        counts = review_counts_line(review.session.items)
        assert counts == "kept 7 · discard 2 (2 by operator) · 1 unreadable (left on card)"
        await pilot.press("f10", "y")
        await settle(pilot)
        await pilot.press("f10")
        await settle(pilot)
        assert isinstance(app.screen, SummaryScreen)
        assert app.screen.summary.note().startswith(
            "9 images taken; 7 retained; 2 deleted (2 by operator)")
        record = kiosk.vault.catalog.get_session(app.screen.summary.session)
        assert record is not None and record["discarded"] == {"operator": 2}

    run(app, scenario, (120, 40))


def test_cancel_before_archiving_leaves_the_card_untouched(kiosk: Kiosk) -> None:
    app = kiosk.app()
    before = card_images(kiosk.card)
    async def scenario(pilot: Pilot[Any]) -> None:
        await sign_in(pilot)
        await pilot.press("enter")
        await settle(pilot)
        await pilot.press("escape")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await settle(pilot)
        assert isinstance(app.screen, WaitingScreen)
        assert app.flow.session is None

    run(app, scenario, (80, 24))
    assert card_images(kiosk.card) == before
    assert not any(kiosk.vault.layout.journal.iterdir())
    assert "session.abandoned" in [e["event"] for e in kiosk.audit_events()]
