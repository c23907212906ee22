"""``clinivault devices`` and ``clinivault watch``: which block devices are cards, and why not.

Why these exist: when a card "does not show up" at a kiosk, the first question is what the
kiosk thinks of each device. These print the classifier's answer (a card, or the reason it is
refused) without mounting or touching anything, over the same :mod:`core.media.devices` the
session uses.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from typing import Any

from core.cli.common import config_from, print_json, vault_path
from core.errors import FailedSafely
from core.media.devices import (
    Classification,
    DeviceWatcher,
    MediaCandidate,
    MediaEvent,
    Rejection,
    list_media,
)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    d = sub.add_parser("devices", help="list block devices: cards, and refused devices with "
                                       "the reason")
    d.add_argument("--vault", metavar="DIR",
                   help="the vault (its disk is always refused; default: [vault] path)")
    d.add_argument("--all", action="store_true",
                   help="also list unattached loop devices, RAM disks and the like")
    d.add_argument("--json", action="store_true", help="print the result as JSON")
    d.set_defaults(func=cmd_devices)

    w = sub.add_parser("watch", help="print card events as they happen (Ctrl-C to stop)")
    w.add_argument("--vault", metavar="DIR",
                   help="the vault (its disk is always refused; default: [vault] path)")
    w.add_argument("--all", action="store_true",
                   help="also show unattached loop devices, RAM disks and the like")
    w.add_argument("--count", type=int, metavar="N",
                   help="stop after N events (not counting the devices present at start)")
    w.add_argument("--json", action="store_true", help="print one JSON object per line")
    w.set_defaults(func=cmd_watch)


def _entry(result: Classification) -> dict[str, Any]:
    if isinstance(result, MediaCandidate):
        return {"card": True, "devnode": result.devnode, "description": result.describe(),
                **{k: v for k, v in result.as_dict().items() if k != "devnode"}}
    return {"card": False, **result.as_dict()}


def _shown(result: Classification | None, show_all: bool) -> bool:
    return show_all or result is None or isinstance(result, MediaCandidate) or not result.quiet


def _line(result: Classification) -> str:
    if isinstance(result, MediaCandidate):
        return f"{result.devnode:<16} card     {result.describe()}"
    return f"{result.devnode:<16} refused  {result.reason}"


def cmd_devices(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    vault = vault_path(args.vault) if args.vault else None
    results = [r for r in list_media(cfg, vault_path=vault) if _shown(r, args.all)]
    if args.json:
        print_json({"devices": [_entry(r) for r in results]})
        return 0
    if not results:
        print("No block devices found.")
        return 0
    cards = sum(isinstance(r, MediaCandidate) for r in results)
    for r in results:
        print(_line(r))
    print(f"{cards} card{'s' if cards != 1 else ''} found.")
    return 0


def _event_dict(ev: MediaEvent) -> dict[str, Any]:
    d: dict[str, Any] = {"action": ev.action, "devnode": ev.devnode, "sys_path": ev.sys_path,
                         "initial": ev.initial}
    if ev.result is not None:
        d.update(_entry(ev.result))
        d["devnode"] = ev.devnode or ev.result.devnode
    return d


def _event_line(ev: MediaEvent) -> str:
    tag = "present" if ev.initial else ev.action
    if ev.action == "remove":
        why = f" ({ev.result.reason})" if isinstance(ev.result, Rejection) else ""
        return f"{tag:<8} {ev.devnode:<16} gone{why}"
    assert ev.result is not None
    return f"{tag:<8} {_line(ev.result)}"


def cmd_watch(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    vault = vault_path(args.vault) if args.vault else None
    done = threading.Event()
    seen = 0
    out_lock = threading.Lock()

    def on_event(ev: MediaEvent) -> None:
        nonlocal seen
        if not _shown(ev.result, args.all) and ev.action != "remove":
            return
        with out_lock:
            if done.is_set():
                return
            text = (json.dumps(_event_dict(ev), sort_keys=True) if args.json
                    else _event_line(ev))
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
            if not ev.initial:
                seen += 1
                if args.count is not None and seen >= args.count:
                    done.set()

    watcher = DeviceWatcher(on_event, cfg, vault_path=vault, on_error=lambda _e: done.set())
    watcher.start()
    try:
        watcher.ready.wait()
        print("clinivault: watching for cards (Ctrl-C to stop)", file=sys.stderr, flush=True)
        if args.count is not None and args.count <= 0:
            return 0
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        watcher.stop()
    if watcher.error is not None:
        raise FailedSafely(f"watching for cards stopped: {watcher.error}")
    return 0
