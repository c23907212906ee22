"""Consent withdrawal: narrow a session's consent, or destroy its images and leave a tombstone.

Why two different things under one command:

* ``teaching`` / ``publication``: the patient takes back a use, not the photograph. The
  consent record is sealed inside the session's blob, so the blob is unsealed, its consent
  replaced by ``core.consent.narrow`` of it (which records the scope as withdrawn), sealed
  again to the public key, and the catalog's ``consent_scopes`` follows. Exports for that
  scope are refused from then on.
* ``all``: the images leave the vault. Every object of the session is overwritten and
  unlinked (``ObjectStore.remove``), then the catalog record becomes a tombstone: counts and
  dates only, ``objects`` empty, state ``withdrawn``, and ``sealed`` replaced by a sealed
  ``{"withdrawn": true}`` — the patient ID, consent details, file names and keywords are gone
  from the vault too, so nothing decryptable about the session remains. (The audit log keeps
  that session id X was withdrawn on date D, which is what an auditor must be able to see.)

Order for a crash: objects are destroyed *before* the catalog changes. A crash in between
leaves catalog entries whose objects are gone (``check`` says MISSING) and running the same
withdrawal again finishes it; the other order could leave decryptable orphans behind a
tombstone that says they were destroyed.

What this cannot reach: copies made earlier — exports already handed over, and backups until
the next ``clinivault backup`` run, which mirrors the vault and destroys the withdrawn objects
in the backup too. Flash and journalling file systems may keep old blocks; the objects were
encrypted, so what may linger is ciphertext.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from core.consent import WITHDRAWABLE, narrow
from core.custodian.access import Custodian
from core.errors import BadInput, FailedSafely

CHOICES = (*WITHDRAWABLE, "all")
TOMBSTONE_BLOB = {"withdrawn": True, "version": 1}
WITHDRAWN_STATE = "withdrawn"


@dataclass(frozen=True)
class WithdrawResult:
    session: str
    scope: str
    changed: bool
    scopes_now: tuple[str, ...]
    withdrawn_scopes: tuple[str, ...]
    objects_destroyed: int = 0
    images_destroyed: int = 0

    def line(self) -> str:
        if self.scope == "all":
            return (f"session {self.session}: consent withdrawn; {self.images_destroyed} images "
                    f"({self.objects_destroyed} files) destroyed; a tombstone remains")
        if not self.changed:
            return (f"session {self.session}: consent did not include {self.scope}; "
                    "nothing changed")
        return (f"session {self.session}: {self.scope} consent withdrawn; consent now covers "
                f"{', '.join(self.scopes_now)}")

    def as_dict(self) -> dict[str, Any]:
        return {"session": self.session, "scope": self.scope, "changed": self.changed,
                "scopes": list(self.scopes_now), "withdrawn": list(self.withdrawn_scopes),
                "objects_destroyed": self.objects_destroyed,
                "images_destroyed": self.images_destroyed}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def withdraw(custodian: Custodian, session: str, scope: str) -> WithdrawResult:
    """Withdraw *scope* (teaching, publication or all) for *session*; audited."""
    if scope not in CHOICES:
        if scope == "record":
            raise BadInput("health record consent cannot be withdrawn on its own: the "
                           "photographs are part of the clinical record",
                           "Use --scope all to destroy the session's images")
        raise BadInput(f"unknown withdrawal scope {scope!r} (known: {', '.join(CHOICES)})")
    record = custodian.record(session)
    if record.get("tombstone") is not None:
        raise BadInput(f"session {session} was already withdrawn")
    if (custodian.vault.layout.journal / f"{session}.json").exists():
        raise BadInput(f"session {session} is unfinished",
                       "Run 'clinivault recover VAULT' first")
    secrets = custodian.secrets(record)
    consent = secrets.consent
    if consent is None or not consent.granted:
        raise BadInput(f"session {session} holds no consented images (consent was refused)")
    if scope == "all":
        return _destroy(custodian, record)
    narrowed = narrow(consent, scope)
    if narrowed == consent:
        return WithdrawResult(session, scope, False, consent.scopes, consent.withdrawn)
    blob = dict(secrets.raw)
    blob["consent"] = narrowed.to_dict()
    custodian.vault.catalog.update_session(session, {
        "sealed": custodian.reseal(blob), "consent_scopes": list(narrowed.scopes)})
    custodian.vault.audit.append(custodian.actor, "consent.withdrawn", session, {
        "scope": scope, "scopes": list(narrowed.scopes)})
    custodian.refresh_index()
    return WithdrawResult(session, scope, True, narrowed.scopes, narrowed.withdrawn)


def _destroy(custodian: Custodian, record: dict[str, Any]) -> WithdrawResult:
    sid = record["session"]
    objects = record.get("objects") or []
    images = sum(1 for o in objects if o["kind"] == "image")
    destroyed = 0
    for obj in objects:
        try:
            if custodian.vault.objects.remove(obj["id"]):
                destroyed += 1
        except OSError as exc:
            raise FailedSafely(f"could not destroy object {obj['id']} of session {sid} "
                               f"({exc.strerror or exc}); the catalog is unchanged",
                               "Fix the vault disk, then run the same withdrawal again") from exc
    tombstone = {"withdrawn": _now(), "scope": "all", "objects_destroyed": len(objects),
                 "images_destroyed": images, "bytes_destroyed": record.get("archived_bytes", 0)}
    custodian.vault.catalog.update_session(sid, {
        "objects": [], "archived_bytes": 0, "consent_scopes": [], "state": WITHDRAWN_STATE,
        "tombstone": tombstone, "sealed": custodian.reseal(dict(TOMBSTONE_BLOB))})
    custodian.vault.audit.append(custodian.actor, "consent.withdrawn", sid, {
        "scope": "all", "objects_destroyed": len(objects), "images_destroyed": images,
        "already_gone": len(objects) - destroyed})
    custodian.refresh_index()
    return WithdrawResult(sid, "all", True, (), (), len(objects), images)
