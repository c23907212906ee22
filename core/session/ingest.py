"""One ingest session, card to vault: the one place that sequences the steps.

scan -> assess -> consent -> patient ID -> review -> archive (encrypt, fsync, read back,
verify, one catalog commit, audit) -> wipe -> summary. Each transition is journalled first
(``core.session.journal``), so ``core.session.recover`` can finish or roll back a session
cut short at any point. The card is not written until every kept image is verified in the
vault; consent refused means nothing is archived and the card's images are wiped.

Shells (the kiosk, the CLI) call these methods in order, from a worker thread, and show the
``Progress`` values passed to their callback; they hold no logic of their own.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core import crashpoints
from core.catalog import new_session_id
from core.config import Config
from core.consent import ConsentRecord
from core.errors import BadInput, ClinivaultError, FailedSafely
from core.imaging.decode import ImageAnalysis
from core.imaging.pool import DecodeLimits, DecodePool
from core.media.mounts import CardReadOnly
from core.media.safe_open import (
    CardFileError,
    FileIdentity,
    display_name,
    open_card_file,
    open_root,
)
from core.media.scan import CardFile, MediaItem, ScanResult, scan_card
from core.patient_id import PatientId
from core.quality import BurstCandidate, Flag, QualityThresholds, assess, explain, find_duplicates
from core.session.card import CardSource
from core.session.journal import Journal
from core.session.model import (
    OPERATOR_REASON,
    ItemReport,
    Progress,
    SessionSummary,
    State,
    WipeSummary,
    count_discards,
)
from core.session.reidentify import reidentify
from core.vault.store import StoredObject, VaultFull, new_object_id
from core.vault.vault import Vault
from core.wipe import WipeOutcome, wipe_files
from core.wipe_device import DeviceWipeOutcome, block_fingerprints, residue_scan, wipe_device

ProgressFn = Callable[[Progress], None]
Cancelled = Callable[[], bool]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def card_file_to_dict(f: CardFile) -> dict[str, Any]:
    i = f.identity
    return {"parts": list(f.parts), "dev": i.dev, "ino": i.ino, "size": i.size,
            "mtime_ns": i.mtime_ns, "kind": f.kind, "fmt": f.fmt}


def card_file_from_dict(d: Mapping[str, Any]) -> CardFile:
    return CardFile(parts=tuple(d["parts"]),
                    identity=FileIdentity(d["dev"], d["ino"], d["size"], d["mtime_ns"]),
                    kind=d["kind"], fmt=d["fmt"])


def refused_record(journal: Journal, wipe: dict[str, Any]) -> dict[str, Any]:
    """The catalog's record of a session whose consent was refused: counts, no objects."""
    d = journal.data
    return {"session": d["session"], "started": d.get("started"), "finished": _now(),
            "operator": d.get("operator"), "state": State.REFUSED.value,
            "taken": d.get("taken", 0), "retained": 0, "discarded": {},
            "archived_bytes": 0, "objects": [], "consent_scopes": [], "wipe": wipe,
            "tombstone": None, "sealed": d["sealed"]}


class IngestSession:
    """A card being taken into the vault. Not thread-safe: one worker drives it."""

    def __init__(self, vault: Vault, config: Config, source: Path | CardSource, operator: str,
                 *, source_label: str | None = None) -> None:
        self.vault = vault
        self.config = config
        self.card = source if isinstance(source, CardSource) else CardSource(root=Path(source))
        self.source = self.card.root
        self.operator = operator
        self.source_label = source_label or self.card.label
        self.device_outcome: DeviceWipeOutcome | None = None
        self.wipe_blockers: list[str] = []
        self.residue: int | None = None
        started = datetime.now(UTC).replace(microsecond=0)
        self.id = new_session_id(started)  # the catalog shards by the day in the id
        self.started = started.strftime("%Y-%m-%dT%H:%M:%SZ")
        self.state: State | None = None
        self.scan_result: ScanResult | None = None
        self.items: list[ItemReport] = []
        self.consent: ConsentRecord | None = None
        self.patient: PatientId | None = None
        self.keywords: list[str] = []
        self.stored: dict[str, StoredObject] = {}  # "item/file" key -> object
        self.wipe_outcome: WipeOutcome | None = None
        self.journal: Journal | None = None
        self.thresholds = QualityThresholds.from_config(config.quality)

    # -- 1. scan -------------------------------------------------------------------------
    def scan(self, progress: ProgressFn | None = None) -> ScanResult:
        """Walk the card safely and list its images; an empty card is bad input."""
        result = scan_card(self.source, progress=(
            (lambda n: progress(Progress("scan", n, 0))) if progress else None))
        media: list[MediaItem] = list(result.items)
        media += [MediaItem(primary=v, raw=None, sidecars=[]) for v in result.videos]
        if not media:
            skipped = f" ({len(result.skipped)} other files skipped)" if result.skipped else ""
            raise BadInput(f"no images on the card at {self.source}{skipped}",
                           "Check that this is the right card")
        self.scan_result = result
        self.items = [ItemReport(index=i, item=m) for i, m in enumerate(media)]
        self.journal = Journal.create(self.vault.layout.journal, self.id, {
            "state": State.SCANNED.value, "started": self.started, "operator": self.operator,
            "source": os.fsdecode(self.source), "items": [
                [card_file_to_dict(f) for f in it.files()] for it in self.items],
        })
        self.state = State.SCANNED
        self.vault.audit.append(self.operator, "session.started", self.id, {
            "items": len(self.items), "skipped": len(result.skipped),
            "bytes": result.total_bytes,
            "source": "device" if self.card.is_device else "folder"})
        for sk in result.skipped:
            self.vault.audit.append(self.operator, "file.skipped", self.id,
                                    {"reason": sk.reason})
        return result

    # -- 2. assess -----------------------------------------------------------------------
    def assess(self, progress: ProgressFn | None = None,
               cancelled: Cancelled | None = None) -> list[ItemReport]:
        """Decode every image in sandboxed workers; flag quality problems and bursts."""
        self._require(State.SCANNED)
        images = {it.item.primary.parts: it for it in self.items
                  if it.item.primary.kind == "image"}
        limits = DecodeLimits.from_config(self.config.imaging)
        total = len(images)
        done = 0
        with DecodePool(limits, workers=self.config.imaging.workers) as pool:
            todo = [(it.item.primary.parts, it.item.primary.identity) for it in images.values()]
            for analysis in pool.analyse(self.source, todo, cancelled=cancelled):
                report = images[tuple(analysis.parts)]
                self._apply_analysis(report, analysis)
                done += 1
                if progress:
                    progress(Progress("assess", done, total, report.display))
        if cancelled and cancelled():
            raise FailedSafely("assessment cancelled", "Nothing was written; start again")
        self._mark_duplicates()
        for it in self.items:
            it.decision, it.reason = it.suggested()
            if it.unreadable:
                self.vault.audit.append(self.operator, "file.unreadable", self.id,
                                        {"item": it.index, "reason": it.unreadable_reason})
        self._transition(State.ASSESSED)
        return self.items

    def _apply_analysis(self, report: ItemReport, analysis: ImageAnalysis) -> None:
        report.analysis = analysis
        if analysis.ok and analysis.metrics is not None:
            report.flags = assess(analysis.metrics, self.thresholds)

    def _mark_duplicates(self) -> None:
        candidates = []
        for it in self.items:
            a = it.analysis
            if a is None or not a.ok or a.metrics is None:
                continue
            captured = datetime.fromisoformat(a.captured) if a.captured else None
            candidates.append(BurstCandidate(key=str(it.index), captured=captured,
                                             metrics=a.metrics))
        for dup, kept in find_duplicates(candidates, self.thresholds).items():
            it = self.items[int(dup)]
            it.duplicate_of = int(kept)
            it.flags.append(Flag("duplicate", f"near-copy of image {int(kept) + 1}, "
                                 f"which is sharper; {explain('duplicate')}", None))

    # -- 3. consent ----------------------------------------------------------------------
    def record_consent(self, consent: ConsentRecord) -> None:
        """Record consent given or refused. Refused: nothing will be archived."""
        self._require(State.ASSESSED)
        self.consent = consent
        if not consent.granted:
            self._transition(State.REFUSED, sealed=self._sealed_b64(),
                             taken=sum(1 for it in self.items if not it.unreadable),
                             decisions=self._decisions())
            self.vault.audit.append(self.operator, "consent.refused", self.id, {
                "witness": bool(consent.witness), "images": len(self.items)})
            return
        self._transition(State.CONSENT)
        self.vault.audit.append(self.operator, "consent.recorded", self.id, {
            "scopes": list(consent.scopes), "method": consent.method})

    # -- 4. patient ID -------------------------------------------------------------------
    def identify(self, patient: PatientId) -> None:
        self._require(State.CONSENT)
        self.patient = patient
        self._transition(State.IDENTIFIED, sealed=self._sealed_b64())
        self.vault.audit.append(self.operator, "patient.identified", self.id,
                                {"scheme": patient.scheme})

    # -- 5. review -----------------------------------------------------------------------
    def suggest_all(self) -> None:
        for it in self.items:
            it.decision, it.reason = it.suggested()

    def set_decision(self, index: int, decision: str, reason: str | None = None) -> None:
        it = self.items[index]
        if it.unreadable:
            raise BadInput(f"image {index + 1} is unreadable and stays on the card")
        if decision not in ("keep", "discard"):
            raise BadInput(f"decision must be keep or discard, not {decision!r}")
        it.decision = decision  # type: ignore[assignment]
        if decision == "keep":
            it.reason = None
        else:
            it.reason = reason or (it.suggested()[1] or OPERATOR_REASON)

    def keep_all(self) -> None:
        for it in self.items:
            if not it.unreadable:
                it.decision, it.reason = "keep", None

    def finish_review(self, keywords: Iterable[str] = ()) -> None:
        """Fix the decisions; every discard is logged with its reason."""
        self._require(State.IDENTIFIED)
        self.keywords = [k.strip() for k in keywords if k.strip()]
        if not any(it.decision == "keep" and not it.unreadable for it in self.items):
            pass  # all discarded is allowed: nothing to archive, everything wiped
        self._transition(State.REVIEWED, sealed=self._sealed_b64(),
                         decisions=self._decisions())
        for it in self.items:
            if it.decision == "discard" and not it.unreadable:
                self.vault.audit.append(self.operator, "image.discarded", self.id,
                                        {"item": it.index, "reason": it.reason})

    # -- 6. archive ----------------------------------------------------------------------
    def kept(self) -> list[ItemReport]:
        return [it for it in self.items if it.decision == "keep" and not it.unreadable]

    def archive(self, progress: ProgressFn | None = None,
                cancelled: Cancelled | None = None) -> None:
        """Encrypt, verify and commit every kept file; roll back everything on any failure."""
        self._require(State.REVIEWED)
        kept = self.kept()
        plan = {f"{it.index}/{n}": f for it in kept for n, f in enumerate(it.files())}
        planned = {key: new_object_id() for key in plan}  # recovery removes these on rollback
        self._transition(State.ARCHIVING, planned=planned)
        total_bytes = sum(f.identity.size for f in plan.values())
        try:
            self._write_objects(plan, planned, total_bytes, progress, cancelled)
            self.vault.catalog.commit_session(self._catalog_record(State.ARCHIVED))
        except BaseException as exc:
            self._roll_back_archive(exc)
            if isinstance(exc, VaultFull):
                raise
            if isinstance(exc, CardFileError):
                raise FailedSafely(f"{exc.user_message()}; nothing was archived or wiped",
                                   "Check the card and start the session again") from exc
            if isinstance(exc, OSError):
                raise FailedSafely(f"reading the card failed ({exc.strerror or exc}); "
                                   "nothing was archived or wiped",
                                   "Check the card is still inserted, then start again") from exc
            raise
        # Committed: from here a failure is finished by recovery, never rolled back.
        crashpoints.reached("catalog.commit")
        self._transition(State.ARCHIVED, audit_pending=True)
        self._audit_archived()
        self._transition(State.ARCHIVED, audit_pending=False)

    def _write_objects(self, plan: Mapping[str, CardFile], planned: Mapping[str, str],
                       total_bytes: int, progress: ProgressFn | None,
                       cancelled: Cancelled | None) -> None:
        done_bytes = 0
        root_fd = open_root(self.source)
        try:
            for n, (key, card_file) in enumerate(plan.items()):
                if cancelled and cancelled():
                    raise FailedSafely("archiving cancelled")
                if progress:
                    progress(Progress("archive", n, len(plan), card_file.display,
                                      done_bytes, total_bytes))
                fd = open_card_file(root_fd, card_file.parts, expect=card_file.identity)
                with os.fdopen(fd, "rb", buffering=0) as src:
                    obj = self.vault.objects.put(
                        src, self.vault.public_key, object_id=planned[key],
                        crash_hook=crashpoints.reached)
                if obj.size != card_file.identity.size:
                    raise FailedSafely(f"{card_file.display} changed while it was archived",
                                       "Nothing was wiped; start the session again")
                self.stored[key] = obj
                done_bytes += obj.size
            if progress:
                progress(Progress("archive", len(plan), len(plan), None, done_bytes,
                                  total_bytes))
        finally:
            os.close(root_fd)

    def _audit_archived(self) -> None:
        self.vault.audit.append(self.operator, "archive.verified", self.id, {
            "images": len(self.kept()), "objects": len(self.stored),
            "bytes": sum(o.size for o in self.stored.values()),
            "discarded": count_discards(self.items)})

    def _roll_back_archive(self, exc: BaseException) -> None:
        """Destroy every object this session wrote; the card is untouched."""
        planned = (self.journal.data.get("planned") if self.journal else None) or {}
        for oid in planned.values():
            self.vault.objects.remove(oid)
        self.stored.clear()
        reason = exc.user_message() if isinstance(exc, ClinivaultError) else repr(exc)
        self._transition(State.ABORTED, reason=reason)
        self.vault.audit.append(self.operator, "session.aborted", self.id,
                                {"step": "archive", "reason": reason[:300]})
        if self.journal:
            self.journal.remove()

    def _catalog_record(self, state: State) -> dict[str, Any]:
        objects = []
        for key, obj in self.stored.items():
            idx, n = (int(x) for x in key.split("/"))
            it = self.items[idx]
            card_file = it.files()[n]
            captured = it.analysis.captured if it.analysis and n == 0 else None
            objects.append({"id": obj.id, "sha256": obj.sha256, "size": obj.size,
                            "object_size": obj.object_size, "kind": card_file.kind,
                            "captured": captured})
        return {
            "session": self.id, "started": self.started, "finished": _now(),
            "operator": self.operator, "state": state.value,
            "taken": sum(1 for it in self.items if not it.unreadable),
            "retained": len(self.kept()), "discarded": count_discards(self.items),
            "archived_bytes": sum(o.size for o in self.stored.values()),
            "objects": objects,
            "consent_scopes": list(self.consent.scopes) if self.consent else [],
            "wipe": None, "tombstone": None, "sealed": self._sealed_b64(),
        }

    # -- 7. wipe -------------------------------------------------------------------------
    def wipe(self, progress: ProgressFn | None = None, *, mode: str = "auto",
             destroy_unarchived: bool = False) -> WipeOutcome:
        """Overwrite and remove every archived or discarded file (all images if refused).

        *mode* "files" is the per-file wipe; "device" (the default for a block device) goes
        on to overwrite and verify the whole card — but only when nothing unarchived would
        be destroyed with it, or *destroy_unarchived* says the operator confirmed that.
        A device source also gets a residue scan: every 4 KiB block of the session's files
        looked for on the whole card afterwards.
        """
        refused = self.state == State.REFUSED
        if not refused:
            self._require(State.ARCHIVED)
        if mode == "auto":
            mode = "device" if self.card.is_device else "files"
        if mode == "device" and not self.card.is_device:
            raise BadInput("a whole-card wipe needs the card's block device as the source")
        targets = [f for it in self.items if not it.unreadable for f in it.files()]
        self._transition(State.WIPING, refused=refused, wipe_mode=mode)
        prints = self._fingerprints(targets) if self.card.is_device else None
        total = sum(f.identity.size for f in targets)
        try:
            stable = self.card.make_writable()
        except CardReadOnly:
            outcome = WipeOutcome(mode="files", read_only=True, not_wiped=[
                (f.parts, "card is write-protected") for f in targets])
        else:
            self.source = self.card.root
            if not stable:
                targets = self._reidentified(targets)
            outcome = wipe_files(self.source, targets, progress=(
                (lambda done, _t: progress(Progress("wipe", done, total, None, done, total)))
                if progress else None), crash_hook=crashpoints.reached)
            if mode == "device" and not outcome.read_only and not outcome.stopped:
                self.wipe_blockers = self._unarchived_on_card(outcome)
                if not self.wipe_blockers or destroy_unarchived:
                    self.device_outcome = self._wipe_device(progress)
        self.wipe_outcome = outcome
        if prints is not None and self.card.identity is not None:
            self.residue = residue_scan(self.card.identity.disk_devnode, prints, progress=(
                (lambda _ph, done, tot: progress(Progress("residue scan", done, tot)))
                if progress else None))
        summary = self._wipe_summary()
        assert summary is not None
        if refused:
            assert self.journal is not None
            self.vault.catalog.commit_session(refused_record(self.journal,
                                                             summary.catalog_dict()))
        else:
            self.vault.catalog.update_session(self.id, {"wipe": summary.catalog_dict(),
                                                        "state": State.DONE.value})
        self.vault.audit.append(self.operator, "wipe.done", self.id, {
            "mode": summary.mode, "files": len(outcome.wiped),
            "not_wiped": len(outcome.not_wiped), "read_only": summary.read_only,
            "cleared": bool(self.device_outcome and self.device_outcome.cleared),
            "unarchived_blocking": 0 if self.device_outcome else len(self.wipe_blockers),
            "residue": self.residue, "refused": refused})
        self._transition(State.DONE)
        self.vault.audit.append(self.operator, "session.finished", self.id,
                                {"note": self.summary().note()})
        if self.journal:
            self.journal.remove()
        return outcome

    def _fingerprints(self, targets: list[CardFile]) -> set[bytes]:
        """4 KiB block fingerprints of every file the wipe will remove (for the residue scan),
        taken while the card is still mounted read-only."""
        prints: set[bytes] = set()
        root_fd = open_root(self.source)
        try:
            for f in targets:
                try:
                    fd = open_card_file(root_fd, f.parts, expect=f.identity)
                except CardFileError:
                    continue
                with os.fdopen(fd, "rb") as fh:
                    prints |= block_fingerprints(fh)
        finally:
            os.close(root_fd)
        return prints

    def _reidentified(self, targets: list[CardFile]) -> list[CardFile]:
        digests = {}
        for key, obj in self.stored.items():
            idx, n = (int(x) for x in key.split("/"))
            digests[self.items[idx].files()[n].parts] = obj.sha256
        root_fd = open_root(self.source)
        try:
            return [reidentify(root_fd, f, digests.get(f.parts)) for f in targets]
        finally:
            os.close(root_fd)

    def unarchived_on_card(self) -> list[str]:
        """Files a whole-card wipe would destroy that are not in the vault, by name: the
        kiosk asks the operator to confirm these before offering the whole-card wipe."""
        return self._unarchived_on_card(WipeOutcome())

    def _unarchived_on_card(self, outcome: WipeOutcome) -> list[str]:
        names = [it.display for it in self.items if it.unreadable for _ in it.files()]
        if self.scan_result:
            names += [sk.display for sk in self.scan_result.skipped if sk.category != "empty"]
        names += [display_name(p) for p, _ in outcome.not_wiped]
        return names

    def _wipe_device(self, progress: ProgressFn | None) -> DeviceWipeOutcome:
        assert self.card.candidate is not None and self.card.identity is not None
        outcome = wipe_device(
            self.card.candidate, self.card.identity, vault_path=self.vault.root,
            mounted=self.card.mounted, progress=(
                (lambda phase, done, tot: progress(Progress(f"wipe {phase}", done, tot,
                                                            None, done, tot)))
                if progress else None))
        crashpoints.reached("wipe.device")
        return outcome

    def skip_wipe(self, reason: str) -> None:
        """``--wipe none``: finish without touching the card (logged, and said in the note)."""
        self._require(State.ARCHIVED)
        self.vault.catalog.update_session(self.id, {"state": State.DONE.value})
        self.vault.audit.append(self.operator, "wipe.skipped", self.id, {"reason": reason})
        self._transition(State.DONE)
        if self.journal:
            self.journal.remove()

    def _wipe_summary(self) -> WipeSummary | None:
        outcome = self.wipe_outcome
        if outcome is None:
            return None
        words = outcome.summary()
        mode = outcome.mode
        if self.device_outcome is not None:
            mode = "device"
            words = self.device_outcome.summary()
        elif self.wipe_blockers:
            shown = ", ".join(self.wipe_blockers[:3])
            more = f" and {len(self.wipe_blockers) - 3} more" if len(self.wipe_blockers) > 3 \
                else ""
            words += (f"; whole-card wipe NOT run: {len(self.wipe_blockers)} files on the card "
                      f"are not archived ({shown}{more}); confirm their destruction to wipe "
                      "the whole card")
        if self.residue is not None:
            words += ("; residue scan: no fragment of any session file found on the card"
                      if self.residue == 0 else
                      f"; residue scan: {self.residue} blocks of session files still on "
                      "the card")
        read_only = outcome.read_only or bool(self.device_outcome and
                                              self.device_outcome.read_only)
        complete = not (read_only or outcome.stopped or outcome.not_wiped or
                        (self.wipe_blockers and self.device_outcome is None) or
                        (self.residue or 0) > 0 or
                        (self.device_outcome is not None and not self.device_outcome.cleared))
        return WipeSummary(
            mode=mode, files=len(outcome.wiped), bytes=outcome.bytes_overwritten,
            read_only=read_only,
            not_wiped=[(display_name(p), r) for p, r in outcome.not_wiped],
            residue=self.residue, words=words, complete=complete)

    # -- 8. summary ----------------------------------------------------------------------
    def summary(self) -> SessionSummary:
        rejected = [{"file": it.display, "reason": it.unreadable_reason or "unreadable"}
                    for it in self.items if it.unreadable]
        if self.scan_result:
            rejected += [{"file": sk.display, "reason": sk.reason}
                         for sk in self.scan_result.skipped]
        cleared = self.device_outcome is not None and self.device_outcome.cleared
        left = [] if cleared else [{"file": it.display, "reason": it.unreadable_reason or ""}
                                   for it in self.items if it.unreadable]
        consent_words = self.consent.summary() if self.consent else "consent not recorded"
        refused = self.consent is not None and not self.consent.granted
        return SessionSummary(
            session=self.id, state=self.state.value if self.state else "new",
            taken=sum(1 for it in self.items if not it.unreadable),
            retained=0 if refused else len(self.kept()),
            discarded={} if refused else count_discards(self.items),
            rejected=rejected, left_on_card=left,
            archived_bytes=sum(o.size for o in self.stored.values()),
            consent=consent_words,
            wipe=self._wipe_summary())

    # -- helpers -------------------------------------------------------------------------
    def _require(self, state: State) -> None:
        if self.state != state:
            raise BadInput(f"the session is at step '{self.state}', not '{state}'")

    def _transition(self, state: State, **changes: Any) -> None:
        assert self.journal is not None
        self.journal.write(state.value, **changes)
        self.state = state

    def _decisions(self) -> list[dict[str, Any]]:
        return [{"decision": it.decision, "reason": it.reason, "unreadable": it.unreadable}
                for it in self.items]

    def _identifying(self) -> dict[str, Any]:
        """Everything identifying, sealed as one blob: patient ID, consent, names, keywords."""
        objects: dict[str, Any] = {}
        for key, obj in self.stored.items():
            idx, n = (int(x) for x in key.split("/"))
            it = self.items[idx]
            f = it.files()[n]
            objects[obj.id] = {"name": "/".join(f.parts), "item": idx, "role": (
                "primary" if n == 0 else f.kind), "keywords": it.keywords,
                "body_site": it.body_site, "consent_form": it.consent_form,
                "captured": it.analysis.captured if it.analysis and n == 0 else None}
        return {"patient": ({"scheme": self.patient.scheme, "value": self.patient.value}
                            if self.patient else None),
                "consent": self.consent.to_dict() if self.consent else None,
                "keywords": self.keywords, "objects": objects}

    def _sealed_b64(self) -> str:
        blob = json.dumps(self._identifying(), sort_keys=True, ensure_ascii=True).encode()
        return base64.b64encode(self.vault.seal(blob)).decode()
