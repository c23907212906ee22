"""Catalog scale: is a kiosk vault with years of sessions still instant to open and commit to?

Why: issue 7 item 3 asks, for 100,000 sessions of 2-50 images, opening < 1 s and committing
one more session < 100 ms, each printed against the I/O floor measured in the same run: the
time to read and json-parse every catalog file once. This script builds such a catalog in a
temp directory (sessions spread over ~5 years, written shard by shard through the catalog's
own atomic storage), then times open, commit, listing a month, lookup by id and a full scan.

It also times what one commit would cost if the catalog were sharded by month instead of by
day (parse + rewrite the busiest month as one file), the evidence for the day shards.

    .venv/bin/python bench/catalog_scale.py [--sessions 100000] [--years 5] [--seed 7]

``run()`` returns the figures for bench/run_all.py.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.catalog import TABLE, AtomicJSONStorage, Catalog, validate_record
from core.fsutil import atomic_write_bytes

END = datetime(2026, 11, 1, tzinfo=UTC)


@dataclass
class Figure:
    name: str
    seconds: float
    target: float | None  # seconds, or None for "informative"
    baseline: float

    @property
    def ratio(self) -> float:
        return self.seconds / self.baseline

    @property
    def passed(self) -> bool | None:
        return None if self.target is None else self.seconds < self.target


def make_record(rng: random.Random, when: datetime, images: int) -> dict[str, Any]:
    """A realistic record: every object with its ids and hashes, a ~600-char sealed blob."""
    sid = f"{when:%Y%m%dT%H%M%SZ}-{rng.randbytes(4).hex()}"
    discarded = rng.randint(0, images // 5)
    objects = [
        {
            "id": rng.randbytes(16).hex(),
            "sha256": rng.randbytes(32).hex(),
            "size": rng.randint(2_000_000, 30_000_000),
            "object_size": rng.randint(2_000_000, 30_000_000),
            "kind": "raw" if i % 7 == 6 else "image",
            "captured": (when + timedelta(seconds=i * 7)).strftime("%Y-%m-%dT%H:%M:%S"),
            "index": i,
        }
        for i in range(images)
    ]
    return {
        "session": sid,
        "started": when.isoformat().replace("+00:00", "Z"),
        "finished": (when + timedelta(minutes=12)).isoformat().replace("+00:00", "Z"),
        "operator": f"nurse-{rng.randint(1, 40)}",
        "state": "wiped",
        "taken": images + discarded,
        "retained": images,
        "discarded": {"blurred": discarded} if discarded else {},
        "archived_bytes": sum(o["size"] for o in objects),
        "objects": objects,
        "consent_scopes": ["clinical"] + (["teaching"] if rng.random() < 0.2 else []),
        "wipe": {"mode": "per-file", "files": images + discarded, "residue_found": 0},
        "tombstone": None,
        "sealed": rng.randbytes(450).hex()[:600],  # hex is valid base64 alphabet, length % 4 == 0
    }


def start_times(rng: random.Random, sessions: int, years: int) -> list[datetime]:
    span = int(timedelta(days=365 * years).total_seconds())
    start = END - timedelta(seconds=span)
    return sorted(start + timedelta(seconds=rng.randrange(span)) for _ in range(sessions))


def by_day(times: list[datetime]) -> Iterator[tuple[date, list[datetime]]]:
    day: date | None = None
    bucket: list[datetime] = []
    for t in times:
        if t.date() != day:
            if bucket:
                assert day is not None
                yield day, bucket
            day, bucket = t.date(), []
        bucket.append(t)
    if bucket:
        assert day is not None
        yield day, bucket


def build(directory: Path, sessions: int, years: int, seed: int) -> tuple[list[str], int]:
    """Write the catalog shard by shard; return the session ids and the image count."""
    rng = random.Random(seed)
    ids: list[str] = []
    images = 0
    for day, times in by_day(start_times(rng, sessions, years)):
        docs = {}
        for n, when in enumerate(times, 1):
            rec = validate_record(make_record(rng, when, rng.randint(2, 50)))
            docs[str(n)] = rec
            ids.append(rec["session"])
            images += rec["retained"]
        AtomicJSONStorage(directory / f"{day.isoformat()}.json").write({TABLE: docs})
    return ids, images


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median_of(n: int, fn: Callable[[], object]) -> float:
    return statistics.median(timed(fn) for _ in range(n))


def run(sessions: int = 100_000, years: int = 5, seed: int = 7) -> tuple[list[Figure], str]:
    with tempfile.TemporaryDirectory(prefix="catalog-scale-") as tmp:
        root = Path(tmp)
        directory = root / "catalog"
        directory.mkdir()
        t0 = time.perf_counter()
        ids, images = build(directory, sessions, years, seed)
        build_s = time.perf_counter() - t0
        files = sorted(directory.glob("*.json"))
        total_bytes = sum(f.stat().st_size for f in files)

        def floor() -> None:
            for f in files:
                json.loads(f.read_bytes())

        baseline = timed(floor)
        rng = random.Random(seed + 1)
        figures: list[Figure] = []

        def add(name: str, seconds: float, target: float | None = None) -> None:
            figures.append(Figure(name, seconds, target, baseline))

        add("open", median_of(5, lambda: Catalog(directory)), 1.0)

        last = datetime.strptime(ids[-1][:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        cat = Catalog(directory)
        add("commit 1 session, first after open",
            timed(lambda: cat.commit_session(make_record(rng, last, 50))),
            0.1)
        add("commit 1 session, next",
            timed(lambda: cat.commit_session(make_record(rng, last, 50))),
            0.1)
        cat = Catalog(directory)
        add("commit 1 session, new day",
            timed(lambda: cat.commit_session(make_record(rng, last + timedelta(days=1), 50))),
            0.1)

        month = Catalog(directory).months()[len(Catalog(directory).months()) // 2]
        lo = date.fromisoformat(month + "-01")
        hi = (lo + timedelta(days=32)).replace(day=1) - timedelta(days=1)
        listed: list[dict[str, Any]] = []
        add(f"list one month ({month})",
            timed(lambda: listed.extend(Catalog(directory).iter_sessions(since=lo, until=hi))))

        probe = rng.choice(ids)
        cat = Catalog(directory)
        add("get session by id, first", timed(lambda: cat.get_session(probe)))
        add("get session by id, cached shard", median_of(5, lambda: cat.get_session(probe)))
        add("full scan: count()", timed(lambda: Catalog(directory).count()))
        add("full scan: object_ids()", timed(lambda: Catalog(directory).object_ids()))

        # The alternative we rejected: one shard per month. Busiest month, one commit's work.
        month_docs: dict[str, Any] = {}
        busiest = max(Catalog(directory).months(),
                      key=lambda m: sum(f.stat().st_size for f in directory.glob(f"{m}-*.json")))
        for f in sorted(directory.glob(f"{busiest}-*.json")):
            for doc in json.loads(f.read_bytes())[TABLE].values():
                month_docs[str(len(month_docs) + 1)] = doc
        alt = root / "month"
        alt.mkdir()
        month_file = alt / f"{busiest}.json"
        AtomicJSONStorage(month_file).write({TABLE: month_docs})

        def month_commit(parse: bool) -> None:
            data = json.loads(month_file.read_bytes()) if parse else {TABLE: month_docs}
            data[TABLE][str(len(month_docs) + 1)] = make_record(rng, last, 50)
            atomic_write_bytes(month_file, json.dumps(data, separators=(",", ":")).encode())

        mb = month_file.stat().st_size / 1e6
        add(f"(rejected) month shard {mb:.1f} MB: commit, first",
            timed(lambda: month_commit(True)))
        add("(rejected) month shard: commit, next", timed(lambda: month_commit(False)))

        summary = (
            f"{sessions:,} sessions, {images:,} images, {len(files):,} day shards, "
            f"{total_bytes / 1e6:,.0f} MB of catalog (built in {build_s:.0f} s); "
            f"baseline = read + json-parse every catalog file once = {baseline:.2f} s; "
            f"{len(listed)} sessions listed in {month}"
        )
        return figures, summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--sessions", type=int, default=100_000)
    ap.add_argument("--years", type=int, default=5)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    figures, summary = run(args.sessions, args.years, args.seed)
    print(summary)
    print(f"{'figure':<52} {'time':>10} {'x baseline':>11} {'target':>8}  result")
    for f in figures:
        target = f"{f.target * 1000:.0f} ms" if f.target is not None else "-"
        result = {None: "", True: "pass", False: "FAIL"}[f.passed]
        print(f"{f.name:<52} {f.seconds * 1000:>7.1f} ms {f.ratio:>11.5f} {target:>8}  {result}")
    return 0 if all(f.passed is not False for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
