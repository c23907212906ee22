"""The object store: encrypted objects written once, verified, then made visible.

Why this write order (after restic): an object is encrypted into ``tmp/``, fsynced, read
back and decrypted with the file key the encryptor still holds (the kiosk has no private
key, so this is the only way it can prove its own write), compared with the SHA-256 taken
while reading the source, and only then renamed into ``objects/``. A crash leaves at most a
temp file, which start-up removes; a visible object is always complete and verified.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from core.errors import FailedSafely, IntegrityError
from core.fsutil import FILE_MODE, TEMP_PREFIX, ensure_dir, fsync_dir, remove_stale_temps
from core.vault import format as objfmt
from core.vault.layout import VaultLayout

CrashHook = Callable[[str], None]


class VaultFull(FailedSafely):
    """The vault's disk has no room; the object was not stored and the source is untouched."""


@dataclass(frozen=True)
class StoredObject:
    """What the catalog records about one object (no names, nothing identifying)."""

    id: str
    sha256: str
    size: int
    object_size: int


def new_object_id() -> str:
    """Random, not content-derived: a content hash would let anyone holding a photo confirm
    that the vault contains it."""
    return secrets.token_hex(16)


class _CountingReader:
    """Reports bytes read to ``on_read`` (progress) as the encryptor pulls them from *src*.

    Why no hash here: :func:`core.vault.format.encrypt_stream` already takes the SHA-256 of
    exactly the bytes it encrypts (``EncryptResult.plaintext_sha256``); a second SHA-256 of
    the same bytes cost a full extra pass (about 1 s of CPU per GB on the kiosk).
    """

    def __init__(self, src: BinaryIO, on_read: Callable[[int], None]) -> None:
        self._src = src
        self._on_read = on_read

    def read(self, n: int = -1) -> bytes:
        data = self._src.read(n)
        if data:
            self._on_read(len(data))
        return data


class ObjectStore:
    def __init__(self, layout: VaultLayout) -> None:
        self.layout = layout

    def path(self, object_id: str) -> Path:
        return self.layout.object_path(object_id)

    def exists(self, object_id: str) -> bool:
        return self.path(object_id).is_file()

    def put(self, src: BinaryIO, recipient: X25519PublicKey, *,
            on_read: Callable[[int], None] | None = None,
            crash_hook: CrashHook | None = None,
            object_id: str | None = None) -> StoredObject:
        """Encrypt *src* into a new object, verify it, and make it visible. Returns its record.

        Raises VaultFull when the disk fills (nothing is left behind), IntegrityError when
        the read-back does not match (the temp object is removed).
        """
        hook = crash_hook or (lambda _step: None)
        object_id = object_id or new_object_id()
        ensure_dir(self.layout.tmp)
        tmp = self.layout.tmp / f"{TEMP_PREFIX}{object_id}"
        reader = _CountingReader(src, on_read) if on_read else src
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
            with os.fdopen(fd, "wb") as out:
                result = objfmt.encrypt_stream(reader, out, recipient)  # type: ignore[arg-type]
                hook("object.write")
                out.flush()
                os.fsync(out.fileno())
            hook("object.fsync")
            with open(tmp, "rb") as back:
                size, digest = objfmt.verify_object(back, result.file_key)
            if size != result.plaintext_size or digest != result.plaintext_sha256:
                raise IntegrityError(
                    f"object {object_id} did not read back as written ({size} bytes, sha256 "
                    f"{digest[:12]}… expected {result.plaintext_sha256[:12]}…)",
                    "Check the vault disk; the source file is untouched")
            final = self.path(object_id)
            ensure_dir(final.parent)
            hook("object.rename")
            os.rename(tmp, final)
            fsync_dir(final.parent)
            hook("object.visible")
        except OSError as exc:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise VaultFull("the vault disk is full",
                                "Free space on the vault disk; nothing was lost") from None
            raise
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return StoredObject(id=object_id, sha256=result.plaintext_sha256,
                            size=result.plaintext_size, object_size=final.stat().st_size)

    def open_plaintext(self, object_id: str, identity: X25519PrivateKey,
                       dst: BinaryIO) -> int:
        """Decrypt an object into *dst* (custodian work). Raises IntegrityError on tampering."""
        with open(self.path(object_id), "rb") as src:
            return objfmt.decrypt_stream(src, dst, identity)

    def remove(self, object_id: str) -> bool:
        """Destroy an object: overwrite its bytes, then unlink (consent withdrawal, rollback)."""
        path = self.path(object_id)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            size = os.fstat(fd).st_size
            block = 1 << 20
            done = 0
            while done < size:
                n = min(block, size - done)
                os.write(fd, secrets.token_bytes(n))
                done += n
            os.fsync(fd)
        finally:
            os.close(fd)
        os.unlink(path)
        fsync_dir(path.parent)
        return True

    def iter_ids(self) -> Iterator[str]:
        if not self.layout.objects.is_dir():
            return
        for sub in sorted(self.layout.objects.iterdir()):
            if sub.is_dir():
                for obj in sorted(sub.iterdir()):
                    if obj.is_file() and not obj.name.startswith(TEMP_PREFIX):
                        yield obj.name

    def clean_temps(self) -> int:
        """Remove crash debris from tmp/ (never a visible object)."""
        return remove_stale_temps(self.layout.tmp)
