"""``clinivault check``: prove the vault holds what its catalog says (like restic
``check --read-data``): every object decrypts, its plaintext hash matches the catalog, and
there are no orphan objects or catalog entries without objects."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from core.errors import IntegrityError
from core.vault.vault import Vault


class _HashSink:
    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return len(data)


@dataclass
class CheckReport:
    objects_checked: int = 0
    bytes_checked: int = 0
    problems: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.problems or self.orphans or self.missing)

    def lines(self) -> list[str]:
        out = [f"{self.objects_checked} objects decrypted and verified "
               f"({self.bytes_checked} bytes)"]
        out += [f"BAD: {p}" for p in self.problems]
        out += [f"MISSING: object {m} is in the catalog but not in the vault"
                for m in self.missing]
        out += [f"ORPHAN: object {o} is in the vault but in no catalog entry"
                for o in self.orphans]
        return out


def check_vault(vault: Vault, private: X25519PrivateKey, *,
                progress: Callable[[int, int], None] | None = None) -> CheckReport:
    report = CheckReport()
    expected: dict[str, tuple[str, str, int]] = {}
    for record in vault.catalog.iter_sessions():
        for obj in record.get("objects") or []:
            expected[obj["id"]] = (record["session"], obj["sha256"], obj["size"])
    present = set(vault.objects.iter_ids())
    report.orphans = sorted(present - set(expected))
    report.missing = sorted(set(expected) - present)
    todo = sorted(set(expected) & present)
    for n, oid in enumerate(todo):
        session, sha, size = expected[oid]
        sink = _HashSink()
        try:
            vault.objects.open_plaintext(oid, private, sink)  # type: ignore[arg-type]
        except IntegrityError as exc:
            report.problems.append(f"object {oid} (session {session}): {exc.user_message()}")
            continue
        if sink.hash.hexdigest() != sha or sink.size != size:
            report.problems.append(f"object {oid} (session {session}): content does not "
                                   "match the catalog's SHA-256")
        report.objects_checked += 1
        report.bytes_checked += sink.size
        if progress:
            progress(n + 1, len(todo))
    vault.audit.append("custodian", "check", None, {
        "objects": report.objects_checked, "problems": len(report.problems),
        "orphans": len(report.orphans), "missing": len(report.missing)})
    return report
