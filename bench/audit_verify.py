"""Benchmark: how fast an auditor verifies a large audit log (issue 7: 1,000,000 entries < 15 s).

Why a ratio against plain SHA-256: absolute MB/s depends on the machine; verify time divided by
the time to hash the same bytes with hashlib in the same process says how much of the cost is
our own Python work (parsing, canonical check, MAC, key evolution) rather than I/O and hashing.

    .venv/bin/python bench/audit_verify.py [--entries N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.audit import GENESIS, build_entry, canonical_json, evolve_key, verify_log

TARGET_ENTRIES = 1_000_000
TARGET_SECONDS = 15.0

_EVENTS = (
    ("session started", lambda i: {"device": "sdb1", "operator": "op-3"}),
    ("discard", lambda i: {"file": f"DCIM/100CANON/IMG_{i % 10000:04d}.JPG",
                           "reason": "blurred", "object": f"{i:064x}"[:32]}),
    ("archive verified", lambda i: {"objects": i % 40, "bytes": i * 4096}),
    ("startup", lambda i: {}),
)


def generate(log_path: Path, state_path: Path, entries: int) -> bytes:
    """Write *entries* sealed entries (one fsync at the end, unlike the kiosk); return K_0."""
    k0 = secrets.token_bytes(32)
    key, prev = k0, GENESIS
    start = datetime(2026, 5, 12, 8, 0, tzinfo=UTC)
    with log_path.open("w", encoding="ascii", newline="\n") as fh:
        for i in range(entries):
            event, details = _EVENTS[i % len(_EVENTS)]
            stamp = start + timedelta(milliseconds=1500 * i)
            line, entry = build_entry(
                i, prev, key, actor="operator:op-3", event=event,
                session=f"s-{i // 50:08d}" if event != "startup" else None,
                details=details(i),
                time=stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z")
            fh.write(line)
            prev = entry["hash"]
            key = evolve_key(key)
        fh.flush()
        os.fsync(fh.fileno())
    state = {"head": prev, "key": key.hex(), "next_seq": entries, "version": 1}
    state_path.write_text(canonical_json(state) + "\n", encoding="ascii")
    return k0


def sha256_file(path: Path) -> float:
    """Seconds to read and SHA-256 *path* in 1 MiB chunks."""
    t0 = time.perf_counter()
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    h.digest()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=TARGET_ENTRIES)
    ap.add_argument("--keep", type=Path, help="write the log here and keep it")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="audit-bench-") as tmp:
        out = args.keep or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        log_path, state_path = out / "log.jsonl", out / "key.json"
        t0 = time.perf_counter()
        k0 = generate(log_path, state_path, args.entries)
        gen_s = time.perf_counter() - t0
        size = log_path.stat().st_size
        sha_s = sha256_file(log_path)  # also warms the page cache for a fair comparison
        t0, c0 = time.perf_counter(), time.process_time()
        result = verify_log(log_path, k0, key_state_path=state_path)
        verify_s, verify_cpu = time.perf_counter() - t0, time.process_time() - c0
        sha_s = min(sha_s, sha256_file(log_path))
    mb = size / 1e6
    print(f"entries            {args.entries:,} ({mb:.1f} MB, {size / max(args.entries, 1):.0f} "
          "bytes/entry)")
    print(f"generate           {gen_s:.2f} s")
    print(f"verify             {verify_s:.2f} s  {mb / verify_s:.1f} MB/s  "
          f"{verify_s / max(args.entries, 1) * 1e6:.2f} us/entry  ok={result.ok} "
          f"entries={result.entries}")
    print(f"verify CPU         {verify_cpu:.2f} s  (this process alone; wall time also counts "
          "waiting for a CPU on a busy machine)")
    print(f"hashlib.sha256     {sha_s:.3f} s  {mb / sha_s:.1f} MB/s")
    print(f"ratio              verify is {verify_s / sha_s:.1f}x plain SHA-256")
    if args.entries == TARGET_ENTRIES:
        verdict = "PASS" if verify_s < TARGET_SECONDS else "FAIL"
        print(f"target             {TARGET_ENTRIES:,} entries < {TARGET_SECONDS:.0f} s: {verdict}")
    if not result.ok:
        print(f"verify FAILED: line {result.first_bad_line}: {result.reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
