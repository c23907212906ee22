"""Where cards come from: one small interface over a udev watcher or plain folders.

Why: the kiosk's waiting screen needs "which cards are inserted now, and which devices were
refused and why", whatever finds them. On a real kiosk that is the pyudev watcher
(:class:`core.media.devices.DeviceWatcher`); in the demo, in tests and on a machine without
udev it is a folder standing in for a mounted card. Both look the same to the screen through
:class:`MediaSource`, so the screen has one code path and the tests drive the real one.

What a session opens is ``DetectedMedia.source``: a folder, or a card's block device, which
``core.session.card.open_card`` checks, identifies and mounts read-only. ``current()`` may
touch the disk (folder sizes): shells call it off their UI thread.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from core.media.devices import MediaCandidate, MediaEvent, Rejection, human_size
from core.media.safe_open import display_name


@dataclass(frozen=True)
class DetectedMedia:
    """A card (or a refused device) as the operator sees it.

    ``source`` is what a session opens (``core.session.card.open_card``): the folder, or the
    card's block device; None for a device the kiosk refuses (``refused`` says why).
    """

    key: str
    label: str
    kind: str
    size_bytes: int | None
    source: Path | None
    device: str = ""
    refused: str | None = None

    @property
    def usable(self) -> bool:
        return self.refused is None and self.source is not None

    def describe(self) -> str:
        """One line for the screen: label, kind, size, device."""
        size = human_size(self.size_bytes) if self.size_bytes is not None else "size unknown"
        parts = [self.label or "(no label)", self.kind, size]
        if self.device:
            parts.append(self.device)
        return " · ".join(parts)


class MediaSource(Protocol):
    """What the kiosk needs from whatever finds cards."""

    def start(self, changed: Callable[[], None]) -> None:
        """Begin watching; *changed* is called (from any thread) when the list may differ."""

    def stop(self) -> None:
        """Stop watching; safe to call twice."""

    def current(self) -> list[DetectedMedia]:
        """Every card and every refused device now present (blocking; call off the UI)."""


def _folder_size(root: Path, limit: int = 100_000) -> int:
    """Bytes of regular files under *root*, links not followed; stops after *limit* entries."""
    total, seen = 0, 0
    stack = [root]
    while stack and seen < limit:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                for entry in it:
                    seen += 1
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
        except OSError:
            continue
    return total


class FolderSource:
    """Folders standing in for mounted cards (the demo, tests, a kiosk without udev).

    A folder counts as inserted while it exists. Its label is the name given, or the
    folder's own name.
    """

    def __init__(self, folders: Iterable[Path | str], *, kind: str = "folder",
                 labels: Sequence[str] | None = None) -> None:
        self.folders = [Path(f) for f in folders]
        self.kind = kind
        self.labels = list(labels) if labels is not None else None

    def start(self, changed: Callable[[], None]) -> None:
        changed()

    def stop(self) -> None:
        pass

    def current(self) -> list[DetectedMedia]:
        out = []
        for n, folder in enumerate(self.folders):
            if not folder.is_dir():
                continue
            label = self.labels[n] if self.labels and n < len(self.labels) else \
                display_name(folder.name)
            out.append(DetectedMedia(key=str(folder), label=label, kind=self.kind,
                                     size_bytes=_folder_size(folder), source=folder,
                                     device=display_name(str(folder))))
        return out


class UdevSource:
    """Removable media from the pyudev watcher (``core.media.devices.DeviceWatcher``).

    A card's ``source`` is its block device: the session mounts it read-only itself.
    Refusals the watcher marks quiet (RAM disks, empty loop devices) are left out.
    """

    def __init__(self, config: Any, *, vault_path: str | os.PathLike[str] | None = None,
                 watcher_factory: Callable[..., Any] | None = None) -> None:
        from core.media.devices import DeviceWatcher

        self._changed: Callable[[], None] | None = None
        self._lock = threading.Lock()
        factory = watcher_factory or DeviceWatcher
        self._watcher = factory(self._on_event, config, vault_path=vault_path)

    def _on_event(self, _event: MediaEvent) -> None:
        with self._lock:
            changed = self._changed
        if changed is not None:
            changed()

    def start(self, changed: Callable[[], None]) -> None:
        with self._lock:
            self._changed = changed
        self._watcher.start()

    def stop(self) -> None:
        with self._lock:
            self._changed = None
        self._watcher.stop()

    def current(self) -> list[DetectedMedia]:
        out = []
        for result in self._watcher.known():
            if isinstance(result, MediaCandidate):
                name = " ".join(w for w in (result.vendor, result.model) if w)
                out.append(DetectedMedia(
                    key=result.sys_path, label=result.label or name, kind=result.kind,
                    size_bytes=result.size_bytes, source=Path(result.devnode),
                    device=result.devnode))
            elif isinstance(result, Rejection) and not result.quiet:
                out.append(DetectedMedia(key=result.sys_path or result.devnode, label="",
                                         kind="refused device", size_bytes=None, source=None,
                                         device=result.devnode, refused=result.reason))
        return out
