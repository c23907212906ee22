"""Messages the kiosk's screens and workers pass around: small, immutable, one idea each.

Workers run on threads and never touch widgets: they post these (``post_message`` is
thread-safe) and the UI thread shows them. ``StepProgress`` collapses a backlog to the latest
value (``can_replace``), so a fast step cannot flood the UI.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual.message import Message

from core.consent import ConsentRecord
from core.media.sources import DetectedMedia
from core.patient_id import PatientId
from core.session import Progress
from core.users import User


class StepProgress(Message):
    """A long step moved on (posted from a worker thread to the screen showing the step)."""

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, StepProgress) and message.progress.step == self.progress.step


@dataclass
class SignedIn(Message):
    """The PIN was right: *user* is signed in (or has unlocked the kiosk)."""

    user: User


@dataclass
class MediaChanged(Message):
    """The media source says the list of cards may have changed (posted from any thread)."""


@dataclass
class StartSession(Message):
    """The operator chose a card to take in."""

    media: DetectedMedia


@dataclass
class ConsentGiven(Message):
    """The consent screen has a complete record (granted or refused)."""

    record: ConsentRecord


@dataclass
class PatientConfirmed(Message):
    """The patient ID was typed twice, or scanned, and is valid."""

    patient: PatientId


@dataclass
class ReviewFinished(Message):
    """The operator confirmed the keep / discard decisions."""

    keywords: list[str]


@dataclass
class WipeAcknowledged(Message):
    """The operator has read the wipe result."""


@dataclass
class SessionClosed(Message):
    """The summary was read and the card removed: back to waiting for a card."""


@dataclass
class CancelSession(Message):
    """The operator stopped the session before anything was archived or wiped."""


@dataclass
class ThumbnailsReady(Message):
    """Decoded thumbnails (index -> pixels), posted in batches by the review screen's worker."""

    blocks: dict[int, Any]
