"""Run every issue-7 benchmark and print one table: figure, value, target, pass/fail.

Why one runner: the figures are only comparable when they come from the same machine state,
so each row also carries its own baseline ratio (measured in the same run by the bench that
produced it) and the load average when it started; this 2-core machine is shared with other
engineers' test runs, and a row measured at load 5 is not the same figure as one at load 0.

The benches run one after another in this process (none of them runs at the same time as
another), each with its own baseline:

====================  ==========================================  ===========================
bench                 figure                                      baseline
====================  ==========================================  ===========================
ingest_e2e (slow)     ingest time / I/O floor                     read + vault write + wipe
quality_throughput    images/s (analyse_image, warm workers)      plain Pillow full decode
catalog_scale (slow)  open, commit 1 session (100,000 sessions)   read + parse catalog once
search_scale (slow)   search by patient ID after unlock           read + parse catalog once
audit_verify (slow)   verify 1,000,000 entries                    SHA-256 of the same bytes
memory_large_file     peak RSS delta ingesting a 2 GB video       RSS after imports
startup               ``clinivault demo`` to first screen         ``python -c pass``
====================  ==========================================  ===========================

    sudo .venv/bin/python bench/run_all.py [--quick] [--skip NAME ...] [--markdown]

``--quick`` skips the slow ones (ingest, catalog, search, audit). A bench that fails to run
is a row with result "error", and the others still run.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SLOW = ("ingest", "catalog", "search", "audit")
ALL = ("ingest", "quality", "catalog", "search", "audit", "memory", "startup")


@dataclass
class Row:
    """One line of the table."""
    figure: str
    value: str
    baseline: str  # the figure against its same-run baseline
    target: str
    result: str  # PASS, FAIL, info, error
    load: float


def _verdict(passed: bool | None) -> str:
    return {None: "info", True: "PASS", False: "FAIL"}[passed]


def ingest_rows(args: argparse.Namespace) -> list[Row]:
    """Item 1: ingest time over the I/O floor measured in the same run."""
    import ingest_e2e

    load = os.getloadavg()[0]
    r = ingest_e2e.run(args.images)
    print("\n".join(r.lines), flush=True)
    floor = r.floor
    return [Row(f"1. ingest {r.images} x 12 MP JPEG, loop exFAT (FUSE), --wipe files",
                f"{r.ingest.seconds:.1f} s",
                f"{r.ratio:.2f} x floor ({floor.seconds:.2f} s)",
                f"<= {ingest_e2e.TARGET} x floor", _verdict(r.ratio <= ingest_e2e.TARGET),
                load)]


def quality_rows(args: argparse.Namespace) -> list[Row]:
    """Item 2: bench/quality_throughput.py's rows against its plain Pillow decode."""
    import quality_throughput

    load = os.getloadavg()[0]
    rows = quality_throughput.run(args.quality_count)
    plain = rows[0].images_per_s
    out = []
    for row in rows[1:]:
        cores = f" on {row.cores_used:.1f} cores" if row.cores_used is not None else ""
        out.append(Row(f"2. quality: {row.name}", f"{row.images_per_s:.1f} images/s{cores}",
                       f"{row.vs_plain:.2f} x plain decode ({plain:.1f}/s)",
                       f">= {row.target:g}/s" if row.target else "-",
                       _verdict(row.passed), load))
    return out


def catalog_rows(args: argparse.Namespace) -> list[Row]:
    """Item 3: open and commit from bench/catalog_scale.py."""
    import catalog_scale

    load = os.getloadavg()[0]
    figures, summary = catalog_scale.run(args.sessions)
    print(summary, flush=True)
    wanted = ("open", "commit 1 session, first after open", "commit 1 session, next",
              "commit 1 session, new day")
    return [Row(f"3. catalog {args.sessions:,} sessions: {f.name}", f"{f.seconds * 1000:.0f} ms",
                f"{f.ratio:.4f} x read+parse ({f.baseline:.2f} s)",
                f"< {f.target * 1000:.0f} ms" if f.target else "-", _verdict(f.passed), load)
            for f in figures if f.name in wanted]


def search_rows(args: argparse.Namespace) -> list[Row]:
    """Item 3: search by patient ID after unlock, from bench/search_scale.py."""
    import search_scale

    load = os.getloadavg()[0]
    figures, note = search_scale.run(args.sessions)
    print(note, flush=True)
    return [Row(f"3. catalog {args.sessions:,} sessions: {f.name}", f"{f.seconds * 1000:.0f} ms",
                f"{f.ratio:.3f} x read+parse ({f.baseline:.2f} s)",
                f"< {f.target * 1000:.0f} ms" if f.target else "-", _verdict(f.passed), load)
            for f in figures if f.target is not None]


def audit_rows(args: argparse.Namespace) -> list[Row]:
    """Item 4: bench/audit_verify.py's generator and timer, verify against SHA-256."""
    import audit_verify

    from core.audit import verify_log

    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="audit-bench-") as tmp:
        log_path, state_path = Path(tmp) / "log.jsonl", Path(tmp) / "key.json"
        k0 = audit_verify.generate(log_path, state_path, args.entries)
        size = log_path.stat().st_size
        sha_s = audit_verify.sha256_file(log_path)  # also warms the page cache
        started = time.perf_counter()
        result = verify_log(log_path, k0, key_state_path=state_path)
        verify_s = time.perf_counter() - started
        sha_s = min(sha_s, audit_verify.sha256_file(log_path))
    if not result.ok:
        raise RuntimeError(f"verify failed at line {result.first_bad_line}: {result.reason}")
    mb = size / 1e6
    target = audit_verify.TARGET_SECONDS if args.entries == audit_verify.TARGET_ENTRIES else None
    return [Row(f"4. audit verify {args.entries:,} entries ({mb:.0f} MB)",
                f"{verify_s:.1f} s ({mb / verify_s:.0f} MB/s)",
                f"{verify_s / sha_s:.1f} x SHA-256 ({mb / sha_s:.0f} MB/s)",
                f"< {target:g} s" if target else "-",
                _verdict(None if target is None else verify_s < target), load)]


def memory_rows(args: argparse.Namespace) -> list[Row]:
    """Item 5: peak RSS delta while ingesting one large video."""
    import memory_large_file

    load = os.getloadavg()[0]
    m = memory_large_file.run(args.video_mb)
    return [Row(f"5. peak RSS ingesting one {m.size_mb / 1e3:.1f} GB video",
                f"+{m.delta_mb:.0f} MB (peak {m.peak_mb:.0f} MB)",
                f"start {m.start_mb:.0f} MB after imports; {m.size_mb / m.seconds:.0f} MB/s",
                f"< +{memory_large_file.TARGET_DELTA_MB:.0f} MB", _verdict(m.passed), load)]


def startup_rows(args: argparse.Namespace) -> list[Row]:
    """Item 6: time to the first screen against a bare interpreter start."""
    import startup

    load = os.getloadavg()[0]
    s = startup.run(args.startup_runs)
    stages = "; ".join(f"{n} {t:.2f} s" for n, t in s.stages)
    print(f"startup stages: {stages}", flush=True)
    what = "clinivault demo" if s.wired else "tui.app.run_demo (demo not wired to the app)"
    return [Row(f"6. first screen: {what}", f"{s.seconds:.2f} s",
                f"{s.seconds / s.baseline_s:.0f} x python -c pass ({s.baseline_s:.3f} s)",
                f"< {startup.TARGET_S:g} s", _verdict(s.passed), load)]


BENCHES: dict[str, Callable[[argparse.Namespace], list[Row]]] = {
    "ingest": ingest_rows, "quality": quality_rows, "catalog": catalog_rows,
    "search": search_rows, "audit": audit_rows, "memory": memory_rows,
    "startup": startup_rows,
}


def table(rows: list[Row], markdown: bool) -> str:
    """Plain columns for the terminal, or Markdown for docs/PERFORMANCE.md."""
    head = ("figure", "value", "vs same-run baseline", "target", "result", "load")
    cells = [(r.figure, r.value, r.baseline, r.target, r.result, f"{r.load:.1f}") for r in rows]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(lines)
    widths = [max(len(x) for x in col) for col in zip(head, *cells, strict=True)]
    fmt = "  ".join(f"{{:{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths)),
                      *(fmt.format(*c) for c in cells)])


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benches in turn; a failing bench becomes an error row."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip", action="append", default=[], choices=ALL,
                    help="skip this bench (repeatable)")
    ap.add_argument("--only", action="append", default=[], choices=ALL,
                    help="run only this bench (repeatable)")
    ap.add_argument("--quick", action="store_true", help=f"skip the slow ones: {', '.join(SLOW)}")
    ap.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    ap.add_argument("--images", type=int, default=200, help="ingest: number of JPEGs")
    ap.add_argument("--quality-count", type=int, default=60, help="quality: number of JPEGs")
    ap.add_argument("--sessions", type=int, default=100_000, help="catalog/search sessions")
    ap.add_argument("--entries", type=int, default=1_000_000, help="audit entries")
    ap.add_argument("--video-mb", type=int, default=2048, help="memory: video size")
    ap.add_argument("--startup-runs", type=int, default=5)
    args = ap.parse_args(argv)
    chosen = [b for b in ALL if (not args.only or b in args.only) and b not in args.skip
              and not (args.quick and b in SLOW)]
    started = time.perf_counter()
    print(f"{date.today()} on {platform.node()}: {os.cpu_count()} cores, load average "
          f"{'/'.join(f'{x:.2f}' for x in os.getloadavg())}; running {', '.join(chosen)}",
          flush=True)
    rows: list[Row] = []
    for name in chosen:
        print(f"\n== {name} ==", flush=True)
        t0 = time.perf_counter()
        try:
            rows += BENCHES[name](args)
        except (Exception, SystemExit) as exc:
            traceback.print_exc()
            rows.append(Row(name, "-", str(exc).splitlines()[0][:80] if str(exc) else
                            type(exc).__name__, "-", "error", os.getloadavg()[0]))
        print(f"({name}: {time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"\nall done in {time.perf_counter() - started:.0f} s; load average now "
          f"{'/'.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print(table(rows, markdown=False))
    if args.markdown:
        print("\n" + table(rows, markdown=True))
    return 0 if all(r.result in ("PASS", "info") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
