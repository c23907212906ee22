"""The ingest session: the one place that sequences card -> vault -> wiped card.

``IngestSession`` drives a session step by step; ``recover`` finishes or rolls back one a
crash cut short. The TUI and the CLI are thin shells over these.
"""

from core.session.ingest import IngestSession
from core.session.model import ItemReport, Progress, SessionSummary, State
from core.session.recover import Recovery, recover

__all__ = ["IngestSession", "ItemReport", "Progress", "Recovery", "SessionSummary", "State",
           "recover"]
