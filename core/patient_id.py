"""Patient identifiers: normalise what the nurse typed or scanned, and prove it is well formed.

Why: a photograph filed under the wrong patient is a clinical incident, and the kiosk is often
used with a barcode scanner or in a hurry. Every national scheme here carries a check character
so a single mistyped character is caught at the screen, and the message names the rule that
failed so the operator knows what to look at. Sites without a national number use ``mrn``: the
whole normalised identifier must match the site's configured regular expression.

Normalisation: surrounding and internal whitespace (spaces, tabs, no-break spaces) is removed
and letters are upper-cased. Hyphens (and Unicode dashes) are removed for the national schemes
(nhi, nhs, chi), where they can only be print grouping because every character has a fixed
position; for ``mrn`` they are kept, because a site's record numbers may use a hyphen as part of
the number, and dropping it could make two different records ("12-345", "123-45") collide.

Values in, values out: nothing here reads configuration or the clock. The caller passes
``allow_test_ids`` and ``mrn_pattern`` from ``[patient_id]`` in the config.
"""

from __future__ import annotations

import datetime
import re
import string
from dataclasses import dataclass, field
from typing import NamedTuple

from core.errors import BadInput, ConfigError

SCHEMES: tuple[str, ...] = ("nhi", "nhs", "chi", "mrn")

#: Messages from :func:`check_partial` for an incomplete but so-far-plausible entry start with this.
KEEP_TYPING = "keep typing"

#: Longest medical record number accepted; also bounds the work the site's regex can be asked to do.
MAX_MRN_LENGTH = 64

_DIGITS = frozenset(string.digits)
_LETTERS = frozenset(string.ascii_uppercase)
# NHI letters: A=1 .. Z=24, skipping I and O (too easily read as 1 and 0).
_NHI_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ"
_NHI_VALUE = {ch: i + 1 for i, ch in enumerate(_NHI_ALPHABET)}
_NHI_WEIGHTS = (7, 6, 5, 4, 3, 2)
_MOD11_WEIGHTS = (10, 9, 8, 7, 6, 5, 4, 3, 2)
_DASHES = "-\u2010\u2011\u2012\u2013\u2014\u2015\u2212"
_INVISIBLE = "\u00ad\u200b\u200c\u200d\u2060\ufeff"  # soft hyphen, zero-width chars, BOM
_NATIONAL_STRIP = {ord(c): None for c in _DASHES + _INVISIBLE}
_MRN_STRIP = {ord(c): None for c in _INVISIBLE} | {ord(c): "-" for c in _DASHES[1:]}


class PatientIdError(BadInput):
    """A patient identifier broke one of its scheme's rules.

    ``rule`` names the rule for code (``empty``, ``characters``, ``length``, ``format``,
    ``letters_io``, ``test_id``, ``date``, ``check``, ``pattern``); the message is for people.
    """

    def __init__(self, message: str, rule: str, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.rule = rule


@dataclass(frozen=True)
class SchemeInfo:
    """What a screen needs to ask for an identifier of one scheme."""

    name: str
    label: str
    example: str
    fhir_system: str | None
    hint: str


_INFO: dict[str, SchemeInfo] = {
    "nhi": SchemeInfo(
        name="nhi",
        label="NHI number",
        example="ZAC5361",
        fhir_system="https://standards.digital.health.nz/ns/nhi-id",
        hint="3 letters then 4 digits (ABC1234), or 3 letters, 2 digits, 2 letters (ABC12DE)",
    ),
    "nhs": SchemeInfo(
        name="nhs",
        label="NHS number",
        example="943 476 5870",
        fhir_system="https://fhir.nhs.uk/Id/nhs-number",
        hint="10 digits, often printed 3 3 4 (943 476 5870)",
    ),
    "chi": SchemeInfo(
        name="chi",
        label="CHI number",
        example="0101011237",
        # HL7 UK's OID for the CHI number, as used by UK FHIR guides; UK Core has not published
        # an https URI for CHI (its drafts still mark the CHI system as to-do).
        fhir_system="urn:oid:2.16.840.1.113883.2.1.3.2.4.16.53",
        hint="10 digits: date of birth DDMMYY, then 4 digits",
    ),
    "mrn": SchemeInfo(
        name="mrn",
        label="Medical record number",
        example="AB123456",
        fhir_system=None,
        hint="this site's medical record number",
    ),
}


def _scheme(scheme: str) -> str:
    name = scheme.strip().lower() if isinstance(scheme, str) else scheme
    if name not in _INFO:
        raise BadInput(f"unknown patient ID scheme {scheme!r} (known: {', '.join(SCHEMES)})")
    return name


def scheme_info(scheme: str) -> SchemeInfo:
    """Label, example, hint and FHIR identifier system of *scheme*."""
    return _INFO[_scheme(scheme)]


@dataclass(frozen=True)
class PatientId:
    """A validated, normalised identifier. Build it with :func:`parse_patient_id`.

    ``repr`` hides the value so an identifier never lands in a log or traceback by accident
    (the audit log holds no plaintext patient ID); ``str`` gives the value on purpose.
    """

    scheme: str
    value: str = field(repr=False)

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return f"PatientId(scheme={self.scheme!r}, value=<{len(self.value)} characters hidden>)"

    @property
    def display(self) -> str:
        """The value grouped for reading aloud on a screen, e.g. ``943 476 5870``."""
        v = self.value
        if self.scheme == "nhs" and len(v) == 10:
            return f"{v[:3]} {v[3:6]} {v[6:]}"
        if self.scheme == "chi" and len(v) == 10:
            # Date of birth, then the rest: easy to check with the patient.
            return f"{v[:6]} {v[6:]}"
        return v


def normalise(text: str, scheme: str | None = None) -> str:
    """Remove whitespace and upper-case; for nhi, nhs and chi also remove hyphens.

    Without *scheme* hyphens are kept (the ``mrn`` rule), so the result is safe for any scheme.
    """
    name = None if scheme is None else _scheme(scheme)
    table = _MRN_STRIP if name in (None, "mrn") else _NATIONAL_STRIP
    return "".join(text.translate(table).split()).upper()


class _Fail(NamedTuple):
    message: str
    rule: str
    hint: str | None = None


def _keep_typing(have: int, need: int, unit: str) -> _Fail:
    return _Fail(f"{KEEP_TYPING}: {have} of {need} {unit}", "length")


def _mod11_check(digits: str) -> int | None:
    """Check digit of nine digits by the NHS / CHI modulus 11 rule; None when it would be 10."""
    total = sum(int(d) * w for d, w in zip(digits, _MOD11_WEIGHTS, strict=True))
    check = 11 - total % 11
    if check == 11:
        return 0
    return None if check == 10 else check


def _nhi_sum(six: str) -> int:
    return sum((_NHI_VALUE[c] if c in _NHI_VALUE else int(c)) * w
               for c, w in zip(six, _NHI_WEIGHTS, strict=True))


_CHECK_HINT = "One character is probably mistyped: compare it with the patient's label or card"


def _nhi(value: str, partial: bool, allow_test_ids: bool) -> _Fail | None:
    if any(c not in _DIGITS and c not in _LETTERS for c in value):
        return _Fail("NHI number may only contain letters and digits", "characters")
    if len(value) > 7:
        return _Fail(f"NHI number must be 7 characters (got {len(value)})", "length")
    for i, c in enumerate(value):
        if c in "IO" and i != 3 and i != 4:
            return _Fail("NHI letters I and O are never used", "letters_io")
        if i < 3 and c not in _LETTERS:
            return _Fail("NHI number starts with 3 letters", "format")
        if i == 0 and c == "Z" and not allow_test_ids:
            return _Fail("Z-prefixed NHIs are test identifiers (not accepted on this kiosk)",
                         "test_id")
        if i in (3, 4) and c not in _DIGITS:
            return _Fail("NHI characters 4 and 5 must be digits", "format")
        if i == 6:
            old_format = value[5] in _DIGITS
            if old_format and c not in _DIGITS:
                return _Fail("an NHI with a digit 6th must end in a digit (ABC1234)", "format")
            if not old_format and c not in _LETTERS:
                return _Fail("an NHI with a letter 6th must end in a letter (ABC12DE)", "format")
    if len(value) >= 6 and value[5] in _DIGITS and _nhi_sum(value[:6]) % 11 == 0:
        return _Fail("NHI check character does not match (no NHI starts with these 6 characters)",
                     "check", _CHECK_HINT)
    if len(value) < 7:
        if partial:
            return _keep_typing(len(value), 7, "characters")
        if not value:
            return _Fail("no NHI number entered", "empty")
        return _Fail(f"NHI number must be 7 characters (got {len(value)})", "length")
    total = _nhi_sum(value[:6])
    if value[5] in _DIGITS:
        expected = str((11 - total % 11) % 10)
    else:
        expected = _NHI_ALPHABET[23 - total % 23 - 1]
    if value[6] != expected:
        return _Fail("NHI check character does not match", "check", _CHECK_HINT)
    return None


def _ddmm_prefixes() -> frozenset[str]:
    day, prefixes = datetime.date(2000, 1, 1), set()  # 2000: a leap year, so 29 February counts
    while day.year == 2000:
        prefixes.update(day.strftime("%d%m")[:n] for n in range(1, 5))
        day += datetime.timedelta(days=1)
    return frozenset(prefixes)


_DDMM_PREFIXES = _ddmm_prefixes()


def _chi_date_possible(prefix: str) -> bool:
    """Whether some real DDMMYY date starts with *prefix* (1 to 5 digits).

    The first year digit never rules a date out: only 29 February depends on the year, and
    every tens digit has a leap year (x0 for even x, x2 for odd x).
    """
    return prefix[:4] in _DDMM_PREFIXES


def _real_ddmmyy(ddmmyy: str) -> bool:
    # Any century will do; 20YY is a leap year exactly when YY is divisible by 4, like 19YY
    # (except 1900, whose 29 February would also be valid as 2000).
    try:
        datetime.date(2000 + int(ddmmyy[4:6]), int(ddmmyy[2:4]), int(ddmmyy[0:2]))
    except ValueError:
        return False
    return True


def _ten_digits(value: str, partial: bool, label: str, is_chi: bool) -> _Fail | None:
    if any(c not in _DIGITS for c in value):
        return _Fail(f"{label} must contain digits only", "characters")
    if len(value) > 10:
        return _Fail(f"{label} must be 10 digits (got {len(value)})", "length")
    if is_chi and value:
        dob = value[:6]
        real = _real_ddmmyy(dob) if len(dob) == 6 else _chi_date_possible(dob)
        if not real:
            return _Fail(f"CHI date of birth {dob} is not a real date", "date")
    if len(value) >= 9 and _mod11_check(value[:9]) is None:
        return _Fail(f"{label} check digit does not match (no {label} starts with these 9 digits)",
                     "check", _CHECK_HINT)
    if len(value) < 10:
        if partial:
            return _keep_typing(len(value), 10, "digits")
        if not value:
            return _Fail(f"no {label} entered", "empty")
        return _Fail(f"{label} must be 10 digits (got {len(value)})", "length")
    if int(value[9]) != _mod11_check(value[:9]):
        return _Fail(f"{label} check digit does not match", "check", _CHECK_HINT)
    return None


def _compile_mrn(mrn_pattern: str | None) -> re.Pattern[str]:
    if not mrn_pattern:
        raise ConfigError("[patient_id] mrn_pattern is not set, and scheme 'mrn' needs it")
    try:
        return re.compile(mrn_pattern)
    except re.error as exc:
        raise ConfigError(
            f"[patient_id] mrn_pattern is not a valid regular expression: {exc}") from None


def _mrn(value: str, partial: bool, mrn_pattern: str | None) -> _Fail | None:
    pattern = _compile_mrn(mrn_pattern)
    if any(not c.isprintable() for c in value):
        return _Fail("medical record number contains a control character", "characters")
    if len(value) > MAX_MRN_LENGTH:
        return _Fail(f"medical record number is too long (at most {MAX_MRN_LENGTH} characters)",
                     "length")
    if pattern.fullmatch(value):
        return None
    if partial:
        # A regular expression cannot say whether a prefix could still match.
        return _Fail(f"{KEEP_TYPING}: not yet a medical record number in this site's format",
                     "pattern")
    if not value:
        return _Fail("no medical record number entered", "empty")
    return _Fail("medical record number does not match this site's format", "pattern",
                 f"The site's pattern is {pattern.pattern}")


def _problem(value: str, scheme: str, partial: bool, allow_test_ids: bool,
             mrn_pattern: str | None) -> _Fail | None:
    if scheme == "nhi":
        return _nhi(value, partial, allow_test_ids)
    if scheme == "mrn":
        return _mrn(value, partial, mrn_pattern)
    return _ten_digits(value, partial, _INFO[scheme].label, is_chi=scheme == "chi")


def parse_patient_id(text: str, scheme: str, *, allow_test_ids: bool = False,
                     mrn_pattern: str | None = None) -> PatientId:
    """Normalise and validate *text* as an identifier of *scheme*.

    Raises :class:`PatientIdError` naming the rule that failed, :class:`BadInput` for an unknown
    scheme and :class:`ConfigError` when ``mrn`` has no usable ``mrn_pattern``.
    """
    name = _scheme(scheme)
    value = normalise(text, name)
    fail = _problem(value, name, False, allow_test_ids, mrn_pattern)
    if fail is not None:
        raise PatientIdError(fail.message, fail.rule, fail.hint)
    return PatientId(name, value)


def check_partial(text: str, scheme: str, *, allow_test_ids: bool = False,
                  mrn_pattern: str | None = None) -> str | None:
    """Live validation while typing: None when *text* is a valid identifier, else a message.

    An entry that is too short but could still become valid gets a message starting with
    :data:`KEEP_TYPING` (``"keep typing: 4 of 10 digits"``); anything else is the rule already
    broken, worded as :func:`parse_patient_id` would word it.
    """
    name = _scheme(scheme)
    fail = _problem(normalise(text, name), name, True, allow_test_ids, mrn_pattern)
    return None if fail is None else fail.message
