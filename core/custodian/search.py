"""Finding sessions by patient ID, keyword, body site, date range and consent scope.

Why through the index (``core.custodian.search_index``): the searchable facts are sealed per
session, and unsealing 100,000 of them per query would take tens of seconds. The query is
matched in memory against the decrypted index; results carry the patient ID because the
custodian asked for them on their own screen, but the audit entry says only *what kind* of
search ran and how many sessions it found, never the ID or keyword searched for.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from core.consent import SCOPES
from core.custodian.access import Custodian
from core.custodian.search_index import Entry, Needle, patient_needle, text_needle
from core.errors import BadInput
from core.patient_id import PatientId, scheme_info


@dataclass(frozen=True)
class Query:
    """What to look for; every given criterion must match (AND)."""

    patient: PatientId | None = None
    keyword: str | None = None
    body_site: str | None = None
    since: date | None = None
    until: date | None = None
    scope: str | None = None
    include_withdrawn: bool = False

    def __post_init__(self) -> None:
        if self.patient is None and not self.keyword and not self.body_site:
            raise BadInput("say what to find: --patient ID, --keyword K or --body-site S")
        for name in ("keyword", "body_site"):
            value = getattr(self, name)
            if value is not None and not value.strip():
                raise BadInput(f"the {name.replace('_', ' ')} to find is empty")
        if self.scope is not None and self.scope not in SCOPES:
            raise BadInput(f"unknown consent scope {self.scope!r} (known: {', '.join(SCOPES)})")
        if self.since and self.until and self.since > self.until:
            raise BadInput(f"--since {self.since} is after --until {self.until}")

    def kinds(self) -> list[str]:
        """The criteria used, by name only (for the audit log)."""
        return [name for name, value in (
            ("patient", self.patient), ("keyword", self.keyword), ("body_site", self.body_site),
            ("since", self.since), ("until", self.until), ("scope", self.scope)) if value]

    def needles(self) -> list[Needle]:
        """What a month of the index must contain to hold a match (skips parsing the rest)."""
        out = []
        if self.patient is not None:
            out.append(patient_needle(self.patient.scheme, self.patient.value))
        for text in (self.keyword, self.body_site):
            needle = text_needle(text) if text else None
            if needle is not None:
                out.append(needle)
        return out

    def matches(self, entry: Entry) -> bool:
        if entry.get("z") and not self.include_withdrawn:
            return False
        if self.patient is not None and entry.get("p") != [self.patient.scheme,
                                                           self.patient.value]:
            return False
        if self.keyword and not _contains(entry.get("k"), self.keyword):
            return False
        if self.body_site and not _contains(entry.get("b"), self.body_site):
            return False
        return not (self.scope and self.scope not in (entry.get("c") or ()))


def _contains(values: Any, needle: str) -> bool:
    """Case-insensitive substring: "ecz" finds "Eczema", "forearm" finds "left forearm"."""
    want = needle.strip().casefold()
    return any(want in str(v).casefold() for v in values or ())


@dataclass(frozen=True)
class SearchHit:
    """One session found. ``patient`` is shown to the custodian, never logged."""

    session: str
    started: str
    patient: PatientId | None
    images: int
    objects: int
    scopes: tuple[str, ...]
    withdrawn_scopes: tuple[str, ...]
    keywords: tuple[str, ...]
    body_sites: tuple[str, ...]
    state: str | None
    withdrawn: bool
    problem: str | None

    @classmethod
    def from_entry(cls, session: str, entry: Entry) -> SearchHit:
        p = entry.get("p")
        return cls(session=session, started=entry.get("t") or "",
                   patient=PatientId(p[0], p[1]) if p else None,
                   images=int(entry.get("n") or 0), objects=int(entry.get("o") or 0),
                   scopes=tuple(entry.get("c") or ()), withdrawn_scopes=tuple(entry.get("x") or ()),
                   keywords=tuple(entry.get("k") or ()), body_sites=tuple(entry.get("b") or ()),
                   state=entry.get("st"), withdrawn=bool(entry.get("z")), problem=entry.get("e"))

    def as_dict(self) -> dict[str, Any]:
        patient = None
        if self.patient is not None:
            patient = {"scheme": self.patient.scheme, "value": self.patient.value,
                       "system": scheme_info(self.patient.scheme).fhir_system}
        return {"session": self.session, "started": self.started, "patient": patient,
                "images": self.images, "objects": self.objects, "scopes": list(self.scopes),
                "withdrawn_scopes": list(self.withdrawn_scopes), "keywords": list(self.keywords),
                "body_sites": list(self.body_sites), "state": self.state,
                "withdrawn": self.withdrawn, "problem": self.problem}

    def line(self) -> str:
        who = f"{self.patient.scheme.upper()} {self.patient.display}" if self.patient else "-"
        parts = [self.session, self.started[:10], who, f"{self.images} images",
                 ",".join(self.scopes) or "no consent"]
        if self.withdrawn_scopes:
            parts.append("withdrawn: " + ",".join(self.withdrawn_scopes))
        if self.keywords:
            parts.append("keywords: " + ", ".join(self.keywords))
        if self.body_sites:
            parts.append("sites: " + ", ".join(self.body_sites))
        if self.problem:
            parts.append(f"UNREADABLE: {self.problem}")
        return "  ".join(parts)


def search(custodian: Custodian, query: Query) -> list[SearchHit]:
    """Sessions matching *query*, oldest first; audited as a "search" (kinds and count only)."""
    index = custodian.index
    hits = [SearchHit.from_entry(sid, entry)
            for sid, entry in index.entries(query.since, query.until, query.needles())
            if query.matches(entry)]
    hits.sort(key=lambda h: h.session)
    stats = custodian.index_stats
    custodian.vault.audit.append(custodian.actor, "search", None, {
        "by": query.kinds(), "results": len(hits),
        "indexed": stats.unsealed if stats else 0})
    return hits


def sessions_of(custodian: Custodian, patient: PatientId) -> list[str]:
    """Ids of the sessions of *patient* still holding images (not withdrawn), oldest first."""
    needle = patient_needle(patient.scheme, patient.value)
    return sorted(sid for sid, entry in custodian.index.entries(needles=[needle])
                  if not entry.get("z") and entry.get("p") == [patient.scheme, patient.value])
