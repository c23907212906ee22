"""Find a journalled card file again after its card was remounted.

Why: FAT and exFAT drivers (the FUSE ones here) invent inode numbers at each mount, and the
device number can change too, so after a remount (read-write for the wipe, or after a
crash) every file fails the (device, inode) check that protects the wipe. A file is taken
to be the same when its path, size and modification time are unchanged and, for a file
that was archived, its content still hashes to the verified object's SHA-256. Anything
else keeps its old identity, and the wipe then refuses it as changed.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import replace

from core.media.safe_open import CardFileError, FileIdentity, open_card_dir, open_card_file
from core.media.scan import CardFile


def reidentify(root_fd: int, f: CardFile, sha256: str | None) -> CardFile:
    """*f* with its identity on the card as mounted now, or *f* unchanged."""
    try:
        dfd = open_card_dir(root_fd, f.parts[:-1])
    except CardFileError:
        return f
    try:
        st = os.stat(f.parts[-1], dir_fd=dfd, follow_symlinks=False)
    except OSError:
        return f
    finally:
        os.close(dfd)
    old = f.identity
    if (st.st_dev, st.st_ino) == (old.dev, old.ino) or not stat.S_ISREG(st.st_mode):
        return f
    if (st.st_size, st.st_mtime_ns) != (old.size, old.mtime_ns):
        return f
    new = replace(f, identity=FileIdentity.from_stat(st))
    if sha256 is not None:
        digest = hashlib.sha256()
        try:
            fd = open_card_file(root_fd, f.parts, expect=new.identity)
        except CardFileError:
            return f
        with os.fdopen(fd, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != sha256:
            return f
    return new
