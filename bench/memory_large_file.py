"""Peak memory while ingesting one 2 GB video (issue 7 item 5: < 150 MB above start).

Why measure a child process: the object format streams 64 KiB chunks and the wipe writes
1 MiB blocks, so memory must not grow with the file; any code path that reads a whole file
(a hash helper, a ``read()`` without a size, a sniffing step) would show up here as a peak
of ~2 GB. The ingest runs as ``clinivault ingest CARD_DIR ... --discard none --wipe files``
in a child (a tiny wrapper that imports everything the ingest imports, reports its VmRSS
right after the imports, then calls the console script's ``main``); its peak is VmHWM
reported at exit and, as a cross-check, ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` after wait
(the largest of the child and anything it reaped). The baseline is the child's own RSS
after imports, so the delta is what ingesting the file costs, not what Python + numpy +
Pillow + cryptography cost to load.

The card is a folder with one MP4-looking file (an ``ftyp`` box, then random bytes, written
with an AES-CTR keystream: fast and incompressible). The wipe destroys it, so it is written
afresh each run, in /var/tmp (a real disk: tmpfs pages would count against nobody's RSS but
would fill memory).

    .venv/bin/python bench/memory_large_file.py [--size-mb 2048] [--dir /var/tmp]

``run()`` returns the figures for bench/run_all.py.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET_DELTA_MB = 150.0
BLOCK = 1 << 20
# An MP4 ftyp box: size 24, major brand isom, minor 0x200, compatible isom + mp41.
FTYP = (24).to_bytes(4, "big") + b"ftypisom" + (0x200).to_bytes(4, "big") + b"isommp41"


def _status_kb(field: str) -> int:
    """A /proc/self/status field in KiB (VmRSS now, VmHWM the peak so far)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def child_main(report: Path, cli_argv: list[str]) -> int:
    """Import what the ingest imports, report RSS, run the CLI, report the peak at exit."""
    import core.cli
    import core.cli.ingest_cmds
    import core.imaging.pool
    import core.quality
    import core.session
    import core.session.card  # noqa: F401
    from tui.main import main

    start_kb = _status_kb("VmRSS")
    code = 1
    try:
        code = main(cli_argv)
    finally:
        report.write_text(json.dumps({"start_kb": start_kb, "hwm_kb": _status_kb("VmHWM"),
                                      "code": code}))
    return code


def write_video(path: Path, size: int) -> None:
    """An MP4-looking file of *size* bytes: ftyp box, then an AES-CTR keystream."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    enc = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16))).encryptor()
    zeros = bytes(BLOCK)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(FTYP)
        left = size - len(FTYP)
        while left > 0:
            n = min(BLOCK, left)
            fh.write(enc.update(zeros[:n]))
            left -= n
        fh.flush()
        os.fsync(fh.fileno())


@dataclass
class Memory:
    """Start RSS, peak and the ingest's wall time for one large file."""
    size_mb: float
    start_mb: float
    peak_mb: float
    rusage_peak_mb: float
    seconds: float
    load: float

    @property
    def delta_mb(self) -> float:
        return self.peak_mb - self.start_mb

    @property
    def passed(self) -> bool:
        return self.delta_mb < TARGET_DELTA_MB


def run(size_mb: int = 2048, base: Path = Path("/var/tmp")) -> Memory:
    """Write the video, ingest it in a child, and read the child's memory report."""
    from core.vault.vault import Vault

    work = Path(tempfile.mkdtemp(prefix="clinivault-membench-", dir=base))
    try:
        card = work / "card"
        write_video(card / "DCIM" / "100CVBEN" / "MVI_0001.MP4", size_mb * BLOCK)
        vault, _k0 = Vault.init(work / "vault", "bench-custodian", b"bench custodian pass",
                                scrypt_log_n=12)
        vault.close()
        site = work / "site.toml"
        site.write_text("[patient_id]\nallow_test_ids = true\n")
        report = work / "report.json"
        argv = [sys.executable, str(Path(__file__).resolve()), "--child", str(report), "--",
                "--config", str(site), "ingest", str(work / "vault"), "--source", str(card),
                "--patient", "ZAC5361", "--consent", "record", "--method", "written",
                "--obtained-by", "Bench Nurse", "--operator", "bench", "--discard", "none",
                "--wipe", "files", "--yes", "--json"]
        load = os.getloadavg()[0]
        with tempfile.TemporaryFile("w+") as out:
            started = time.perf_counter()
            proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                  stdin=subprocess.DEVNULL, check=False)
            seconds = time.perf_counter() - started
            out.seek(0)
            text = out.read()
        rusage_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        if proc.returncode != 0:
            raise RuntimeError(f"ingest failed ({proc.returncode}):\n{text}")
        result = json.loads(text[text.index("{"):])
        if result.get("retained") != 1 or result.get("archived_bytes") != size_mb * BLOCK:
            raise RuntimeError(f"the video was not archived: {text}")
        got = json.loads(report.read_text())
        return Memory(size_mb * BLOCK / 1e6, got["start_kb"] / 1024, got["hwm_kb"] / 1024,
                      rusage_kb / 1024, seconds, load)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Command line; ``--child`` is the measured ingest process itself."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return child_main(Path(argv[1]), argv[3:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=2048)
    ap.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    args = ap.parse_args(argv)
    m = run(args.size_mb, args.dir)
    print(f"one {m.size_mb:,.0f} MB video, ingest --discard none --wipe files: {m.seconds:.1f} s "
          f"({m.size_mb / m.seconds:.0f} MB/s), load average {m.load:.2f}")
    print(f"RSS after imports   {m.start_mb:7.1f} MB")
    print(f"peak (VmHWM)        {m.peak_mb:7.1f} MB   (rusage max of child tree "
          f"{m.rusage_peak_mb:.1f} MB)")
    print(f"delta               {m.delta_mb:7.1f} MB   = {m.delta_mb / m.size_mb:.4f} x the file "
          f"size; target < {TARGET_DELTA_MB:.0f} MB: {'PASS' if m.passed else 'FAIL'}")
    return 0 if m.passed else 1


if __name__ == "__main__":
    sys.exit(main())
