"""One process owns a vault at a time.

Why: the catalog, the audit log's evolving key and the session journal are each
read-modify-write files. Two clinivault processes on one vault (a second kiosk window, a CLI
`check` while the app runs) would each write their own version and one would silently lose
the other's session. An ``fcntl.flock`` on ``VAULT/lock`` makes the second instance fail at
once with a message naming the holder's pid.

The kernel drops an flock when its holder dies, even by SIGKILL or power loss, so there is no
stale-lock clean-up to get wrong. The lock file itself is never deleted (deleting a lock file
lets two processes lock two different inodes); it only holds the holder's pid, for the message.
The lock is per open file, so a second ``VaultLock`` in the *same* process is refused too. The
descriptor is close-on-exec, but a child made by a bare ``fork`` (no exec) inherits it and keeps
the vault locked until it exits.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from types import TracebackType

from core.errors import VaultError
from core.fsutil import FILE_MODE
from core.vault.layout import VaultLayout


class VaultLock:
    """Exclusive, non-blocking ownership of a vault.

    *path* is the vault directory, or its lock file (``VaultLayout(root).lockfile``; a path
    named ``lock`` that is not a directory). Use as ``with VaultLock(path): ...`` or call
    :meth:`acquire` / :meth:`release`.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        p = Path(path)
        if p.name == VaultLayout(p.parent).lockfile.name and not p.is_dir():
            self.root, self.path = p.parent, p
        else:
            self.root, self.path = p, VaultLayout(p).lockfile
        self._fd: int | None = None

    @property
    def locked(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise :class:`VaultError` at once (never waits)."""
        if self._fd is not None:
            raise VaultError(f"vault {self.root} is already locked by this VaultLock")
        if not self.root.is_dir():
            raise VaultError(
                f"vault {self.root} does not exist or is not a directory",
                hint="check the vault path, or create one with 'clinivault init'",
            )
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            fd = os.open(self.path, flags, FILE_MODE)
        except OSError as exc:
            raise VaultError(
                f"cannot open the vault lock file {self.path}: {exc.strerror}",
                hint="check that the vault directory is writable by this user",
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                pid = str(holder) if holder is not None else "unknown"
                raise VaultError(
                    f"vault {self.root} is in use by another clinivault (pid {pid})",
                    hint="close the other clinivault first; only one may use a vault at a time",
                ) from None
            raise VaultError(
                f"cannot lock the vault {self.root}: {exc.strerror}",
                hint="the vault must be on a local file system that supports flock",
            ) from exc
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            os.close(fd)  # closing releases the flock
            raise VaultError(
                f"cannot write the vault lock file {self.path}: {exc.strerror}",
                hint="check free space and permissions on the vault disk",
            ) from exc
        self._fd = fd

    def release(self) -> None:
        """Give the lock up; harmless if not held."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            # Clear our pid while still holding the lock, so nobody reads a stale one.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def holder_pid(self) -> int | None:
        """The pid written by the current holder, if any (for messages and diagnostics)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return None
        try:
            return _read_pid(fd)
        finally:
            os.close(fd)

    def __enter__(self) -> VaultLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __del__(self) -> None:
        # A forgotten lock must not leak a descriptor; the kernel frees the flock with it.
        fd = getattr(self, "_fd", None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        raw = os.pread(fd, 32, 0)
    except OSError:
        return None
    text = raw.decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None
