"""An unlocked vault: the vault, its private key and who unlocked it, for one task.

Why an object: search, export and withdrawal each need the same three things, and the
private key must only ever be held by code that a custodian started with a passphrase (the
audit log records every unlock and failed unlock). Holding them together also lets the
search index be opened and brought up to date once per unlock, not once per query.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from core.consent import ConsentError, ConsentRecord
from core.errors import BadInput, IntegrityError
from core.patient_id import PatientId
from core.vault import format as objfmt
from core.vault.vault import Vault

if TYPE_CHECKING:
    from core.custodian.search_index import RefreshStats, SearchIndex


@dataclass(frozen=True)
class SessionSecrets:
    """What a session's sealed blob says (see ``IngestSession._identifying``).

    ``raw`` is the parsed blob itself, kept so a re-seal (consent withdrawal) changes only
    the field it means to change. ``patient`` is rebuilt without re-validation: it was
    validated at ingest, and a later config change (say, test IDs no longer allowed) must not
    make an archived session unreadable.
    """

    raw: dict[str, Any] = field(repr=False)
    patient: PatientId | None
    consent: ConsentRecord | None
    keywords: tuple[str, ...]
    objects: dict[str, dict[str, Any]] = field(repr=False)
    withdrawn: bool = False

    def object_keywords(self) -> list[str]:
        out: list[str] = []
        for meta in self.objects.values():
            for k in meta.get("keywords") or ():
                if isinstance(k, str) and k.strip():
                    out.append(k.strip())
        return out

    def body_sites(self) -> list[str]:
        sites: list[str] = list(self.consent.body_areas) if self.consent else []
        for meta in self.objects.values():
            site = meta.get("body_site")
            if isinstance(site, str) and site.strip():
                sites.append(site.strip())
        return _unique(sites)

    def all_keywords(self) -> list[str]:
        return _unique([*self.keywords, *self.object_keywords()])


def _unique(items: list[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for item in items:
        key = item.casefold()
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


def sealed_digest(sealed_b64: str) -> str:
    """A short fingerprint of a record's ``sealed`` text: the index re-unseals only when it
    changes (consent withdrawn, session re-committed by recovery)."""
    return hashlib.sha256(sealed_b64.encode("ascii")).hexdigest()[:24]


def encode_blob(blob: dict[str, Any]) -> bytes:
    """The sealed blob's JSON, byte-for-byte as ingest writes it."""
    return json.dumps(blob, sort_keys=True, ensure_ascii=True).encode()


def parse_secrets(plain: bytes, session: str) -> SessionSecrets:
    """Parse an unsealed blob; IntegrityError naming the session if it is not what ingest
    wrote (it authenticated, so this means a bug or a foreign writer, not tampering)."""
    try:
        blob = json.loads(plain)
    except ValueError:
        raise IntegrityError(f"session {session}: its sealed details are not JSON",
                             "Run 'clinivault check'; restore the catalog from a backup") from None
    if not isinstance(blob, dict):
        raise IntegrityError(f"session {session}: its sealed details are not a JSON object")
    if blob.get("withdrawn"):
        return SessionSecrets(raw=blob, patient=None, consent=None, keywords=(), objects={},
                              withdrawn=True)
    patient = None
    p = blob.get("patient")
    if isinstance(p, dict) and isinstance(p.get("scheme"), str) and isinstance(p.get("value"),
                                                                                str):
        patient = PatientId(p["scheme"], p["value"])
    consent = None
    if blob.get("consent") is not None:
        try:
            consent = ConsentRecord.from_dict(blob["consent"])
        except ConsentError as exc:
            raise IntegrityError(f"session {session}: its sealed consent record is malformed "
                                 f"({exc.message})") from None
    keywords = tuple(k for k in blob.get("keywords") or () if isinstance(k, str))
    objects = blob.get("objects") or {}
    if not isinstance(objects, dict):
        raise IntegrityError(f"session {session}: its sealed object list is malformed")
    return SessionSecrets(raw=blob, patient=patient, consent=consent, keywords=keywords,
                          objects={str(k): v for k, v in objects.items() if isinstance(v, dict)})


class Custodian:
    """A vault unlocked by one custodian. Build it with :func:`unlock`."""

    def __init__(self, vault: Vault, private: X25519PrivateKey, actor: str) -> None:
        self.vault = vault
        self.private = private
        self.actor = actor
        self._index: SearchIndex | None = None
        self.index_stats: RefreshStats | None = None

    def unseal_b64(self, sealed_b64: str, session: str) -> bytes:
        try:
            blob = base64.b64decode(sealed_b64, validate=True)
        except (binascii.Error, ValueError):
            raise IntegrityError(f"session {session}: its sealed details are not base64") from None
        return objfmt.unseal(blob, self.private)

    def secrets(self, record: dict[str, Any]) -> SessionSecrets:
        """Unseal and parse a catalog record's sealed details (in memory only)."""
        sid = record["session"]
        return parse_secrets(self.unseal_b64(record["sealed"], sid), sid)

    def reseal(self, blob: dict[str, Any]) -> str:
        """Seal a blob to the vault public key; the base64 text the catalog stores."""
        return base64.b64encode(self.vault.seal(encode_blob(blob))).decode("ascii")

    def record(self, session: str) -> dict[str, Any]:
        """The catalog record of *session*, or BadInput naming it."""
        rec = self.vault.catalog.get_session(session)
        if rec is None:
            raise BadInput(f"session {session} is not in this vault",
                           "Check the session id ('clinivault find' lists them)")
        return rec

    @property
    def index(self) -> SearchIndex:
        """The search index, opened on first use and brought up to date then."""
        if self._index is None:
            from core.custodian.search_index import SearchIndex

            index = SearchIndex.open(self.vault.layout, self.private)
            self.index_stats = index.refresh(self.vault.catalog, self.secrets)
            self._index = index
        return self._index

    def refresh_index(self) -> None:
        """Bring the index up to date after this process changed the catalog (withdrawal), so
        the index never answers from a session's old sealed details."""
        if self._index is None:
            _ = self.index  # opening refreshes
        else:
            self.index_stats = self._index.refresh(self.vault.catalog, self.secrets)


def unlock(vault: Vault, passphrase: bytes, custodian: str | None = None) -> Custodian:
    """Open the private key with a custodian's passphrase (audited either way)."""
    private = vault.unlock(passphrase, custodian)
    return Custodian(vault, private, custodian or "custodian")
