"""The values a session passes around: states, items with their assessment, progress, summary.

Kept apart from the sequencing (``core.session.ingest``) so shells can import the vocabulary
without pulling in the machinery, and so the pure parts (counting, the notes line) are
tested on their own.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from core.imaging.decode import ImageAnalysis
from core.media.scan import CardFile, MediaItem
from core.quality import REASONS, Flag


class State(StrEnum):
    """Journalled states, in order. ``refused`` and ``aborted`` are the other ends."""

    SCANNED = "scanned"
    ASSESSED = "assessed"
    CONSENT = "consent"
    IDENTIFIED = "identified"
    REVIEWED = "reviewed"
    ARCHIVING = "archiving"
    ARCHIVED = "archived"
    WIPING = "wiping"
    DONE = "done"
    REFUSED = "refused"
    ABORTED = "aborted"


ORDER = [State.SCANNED, State.ASSESSED, State.CONSENT, State.IDENTIFIED, State.REVIEWED,
         State.ARCHIVING, State.ARCHIVED, State.WIPING, State.DONE]

#: Why an operator discards an image with no quality flag.
OPERATOR_REASON = "operator"
DISCARD_REASONS = (*REASONS, OPERATOR_REASON)

Decision = Literal["keep", "discard"]


@dataclass
class ItemReport:
    """One image (with its RAW partner and sidecars), or one video, as the operator sees it."""

    index: int
    item: MediaItem
    analysis: ImageAnalysis | None = None
    flags: list[Flag] = field(default_factory=list)
    duplicate_of: int | None = None
    decision: Decision = "keep"
    reason: str | None = None
    keywords: list[str] = field(default_factory=list)
    body_site: str = ""
    consent_form: bool = False

    @property
    def kind(self) -> str:
        return self.item.primary.kind

    @property
    def unreadable(self) -> bool:
        """An image the decoder could not read: reported, never archived or wiped."""
        return self.analysis is not None and not self.analysis.ok

    @property
    def unreadable_reason(self) -> str | None:
        return self.analysis.reason if self.unreadable and self.analysis else None

    @property
    def display(self) -> str:
        return self.item.primary.display

    def files(self) -> list[CardFile]:
        return self.item.files()

    def suggested(self) -> tuple[Decision, str | None]:
        """Discard when the quality step raised a flag. One reason is counted per image: a
        near-copy of a sharper kept image counts as "duplicate" (that is why it goes, even
        when it is also blurred); otherwise the first flag in ``REASONS`` order."""
        if self.flags:
            ordered = sorted(self.flags, key=lambda f: (f.reason != "duplicate",
                                                        REASONS.index(f.reason)))
            return "discard", ordered[0].reason
        return "keep", None


@dataclass(frozen=True)
class Progress:
    """Posted while a long step runs; shells show it, never act on it."""

    step: str
    done: int
    total: int
    current: str | None = None
    bytes_done: int = 0
    bytes_total: int = 0


@dataclass(frozen=True)
class WipeSummary:
    mode: str
    files: int
    bytes: int
    read_only: bool
    not_wiped: list[tuple[str, str]]
    residue: int | None
    words: str
    complete: bool = True
    """Everything asked for was done: no file left, no stop, a requested Clear verified."""

    def as_dict(self) -> dict[str, Any]:
        """For the operator and the CLI's JSON: names the files that were not wiped."""
        return {"mode": self.mode, "files": self.files, "bytes": self.bytes,
                "read_only": self.read_only,
                "not_wiped": [{"file": f, "reason": r} for f, r in self.not_wiped],
                "residue": self.residue, "words": self.words, "complete": self.complete}

    def catalog_dict(self) -> dict[str, Any]:
        """For the catalog, which auditors read: counts only, never card file names."""
        return {"mode": self.mode, "files": self.files, "bytes": self.bytes,
                "read_only": self.read_only, "not_wiped": len(self.not_wiped),
                "residue": self.residue, "complete": self.complete}


@dataclass
class SessionSummary:
    """What the session did, in numbers and in the line for the patient's notes."""

    session: str
    state: str
    taken: int
    retained: int
    discarded: dict[str, int]
    rejected: list[dict[str, str]]
    left_on_card: list[dict[str, str]]
    archived_bytes: int
    consent: str
    wipe: WipeSummary | None

    @property
    def deleted(self) -> int:
        return sum(self.discarded.values())

    def note(self) -> str:
        """The line for the patient's notes, e.g. "14 images taken; 11 retained; 3 deleted
        (2 blurred, 1 duplicate) — consent: health record, teaching (written)"."""
        noun = "image" if self.taken == 1 else "images"
        parts = [f"{self.taken} {noun} taken", f"{self.retained} retained"]
        if self.discarded:
            reasons = ", ".join(f"{n} {_reason_words(r)}" for r, n in
                                sorted(self.discarded.items(), key=lambda kv: (-kv[1], kv[0])))
            parts.append(f"{self.deleted} deleted ({reasons})")
        else:
            parts.append("0 deleted")
        if self.left_on_card:
            parts.append(f"{len(self.left_on_card)} unreadable left on the card")
        line = "; ".join(parts) + f" — {self.consent}"
        if self.wipe is not None:
            line += f"; card: {self.wipe.words}"
        return line

    def as_dict(self) -> dict[str, Any]:
        return {"session": self.session, "state": self.state, "taken": self.taken,
                "retained": self.retained, "discarded": dict(self.discarded),
                "rejected": list(self.rejected), "left_on_card": list(self.left_on_card),
                "archived_bytes": self.archived_bytes,
                "wipe": self.wipe.as_dict() if self.wipe else None, "note": self.note()}


def _reason_words(reason: str) -> str:
    return {"low_resolution": "low resolution", OPERATOR_REASON: "by operator"}.get(reason, reason)


def count_discards(items: list[ItemReport]) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for it in items:
        if it.decision == "discard" and not it.unreadable:
            counts[it.reason or OPERATOR_REASON] += 1
    return dict(counts)


def review_counts_line(items: list[ItemReport]) -> str:
    """The live line on the review screen: "kept 11 · discard 3 (2 blurred, 1 duplicate)"."""
    usable = [it for it in items if not it.unreadable]
    kept = sum(1 for it in usable if it.decision == "keep")
    discards = count_discards(items)
    n = sum(discards.values())
    line = f"kept {kept} · discard {n}"
    if discards:
        line += " (" + ", ".join(f"{c} {_reason_words(r)}" for r, c in
                                 sorted(discards.items(), key=lambda kv: (-kv[1], kv[0]))) + ")"
    unreadable = len(items) - len(usable)
    if unreadable:
        line += f" · {unreadable} unreadable (left on card)"
    return line
