"""Consent records: every missing field has its message, refusals are records too, and a sealed
record reads back exactly (or not at all)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.config import load_config
from core.consent import (
    METHOD_LABELS,
    METHODS,
    SCOPE_LABELS,
    SCOPES,
    ConsentError,
    ConsentRecord,
    grant,
    hash_statement,
    narrow,
    parse_scopes,
    refuse,
)
from core.errors import EXIT_BAD_INPUT, BadInput

STATEMENT = load_config(use_env=False).consent.statement
WHEN = datetime(2025, 3, 4, 10, 30, 0, 123456, tzinfo=UTC)


def ok(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = dict(
        scopes=("record", "teaching"), method="written", obtained_by_name="Aroha Ngata",
        obtained_by_role="Registered nurse", body_areas=["left forearm"], statement=STATEMENT,
        now=WHEN)
    args.update(overrides)
    return args


def refusal(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = dict(recorded_by_name="Aroha Ngata",
                                recorded_by_role="Registered nurse", witness="Sam Lee",
                                statement=STATEMENT, now=WHEN)
    args.update(overrides)
    return args


def grant_error(**overrides: Any) -> str:
    with pytest.raises(ConsentError) as info:
        grant(**ok(**overrides))
    assert isinstance(info.value, BadInput) and info.value.exit_code == EXIT_BAD_INPUT
    return info.value.message


# --- granting ------------------------------------------------------------------------------------

def test_grant_records_every_field() -> None:
    r = grant(**ok(note="  patient asked for a copy  "))
    assert r.granted is True
    assert r.scopes == ("record", "teaching")
    assert r.method == "written"
    assert (r.obtained_by_name, r.obtained_by_role) == ("Aroha Ngata", "Registered nurse")
    assert r.recorded_at == WHEN
    assert r.body_areas == ("left forearm",)
    assert r.note == "patient asked for a copy"
    assert r.statement_sha256 == hashlib.sha256(STATEMENT.strip().encode()).hexdigest()
    assert (r.witness, r.guardian, r.guardian_relationship, r.withdrawn) == (None, None, None, ())


def test_scopes_are_put_in_canonical_order_once_each() -> None:
    r = grant(**ok(scopes=["publication", "record", "Teaching ", "record"]))
    assert r.scopes == ("record", "teaching", "publication")
    assert grant(**ok(scopes="teaching, record")).scopes == ("record", "teaching")


def test_body_areas_are_stripped_and_repeats_dropped() -> None:
    r = grant(**ok(body_areas=[" left knee", "right knee", "left knee "]))
    assert r.body_areas == ("left knee", "right knee")
    assert grant(**ok(body_areas="scalp")).body_areas == ("scalp",)


def test_now_defaults_to_the_current_utc_time() -> None:
    before = datetime.now(UTC)
    r = grant(**ok(now=None))
    assert before <= r.recorded_at <= datetime.now(UTC)
    assert r.recorded_at.utcoffset() == timedelta(0)


def test_aware_local_time_is_stored_as_utc() -> None:
    nzdt = timezone(timedelta(hours=13))
    r = grant(**ok(now=datetime(2025, 3, 4, 23, 30, tzinfo=nzdt)))
    assert r.recorded_at == datetime(2025, 3, 4, 10, 30, tzinfo=UTC)
    assert r.recorded_at.tzinfo is UTC


@pytest.mark.parametrize(("overrides", "message"), [
    ({"scopes": ()}, "no consent scope given: health record consent is required to archive"),
    ({"scopes": ("teaching", "publication")}, "health record consent is required to archive"),
    ({"scopes": ("record", "research")},
     "unknown consent scope 'research' (known: record, teaching, publication)"),
    ({"scopes": "record,research"},
     "unknown consent scope 'research' (known: record, teaching, publication, none)"),
    ({"method": "email"}, "unknown consent method 'email' (known: written, verbal, witness, "
                          "guardian)"),
    ({"method": None}, "consent method is missing (one of written, verbal, witness, guardian)"),
    ({"obtained_by_name": ""}, "name of the person who obtained consent is missing"),
    ({"obtained_by_name": "  \t "}, "name of the person who obtained consent is missing"),
    ({"obtained_by_name": None}, "name of the person who obtained consent is missing"),
    ({"obtained_by_role": " "}, "job title of the person who obtained consent is missing"),
    ({"obtained_by_name": "Aroha\x1b[2J"},
     "name of the person who obtained consent contains a control character"),
    ({"obtained_by_name": "Aroha\nNgata"},
     "name of the person who obtained consent contains a control character"),
    ({"obtained_by_role": "Nurse\u202eesruN"},
     "job title of the person who obtained consent contains a control character"),
    ({"obtained_by_name": "A" * 201},
     "name of the person who obtained consent is too long (at most 200 characters)"),
    ({"body_areas": []}, "at least one body area photographed is required"),
    ({"body_areas": ["scalp", " "]}, "body area photographed is missing"),
    ({"body_areas": ["scalp\x00"]}, "body area photographed contains a control character"),
    ({"method": "witness"}, "witnessed consent needs the witness's name"),
    ({"method": "witness", "witness": "   "}, "witnessed consent needs the witness's name"),
    ({"method": "witness", "witness": "Sam\x07"}, "witness's name contains a control character"),
    ({"method": "guardian", "guardian_relationship": "mother"},
     "parent/guardian consent needs the guardian's name"),
    ({"method": "guardian", "guardian": "Mere Ngata"},
     "parent/guardian consent needs the guardian's relationship to the patient (e.g. mother)"),
    ({"guardian": "Mere Ngata", "guardian_relationship": "mother"},
     "guardian details were given but the consent method is 'written'; use method 'guardian'"),
    ({"statement": "  "}, "consent statement is empty"),
    ({"note": "bell\x07"}, "consent note contains a control character"),
    ({"note": "x" * 2001}, "consent note is too long (at most 2000 characters)"),
    ({"now": datetime(2025, 3, 4, 10, 30)},
     "consent time must be timezone-aware (UTC), not a naive datetime"),
])
def test_each_missing_or_bad_field_has_its_message(overrides: dict[str, Any],
                                                   message: str) -> None:
    assert grant_error(**overrides) == message


def test_witness_and_guardian_methods() -> None:
    w = grant(**ok(method="witness", witness=" Sam Lee "))
    assert w.witness == "Sam Lee"
    assert w.summary() == "consent: health record, teaching (witnessed, patient unable to sign)"
    g = grant(**ok(method="guardian", guardian="Mere Ngata", guardian_relationship="mother"))
    assert (g.guardian, g.guardian_relationship) == ("Mere Ngata", "mother")
    assert g.summary() == "consent: health record, teaching (parent/guardian)"
    assert "Mere" not in g.summary()  # the notes line names the method, not the family member


def test_a_witness_may_attend_written_consent() -> None:
    assert grant(**ok(witness="Sam Lee")).witness == "Sam Lee"


def test_note_keeps_line_breaks() -> None:
    assert grant(**ok(note="line one\nline two\ttabbed")).note == "line one\nline two\ttabbed"


@pytest.mark.parametrize(("scopes", "method", "line"), [
    (("record",), "written", "consent: health record (written)"),
    (("record", "teaching"), "written", "consent: health record, teaching (written)"),
    (SCOPES, "verbal", "consent: health record, teaching, publication (verbal, documented)"),
])
def test_summary(scopes: tuple[str, ...], method: str, line: str) -> None:
    assert grant(**ok(scopes=scopes, method=method)).summary() == line


def test_covers() -> None:
    r = grant(**ok(scopes=("record", "publication")))
    assert r.covers("record") and r.covers("publication")
    assert not r.covers("teaching")
    with pytest.raises(ConsentError, match="unknown consent scope 'teachng'"):
        r.covers("teachng")


def test_labels_cover_every_scope_and_method() -> None:
    assert list(SCOPE_LABELS) == list(SCOPES)
    assert list(METHOD_LABELS) == list(METHODS)
    assert SCOPE_LABELS["record"] == "health record"
    assert METHOD_LABELS["verbal"] == "verbal (documented)"
    assert METHOD_LABELS["witness"] == "witnessed (patient unable to sign)"
    assert METHOD_LABELS["guardian"] == "parent/guardian"


def test_records_are_immutable_and_validated_when_built_directly() -> None:
    r = grant(**ok())
    with pytest.raises(AttributeError):
        r.scopes = ("record", "publication")  # type: ignore[misc]
    fields = r.to_dict()
    del fields["version"]
    fields.update(scopes=("teaching",), body_areas=("arm",), withdrawn=(),
                  recorded_at=WHEN)
    with pytest.raises(ConsentError, match="health record consent is required to archive"):
        ConsentRecord(**fields)


# --- the statement hash --------------------------------------------------------------------------

def test_statement_hash_names_the_wording_not_the_file_layout() -> None:
    assert hash_statement("I agree.") == hashlib.sha256(b"I agree.").hexdigest()
    assert hash_statement("\n  I agree.\n") == hash_statement("I agree.")
    assert hash_statement("I agree\r\nto this.") == hash_statement("I agree\nto this.")
    assert hash_statement("I agree.") != hash_statement("I do not agree.")


def test_shipped_statement_is_not_empty() -> None:
    assert len(STATEMENT.strip()) > 100
    assert grant(**ok()).statement_sha256 == hash_statement(STATEMENT)


# --- refusal -------------------------------------------------------------------------------------

def test_refusal_is_a_record() -> None:
    r = refuse(**refusal(note="does not want photographs"))
    assert r == ConsentRecord.refused(**refusal(note="does not want photographs"))
    assert r.granted is False
    assert r.scopes == () and r.method is None and r.body_areas == ()
    assert (r.obtained_by_name, r.obtained_by_role, r.witness) == (
        "Aroha Ngata", "Registered nurse", "Sam Lee")
    assert r.summary() == "consent refused (witnessed by Sam Lee)"
    assert not any(r.covers(s) for s in SCOPES)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"witness": ""}, "name of the witness to the refusal and wipe is missing"),
    ({"witness": None}, "name of the witness to the refusal and wipe is missing"),
    ({"recorded_by_name": " "}, "name of the person recording the refusal is missing"),
    ({"recorded_by_role": ""}, "job title of the person recording the refusal is missing"),
    ({"witness": "Sam\tLee"}, "name of the witness to the refusal and wipe contains a control "
                              "character"),
    ({"statement": ""}, "consent statement is empty"),
])
def test_refusal_needs_its_people(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConsentError) as info:
        refuse(**refusal(**overrides))
    assert info.value.message == message


# --- sealing: to_dict / from_dict ----------------------------------------------------------------

def roundtrip(r: ConsentRecord) -> ConsentRecord:
    return ConsentRecord.from_dict(json.loads(json.dumps(r.to_dict())))


@pytest.mark.parametrize("record", [
    grant(**ok()),
    grant(**ok(method="guardian", guardian="Mere Ngata", guardian_relationship="mother",
               note="two\nlines")),
    grant(**ok(method="witness", witness="Sam Lee", scopes=SCOPES)),
    narrow(grant(**ok(scopes=SCOPES)), "publication"),
    refuse(**refusal()),
])
def test_json_round_trip(record: ConsentRecord) -> None:
    d = record.to_dict()
    assert d["version"] == 1
    assert d["recorded_at"] == record.recorded_at.isoformat()
    back = roundtrip(record)
    assert back == record
    assert back.to_dict() == d


def test_from_dict_accepts_z_suffix_time() -> None:
    d = grant(**ok()).to_dict()
    d["recorded_at"] = "2025-03-04T10:30:00.123456Z"
    assert ConsentRecord.from_dict(d).recorded_at == WHEN


def mutated(**changes: Any) -> dict[str, Any]:
    d = grant(**ok()).to_dict()
    for key, value in changes.items():
        if value is KeyError:
            del d[key]
        else:
            d[key] = value
    return d


@pytest.mark.parametrize(("d", "message"), [
    (mutated(version=2), "consent record format version 2 is not supported"),
    (mutated(version=KeyError), "consent record format version None is not supported"),
    (mutated(patient_id="x"), "consent record has unknown field 'patient_id'"),
    (mutated(method=KeyError), "consent record is missing field 'method'"),
    (mutated(granted="yes"), "consent record field 'granted' must be true or false"),
    (mutated(scopes="record"), "consent record field 'scopes' must be a list"),
    (mutated(scopes=["teaching"]), "health record consent is required to archive"),
    (mutated(scopes=["record", "teaching", "record"]), "consent scopes must each be listed once"),
    (mutated(method="telepathy"), "unknown consent method 'telepathy'"),
    (mutated(recorded_at="yesterday"), "consent record time 'yesterday' is not an ISO 8601 time"),
    (mutated(recorded_at="2025-03-04T10:30:00"), "consent time must be a timezone-aware"),
    (mutated(recorded_at="2025-03-04T23:30:00+13:00"), "consent time must be in UTC"),
    (mutated(statement_sha256="abc"), "statement_sha256 must be 64 lower-case hex digits"),
    (mutated(obtained_by_name=7), "name of the person who obtained consent must be text"),
    (mutated(body_areas=[]), "at least one body area photographed is required"),
    (mutated(withdrawn=["record"]), "withdrawn scopes must be teaching and/or publication"),
    (mutated(withdrawn=["teaching"]), "a scope cannot be both granted and withdrawn"),
    (mutated(granted=False), "a refused consent cannot have scopes"),
    (["not", "a", "dict"], "consent record must be a JSON object"),
])
def test_from_dict_rejects_malformed_records(d: Any, message: str) -> None:
    with pytest.raises(ConsentError) as info:
        ConsentRecord.from_dict(d)
    assert info.value.message.startswith(message)


def test_optional_fields_may_be_absent() -> None:
    d = grant(**ok()).to_dict()
    for key in ("witness", "guardian", "guardian_relationship", "note", "withdrawn"):
        del d[key]
    assert ConsentRecord.from_dict(d) == grant(**ok())


# Format characters (Cf) are left out: bidirectional controls among them are refused on purpose.
NAMES = st.text(st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Zl", "Zp")), min_size=1,
                max_size=40).filter(lambda s: bool(s.strip()))


@given(scopes=st.sets(st.sampled_from(SCOPES)).map(lambda s: s | {"record"}),
       method=st.sampled_from(METHODS), name=NAMES, role=NAMES, witness=NAMES, guardian=NAMES,
       relationship=NAMES, areas=st.lists(NAMES, min_size=1, max_size=5),
       note=st.text(max_size=50).filter(lambda s: s.isprintable()),
       when=st.datetimes(timezones=st.timezones()))
def test_any_valid_grant_round_trips(scopes: set[str], method: str, name: str, role: str,
                                     witness: str, guardian: str, relationship: str,
                                     areas: list[str], note: str, when: datetime) -> None:
    extra: dict[str, Any] = {}
    if method == "witness":
        extra = {"witness": witness}
    elif method == "guardian":
        extra = {"guardian": guardian, "guardian_relationship": relationship}
    r = grant(scopes=scopes, method=method, obtained_by_name=name, obtained_by_role=role,
              body_areas=areas, statement=STATEMENT, note=note, now=when, **extra)
    # astimezone, not ==: PEP 495 makes a wall time in a DST fold or gap unequal to any time
    # in another zone, though it converts to one definite UTC instant.
    assert r.recorded_at == when.astimezone(UTC)
    assert r.recorded_at.tzinfo is UTC
    assert r.summary().startswith("consent: health record")
    assert roundtrip(r) == r
    for withdraw in ("teaching", "publication", "all"):
        assert roundtrip(narrow(r, withdraw)) == narrow(r, withdraw)


# --- CLI scopes ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "scopes"), [
    ("record", ("record",)),
    ("record,teaching", ("record", "teaching")),
    ("publication, RECORD ,teaching", ("record", "teaching", "publication")),
    ("record,,teaching,", ("record", "teaching")),
    ("none", ()),
    (" None ", ()),
    ("teaching", ("teaching",)),  # parsed; grant() then says record consent is required
])
def test_parse_scopes(text: str, scopes: tuple[str, ...]) -> None:
    assert parse_scopes(text) == scopes


@pytest.mark.parametrize(("text", "message"), [
    ("record,photos", "unknown consent scope 'photos' (known: record, teaching, publication, "
                      "none)"),
    ("", "no consent scope given (use 'none' to record a refusal)"),
    (" , ", "no consent scope given (use 'none' to record a refusal)"),
    ("none,record", "consent 'none' cannot be combined with other scopes"),
])
def test_parse_scopes_errors(text: str, message: str) -> None:
    with pytest.raises(BadInput) as info:
        parse_scopes(text)
    assert info.value.message == message


# --- withdrawal ----------------------------------------------------------------------------------

def test_withdraw_one_scope() -> None:
    r = grant(**ok(scopes=SCOPES))
    n = narrow(r, "teaching")
    assert n.scopes == ("record", "publication")
    assert n.withdrawn == ("teaching",)
    assert not n.covers("teaching") and n.covers("publication") and n.covers("record")
    assert n.summary() == "consent: health record, publication (written); withdrawn: teaching"
    assert (n.recorded_at, n.obtained_by_name, n.statement_sha256) == (
        r.recorded_at, r.obtained_by_name, r.statement_sha256)


def test_withdraw_all_keeps_the_health_record() -> None:
    n = narrow(narrow(grant(**ok(scopes=SCOPES)), "publication"), "all")
    assert n.scopes == ("record",)
    assert n.withdrawn == ("teaching", "publication")
    assert n.summary() == "consent: health record (written); withdrawn: teaching, publication"


def test_withdrawing_what_was_not_granted_changes_nothing() -> None:
    r = grant(**ok(scopes=("record",)))
    assert narrow(r, "teaching") is r
    assert narrow(r, "all") is r
    refused = refuse(**refusal())
    assert narrow(refused, "all") is refused


@pytest.mark.parametrize(("withdraw", "message"), [
    ("record", "health record consent cannot be withdrawn"),
    ("everything", "unknown consent withdrawal 'everything' (known: teaching, publication, all)"),
])
def test_withdraw_errors(withdraw: str, message: str) -> None:
    with pytest.raises(ConsentError) as info:
        narrow(grant(**ok()), withdraw)
    assert info.value.message.startswith(message)
