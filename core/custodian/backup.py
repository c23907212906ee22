"""Backup and restore: an incremental, verified mirror of the vault's files, and its way back.

Why no passphrase: everything copied is already ciphertext (objects, sealed catalog blobs,
the encrypted search index) or holds no secret a backup operator may not see (key slots are
scrypt-sealed; the audit log has no patient ID). A custodian can run the nightly backup
without typing a passphrase on a kiosk.

A backup directory is laid out like a vault (so a damaged vault can even be inspected from
it) plus ``backup.json``::

    backup.json          format, vault public key, first/last run, and for every file its
                         SHA-256 and size (and, for catalog and index files, the source's
                         stat when copied, so an unchanged file is not copied again)
    vault.json  users.json  audit/log.jsonl  audit/key.json  catalog/*.json  index/*.idx
    objects/ab/<id>

Why these rules:

* **Consistent snapshot**: the caller holds the vault open, i.e. its single-owner lock, for
  the whole run, so no session commits half-way through the copy; the audit log and its key
  state are copied together with no append in between, so the backup's log verifies.
* **Incremental**: objects are written once and never modified, so one already in the
  backup (with its recorded size) is not copied again; catalog and index files are copied
  when their stat changed; ``vault.json``, ``users.json`` and the audit files every time.
* **Verified**: each copy goes to a temp file, is fsynced, dropped from the page cache and
  read back; its SHA-256 must equal the one taken while reading the source, then it is
  renamed into place. ``backup.json`` is written last, so an interrupted run is simply
  finished by the next one.
* **Mirror**: files that left the vault (objects destroyed by a consent withdrawal) are
  overwritten and removed from the backup too: a withdrawal must reach the backup.
* **Unfinished sessions** refuse a backup (run ``clinivault recover`` first): their objects
  are in no catalog record yet, and would restore as orphans.

Restore copies every file into a staging directory beside the target, checks each against
``backup.json`` (size and SHA-256), checks that every object the catalog names is present and
that the result opens as a vault, and only then renames the staging directory into place. A
damaged backup therefore restores nothing.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from core.catalog import Catalog
from core.custodian.search_index import index_dir
from core.errors import BadInput, FailedSafely, IntegrityError
from core.fsutil import (
    DIR_MODE,
    FILE_MODE,
    TEMP_PREFIX,
    atomic_write_bytes,
    ensure_dir,
    fsync_dir,
)
from core.session.journal import unfinished
from core.vault import keys
from core.vault.layout import VaultLayout
from core.vault.store import ObjectStore
from core.vault.vault import Vault

FORMAT = "clinivault-backup/v1"
MANIFEST = "backup.json"
CHUNK = 1 << 20
MAX_MANIFEST_BYTES = 1 << 30

_REL_PATH = re.compile(
    r"vault\.json|users\.json|audit/log\.jsonl|audit/key\.json"
    r"|catalog/\d{4}-\d{2}-\d{2}\.json|index/[A-Za-z0-9_-]{1,32}\.idx"
    r"|objects/([A-Za-z0-9_-]{2})/([A-Za-z0-9_-]{8,128})")
REQUIRED = ("vault.json", "audit/log.jsonl", "audit/key.json")


class SourceMismatch(IntegrityError):
    """A file to restore does not match what the backup manifest recorded for it."""


@dataclass
class BackupStats:
    objects_total: int = 0
    objects_copied: int = 0
    objects_kept: int = 0
    objects_removed: int = 0
    files_copied: int = 0
    files_kept: int = 0
    files_removed: int = 0
    bytes_copied: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def line(self) -> str:
        return (f"{self.objects_copied} new objects copied and verified, {self.objects_kept} "
                f"already in the backup, {self.objects_removed} removed (withdrawn); "
                f"{self.files_copied} other files copied, {self.files_kept} unchanged; "
                f"{self.bytes_copied} bytes written")


@dataclass
class RestoreStats:
    files: int = 0
    objects: int = 0
    bytes: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


# -- helpers ----------------------------------------------------------------------------------


def _public_b64(vault_keyfile: keys.VaultKeyFile) -> str:
    raw = vault_keyfile.public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def _signature(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        with contextlib.suppress(OSError, AttributeError):  # read from disk, not the cache
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def copy_verified(src: Path, dst: Path, *, expect: tuple[str, int] | None = None
                  ) -> tuple[str, int]:
    """Copy *src* to *dst* via a temp file, fsync, read back and compare hashes; rename.

    With *expect* (sha256, size) the source must also match it (restore: the backup's
    manifest), else IntegrityError and *dst* is untouched.
    """
    ensure_dir(dst.parent)
    tmp = dst.parent / f"{TEMP_PREFIX}{dst.name}.{secrets.token_hex(4)}"
    digest = hashlib.sha256()
    size = 0
    try:
        with open(src, "rb") as fi:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         FILE_MODE)
            with os.fdopen(fd, "wb") as fo:
                while chunk := fi.read(CHUNK):
                    digest.update(chunk)
                    fo.write(chunk)
                    size += len(chunk)
                fo.flush()
                os.fsync(fo.fileno())
        source = digest.hexdigest()
        if expect is not None and (source, size) != expect:
            raise SourceMismatch(f"{src.name} does not match its recorded SHA-256 and size")
        if _hash_file(tmp) != (source, size):
            raise IntegrityError(f"the copy of {src.name} did not read back as written",
                                 "Check the backup disk")
        os.replace(tmp, dst)
        fsync_dir(dst.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return source, size


def destroy_file(path: Path) -> None:
    """Overwrite then unlink (a withdrawn object must not linger in a backup)."""
    with contextlib.suppress(FileNotFoundError):
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            done = 0
            while done < size:
                n = min(CHUNK, size - done)
                os.write(fd, secrets.token_bytes(n))
                done += n
            os.fsync(fd)
        finally:
            os.close(fd)
        path.unlink()
        fsync_dir(path.parent)


def _inside(path: Path, other: Path) -> bool:
    a, b = Path(os.path.realpath(path)), Path(os.path.realpath(other))
    return a == b or b in a.parents


def _sources(vault: Vault) -> dict[str, Path]:
    """Relative path in the backup -> source file, for everything a backup holds."""
    layout = vault.layout
    out: dict[str, Path] = {"vault.json": layout.keyfile}
    if layout.users.is_file():
        out["users.json"] = layout.users
    out["audit/log.jsonl"] = layout.audit_log
    out["audit/key.json"] = layout.audit_key
    for day in vault.catalog.days():
        out[f"catalog/{day}.json"] = layout.catalog / f"{day}.json"
    idx = index_dir(layout)
    if idx.is_dir():
        for p in sorted(idx.iterdir()):
            if p.is_file() and p.suffix == ".idx" and not p.name.startswith(TEMP_PREFIX):
                out[f"index/{p.name}"] = p
    for oid in vault.objects.iter_ids():
        out[f"objects/{oid[:2]}/{oid}"] = layout.object_path(oid)
    return out


def read_manifest(root: Path) -> dict[str, Any]:
    """Parse ``backup.json``; BadInput if *root* is not a clinivault backup."""
    path = root / MANIFEST
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise BadInput(f"{path} is too large to be a backup manifest")
        manifest = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise BadInput(f"{root} is not a clinivault backup (no {MANIFEST})") from None
    except ValueError:
        raise BadInput(f"{path} is damaged (not JSON)", "Use another backup copy") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT \
            or not isinstance(manifest.get("files"), dict):
        raise BadInput(f"{path} is not a {FORMAT} manifest")
    for rel, entry in manifest["files"].items():
        m = _REL_PATH.fullmatch(rel) if isinstance(rel, str) else None
        if m is None or (m.group(1) is not None and m.group(2)[:2] != m.group(1)):
            raise BadInput(f"{path} names an unexpected file {rel!r}",
                           "The manifest is damaged or was altered")
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
                and type(entry.get("size")) is int):
            raise BadInput(f"{path}: the entry for {rel} is malformed")
    return manifest


# -- backup -----------------------------------------------------------------------------------


def check_backup_destination(to: Path, vault_root: Path) -> None:
    """Refuse a destination inside the vault, or a non-empty directory that is no backup."""
    if _inside(to, vault_root) or _inside(vault_root, to):
        raise BadInput(f"{to} is inside the vault (or holds it)",
                       "Back up to a directory on another disk")
    if to.exists():
        if not to.is_dir():
            raise BadInput(f"{to} exists and is not a directory")
        if not (to / MANIFEST).exists() and any(to.iterdir()):
            raise BadInput(f"{to} is not empty and holds no clinivault backup",
                           "Back up to a new or empty directory, or to an earlier backup")
    elif not to.parent.is_dir():
        raise BadInput(f"{to.parent} does not exist", "Create the parent directory first")


def backup(vault: Vault, to: Path, *, actor: str = "custodian") -> BackupStats:
    """Bring the backup at *to* up to date with *vault* (which this process holds open)."""
    pending = unfinished(vault.layout.journal)
    if pending:
        raise BadInput(f"{len(pending)} unfinished session{'s' if len(pending) > 1 else ''} "
                       "in the vault; a backup would hold objects no catalog entry names",
                       "Run 'clinivault recover VAULT' first")
    to = Path(os.path.abspath(to))
    check_backup_destination(to, vault.root)
    public = _public_b64(vault.keyfile)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if (to / MANIFEST).exists():
        old = read_manifest(to)
        if old.get("vault_public_key") != public:
            raise BadInput(f"{to} is a backup of another vault",
                           "Back up each vault to its own directory")
    else:
        old = {"created": now, "runs": 0, "files": {}}
        to.mkdir(mode=DIR_MODE, exist_ok=True)
    _clear_temps(to)
    stats = BackupStats()
    files: dict[str, Any] = {}
    old_files: dict[str, Any] = old["files"]
    try:
        for rel, src in _sources(vault).items():
            entry = old_files.get(rel)
            dst = to / rel
            is_object = rel.startswith("objects/")
            mutable = rel.startswith(("catalog/", "index/"))
            if is_object:
                stats.objects_total += 1
            if entry is not None and (is_object or mutable) and _unchanged(dst, entry, src,
                                                                           mutable):
                files[rel] = entry
                if is_object:
                    stats.objects_kept += 1
                else:
                    stats.files_kept += 1
                continue
            sig = _signature(src) if mutable else None
            sha, size = copy_verified(src, dst)
            files[rel] = {"sha256": sha, "size": size, **({"src": sig} if sig else {})}
            stats.bytes_copied += size
            if is_object:
                stats.objects_copied += 1
            else:
                stats.files_copied += 1
        for rel in sorted(set(old_files) - set(files)) + _strays(to, files, old_files):
            destroy_file(to / rel)
            if rel.startswith("objects/"):
                stats.objects_removed += 1
            else:
                stats.files_removed += 1
        atomic_write_bytes(to / MANIFEST, (json.dumps({
            "format": FORMAT, "vault_public_key": public, "created": old.get("created", now),
            "updated": now, "runs": int(old.get("runs", 0)) + 1, "counts": stats.as_dict(),
            "files": files}, indent=1, sort_keys=True) + "\n").encode("ascii"))
    except OSError as exc:
        raise FailedSafely(f"the backup stopped: {exc.strerror or exc} ({exc.filename or to})",
                           "Nothing in the vault changed; fix the backup disk and run it again "
                           "(it continues where it stopped)") from exc
    vault.audit.append(actor, "backup", None, stats.as_dict())
    return stats


def _unchanged(dst: Path, entry: dict[str, Any], src: Path, mutable: bool) -> bool:
    try:
        if dst.stat().st_size != entry.get("size"):
            return False
    except FileNotFoundError:
        return False
    return not mutable or entry.get("src") == _signature(src)


def _strays(root: Path, files: dict[str, Any], old_files: dict[str, Any]) -> list[str]:
    """Files an interrupted run copied that the vault no longer holds."""
    out = []
    for sub in ("objects", "catalog", "index"):
        base = root / sub
        if not base.is_dir():
            continue
        for p in base.rglob("*"):
            rel = p.relative_to(root).as_posix()
            if p.is_file() and rel not in files and rel not in old_files:
                out.append(rel)
    return sorted(out)


def _clear_temps(root: Path) -> None:
    for p in list(root.rglob(f"{TEMP_PREFIX}*")):
        if p.is_file() and not p.is_symlink():
            p.unlink()


# -- restore ----------------------------------------------------------------------------------


def check_restore_target(source: Path, to: Path) -> None:
    if _inside(to, source) or _inside(source, to):
        raise BadInput(f"{to} overlaps the backup {source}", "Restore into a new directory")
    if to.exists():
        if not to.is_dir():
            raise BadInput(f"{to} exists and is not a directory")
        if any(to.iterdir()):
            raise BadInput(f"{to} is not empty", "Restore into a new or empty directory")
    elif not to.parent.is_dir():
        raise BadInput(f"{to.parent} does not exist", "Create the parent directory first")


def restore(source: Path, to: Path, *, actor: str = "custodian") -> RestoreStats:
    """Rebuild a vault at *to* from the backup at *source*; all or nothing."""
    source = Path(os.path.abspath(source))
    to = Path(os.path.abspath(to))
    if not source.is_dir():
        raise BadInput(f"backup {source} does not exist or is not a directory")
    manifest = read_manifest(source)
    check_restore_target(source, to)
    missing = [r for r in REQUIRED if r not in manifest["files"]]
    if missing:
        raise IntegrityError(f"the backup has no {missing[0]}; nothing was restored",
                             "Use another backup copy")
    staging = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}restore-", dir=to.parent))
    stats = RestoreStats()
    try:
        os.chmod(staging, DIR_MODE)
        for rel, entry in sorted(manifest["files"].items()):
            src = source / rel
            if src.is_symlink() or not src.is_file():
                raise IntegrityError(f"backup file {rel} is missing; nothing was restored",
                                     "Use another backup copy")
            try:
                copy_verified(src, staging / rel, expect=(entry["sha256"], entry["size"]))
            except SourceMismatch:
                raise IntegrityError(f"backup file {rel} does not match its recorded SHA-256 "
                                     "(the backup is damaged); nothing was restored",
                                     "Use another backup copy") from None
            stats.files += 1
            stats.bytes += entry["size"]
            stats.objects += rel.startswith("objects/")
        layout = VaultLayout(staging)
        for d in layout.directories():
            ensure_dir(d)
        kf = keys.load_key_file(layout.keyfile)
        if _public_b64(kf) != manifest.get("vault_public_key"):
            raise IntegrityError("the backup's vault.json is not the vault the manifest names; "
                                 "nothing was restored", "Use another backup copy")
        named = Catalog(layout.catalog).object_ids()
        held = set(ObjectStore(layout).iter_ids())
        if named - held:
            raise IntegrityError(f"the backup lacks {len(named - held)} objects its catalog "
                                 "names; nothing was restored", "Use another backup copy")
        vault = Vault.open(staging, actor=actor, startup=False)  # the audit tail must verify
        try:
            vault.audit.append(actor, "restore", None, {
                **stats.as_dict(), "backup_created": str(manifest.get("created")),
                "backup_updated": str(manifest.get("updated"))})
        finally:
            vault.close()
        fsync_dir(staging)
        os.rename(staging, to)  # onto a missing or empty directory: atomic
        fsync_dir(to.parent)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):
            raise FailedSafely(f"the restore stopped: {exc.strerror or exc}; nothing was "
                               "restored", "Check the target disk and try again") from exc
        raise
    return stats
