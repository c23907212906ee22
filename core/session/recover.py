"""Finish or roll back sessions a crash cut short (``clinivault recover``, and every start-up).

The rule is the design's promise: nothing is wiped that is not verified, nothing verified is
lost. So a session that had not committed its catalog entry is rolled back (its planned
objects destroyed; the card was never written), and one that had is rolled forward: its
missing audit entries are written and its wipe is finished when the same card is still at
the same place (each file's identity is checked before it is touched).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from core import audit as auditlog
from core.errors import ClinivaultError
from core.media.safe_open import display_name, open_root
from core.media.scan import CardFile
from core.session.ingest import card_file_from_dict, refused_record
from core.session.journal import Journal, unfinished
from core.session.model import State, WipeSummary
from core.session.reidentify import reidentify
from core.vault.vault import Vault
from core.wipe import wipe_files


@dataclass(frozen=True)
class Recovery:
    session: str
    found: str
    action: str

    def line(self) -> str:
        return f"session {self.session} (stopped at '{self.found}'): {self.action}"


def recover(vault: Vault, *, actor: str = "recovery", wipe: bool = True) -> list[Recovery]:
    """Resolve every unfinished session journal in *vault*; return what was done."""
    done: list[Recovery] = []
    for path in unfinished(vault.layout.journal):
        journal = Journal.load(path)
        done.append(_recover_one(vault, journal, actor, wipe))
    return done


def _audit_has(vault: Vault, session: str, event: str) -> bool:
    return any(e.get("session") == session and e.get("event") == event
               for e in auditlog.read_entries(vault.layout.audit_log))


def _recover_one(vault: Vault, journal: Journal, actor: str, wipe: bool) -> Recovery:
    sid = str(journal.data["session"])
    state = journal.state
    committed = vault.catalog.get_session(sid) is not None
    if journal.data.get("refused") and state == State.WIPING.value:
        return _finish_wipe(vault, journal, actor, wipe, sid, state)
    if state in (State.ARCHIVING.value, State.ABORTED.value) and not committed:
        removed = sum(vault.objects.remove(oid)
                      for oid in (journal.data.get("planned") or {}).values())
        vault.audit.append(actor, "session.rolled_back", sid,
                           {"found": state, "objects_removed": removed})
        journal.remove()
        return Recovery(sid, state, f"rolled back: {removed} partial objects removed; "
                        "the card was not touched — insert it and start again")
    if state in (State.ARCHIVING.value, State.ARCHIVED.value, State.WIPING.value) or (
            state == State.DONE.value and committed):
        if not _audit_has(vault, sid, "archive.verified"):
            record = vault.catalog.get_session(sid) or {}
            vault.audit.append(actor, "archive.verified", sid, {
                "objects": len(record.get("objects", [])),
                "bytes": record.get("archived_bytes", 0), "recovered": True})
        if state == State.DONE.value:
            journal.remove()
            return Recovery(sid, state, "already finished; journal removed")
        return _finish_wipe(vault, journal, actor, wipe, sid, state)
    # Before archiving (or consent refused before the wipe ran): nothing was written to the
    # vault or the card. Abandon; the operator starts again with the card.
    vault.audit.append(actor, "session.abandoned", sid, {"found": state})
    journal.remove()
    return Recovery(sid, state, "abandoned before archiving: nothing was archived or wiped; "
                    "the card still holds every image")


def _archived_digests(vault: Vault, journal: Journal, sid: str) -> dict[tuple[int, int], str]:
    """(item, file) -> SHA-256 of the verified object archived from it."""
    record = vault.catalog.get_session(sid) or {}
    by_id = {o["id"]: o["sha256"] for o in record.get("objects") or []}
    out = {}
    for key, oid in (journal.data.get("planned") or {}).items():
        item, n = (int(x) for x in key.split("/"))
        if oid in by_id:
            out[(item, n)] = by_id[oid]
    return out


def _wipe_targets(vault: Vault, journal: Journal, sid: str, source: Path) -> list[CardFile]:
    decisions = journal.data.get("decisions") or []
    items = journal.data.get("items") or []
    digests = _archived_digests(vault, journal, sid)
    root_fd = open_root(source)
    try:
        return [reidentify(root_fd, card_file_from_dict(f), digests.get((i, n)))
                for i, files in enumerate(items)
                if not (i < len(decisions) and decisions[i].get("unreadable"))
                for n, f in enumerate(files)]
    finally:
        os.close(root_fd)


def _finish_wipe(vault: Vault, journal: Journal, actor: str, wipe: bool, sid: str,
                 state: str) -> Recovery:
    source = Path(str(journal.data.get("source", "")))
    refused = bool(journal.data.get("refused"))
    if not wipe or not source.is_dir():
        why = "wipe not requested" if not wipe else "card not present"
        if not refused:
            vault.catalog.update_session(sid, {"state": State.DONE.value})
        vault.audit.append(actor, "wipe.skipped", sid, {"reason": why, "recovered": True})
        journal.remove()
        return Recovery(sid, state, f"archive complete and verified; card NOT wiped ({why})")
    try:
        outcome = wipe_files(source, _wipe_targets(vault, journal, sid, source))
    except ClinivaultError as exc:
        vault.audit.append(actor, "wipe.failed", sid, {"reason": exc.user_message()[:300]})
        journal.remove()
        return Recovery(sid, state, f"archive complete; wipe failed: {exc.user_message()}")
    summary = WipeSummary(mode=outcome.mode, files=len(outcome.wiped),
                          bytes=outcome.bytes_overwritten, read_only=outcome.read_only,
                          not_wiped=[(display_name(p), r) for p, r in outcome.not_wiped],
                          residue=None, words=outcome.summary(),
                          complete=not (outcome.read_only or outcome.stopped
                                        or outcome.not_wiped))
    if refused:
        vault.catalog.commit_session(refused_record(journal, summary.catalog_dict()))
    else:
        vault.catalog.update_session(sid, {"wipe": summary.catalog_dict(),
                                           "state": State.DONE.value})
    vault.audit.append(actor, "wipe.done", sid, {
        "mode": outcome.mode, "files": len(outcome.wiped),
        "not_wiped": len(outcome.not_wiped), "read_only": outcome.read_only,
        "residue": None, "recovered": True})
    journal.write(State.DONE.value)
    journal.remove()
    return Recovery(sid, state, f"archive complete; wipe finished: {outcome.summary()}")
