"""The patient's consent to clinical photography, as one immutable, self-checking record.

Why: consent decides what may happen to a photograph (archive it at all, show it in teaching,
publish it), and it is sealed into the vault next to the images, so a record must never be
half-filled. Every ``ConsentRecord`` is validated when it is built, whether by :func:`grant`,
:func:`refuse` or :meth:`ConsentRecord.from_dict`, and each missing or bad field has its own
message. A refusal is a record too (nothing archived, the card wiped in front of a witness), so
it is recorded with the same care as a grant. The record stores a SHA-256 of the consent
statement shown, not the text: sites edit the text in config, and the hash proves which wording
the patient saw.

Values in, values out: the only outside value is the clock, when ``now`` is not given.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from core.errors import BadInput

SCOPES: tuple[str, ...] = ("record", "teaching", "publication")
METHODS: tuple[str, ...] = ("written", "verbal", "witness", "guardian")
#: Scopes a patient may withdraw later; health-record consent covers the clinical record itself.
WITHDRAWABLE: tuple[str, ...] = ("teaching", "publication")

SCOPE_LABELS: dict[str, str] = {
    "record": "health record",
    "teaching": "teaching",
    "publication": "publication",
}
METHOD_LABELS: dict[str, str] = {
    "written": "written",
    "verbal": "verbal (documented)",
    "witness": "witnessed (patient unable to sign)",
    "guardian": "parent/guardian",
}

#: Version of the :meth:`ConsentRecord.to_dict` layout; a newer one is refused, not guessed at.
FORMAT_VERSION = 1
MAX_NAME_LENGTH = 200
MAX_NOTE_LENGTH = 2000

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# Bidirectional overrides and isolates can make a name read differently on screen than stored.
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                           "\u2066\u2067\u2068\u2069")


class ConsentError(BadInput):
    """Consent details are missing, contradictory or malformed."""


def hash_statement(statement: str) -> str:
    """SHA-256 (hex) of a consent statement, as stored in ``statement_sha256``.

    Surrounding whitespace is stripped and line endings made ``\\n`` first, so the hash names
    the wording and not how a site's editor saved the config file.
    """
    text = statement.replace("\r\n", "\n").replace("\r", "\n").strip()
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _has_control(text: str, allow_newlines: bool = False) -> bool:
    for ch in text:
        if allow_newlines and ch in "\n\t":
            continue
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp") or ch in _BIDI_CONTROLS:
            return True
    return False


def _text(value: object, what: str, *, max_length: int = MAX_NAME_LENGTH,
          allow_newlines: bool = False) -> str:
    """*value* stripped, or ConsentError naming *what* is missing or wrong."""
    if value is None:
        raise ConsentError(f"{what} is missing")
    if not isinstance(value, str):
        raise ConsentError(f"{what} must be text, not {type(value).__name__}")
    text = value.strip()
    if not text:
        raise ConsentError(f"{what} is missing")
    if _has_control(text, allow_newlines):
        raise ConsentError(f"{what} contains a control character")
    if len(text) > max_length:
        raise ConsentError(f"{what} is too long (at most {max_length} characters)")
    return text


def _optional_text(value: object, what: str) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return _text(value, what)


def _scope(name: object) -> str:
    if not isinstance(name, str) or name not in SCOPES:
        raise ConsentError(f"unknown consent scope {name!r} (known: {', '.join(SCOPES)})")
    return name


def _canonical_scopes(names: Iterable[object]) -> tuple[str, ...]:
    """Known scopes, each once, in the order of :data:`SCOPES`."""
    chosen = {_scope(n) for n in names}
    return tuple(s for s in SCOPES if s in chosen)


def _inline(label: str) -> str:
    """``verbal (documented)`` -> ``verbal, documented``, to sit inside parentheses."""
    return label.replace(" (", ", ").replace(")", "")


@dataclass(frozen=True, kw_only=True)
class ConsentRecord:
    """What the patient agreed to (or refused), how, in front of whom, and when.

    For a refusal, ``obtained_by_*`` is who recorded it and ``witness`` who witnessed the wipe.
    ``withdrawn`` lists scopes once granted and later withdrawn (see :func:`narrow`).
    """

    granted: bool
    scopes: tuple[str, ...]
    method: str | None
    obtained_by_name: str
    obtained_by_role: str
    recorded_at: datetime
    body_areas: tuple[str, ...]
    witness: str | None = None
    guardian: str | None = None
    guardian_relationship: str | None = None
    note: str = ""
    statement_sha256: str
    withdrawn: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def refused(cls, *, recorded_by_name: str, recorded_by_role: str, witness: str,
                statement: str, note: str = "", now: datetime | None = None) -> ConsentRecord:
        """The patient refused: nothing is archived and the card is wiped before *witness*."""
        return cls(
            granted=False,
            scopes=(),
            method=None,
            obtained_by_name=_text(recorded_by_name, "name of the person recording the refusal"),
            obtained_by_role=_text(recorded_by_role,
                                   "job title of the person recording the refusal"),
            recorded_at=_utc(now),
            body_areas=(),
            witness=_text(witness, "name of the witness to the refusal and wipe"),
            note=_note(note),
            statement_sha256=_statement_hash(statement),
        )

    def covers(self, scope: str) -> bool:
        """Whether this consent allows *scope* (``record``, ``teaching`` or ``publication``)."""
        return self.granted and _scope(scope) in self.scopes

    def summary(self) -> str:
        """One line for screens and the patient's notes."""
        if not self.granted:
            return f"consent refused (witnessed by {self.witness})"
        scopes = ", ".join(SCOPE_LABELS[s] for s in self.scopes)
        line = f"consent: {scopes} ({_inline(METHOD_LABELS[str(self.method)])})"
        if self.withdrawn:
            line += f"; withdrawn: {', '.join(SCOPE_LABELS[s] for s in self.withdrawn)}"
        return line

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (for sealing); :meth:`from_dict` reads it back to an equal record."""
        return {
            "version": FORMAT_VERSION,
            "granted": self.granted,
            "scopes": list(self.scopes),
            "method": self.method,
            "obtained_by_name": self.obtained_by_name,
            "obtained_by_role": self.obtained_by_role,
            "recorded_at": self.recorded_at.isoformat(),
            "body_areas": list(self.body_areas),
            "witness": self.witness,
            "guardian": self.guardian,
            "guardian_relationship": self.guardian_relationship,
            "note": self.note,
            "statement_sha256": self.statement_sha256,
            "withdrawn": list(self.withdrawn),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ConsentRecord:
        """Read :meth:`to_dict` output back, checking every field; ConsentError if malformed."""
        if not isinstance(d, Mapping):
            raise ConsentError("consent record must be a JSON object")
        version = d.get("version")
        if version != FORMAT_VERSION:
            raise ConsentError(f"consent record format version {version!r} is not supported "
                               f"(this program reads version {FORMAT_VERSION})")
        known = {f.name for f in fields(cls)} | {"version"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConsentError(f"consent record has unknown field {unknown[0]!r}")
        optional = {"witness", "guardian", "guardian_relationship", "note", "withdrawn"}
        missing = sorted(known - optional - set(d))
        if missing:
            raise ConsentError(f"consent record is missing field {missing[0]!r}")

        def lst(key: str) -> tuple[Any, ...]:
            value = d.get(key, [])
            if not isinstance(value, list):
                raise ConsentError(f"consent record field {key!r} must be a list")
            return tuple(value)

        granted = d["granted"]
        if not isinstance(granted, bool):
            raise ConsentError("consent record field 'granted' must be true or false")
        recorded_at = d["recorded_at"]
        if not isinstance(recorded_at, str):
            raise ConsentError("consent record field 'recorded_at' must be an ISO 8601 time")
        try:
            when = datetime.fromisoformat(recorded_at)
        except ValueError:
            raise ConsentError(f"consent record time {recorded_at!r} is not an ISO 8601 time"
                               ) from None
        note = d.get("note", "")
        return cls(
            granted=granted,
            scopes=lst("scopes"),
            method=d["method"],
            obtained_by_name=d["obtained_by_name"],
            obtained_by_role=d["obtained_by_role"],
            recorded_at=when,
            body_areas=lst("body_areas"),
            witness=d.get("witness"),
            guardian=d.get("guardian"),
            guardian_relationship=d.get("guardian_relationship"),
            note=note,
            statement_sha256=d["statement_sha256"],
            withdrawn=lst("withdrawn"),
        )


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if not isinstance(now, datetime):
        raise ConsentError(f"consent time must be a datetime, not {type(now).__name__}")
    if now.tzinfo is None or now.utcoffset() is None:
        raise ConsentError("consent time must be timezone-aware (UTC), not a naive datetime")
    return now.astimezone(UTC)


def _note(note: object) -> str:
    if note is None or (isinstance(note, str) and not note.strip()):
        return ""
    return _text(note, "consent note", max_length=MAX_NOTE_LENGTH, allow_newlines=True)


def _statement_hash(statement: object) -> str:
    if not isinstance(statement, str) or not statement.strip():
        raise ConsentError("consent statement is empty",
                           "Set [consent] statement in the site configuration")
    return hash_statement(statement)


def _validate(r: ConsentRecord) -> None:
    """Raise ConsentError unless *r* is a complete, consistent record (normalised or not)."""
    if not isinstance(r.granted, bool):
        raise ConsentError("consent 'granted' must be true or false")
    for name in ("scopes", "body_areas", "withdrawn"):
        if not isinstance(getattr(r, name), tuple):
            raise ConsentError(f"consent {name} must be a tuple")
    if not isinstance(r.recorded_at, datetime) or r.recorded_at.tzinfo is None:
        raise ConsentError("consent time must be a timezone-aware (UTC) datetime")
    if r.recorded_at.utcoffset() != timedelta(0):
        raise ConsentError("consent time must be in UTC")
    if not isinstance(r.statement_sha256, str) or not _SHA256_HEX.fullmatch(r.statement_sha256):
        raise ConsentError("statement_sha256 must be 64 lower-case hex digits")
    _note(r.note)
    if r.note != _note(r.note):
        raise ConsentError("consent note has surrounding whitespace")
    if not r.granted:
        _validate_refusal(r)
        return
    if not r.scopes:
        raise ConsentError("no consent scope given: health record consent is required to archive")
    if _canonical_scopes(r.scopes) != r.scopes:
        raise ConsentError("consent scopes must each be listed once, in the order "
                           + ", ".join(SCOPES))
    if "record" not in r.scopes:
        raise ConsentError("health record consent is required to archive")
    if r.method is None:
        raise ConsentError(f"consent method is missing (one of {', '.join(METHODS)})")
    if r.method not in METHODS:
        raise ConsentError(f"unknown consent method {r.method!r} (known: {', '.join(METHODS)})")
    _text(r.obtained_by_name, "name of the person who obtained consent")
    _text(r.obtained_by_role, "job title of the person who obtained consent")
    if not r.body_areas:
        raise ConsentError("at least one body area photographed is required")
    for area in r.body_areas:
        _text(area, "body area photographed")
    witness = _optional_text(r.witness, "witness's name")
    if r.method == "witness" and witness is None:
        raise ConsentError("witnessed consent needs the witness's name")
    guardian = _optional_text(r.guardian, "guardian's name")
    relationship = _optional_text(r.guardian_relationship, "guardian's relationship to the patient")
    if r.method == "guardian":
        if guardian is None:
            raise ConsentError("parent/guardian consent needs the guardian's name")
        if relationship is None:
            raise ConsentError("parent/guardian consent needs the guardian's relationship "
                               "to the patient (e.g. mother)")
    elif guardian is not None or relationship is not None:
        raise ConsentError(f"guardian details were given but the consent method is "
                           f"{r.method!r}; use method 'guardian'")
    if _canonical_scopes(r.withdrawn) != r.withdrawn or not set(r.withdrawn) <= set(WITHDRAWABLE):
        raise ConsentError("withdrawn scopes must be teaching and/or publication, in that order")
    if set(r.withdrawn) & set(r.scopes):
        raise ConsentError("a scope cannot be both granted and withdrawn")


def _validate_refusal(r: ConsentRecord) -> None:
    if r.scopes:
        raise ConsentError("a refused consent cannot have scopes")
    if r.method is not None:
        raise ConsentError("a refused consent has no consent method")
    if r.body_areas:
        raise ConsentError("a refused consent has no body areas (nothing is archived)")
    if r.guardian is not None or r.guardian_relationship is not None or r.withdrawn:
        raise ConsentError("a refused consent has no guardian details or withdrawn scopes")
    _text(r.obtained_by_name, "name of the person recording the refusal")
    _text(r.obtained_by_role, "job title of the person recording the refusal")
    _text(r.witness, "name of the witness to the refusal and wipe")


def grant(*, scopes: Iterable[str] | str, method: str, obtained_by_name: str,
          obtained_by_role: str, body_areas: Iterable[str], statement: str,
          witness: str | None = None, guardian: str | None = None,
          guardian_relationship: str | None = None, note: str = "",
          now: datetime | None = None) -> ConsentRecord:
    """Record consent given. *scopes* may be a list or the CLI text (``"record,teaching"``).

    Names are stripped; empty optional names become None; body areas keep their order with
    repeats dropped. Raises ConsentError with a specific message for each missing field.
    """
    if isinstance(scopes, str):
        scopes = parse_scopes(scopes)
    scope_list = [s.strip().lower() if isinstance(s, str) else s for s in scopes]
    if not scope_list:
        raise ConsentError("no consent scope given: health record consent is required to archive")
    canonical = _canonical_scopes(scope_list)
    if "record" not in canonical:
        raise ConsentError("health record consent is required to archive")
    if method is None:
        raise ConsentError(f"consent method is missing (one of {', '.join(METHODS)})")
    if not isinstance(method, str) or method.strip().lower() not in METHODS:
        raise ConsentError(f"unknown consent method {method!r} (known: {', '.join(METHODS)})")
    if isinstance(body_areas, str):
        body_areas = [body_areas]
    areas: list[str] = []
    for area in body_areas:
        text = _text(area, "body area photographed")
        if text not in areas:
            areas.append(text)
    return ConsentRecord(
        granted=True,
        scopes=canonical,
        method=method.strip().lower(),
        obtained_by_name=_text(obtained_by_name, "name of the person who obtained consent"),
        obtained_by_role=_text(obtained_by_role, "job title of the person who obtained consent"),
        recorded_at=_utc(now),
        body_areas=tuple(areas),
        witness=_optional_text(witness, "witness's name"),
        guardian=_optional_text(guardian, "guardian's name"),
        guardian_relationship=_optional_text(guardian_relationship,
                                             "guardian's relationship to the patient"),
        note=_note(note),
        statement_sha256=_statement_hash(statement),
    )


def refuse(*, recorded_by_name: str, recorded_by_role: str, witness: str, statement: str,
           note: str = "", now: datetime | None = None) -> ConsentRecord:
    """Record a refusal; see :meth:`ConsentRecord.refused`."""
    return ConsentRecord.refused(recorded_by_name=recorded_by_name,
                                 recorded_by_role=recorded_by_role, witness=witness,
                                 statement=statement, note=note, now=now)


def parse_scopes(text: str) -> tuple[str, ...]:
    """CLI ``--consent`` value: ``"record,teaching"`` -> ``("record", "teaching")``; ``"none"``
    -> ``()`` (refused). Case and spaces are ignored; unknown scopes raise naming the scope."""
    parts = [p.strip().lower() for p in text.split(",")]
    parts = [p for p in parts if p]
    if not parts:
        raise ConsentError("no consent scope given (use 'none' to record a refusal)")
    if "none" in parts:
        if len(parts) > 1:
            raise ConsentError("consent 'none' cannot be combined with other scopes")
        return ()
    for p in parts:
        if p not in SCOPES:
            raise ConsentError(f"unknown consent scope {p!r} (known: {', '.join(SCOPES)}, none)")
    return _canonical_scopes(parts)


def narrow(record: ConsentRecord, withdraw: str) -> ConsentRecord:
    """The record after the patient withdraws ``teaching``, ``publication`` or ``all`` of them.

    Health-record consent cannot be withdrawn here: the photographs are part of the clinical
    record. Withdrawing a scope that is not granted returns *record* unchanged, so the caller can
    tell "nothing to withdraw" by comparing. Who withdrew it, and when, belongs in the audit log.
    """
    choice = withdraw.strip().lower() if isinstance(withdraw, str) else withdraw
    if choice == "all":
        targets: tuple[str, ...] = WITHDRAWABLE
    elif choice in WITHDRAWABLE:
        targets = (choice,)
    elif choice == "record":
        raise ConsentError("health record consent cannot be withdrawn: the photographs are part "
                           "of the clinical record (withdraw teaching, publication or all)")
    else:
        raise ConsentError(f"unknown consent withdrawal {withdraw!r} "
                           f"(known: {', '.join(WITHDRAWABLE)}, all)")
    removed = [s for s in record.scopes if s in targets]
    if not removed:
        return record
    return replace(record,
                   scopes=tuple(s for s in record.scopes if s not in targets),
                   withdrawn=_canonical_scopes([*record.withdrawn, *removed]))
