"""Crash-test child for tests/test_catalog.py: commit catalog sessions until SIGKILLed.

Why a separate process: only a real SIGKILL at a random instant (mid-serialise, mid-fsync,
mid-rename) shows the catalog never loses a commit that returned. After each commit or
update returns, this prints one line and flushes it, so every line the parent reads is a
promise the catalog must keep:

    C <session id> <n>    session committed with state "s<n>"
    U <session id> <n>    session updated to state "s<n>"

Usage: python tests/_catalog_crash_child.py VAULT SEED FIRST_N   (needs the repo on sys.path)
"""

from __future__ import annotations

import random
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from core.catalog import Catalog, new_session_id
from core.vault.layout import VaultLayout
from core.vault.lock import VaultLock

BASE = datetime(2026, 11, 23, tzinfo=UTC)
DAYS = 4  # a few shards, each rewritten many times


def record(session_id: str, n: int, rng: random.Random) -> dict[str, Any]:
    kept = rng.randint(20, 50)
    objects = [
        {
            "id": rng.randbytes(16).hex(),
            "sha256": rng.randbytes(32).hex(),
            "size": rng.randint(1 << 20, 30 << 20),
            "object_size": rng.randint(1 << 20, 30 << 20),
            "kind": "image",
            "captured": "2026-11-25T09:10:11",
            "index": i,
        }
        for i in range(kept)
    ]
    return {
        "session": session_id,
        "started": datetime.strptime(session_id[:16], "%Y%m%dT%H%M%SZ").isoformat() + "Z",
        "operator": "nurse-7",
        "state": f"s{n}",
        "taken": kept + 1,
        "retained": kept,
        "discarded": {"blurred": 1},
        "archived_bytes": sum(o["size"] for o in objects),
        "objects": objects,
        "sealed": "c2VhbGVk" * 40,
    }


def main() -> None:
    vault, seed, n = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    with VaultLock(vault):
        catalog = Catalog(VaultLayout(vault).catalog)
        known = [rec["session"] for rec in catalog.iter_sessions()]
        while True:
            n += 1
            if known and rng.random() < 0.3:
                sid = rng.choice(known)
                catalog.update_session(sid, {"state": f"s{n}"})
                print(f"U {sid} {n}", flush=True)
            else:
                when = BASE + timedelta(days=rng.randrange(DAYS), seconds=rng.randrange(86400))
                sid = new_session_id(when)
                catalog.commit_session(record(sid, n, rng))
                known.append(sid)
                print(f"C {sid} {n}", flush=True)


if __name__ == "__main__":
    main()
