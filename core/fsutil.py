"""Durable file primitives: the only way the vault writes files.

Why: a kiosk can lose power at any instant. Every file the vault owns is either the old
version or the new one, never a torn mix, and files holding secrets are created 0600.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

FILE_MODE = 0o600
DIR_MODE = 0o700
TEMP_PREFIX = ".tmp-"


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename or unlink inside *path* durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(path: str | os.PathLike[str]) -> Path:
    """Create *path* (mode 0700) and its parents if missing; return it as a Path."""
    p = Path(path)
    p.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    return p


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], mode: int = FILE_MODE) -> Iterator[IO[bytes]]:
    """Yield a binary file; on clean exit it replaces *path* atomically and durably.

    Temp file in the same directory, fsync, ``os.replace``, fsync the directory. On an
    exception the temp file is removed and *path* is untouched.
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=target.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, mode: int = FILE_MODE) -> None:
    """Replace *path* with *data* atomically and durably."""
    with atomic_writer(path, mode) as fh:
        fh.write(data)


def remove_stale_temps(directory: str | os.PathLike[str]) -> int:
    """Delete temp files a crash left behind in *directory*; return how many."""
    removed = 0
    d = Path(directory)
    if not d.is_dir():
        return 0
    for entry in d.iterdir():
        if entry.name.startswith(TEMP_PREFIX) and entry.is_file():
            entry.unlink()
            removed += 1
    if removed:
        fsync_dir(d)
    return removed
