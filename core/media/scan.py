"""Walk a mounted card safely and list what is on it: images, RAW pairs, sidecars, videos.

Why a walk of our own instead of ``os.walk``/``Path.rglob``: a card is hostile input. The walk
holds a directory file descriptor for every folder it is in and looks names up relative to it
(:mod:`core.media.safe_open`), so a symbolic link or a folder swapped for one mid-walk can
never lead outside the card; it never follows links, never opens FIFOs, sockets or device
nodes, never crosses into a file system mounted inside the card, stops at a depth limit and an
entry limit with a reason instead of hanging on a crafted card, and tells images from other
files by content (:mod:`core.media.filetypes`).

Hard-linked files (``st_nlink > 1``) are listed as skipped and are never archived or wiped.
A camera card (FAT, exFAT) cannot hold hard links at all, so one means the "card" is really a
folder on a Unix file system, or a crafted one. Wiping such a file overwrites data that another
name, possibly outside the card, still points at; and archiving a file we then refuse to wipe
would leave a verified copy of it on the card, which breaks the promise that a session leaves
the card empty. So it is neither: it stays where it is, and the operator is told why.

Everything that is not taken is listed in :attr:`ScanResult.skipped` with a reason in words,
and left on the card untouched. Whether an image actually decodes is not decided here: the
decoder (in worker processes) reports corrupt, truncated and oversized images later.
"""

from __future__ import annotations

import os
import stat
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from core.errors import FailedSafely
from core.media.filetypes import (
    HEAD_BYTES,
    MAX_SIDECAR_BYTES,
    FileKind,
    classify,
    split_ext,
)
from core.media.safe_open import (
    CardFileError,
    FileIdentity,
    display_name,
    kind_of,
    open_dir_at,
    open_file_at,
    open_root,
)

MAX_DEPTH = 64
"""Folders nested deeper than this are listed as skipped, not walked (camera cards use 2-3)."""

MAX_ENTRIES = 1_000_000
"""The walk stops after this many files and folders (a card of 1,000,000 photos is crafted)."""

_PROGRESS_EVERY = 256

SkipCategory = Literal["unsafe", "unreadable", "rejected", "not_image", "limit", "empty"]
"""Why a file was not taken, for grouping in summaries:

* ``unsafe``: never opened or followed (link, hard link, FIFO, socket, device, other file system)
* ``unreadable``: the card gave an error reading it (pulled card, bad sector, permissions)
* ``rejected``: pretends to be an image and is not (mislabelled, odd content)
* ``not_image``: honestly something else (a text file, a GIF, an orphan sidecar)
* ``limit``: beyond the depth or entry limit, not looked at
* ``empty``: zero bytes: holds no data, so a whole-card wipe loses nothing with it (fusefat
  also shows a FAT volume label this way)
"""


@dataclass(frozen=True)
class CardFile:
    """One regular file on the card, as the scan saw it. ``parts`` are its exact names."""

    parts: tuple[str, ...]
    identity: FileIdentity
    kind: FileKind
    fmt: str | None
    """``jpeg``, ``png``, ``tiff``, ``heif``; for RAWs the flavour (``cr2``, ``nef``, ``dng``,
    ...); ``thm``/``xmp``/``aae`` for sidecars; ``mp4``, ``mov``, ``avi``, ``m2ts`` ... for
    videos."""

    @property
    def name(self) -> str:
        return self.parts[-1]

    @property
    def display(self) -> str:
        """The path, safe to show on a screen or in a log (see ``display_name``)."""
        return display_name(self.parts)

    @property
    def size(self) -> int:
        return self.identity.size


@dataclass
class MediaItem:
    """One photograph: the image, its RAW partner and its sidecars, taken or left together.

    ``primary`` is the image (a JPEG, PNG, TIFF or HEIF), or the RAW itself when it has no
    image partner (then ``raw`` is None).
    """

    primary: CardFile
    raw: CardFile | None = None
    sidecars: list[CardFile] = field(default_factory=list)

    def files(self) -> list[CardFile]:
        """Every file of the item, primary first: what is archived and what is wiped."""
        out = [self.primary]
        if self.raw is not None:
            out.append(self.raw)
        out.extend(self.sidecars)
        return out

    @property
    def display(self) -> str:
        return self.primary.display

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files())


@dataclass
class Skipped:
    """A file or folder left on the card, and why (``reason`` is words for the operator)."""

    parts: tuple[str, ...]
    reason: str
    category: SkipCategory = "rejected"

    @property
    def display(self) -> str:
        return display_name(self.parts) or "(card root)"


@dataclass
class ScanResult:
    """What is on the card. ``total_bytes`` counts the files of ``items`` (not videos)."""

    root: Path
    root_dev: int
    items: list[MediaItem]
    videos: list[CardFile]
    skipped: list[Skipped]
    total_bytes: int
    complete: bool = True
    """False when the entry limit stopped the walk (a ``limit`` entry in ``skipped`` says so)."""
    entries: int = 0
    """Files and folders looked at."""

    @property
    def rejected(self) -> list[Skipped]:
        """Files that claimed to be images and are not: the operator should hear about these."""
        return [s for s in self.skipped if s.category == "rejected"]

    def files(self) -> list[CardFile]:
        return [f for it in self.items for f in it.files()]


def scan_card(
    root: Path | str,
    *,
    max_depth: int = MAX_DEPTH,
    max_entries: int = MAX_ENTRIES,
    progress: Callable[[int], None] | None = None,
) -> ScanResult:
    """List the card mounted at *root*. Reads only the first bytes of each file.

    ``progress(n)`` is called now and then with the number of entries looked at so far, and
    once at the end. A root that is missing or not a folder raises :class:`BadInput`; a root
    that cannot be listed raises :class:`FailedSafely`. An empty card gives an empty result.
    Items, videos and skipped entries are ordered by path.
    """
    root = Path(root)
    root_fd = open_root(root)
    try:
        walk = _Walk(os.fstat(root_fd).st_dev, max_depth, max_entries, progress)
        walk.folder(root_fd, (), 0)
    finally:
        os.close(root_fd)
    if progress is not None:
        progress(walk.entries)
    items, leftovers = _group(walk.files)
    videos = sorted((f for f in walk.files if f.kind == "video"), key=lambda f: f.parts)
    skipped = sorted([*walk.skipped, *leftovers], key=lambda s: s.parts)
    return ScanResult(
        root=root,
        root_dev=walk.root_dev,
        items=items,
        videos=videos,
        skipped=skipped,
        total_bytes=sum(it.size for it in items),
        complete=not walk.stopped,
        entries=walk.entries,
    )


_UNSAFE_REASONS = frozenset({"symlink", "not_regular", "other_device", "hard_link", "changed",
                             "outside"})


class _Walk:
    def __init__(
        self,
        root_dev: int,
        max_depth: int,
        max_entries: int,
        progress: Callable[[int], None] | None,
    ) -> None:
        self.root_dev = root_dev
        self.max_depth = max_depth
        self.max_entries = max_entries
        self.progress = progress
        self.entries = 0
        self.stopped = False
        self.files: list[CardFile] = []
        self.skipped: list[Skipped] = []

    def skip(self, parts: tuple[str, ...], reason: str, category: SkipCategory) -> None:
        self.skipped.append(Skipped(parts, reason, category))

    def skip_error(self, parts: tuple[str, ...], exc: CardFileError) -> None:
        words = {
            "symlink": "symbolic link (not followed)",
            "changed": "changed while the card was being scanned",
            "vanished": "vanished while the card was being scanned",
        }.get(exc.reason, exc.words)
        self.skip(parts, words, "unsafe" if exc.reason in _UNSAFE_REASONS else "unreadable")

    def folder(self, dir_fd: int, prefix: tuple[str, ...], depth: int) -> None:
        """List one folder (entries counted as they come), then walk its subfolders."""
        subfolders: list[tuple[str, tuple[int, int]]] = []
        try:
            with os.scandir(dir_fd) as listing:
                for entry in listing:
                    self.entries += 1
                    if self.entries > self.max_entries:
                        self.stopped = True
                        self.skip(prefix, f"more than {self.max_entries:,} files and folders "
                                  "on the card: the scan stopped in this folder", "limit")
                        return
                    if self.progress is not None and self.entries % _PROGRESS_EVERY == 0:
                        self.progress(self.entries)
                    self.entry(dir_fd, prefix, entry.name, subfolders)
        except OSError as exc:
            if not prefix:
                raise FailedSafely(f"the card could not be read ({exc.strerror or exc})",
                                   "Check the card is still inserted, then try again") from None
            self.skip(prefix, f"folder could not be read ({exc.strerror or exc})", "unreadable")
        for name, ident in sorted(subfolders):
            parts = (*prefix, name)
            if depth + 1 > self.max_depth:
                self.skip(parts, f"folder nested more than {self.max_depth} levels deep "
                          "(not scanned)", "limit")
                continue
            try:
                fd = open_dir_at(dir_fd, name, root_dev=self.root_dev, parts=parts, expect=ident)
            except CardFileError as exc:
                self.skip_error(parts, exc)
                continue
            try:
                self.folder(fd, parts, depth + 1)
            finally:
                os.close(fd)
            if self.stopped:
                return

    def entry(
        self,
        dir_fd: int,
        prefix: tuple[str, ...],
        name: str,
        subfolders: list[tuple[str, tuple[int, int]]],
    ) -> None:
        parts = (*prefix, name)
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            self.skip(parts, "vanished while the card was being scanned", "unreadable")
            return
        except OSError as exc:
            self.skip(parts, f"could not be examined ({exc.strerror or exc})", "unreadable")
            return
        mode = st.st_mode
        if stat.S_ISLNK(mode):
            self.skip(parts, "symbolic link (not followed)", "unsafe")
        elif stat.S_ISDIR(mode):
            if st.st_dev != self.root_dev:
                self.skip(parts, "folder on another file system (not scanned)", "unsafe")
            else:
                subfolders.append((name, (st.st_dev, st.st_ino)))
        elif not stat.S_ISREG(mode):
            self.skip(parts, f"{kind_of(mode)}: not opened", "unsafe")
        elif st.st_dev != self.root_dev:
            self.skip(parts, "on another file system: not opened", "unsafe")
        elif st.st_nlink > 1:
            self.skip(parts, "hard link (shared with another file): not archived or wiped",
                      "unsafe")
        elif st.st_size == 0:
            self.skip(parts, "zero-byte file", "empty")
        else:
            self.regular(dir_fd, parts, st)

    def regular(self, dir_fd: int, parts: tuple[str, ...], st: os.stat_result) -> None:
        try:
            fd = open_file_at(dir_fd, parts[-1], root_dev=self.root_dev, parts=parts,
                              expect=FileIdentity.from_stat(st), same_content=False)
        except CardFileError as exc:
            self.skip_error(parts, exc)
            return
        try:
            identity = FileIdentity.from_stat(os.fstat(fd))
            head = os.pread(fd, HEAD_BYTES, 0)
        except OSError as exc:
            self.skip(parts, f"could not be read ({exc.strerror or exc})", "unreadable")
            return
        finally:
            os.close(fd)
        if not head or identity.size == 0:
            self.skip(parts, "zero-byte file", "empty")
            return
        verdict = classify(parts[-1], head)
        if verdict.kind is None:
            self.skip(parts, verdict.reason or "not an image", verdict.category or "not_image")
        elif verdict.kind == "sidecar" and identity.size > MAX_SIDECAR_BYTES:
            self.skip(parts, f"too large for a .{verdict.fmt} sidecar "
                      f"({identity.size:,} bytes)", "rejected")
        else:
            self.files.append(CardFile(parts, identity, verdict.kind, verdict.fmt))


def _stem_key(f: CardFile) -> tuple[tuple[str, ...], str]:
    """Files belong together when they share a folder and a name before the extension.

    Case-insensitive, as FAT is: ``IMG_0001.JPG`` pairs with ``img_0001.cr2``.
    """
    return (f.parts[:-1], split_ext(f.name)[0].casefold())


def _group(files: Iterable[CardFile]) -> tuple[list[MediaItem], list[Skipped]]:
    """Pair RAWs with their image and attach sidecars; orphan sidecars are left on the card.

    In a group sharing a stem, images (JPEG first, then by name) are paired in order with the
    RAWs (by name); whatever is left over stands alone. A sidecar joins the first item of its
    group; ``IMG_0001.JPG.xmp`` (darktable's naming) also finds ``IMG_0001``. A sidecar with no
    image (such as a video's .THM) is not taken.
    """
    images: dict[tuple[tuple[str, ...], str], list[CardFile]] = defaultdict(list)
    raws: dict[tuple[tuple[str, ...], str], list[CardFile]] = defaultdict(list)
    sidecars: list[CardFile] = []
    video_stems: dict[tuple[tuple[str, ...], str], CardFile] = {}
    for f in files:
        if f.kind == "image":
            images[_stem_key(f)].append(f)
        elif f.kind == "raw":
            raws[_stem_key(f)].append(f)
        elif f.kind == "sidecar":
            sidecars.append(f)
        elif f.kind == "video":
            video_stems.setdefault(_stem_key(f), f)

    groups: dict[tuple[tuple[str, ...], str], list[MediaItem]] = {}
    for key in sorted(set(images) | set(raws)):
        imgs = sorted(images.get(key, []), key=lambda f: (f.fmt != "jpeg", f.parts))
        rs = sorted(raws.get(key, []), key=lambda f: f.parts)
        group = [MediaItem(primary=img, raw=rs[i] if i < len(rs) else None)
                 for i, img in enumerate(imgs)]
        group += [MediaItem(primary=r) for r in rs[len(imgs):]]
        groups[key] = group

    leftovers: list[Skipped] = []
    for sc in sorted(sidecars, key=lambda f: f.parts):
        key = _stem_key(sc)
        if key not in groups:
            inner = (key[0], split_ext(key[1])[0])  # IMG_0001.JPG.xmp -> img_0001
            key = inner if inner in groups else key
        if key in groups:
            groups[key][0].sidecars.append(sc)
        elif key in video_stems:
            leftovers.append(Skipped(sc.parts, "sidecar of the video "
                                     f"{display_name(video_stems[key].name)} (left on the card "
                                     "with it)", "not_image"))
        else:
            leftovers.append(Skipped(sc.parts, "sidecar with no image of the same name "
                                     "(left on the card)", "not_image"))

    items = sorted((it for group in groups.values() for it in group),
                   key=lambda it: it.primary.parts)
    return items, leftovers
