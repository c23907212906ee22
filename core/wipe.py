"""Per-file wipe: overwrite each session file on the card in place, then remove it.

Why this order: the data must be gone before the name is. For every file (archived or
discarded) we open it through :mod:`core.media.safe_open` (no link followed, a regular file
with one link on the card's own device, the same inode as scanned), check its size and
modification time are still what the scan saw (a file changed since the scan is *not* wiped:
we would destroy something nobody reviewed), overwrite it with random bytes, fsync, truncate to
zero, fsync, rename it to a random name in the same folder (so the directory entry no longer
carries the camera's name), unlink it and fsync the folder.

What this does not promise: on flash media (every camera card) the controller remaps blocks,
so old copies of the data can survive in blocks the file system no longer sees, and the slack
after the end of the file's last cluster is not touched. :meth:`WipeOutcome.summary` says
"overwritten and removed" and no more; overwriting the whole card device is the stronger mode.

A write-protected card (EROFS) is a clear outcome, not an error: ``read_only`` is set, the
wipe stops at the first such file and nothing on the card was changed by it. The random
bytes are an AES-256-CTR keystream under a fresh random key (pyca/cryptography): as
unpredictable as ``os.urandom`` for this purpose and several times faster.
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from core.media.safe_open import (
    CardFileError,
    open_card_dir,
    open_file_at,
    open_root,
    root_device,
)
from core.media.scan import CardFile

BLOCK = 1 << 20
WIPE_PREFIX = ".cvwipe-"
"""Files are renamed to ``.cvwipe-<16 hex digits>`` just before they are unlinked."""

STEP_OVERWRITE = "wipe.overwrite"
STEP_TRUNCATE = "wipe.truncate"
STEP_RENAME = "wipe.rename"
STEP_UNLINK = "wipe.unlink"
STEPS = (STEP_OVERWRITE, STEP_TRUNCATE, STEP_RENAME, STEP_UNLINK)

_CARD_GONE = frozenset({errno.EIO, errno.ENODEV, errno.ENXIO, errno.ESHUTDOWN, errno.ENOMEDIUM})

Parts = tuple[str, ...]


@dataclass
class WipeOutcome:
    """What the wipe did, file by file; :meth:`summary` puts it in honest words."""

    mode: str = "files"
    wiped: list[Parts] = field(default_factory=list)
    """Overwritten and removed (including files an interrupted wipe had already emptied)."""
    bytes_overwritten: int = 0
    not_wiped: list[tuple[Parts, str]] = field(default_factory=list)
    """Left on the card (or left emptied but not removed), each with the reason in words."""
    already_removed: list[Parts] = field(default_factory=list)
    """Not on the card any more when the wipe reached them (not an error: a resumed wipe)."""
    partly_wiped: list[Parts] = field(default_factory=list)
    """Also in ``not_wiped``: overwriting had started (or finished) when the wipe failed, so
    the file is still on the card but its content is at least partly destroyed."""
    read_only: bool = False
    """The card refused writing (write-protect switch, or remounted read-only on an error)."""
    stopped: str | None = None
    """Why the wipe stopped early other than read-only (the card stopped responding)."""

    def summary(self) -> str:
        """The wipe in words for the session summary and the log, never more than was done."""
        n, partly = len(self.wiped), len(self.partly_wiped)
        untouched = len(self.not_wiped) - partly
        if self.read_only and n == 0 and partly == 0:
            return "card is write-protected: nothing was wiped"
        removed = f"{_count(n, 'file')} overwritten and removed"
        if self.read_only:
            text = f"card became read-only during the wipe: {removed}"
        elif self.stopped:
            text = f"wipe stopped ({self.stopped}): {removed}"
        else:
            text = f"{removed} (on flash media this is not a sanitisation of the card)"
        if partly:
            text += f"; {_count(partly, 'file')} partly wiped and left on the card"
        if untouched:
            text += f"; {_count(untouched, 'file')} not wiped"
        if self.already_removed:
            text += f"; {_count(len(self.already_removed), 'file')} already removed"
        return text


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class _RandomBlocks:
    """Random bytes for overwriting: an AES-256-CTR keystream under a fresh random key."""

    def __init__(self) -> None:
        key, nonce = os.urandom(32), os.urandom(16)
        self._enc = Cipher(algorithms.AES(key), modes.CTR(nonce)).encryptor()
        self._zeros = bytes(BLOCK)

    def take(self, n: int) -> bytes:
        return self._enc.update(self._zeros if n == BLOCK else self._zeros[:n])


class _Stop(Exception):
    """Stop the whole wipe: the card is read-only or has stopped responding."""

    def __init__(self, read_only: bool, words: str, partial: bool = False) -> None:
        super().__init__(words)
        self.read_only = read_only
        self.words = words
        self.partial = partial


class _NotWiped(Exception):
    """This one file is left on the card; the wipe goes on with the next."""

    def __init__(self, words: str, partial: bool = False) -> None:
        super().__init__(words)
        self.words = words
        self.partial = partial


class _AlreadyRemoved(Exception):
    pass


def _card_error(exc: OSError, doing: str, partial: str = "") -> Exception:
    """Map an error during a write step to a stop of the wipe or a per-file reason."""
    suffix = f" ({partial})" if partial else ""
    if exc.errno == errno.EROFS:
        return _Stop(True, f"the card became read-only while {doing}{suffix}", bool(partial))
    if exc.errno in _CARD_GONE:
        return _Stop(False, f"the card stopped responding while {doing}: "
                     f"{exc.strerror}{suffix}", bool(partial))
    return _NotWiped(f"{exc.strerror or exc} while {doing}{suffix}", bool(partial))


def wipe_files(
    root: Path | str,
    files: Sequence[CardFile],
    *,
    progress: Callable[[int, int], None] | None = None,
    crash_hook: Callable[[str], None] | None = None,
) -> WipeOutcome:
    """Overwrite and remove each of *files* (from a scan of the card at *root*).

    ``progress(done, total)`` reports bytes: *total* is the scanned size of all *files*;
    *done* grows as blocks are overwritten and jumps over files that are passed by.
    ``crash_hook(step)`` is called just before each durable step of each file, with
    :data:`STEP_OVERWRITE`, :data:`STEP_TRUNCATE`, :data:`STEP_RENAME` or :data:`STEP_UNLINK`,
    so crash tests can kill the process there (the session passes
    ``core.crashpoints.reached``); an exception it raises propagates, with every fd closed.

    Resuming after a crash is safe: a file already gone is reported in ``already_removed``;
    a file an earlier run had emptied (same inode, now zero bytes) is finished off; a file cut
    off mid-overwrite has a new modification time and is reported as changed, not wiped.
    The same file listed twice is wiped once. Hard-linked files are refused.
    """
    outcome = WipeOutcome()
    unique = list({f.parts: f for f in files}.values())
    tally = _Tally(sum(f.identity.size for f in unique), progress)
    random_blocks = _RandomBlocks()
    hook = crash_hook or (lambda _step: None)

    root_fd = open_root(root)
    try:
        for f in unique:
            if outcome.read_only or outcome.stopped:
                why = "the card is read-only" if outcome.read_only else "the wipe stopped"
                outcome.not_wiped.append((f.parts, f"not attempted: {why}"))
                continue
            end = tally.done + f.identity.size
            try:
                _wipe_one(root_fd, f, random_blocks, tally, hook)
            except _AlreadyRemoved:
                outcome.already_removed.append(f.parts)
            except _NotWiped as exc:
                outcome.not_wiped.append((f.parts, exc.words))
                if exc.partial:
                    outcome.partly_wiped.append(f.parts)
            except _Stop as exc:
                outcome.not_wiped.append((f.parts, exc.words))
                if exc.partial:
                    outcome.partly_wiped.append(f.parts)
                outcome.read_only = exc.read_only
                if not exc.read_only:
                    outcome.stopped = "the card stopped responding"
            else:
                outcome.wiped.append(f.parts)
            finally:
                outcome.bytes_overwritten = tally.written
            tally.passed(end - tally.done)
    finally:
        os.close(root_fd)
    return outcome


class _Tally:
    """Bytes overwritten, and bytes dealt with for the progress callback."""

    def __init__(self, total: int, progress: Callable[[int, int], None] | None) -> None:
        self.total = total
        self.done = 0
        self.written = 0
        self._progress = progress

    def wrote(self, n: int) -> None:
        self.written += n
        self.passed(n)

    def passed(self, n: int) -> None:
        self.done += n
        if n and self._progress is not None:
            self._progress(self.done, self.total)


def _wipe_one(
    root_fd: int,
    f: CardFile,
    random_blocks: _RandomBlocks,
    tally: _Tally,
    hook: Callable[[str], None],
) -> None:
    """Wipe one file, or raise one of the control exceptions above."""
    if not f.parts:
        raise _NotWiped("no file name: not wiped")
    try:
        dir_fd = open_card_dir(root_fd, f.parts[:-1])
    except CardFileError as exc:
        raise _refusal(exc) from None
    try:
        _wipe_in_dir(root_fd, dir_fd, f, random_blocks, tally, hook)
    finally:
        os.close(dir_fd)


def _refusal(exc: CardFileError) -> Exception:
    if exc.reason == "vanished":
        return _AlreadyRemoved()
    if exc.reason == "read_only":
        return _Stop(True, "the card is read-only (write-protected): nothing was changed")
    if exc.reason == "io_error" and exc.os_errno in _CARD_GONE:
        return _Stop(False, f"the card stopped responding: {exc.detail}")
    if exc.reason == "changed":
        return _NotWiped("changed since the card was scanned: not wiped")
    if exc.reason == "denied":
        return _NotWiped("no permission to write it (the camera may have marked it "
                         "protected): not wiped")
    return _NotWiped(f"{exc.words}: not wiped")


def _wipe_in_dir(
    root_fd: int,
    dir_fd: int,
    f: CardFile,
    random_blocks: _RandomBlocks,
    tally: _Tally,
    hook: Callable[[str], None],
) -> None:
    name = f.parts[-1]
    try:
        fd = open_file_at(dir_fd, name, root_dev=root_device(root_fd), parts=f.parts,
                          expect=f.identity, write=True, same_content=False)
    except CardFileError as exc:
        raise _refusal(exc) from None
    try:
        st = os.fstat(fd)
        resumed = st.st_size == 0 and f.identity.size > 0  # emptied by an interrupted wipe
        if not resumed and not f.identity.same_content(st):
            raise _NotWiped("changed since the card was scanned (size or modification "
                            "time differs): not wiped")
        if not _folder_writable(dir_fd):
            raise _NotWiped("its folder cannot be written (permission denied): not wiped, "
                            "nothing was changed")
        if not resumed:
            hook(STEP_OVERWRITE)
            _overwrite(fd, st.st_size, random_blocks, tally)
            hook(STEP_TRUNCATE)
            try:
                os.ftruncate(fd, 0)
                os.fsync(fd)
            except OSError as exc:
                raise _card_error(exc, "emptying it", "its content was overwritten") from None
    finally:
        os.close(fd)
    _remove(dir_fd, name, (st.st_dev, st.st_ino), hook)


def _folder_writable(dir_fd: int) -> bool:
    """Whether we may rename and unlink in the folder: checked before anything is changed."""
    try:
        return os.access(".", os.W_OK, dir_fd=dir_fd, effective_ids=True)
    except NotImplementedError:  # pragma: no cover - not on Linux
        return True


def _overwrite(fd: int, size: int, random_blocks: _RandomBlocks, tally: _Tally) -> None:
    written = 0
    try:
        while written < size:
            block = random_blocks.take(min(BLOCK, size - written))
            view = memoryview(block)
            while view:
                n = os.pwrite(fd, view, written)
                view = view[n:]
                written += n
                tally.wrote(n)
        os.fsync(fd)
    except OSError as exc:
        partial = f"{written:,} of {size:,} bytes overwritten" if written else ""
        raise _card_error(exc, "overwriting it", partial) from None


def _remove(dir_fd: int, name: str, inode: tuple[int, int], hook: Callable[[str], None]) -> None:
    """Rename the emptied file to a random name, unlink it, make both durable."""
    emptied = "its content was overwritten and emptied, but it was not removed"
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if (st.st_dev, st.st_ino) != inode:
            raise _NotWiped(f"its name was taken by another file before removal ({emptied})",
                            partial=True)
        hook(STEP_RENAME)
        temp = _free_name(dir_fd)
        os.rename(name, temp, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        hook(STEP_UNLINK)
        os.unlink(temp, dir_fd=dir_fd)
    except OSError as exc:
        raise _card_error(exc, "removing it", emptied) from None
    try:
        _fsync_dir(dir_fd)
    except OSError as exc:
        raise _card_error(exc, "flushing its folder", "it was overwritten, emptied and "
                          "unlinked, but the removal may not have reached the card") from None


def _free_name(dir_fd: int) -> str:
    """A random name not present in the folder (``rename`` would replace an existing file)."""
    for _ in range(16):
        candidate = WIPE_PREFIX + secrets.token_hex(8)
        try:
            os.stat(candidate, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return candidate
    raise OSError(errno.EEXIST, "no free random name in the folder")


def _fsync_dir(dir_fd: int) -> None:
    try:
        os.fsync(dir_fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
