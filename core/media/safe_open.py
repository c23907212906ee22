"""The one way anything opens a file or folder on a card.

Why: a card is input we do not control. A symbolic link named ``IMG_0001.JPG`` could point at
the vault or at ``/etc``; a hard link could share its data with a file outside the card; a FIFO
would hang a plain ``open``; a device node or a file system mounted inside the card directory
is not the card's data at all; and a file can be swapped for any of these between the scan and
the moment we read or wipe it. So, like CPython's ``shutil.rmtree`` guarding against symlink
swaps, we never resolve a path: we walk it one name at a time with directory file descriptors,

* ``lstat`` each name relative to its directory (no link followed, no device opened),
* open it with ``O_NOFOLLOW`` (and ``O_NONBLOCK`` so a FIFO swapped in cannot block us),
* ``fstat`` what was opened and require the same (device, inode) we ``lstat``-ed, a regular
  file (or a directory for path components) with one link, on the card root's device,
* and, when the caller scanned the file earlier, the same identity as scanned.

Names are ``str`` exactly as Python gives them (``os.fsdecode``, undecodable bytes kept as
surrogate escapes) and are never "fixed": the file we scanned is the file we archive and wipe.
:func:`display_name` is the only way a name reaches a screen or a log line.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from core.errors import BadInput, FailedSafely

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOCTTY = getattr(os, "O_NOCTTY", 0)
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _O_CLOEXEC
FILE_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | _O_CLOEXEC | _O_NOCTTY

Reason = Literal[
    "symlink",  # a symbolic link: never followed
    "not_regular",  # FIFO, socket, device node, or a file where a folder was expected
    "other_device",  # on another file system than the card root (a mount inside the card)
    "changed",  # not the file that was scanned (other inode, size or modification time)
    "hard_link",  # more than one name shares this file's data
    "vanished",  # no longer on the card
    "outside",  # the name would leave the card ("..", "a/b", "", NUL)
    "read_only",  # opening for writing failed with EROFS: the card is write-protected
    "denied",  # permission denied
    "io_error",  # any other error from the card (I/O error: card pulled?)
]

_REASON_WORDS: dict[str, str] = {
    "symlink": "is a symbolic link (not followed)",
    "not_regular": "is not a regular file",
    "other_device": "is on another file system than the card",
    "changed": "has changed since the card was scanned",
    "hard_link": "is a hard link (shared with another file)",
    "vanished": "is no longer on the card",
    "outside": "is not a name inside the card",
    "read_only": "cannot be written: the card is read-only (write-protected)",
    "denied": "cannot be opened: permission denied",
    "io_error": "could not be read from the card",
}


class CardFileError(FailedSafely):
    """A card file was refused or could not be opened; nothing was read or written.

    ``reason`` is one of :data:`Reason`; the message names the file (escaped for display).
    """

    def __init__(
        self, parts: Sequence[str], reason: Reason, detail: str = "", os_errno: int | None = None
    ) -> None:
        self.parts = tuple(parts)
        self.reason: Reason = reason
        self.detail = detail
        self.os_errno = os_errno
        words = _REASON_WORDS[reason]
        super().__init__(f"{display_name(self.parts)} {words}" + (f" ({detail})" if detail else ""))

    @property
    def words(self) -> str:
        """The reason in words, without the file name (for lists that name the file anyway)."""
        return _REASON_WORDS[self.reason] + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class FileIdentity:
    """What the scan saw of a file; a later open must find the same file.

    ``dev``/``ino`` are only meaningful within one mount of the card: FAT and exFAT invent
    inode numbers when a file is first looked up, so after an unmount and remount (a reboot
    during recovery) every file has a new identity and must be rescanned.
    """

    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def from_stat(cls, st: os.stat_result) -> FileIdentity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def same_file(self, st: os.stat_result) -> bool:
        return (st.st_dev, st.st_ino) == (self.dev, self.ino)

    def same_content(self, st: os.stat_result) -> bool:
        """Same file, same size, same modification time: as far as we can tell, unchanged."""
        return self.same_file(st) and (st.st_size, st.st_mtime_ns) == (self.size, self.mtime_ns)


# -- display ---------------------------------------------------------------------------------

_ESCAPE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"})
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape_char(ch: str) -> str:
    cp = ord(ch)
    if 0xDC80 <= cp <= 0xDCFF:  # a byte that was not valid UTF-8 (os.fsdecode surrogateescape)
        return f"\\x{cp - 0xDC00:02x}"
    if ch in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[ch]
    if ch == " " or unicodedata.category(ch) not in _ESCAPE_CATEGORIES:
        return ch
    if cp < 0x100:
        return f"\\x{cp:02x}"
    if cp < 0x10000:
        return f"\\u{cp:04x}"
    return f"\\U{cp:08x}"


def display_name(parts: Sequence[str] | str) -> str:
    """A card path made safe to show: ``DCIM/IMG\\x1b[31m.JPG``, ``bad\\xff.jpg``.

    Control characters (newline, ESC, DEL, C1), format characters (such as the right-to-left
    override that makes ``gpj.exe`` look like ``exe.jpg``), odd spaces, line separators,
    unassigned code points and undecodable bytes all become visible escapes, and a backslash
    is doubled, so two different names never look the same and nothing written to a terminal
    or a log can move the cursor, change colours or start a new line. The result is always
    ``str.isprintable()`` apart from ``/`` separators (which are printable too).
    """
    if isinstance(parts, str):
        parts = (parts,)
    return "/".join("".join(_escape_char(ch) for ch in part) for part in parts)


# -- opening ---------------------------------------------------------------------------------


def _check_name(parts: tuple[str, ...], name: str) -> None:
    if (
        not isinstance(name, str)
        or not name
        or name in (".", "..")
        or "/" in name
        or "\0" in name
    ):
        raise CardFileError(parts, "outside", f"bad name component {name!r}")


def _check_parts(parts: Sequence[str], *, allow_empty: bool) -> tuple[str, ...]:
    if isinstance(parts, (str, bytes)):
        raise TypeError("parts must be a sequence of names, not a single string")
    tup = tuple(parts)
    if not tup and not allow_empty:
        raise CardFileError(tup, "outside", "no file name")
    for name in tup:
        _check_name(tup, name)
    return tup


def _os_reason(exc: OSError) -> Reason:
    if exc.errno == errno.ENOENT:
        return "vanished"
    if exc.errno == errno.ELOOP:
        return "symlink"
    if exc.errno == errno.EROFS:
        return "read_only"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "denied"
    if exc.errno in (errno.ENXIO, errno.ENOTDIR, errno.EISDIR):
        return "not_regular"
    return "io_error"


def kind_of(mode: int) -> str:
    """Words for a non-regular file type, for messages and scan reasons."""
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISFIFO(mode):
        return "FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device node"
    if stat.S_ISREG(mode):
        return "regular file"
    return "special file"


def _lstat_at(dir_fd: int, name: str, parts: tuple[str, ...]) -> os.stat_result:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError as exc:
        raise CardFileError(parts, _os_reason(exc), exc.strerror or "", exc.errno) from None


def open_dir_at(
    dir_fd: int,
    name: str,
    *,
    root_dev: int,
    parts: Sequence[str] = (),
    expect: tuple[int, int] | None = None,
) -> int:
    """Open folder *name* inside *dir_fd* as a new directory fd; the caller closes it.

    Refuses a symbolic link, anything that is not a folder, and a folder on another device
    than *root_dev* (a file system mounted inside the card). *expect* is the (dev, ino) a
    scan saw. *parts* is only used to name the folder in errors.
    """
    shown = tuple(parts) or (name,)
    _check_name(shown, name)
    st = _lstat_at(dir_fd, name, shown)
    if stat.S_ISLNK(st.st_mode):
        raise CardFileError(shown, "symlink")
    if not stat.S_ISDIR(st.st_mode):
        raise CardFileError(shown, "not_regular", f"a {kind_of(st.st_mode)}, not a folder")
    if st.st_dev != root_dev:
        raise CardFileError(shown, "other_device")
    if expect is not None and (st.st_dev, st.st_ino) != expect:
        raise CardFileError(shown, "changed")
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        reason = _os_reason(exc)
        if exc.errno == errno.ENOTDIR:  # O_DIRECTORY|O_NOFOLLOW on a link gives ENOTDIR
            reason = "changed"
        raise CardFileError(shown, reason, exc.strerror or "", exc.errno) from None
    try:
        fst = os.fstat(fd)
        if not stat.S_ISDIR(fst.st_mode) or (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
            raise CardFileError(shown, "changed")
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_file_at(
    dir_fd: int,
    name: str,
    *,
    root_dev: int,
    parts: Sequence[str] = (),
    expect: FileIdentity | None = None,
    write: bool = False,
    same_content: bool = True,
) -> int:
    """Open regular file *name* inside directory *dir_fd*; return a blocking fd (caller closes).

    The checks of :func:`open_card_file`, for callers that already hold the directory fd
    (the scan and the wipe). *parts* is only used to name the file in errors.
    """
    shown = tuple(parts) or (name,)
    _check_name(shown, name)
    # lstat first: a device node or FIFO is refused without ever being opened (opening a
    # device can have side effects in its driver, whatever flags we pass).
    st = _lstat_at(dir_fd, name, shown)
    _require_regular(st, shown, root_dev, expect, same_content)
    flags = FILE_FLAGS | (os.O_RDWR if write else os.O_RDONLY)
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        raise CardFileError(shown, _os_reason(exc), exc.strerror or "", exc.errno) from None
    try:
        fst = os.fstat(fd)
        if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
            # swapped between lstat and open; O_NOFOLLOW already refused a link
            raise CardFileError(shown, "changed")
        _require_regular(fst, shown, root_dev, expect, same_content)
        fl = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, fl & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _require_regular(
    st: os.stat_result,
    parts: tuple[str, ...],
    root_dev: int,
    expect: FileIdentity | None,
    same_content: bool,
) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise CardFileError(parts, "symlink")
    if not stat.S_ISREG(st.st_mode):
        raise CardFileError(parts, "not_regular", f"a {kind_of(st.st_mode)}")
    if st.st_dev != root_dev:
        raise CardFileError(parts, "other_device")
    if expect is not None:
        ok = expect.same_content(st) if same_content else expect.same_file(st)
        if not ok:
            raise CardFileError(parts, "changed")
    if st.st_nlink != 1:
        raise CardFileError(parts, "hard_link", f"{st.st_nlink} names")


def open_root(root: Path | str) -> int:
    """Open the card's root folder; return its directory fd (the caller closes it).

    The root itself must not be a symbolic link (give the card's real mount point).
    Raises :class:`BadInput` with a one-line message when it is missing or not a folder.
    """
    shown = display_name(os.fspath(root))
    try:
        return os.open(root, DIR_FLAGS)
    except FileNotFoundError:
        raise BadInput(f"card folder {shown} does not exist",
                       "Check the card is inserted and mounted") from None
    except NotADirectoryError:
        if os.path.islink(root):
            raise BadInput(f"card folder {shown} is a symbolic link",
                           "Give the card's own folder, not a link to it") from None
        raise BadInput(f"card folder {shown} is not a folder",
                       "Give the folder where the card is mounted") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BadInput(f"card folder {shown} is a symbolic link",
                           "Give the card's own folder, not a link to it") from None
        raise BadInput(f"card folder {shown} cannot be opened ({exc.strerror})",
                       "Check the card is inserted and readable") from None


def root_device(root_fd: int) -> int:
    return os.fstat(root_fd).st_dev


def open_card_dir(root_fd: int, parts: Sequence[str]) -> int:
    """Open the card folder *parts* (``()`` is the root itself); return a new directory fd."""
    tup = _check_parts(parts, allow_empty=True)
    root_dev = root_device(root_fd)
    fd = os.open(".", DIR_FLAGS, dir_fd=root_fd)
    try:
        for i, name in enumerate(tup):
            nxt = open_dir_at(fd, name, root_dev=root_dev, parts=tup[: i + 1])
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_card_file(
    root_fd: int,
    parts: Sequence[str],
    *,
    expect: FileIdentity | None = None,
    write: bool = False,
    same_content: bool = True,
) -> int:
    """Open the regular card file *parts* below *root_fd*; return a blocking fd (caller closes).

    Refused with :class:`CardFileError` (``.reason`` says why) when any component is a link,
    a folder is not a folder, the file is not a regular file (FIFO, socket, device: never
    opened), is on another device than the root, has more than one link, or is not the file
    *expect* describes. With ``same_content`` (the default) *expect*'s size and modification
    time must match too; the wipe passes ``False`` and judges those itself. ``write=True``
    opens read-write (the wipe); a write-protected card gives reason ``"read_only"``.
    """
    tup = _check_parts(parts, allow_empty=False)
    dir_fd = open_card_dir(root_fd, tup[:-1])
    try:
        return open_file_at(
            dir_fd,
            tup[-1],
            root_dev=root_device(root_fd),
            parts=tup,
            expect=expect,
            write=write,
            same_content=same_content,
        )
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def card_file(
    root: Path | str, parts: Sequence[str], *, expect: FileIdentity | None = None
) -> Iterator[BinaryIO]:
    """Read one card file with every check of :func:`open_card_file`, as a binary file.

    ``with card_file(root, f.parts, expect=f.identity) as fh: data = fh.read()`` -- for
    callers without a root fd of their own (a decoder in a worker process).
    """
    root_fd = open_root(root)
    try:
        fd = open_card_file(root_fd, parts, expect=expect)
    finally:
        os.close(root_fd)
    with os.fdopen(fd, "rb") as fh:
        yield fh
