"""The vault as one object: key file, lock, object store, catalog and audit log together.

Why one facade: every shell (kiosk, CLI, custodian tools) must open a vault the same way —
take the single-owner lock, recover the audit log's key state, clear crash debris — and a
new vault must appear all at once (``vault.json`` is written last, so a directory without it
is never mistaken for a vault).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from types import TracebackType

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from core import audit as auditlog
from core.catalog import Catalog
from core.errors import BadInput, VaultError, WrongPassphrase
from core.fsutil import DIR_MODE, fsync_dir
from core.vault import format as objfmt
from core.vault import keys
from core.vault.layout import VaultLayout
from core.vault.lock import VaultLock
from core.vault.store import ObjectStore


class Vault:
    """An open vault, owned by this process until ``close()``."""

    def __init__(self, layout: VaultLayout, keyfile: keys.VaultKeyFile, lock: VaultLock,
                 audit: auditlog.AuditLog) -> None:
        self.layout = layout
        self.keyfile = keyfile
        self._lock = lock
        self.audit = audit
        self.objects = ObjectStore(layout)
        self.catalog = Catalog(layout.catalog)

    # -- creation --------------------------------------------------------------------------
    @classmethod
    def init(cls, root: Path, custodian: str, passphrase: bytes, *,
             scrypt_log_n: int) -> tuple[Vault, bytes]:
        """Create a vault at *root*; return it (open) and the audit key K0 to show once.

        Refuses an existing vault or a non-empty directory; on any failure removes what it
        created, so nothing on disk is changed.
        """
        layout = VaultLayout(Path(root))
        if layout.keyfile.exists():
            raise VaultError(f"{root} is already a vault",
                             "Choose another directory; an existing vault is never overwritten")
        created_root = False
        if layout.root.exists():
            if not layout.root.is_dir():
                raise BadInput(f"{root} exists and is not a directory")
            if any(layout.root.iterdir()):
                raise VaultError(f"{root} is not empty",
                                 "Create the vault in a new or empty directory")
            if not os.access(layout.root, os.W_OK | os.X_OK):
                raise VaultError(f"vault directory {root} is not writable",
                                 "Check its owner and permissions")
        else:
            parent = layout.root.parent
            if not parent.is_dir():
                raise BadInput(f"{parent} does not exist", "Create the parent directory first")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise VaultError(f"{parent} is not writable",
                                 "Check its owner and permissions")
            created_root = True
        kf, private = keys.new_key_file(custodian, passphrase, scrypt_log_n)
        try:
            layout.root.mkdir(mode=DIR_MODE, exist_ok=True)
            os.chmod(layout.root, DIR_MODE)
            for d in layout.directories():
                d.mkdir(mode=DIR_MODE, exist_ok=True)
            lock = VaultLock(layout.lockfile)
            lock.acquire()
            try:
                log, k0 = auditlog.AuditLog.create(layout.audit_log, layout.audit_key)
                kf.audit_key_sealed = objfmt.seal(k0, kf.public_key)
                log.append(custodian, "vault.init", None,
                           {"custodian": custodian, "slots": 1})
                keys.save_key_file(layout.keyfile, kf)
            except BaseException:
                lock.release()
                raise
            fsync_dir(layout.root)
        except BaseException:
            if created_root:
                shutil.rmtree(layout.root, ignore_errors=True)
            else:
                for child in list(layout.root.iterdir()):
                    if child.is_dir():
                        shutil.rmtree(child, ignore_errors=True)
                    else:
                        child.unlink(missing_ok=True)
            raise
        del private
        return cls(layout, kf, lock, log), k0

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, root: Path, *, actor: str = "kiosk", startup: bool = True) -> Vault:
        """Open an existing vault: lock it, recover the audit log, clear crash debris.

        With *startup* an audit "startup" entry seals the quiet period since the last run.
        """
        layout = VaultLayout(Path(root))
        if not layout.root.is_dir():
            raise VaultError(f"no vault at {root}", "Check the path, or create one with "
                             "'clinivault init'")
        if not layout.keyfile.exists():
            raise VaultError(f"{root} is not a clinivault vault (no vault.json)",
                             "Check the path, or create one with 'clinivault init'")
        kf = keys.load_key_file(layout.keyfile)
        lock = VaultLock(layout.lockfile)
        lock.acquire()
        try:
            log = auditlog.AuditLog.open(layout.audit_log, layout.audit_key)
            vault = cls(layout, kf, lock, log)
            vault.objects.clean_temps()
            vault.catalog.recover()
            if log.recovery_note:
                log.append(actor, "audit.recovered", None, {"note": log.recovery_note})
            if startup:
                log.append(actor, "startup", None, {"process": os.getpid()})
        except BaseException:
            lock.release()
            raise
        return vault

    def close(self) -> None:
        """Release every file this vault holds open, the lock last."""
        try:
            self.audit.close()
            self.catalog.close()
        finally:
            self._lock.release()

    def __enter__(self) -> Vault:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- keys ------------------------------------------------------------------------------
    @property
    def public_key(self) -> X25519PublicKey:
        return self.keyfile.public_key

    @property
    def root(self) -> Path:
        return self.layout.root

    def unlock(self, passphrase: bytes, custodian: str | None = None,
               actor: str | None = None) -> X25519PrivateKey:
        """Open the private key with a custodian passphrase; logged either way."""
        who = actor or custodian or "custodian"
        try:
            private = keys.unlock(self.keyfile, passphrase, custodian)
        except WrongPassphrase:
            self.audit.append(who, "unlock.failed", None, {"custodian": custodian})
            raise
        self.audit.append(who, "unlock", None, {"custodian": custodian})
        return private

    def add_custodian(self, private: X25519PrivateKey, name: str, passphrase: bytes, *,
                      scrypt_log_n: int, actor: str) -> None:
        self.keyfile = keys.add_slot(self.keyfile, private, name, passphrase, scrypt_log_n)
        keys.save_key_file(self.layout.keyfile, self.keyfile)
        self.audit.append(actor, "custodian.added", None, {"custodian": name,
                                                           "slots": len(self.keyfile.slots)})

    def audit_key(self, private: X25519PrivateKey) -> bytes:
        """The audit verification key K0, recovered from its sealed copy (custodian only)."""
        if self.keyfile.audit_key_sealed is None:
            raise VaultError("this vault holds no sealed audit key")
        return objfmt.unseal(self.keyfile.audit_key_sealed, private)

    def seal(self, data: bytes) -> bytes:
        return objfmt.seal(data, self.public_key)


@contextlib.contextmanager
def opened(root: Path, *, actor: str = "cli", startup: bool = True):  # type: ignore[no-untyped-def]
    vault = Vault.open(root, actor=actor, startup=startup)
    try:
        yield vault
    finally:
        vault.close()
