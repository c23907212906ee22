"""Search scale: after unlock, is a search by patient ID over 100,000 sessions under 1 s?

Why: issue 7 item 3. Patient IDs are sealed per session (X25519 + AES-GCM to the vault public
key), so a search has to unseal; ``core.custodian.search_index`` keeps an encrypted index that
is brought up to date on unlock by unsealing only sessions it has not seen. This script builds
a real vault whose catalog holds 100,000 sessions (2-50 images each, spread over ~5 years,
written shard by shard through the catalog's own atomic storage) with *real* sealed blobs of
the shape ingest writes (patient, consent record, keywords, one entry per object), sealed in
bulk on every core. It then times, each printed against the baseline of reading and parsing
every catalog file once in the same run:

* the first unlock's index build (unseal all 100,000; informative, no target),
* a search by patient ID after unlock with the index current (open the index, check every
  catalog day against the watermark, decrypt and parse the index, match, audit): target < 1 s,
* bringing the index up to date after one more session was committed.

The passphrase's scrypt is excluded (``bench/scrypt_cost.py`` measures it) and printed apart.

    .venv/bin/python bench/search_scale.py [--sessions 100000] [--years 5] [--seed 7]

``run()`` returns the figures for bench/run_all.py.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from core import consent as consentmod
from core.catalog import TABLE, AtomicJSONStorage, new_session_id
from core.custodian.access import unlock
from core.custodian.search import Query, search
from core.patient_id import PatientId
from core.vault import format as objfmt
from core.vault.vault import Vault

END = datetime(2026, 11, 1, tzinfo=UTC)
PASSPHRASE = b"search scale bench passphrase"
PATIENTS = 25_000
KEYWORDS = ["eczema", "psoriasis", "melanoma?", "wound", "burn", "keloid", "rash", "ulcer",
            "naevus", "cellulitis", "post-op", "acne"]
SITES = ["left forearm", "right forearm", "face", "scalp", "back", "chest", "left shin",
         "right hand", "abdomen", "neck"]
TARGET_SEARCH_S = 1.0


@dataclass
class Figure:
    name: str
    seconds: float
    target: float | None
    baseline: float

    @property
    def ratio(self) -> float:
        return self.seconds / self.baseline

    @property
    def passed(self) -> bool | None:
        return None if self.target is None else self.seconds < self.target


def nhs_numbers(rng: random.Random, n: int) -> list[str]:
    """Valid NHS numbers (modulus 11 check digit)."""
    out: set[str] = set()
    while len(out) < n:
        nine = f"{rng.randrange(400_000_000, 999_999_999):09d}"
        total = sum(int(d) * w for d, w in zip(nine, range(10, 1, -1), strict=True))
        check = 11 - total % 11
        if check == 10:
            continue
        out.add(nine + str(0 if check == 11 else check))
    return sorted(out)


def _consents() -> list[dict[str, Any]]:
    now = datetime(2024, 1, 1, tzinfo=UTC)
    made = []
    for scopes in (("record",), ("record", "teaching"), ("record", "teaching", "publication")):
        made.append(consentmod.grant(
            scopes=scopes, method="written", obtained_by_name="A. Nurse",
            obtained_by_role="Registered nurse", body_areas=["left forearm"],
            statement="I agree to clinical photographs.", now=now).to_dict())
    return made


def _day_shard(task: tuple[Path, str, list[str], bytes, int, list[str]]) -> list[tuple[str, str]]:
    """Worker: write one catalog day shard of real sealed records; return (session, patient)."""
    path, day, stamps, public_raw, seed, patients = task
    public = X25519PublicKey.from_public_bytes(public_raw)
    rng = random.Random(seed)
    consents = _consents()
    docs: dict[str, Any] = {}
    made = []
    for n, stamp in enumerate(stamps, 1):
        when = datetime.fromisoformat(stamp)
        sid = new_session_id(when)
        # patients[0] comes back on the 1st of every month: found in every index month file
        patient = patients[0] if n == 1 and day.endswith("-01") else rng.choice(patients)
        images = rng.randint(2, 50)
        objects, sealed_objects = [], {}
        for i in range(images):
            oid = rng.randbytes(16).hex()
            kind = "raw" if i % 7 == 6 else "image"
            captured = (when + timedelta(seconds=i * 7)).strftime("%Y-%m-%dT%H:%M:%S")
            objects.append({"id": oid, "sha256": rng.randbytes(32).hex(),
                            "size": rng.randint(2_000_000, 30_000_000),
                            "object_size": rng.randint(2_000_000, 30_000_000), "kind": kind,
                            "captured": captured, "index": i})
            sealed_objects[oid] = {
                "name": f"DCIM/100CANON/IMG_{i + 1:04d}.{'CR2' if kind == 'raw' else 'JPG'}",
                "item": i, "role": "primary" if kind == "image" else "raw",
                "keywords": [], "body_site": rng.choice(SITES) if i == 0 else "",
                "consent_form": False, "captured": captured}
        consent = rng.choice(consents)
        blob = {"patient": {"scheme": "nhs", "value": patient}, "consent": consent,
                "keywords": rng.sample(KEYWORDS, rng.randint(0, 2)), "objects": sealed_objects}
        sealed = objfmt.seal(json.dumps(blob, sort_keys=True).encode(), public)
        docs[str(n)] = {
            "session": sid, "started": stamp.replace("+00:00", "Z"),
            "finished": (when + timedelta(minutes=12)).isoformat().replace("+00:00", "Z"),
            "operator": f"nurse-{rng.randint(1, 40)}", "state": "done",
            "taken": images, "retained": images, "discarded": {},
            "archived_bytes": sum(o["size"] for o in objects), "objects": objects,
            "consent_scopes": consent["scopes"], "wipe": None, "tombstone": None,
            "sealed": base64.b64encode(sealed).decode()}
        made.append((sid, patient))
    AtomicJSONStorage(path / f"{day}.json").write({TABLE: docs})
    return made


def build(root: Path, sessions: int, years: int, seed: int) -> tuple[list[tuple[str, str]], int]:
    """A vault at *root* with *sessions* real sealed sessions; returns (session, patient) pairs."""
    vault, _k0 = Vault.init(root, "bench", PASSPHRASE, scrypt_log_n=12)
    public_raw = vault.public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    catalog_dir = vault.layout.catalog
    vault.close()
    rng = random.Random(seed)
    patients = nhs_numbers(rng, PATIENTS)
    span = int(timedelta(days=365 * years).total_seconds())
    start = END - timedelta(seconds=span)
    times = sorted(start + timedelta(seconds=rng.randrange(span)) for _ in range(sessions))
    by_day: dict[str, list[str]] = {}
    for t in times:
        by_day.setdefault(t.date().isoformat(), []).append(t.isoformat())
    tasks = [(catalog_dir, day, stamps, public_raw, rng.randrange(2**32), patients)
             for day, stamps in by_day.items()]
    made: list[tuple[str, str]] = []
    with ProcessPoolExecutor() as pool:
        for part in pool.map(_day_shard, tasks, chunksize=8):
            made.extend(part)
    return made, len(by_day)


def timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def run(sessions: int = 100_000, years: int = 5, seed: int = 7,
        repeats: int = 5) -> tuple[list[Figure], str]:
    with tempfile.TemporaryDirectory(prefix="search-scale-") as tmp:
        root = Path(tmp) / "vault"
        build_s, (made, days) = timed(lambda: build(root, sessions, years, seed))
        files = sorted((root / "catalog").glob("*.json"))
        catalog_bytes = sum(f.stat().st_size for f in files)

        def floor() -> None:
            for f in files:
                json.loads(f.read_bytes())

        baseline = statistics.median(timed(floor)[0] for _ in range(2))
        counts: dict[str, int] = {}
        for _sid, p in made:
            counts[p] = counts.get(p, 0) + 1
        frequent = max(counts, key=lambda p: counts[p])
        typical = sorted(counts, key=lambda p: (abs(counts[p] - 4), p))[0]

        with Vault.open(root, actor="bench") as vault:
            scrypt_s, custodian = timed(lambda: unlock(vault, PASSPHRASE, "bench"))
            first_s, _ = timed(lambda: custodian.index)
            stats = custodian.index_stats
            assert stats is not None and stats.unsealed == sessions, stats
        index_bytes = sum(f.stat().st_size for f in (root / "index").glob("*.idx"))

        def searched(query: Query) -> tuple[list[float], int]:
            """Each repeat in a fresh unlock: open the index from disk, check it is current
            against every catalog day, search, and write the audit entry."""
            times, found = [], 0
            for _ in range(repeats):
                with Vault.open(root, actor="bench") as vault:
                    custodian = unlock(vault, PASSPHRASE, "bench")
                    s, hits = timed(lambda c=custodian: search(c, query))
                    times.append(s)
                    found = len(hits)
                    assert custodian.index_stats is not None
                    assert custodian.index_stats.unsealed == 0
            return times, found

        frequent_times, found = searched(Query(patient=PatientId("nhs", frequent)))
        assert found == counts[frequent], (found, counts[frequent])
        typical_times, found = searched(Query(patient=PatientId("nhs", typical)))
        assert found == counts[typical], (found, counts[typical])
        keyword_times, keyword_found = searched(Query(keyword="psoriasis"))

        with Vault.open(root, actor="bench") as vault:
            custodian = unlock(vault, PASSPHRASE, "bench")
            _ = custodian.index
            rec = vault.catalog.get_session(made[-1][0])
            assert rec is not None
            when = datetime.now(UTC).replace(microsecond=0)
            rec["session"] = new_session_id(when)
            rec["started"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
            rec["finished"] = None
            vault.catalog.commit_session(rec)
            incr_s, _ = timed(custodian.refresh_index)
            assert custodian.index_stats is not None
            assert custodian.index_stats.unsealed == 1

    figures = [
        Figure("first unlock: build the index (unseal every session)", first_s, None, baseline),
        Figure(f"search by patient ID ({counts[frequent]} sessions, every month)",
               statistics.median(frequent_times), TARGET_SEARCH_S, baseline),
        Figure(f"search by patient ID ({counts[typical]} sessions)",
               statistics.median(typical_times), TARGET_SEARCH_S, baseline),
        Figure(f"search by keyword ({keyword_found:,} sessions)",
               statistics.median(keyword_times), None, baseline),
        Figure("index update after one more session", incr_s, None, baseline),
    ]
    note = (f"{sessions:,} sessions over {days:,} catalog day files "
            f"({catalog_bytes / 1e6:,.0f} MB); index {index_bytes / 1e6:.1f} MB; "
            f"build {build_s:.0f} s; "
            f"baseline (read + parse the catalog once) {baseline:.2f} s; scrypt unlock "
            f"(log_n 12 here, excluded) {scrypt_s * 1000:.0f} ms; patient searches (ms) "
            + ", ".join(f"{t * 1000:.0f}" for t in frequent_times + typical_times))
    return figures, note


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=100_000)
    ap.add_argument("--years", type=int, default=5)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    figures, note = run(args.sessions, args.years, args.seed, args.repeats)
    print(note)
    print(f"{'figure':58} {'seconds':>9} {'x baseline':>11} {'target':>8}  result")
    for f in figures:
        target = f"< {f.target:g} s" if f.target is not None else "-"
        result = {None: "info", True: "PASS", False: "FAIL"}[f.passed]
        print(f"{f.name:58} {f.seconds:9.3f} {f.ratio:11.3f} {target:>8}  {result}")
    return 0 if all(f.passed is not False for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())

