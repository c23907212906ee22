"""core.imaging.pool: one bad file costs one worker, never the session, and no process is left.

The crash, hang, out-of-memory and malicious-reply cases use ``scripted_task`` (injected with
``DecodePool(task=...)``), which misbehaves according to the file's name and otherwise reads the
file through safe_open like the real task. The rest run the real ``analyse_image`` in workers.
"""

from __future__ import annotations

import os
import signal
import struct
import threading
import zlib
from collections.abc import Iterable
from pathlib import Path

import pytest
from PIL import Image

from core.config import Config
from core.errors import FailedSafely
from core.imaging.decode import DecodeLimits, ImageAnalysis
from core.imaging.pool import DecodePool
from core.media.safe_open import FileIdentity, card_file

MIB = 1024 * 1024
LIMITS = DecodeLimits(max_pixels=200_000_000, timeout_s=30.0, memory_mb=512)


class Exploit:
    """What a taken-over worker might send: unpickling it would run a shell command."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def scripted_task(root: str, parts: tuple[str, ...], identity: FileIdentity | None,
                  limits: DecodeLimits) -> ImageAnalysis:
    """A decoder that misbehaves on cue. Module level: the pool pickles it by name."""
    name = parts[-1]
    if name.startswith("segv"):
        os.kill(os.getpid(), signal.SIGSEGV)
    if name.startswith("hang"):
        fifo = Path(root, name + ".fifo")
        if fifo.exists():  # tell the test we are stuck (it waits on the other end)
            with fifo.open("w") as fh:
                fh.write(str(os.getpid()))
        read_end, _write_end = os.pipe()
        os.read(read_end, 1)  # nobody ever writes: blocked for good
    if name.startswith("oom"):
        hog = bytearray((limits.memory_mb + 64) * MIB)
        return ImageAnalysis(parts, ok=True, width=len(hog))  # not reached
    if name.startswith("fail"):
        raise RuntimeError("boom")
    if name.startswith("evil"):
        return Exploit(str(Path(root, "pwned")))  # type: ignore[return-value]
    with card_file(root, parts, expect=identity) as fh:
        size = len(fh.read())
    return ImageAnalysis(parts, ok=True, format="TEST", width=size, model=f"pid {os.getpid()}")


def make_card(root: Path, names: Iterable[str]) -> list[tuple[tuple[str, ...], None]]:
    items = []
    for name in names:
        (root / name).write_bytes(name.encode())
        items.append(((name,), None))
    return items


def pids_of(results: Iterable[ImageAnalysis]) -> set[int]:
    return {int(r.model.split()[1]) for r in results if r.ok and r.model}


def assert_gone(pids: Iterable[int]) -> None:
    """Each process has exited *and* been reaped (a zombie still has a /proc entry)."""
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} is still there"
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def spawned_children() -> set[int]:
    """Live children of this process that are multiprocessing spawn workers."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == os.getpid() and b"spawn_main" in cmdline:
            found.add(int(entry))
    return found


def by_name(results: Iterable[ImageAnalysis]) -> dict[str, ImageAnalysis]:
    out: dict[str, ImageAnalysis] = {}
    for result in results:
        assert result.parts[-1] not in out, "a file was reported twice"
        out[result.parts[-1]] = result
    return out


# -- a bad file costs one worker -------------------------------------------------------------


def test_segfault_marks_one_file_and_a_fresh_worker_takes_over(tmp_path: Path) -> None:
    names = ["a1", "a2", "segv", "a3", "a4", "a5", "a6"]
    items = make_card(tmp_path, names)
    with DecodePool(LIMITS, workers=2, task=scripted_task) as pool:
        results = by_name(pool.analyse(tmp_path, items))
        seen = pids_of(results.values()) | set(pool.worker_pids())
    assert set(results) == set(names)
    assert results["segv"].reason == "decoder crashed (signal 11)"
    assert all(results[n].ok and results[n].width == len(n) for n in names if n != "segv")
    assert_gone(seen)


def test_hang_is_killed_at_the_deadline_while_the_rest_carry_on(tmp_path: Path) -> None:
    names = ["hang", "b1", "b2", "b3", "b4", "b5"]
    items = make_card(tmp_path, names)
    limits = DecodeLimits(max_pixels=10**8, timeout_s=3.0, memory_mb=256)
    with DecodePool(limits, workers=2, task=scripted_task) as pool:
        results = list(pool.analyse(tmp_path, items))
    assert [r.parts[-1] for r in results][-1] == "hang"  # yielded as completed
    assert results[-1].reason == "decoder timed out after 3 s"
    assert all(r.ok for r in results[:-1]) and len(results) == len(names)


def test_memory_blow_up_is_reported_and_the_worker_retired(tmp_path: Path) -> None:
    names = ["c1", "oom", "c2", "c3"]
    items = make_card(tmp_path, names)
    limits = DecodeLimits(max_pixels=10**8, timeout_s=30.0, memory_mb=64)
    with DecodePool(limits, workers=1, task=scripted_task) as pool:
        results = by_name(pool.analyse(tmp_path, items))
        survivors = set(pool.worker_pids())
    assert results["oom"].reason == "decoder ran out of memory"
    assert all(results[n].ok for n in ("c1", "c2", "c3"))
    before, after = pids_of([results["c1"]]), pids_of([results["c2"], results["c3"]])
    assert before.isdisjoint(after)  # one worker only: the one that ran out was replaced
    assert_gone(before | after | survivors)


def test_a_failing_task_is_one_unreadable_file(tmp_path: Path) -> None:
    items = make_card(tmp_path, ["fail", "d1"])
    with DecodePool(LIMITS, workers=1, task=scripted_task) as pool:
        results = by_name(pool.analyse(tmp_path, items))
    assert results["fail"].reason == "decoder failed: RuntimeError: boom"
    assert results["d1"].ok


def test_a_malicious_reply_is_not_unpickled(tmp_path: Path) -> None:
    items = make_card(tmp_path, ["evil", "e1", "e2"])
    with DecodePool(LIMITS, workers=1, task=scripted_task) as pool:
        results = by_name(pool.analyse(tmp_path, items))
    assert results["evil"].reason == "decoder sent a malformed reply"
    assert not (tmp_path / "pwned").exists()  # os.system never ran in this process
    assert results["e1"].ok and results["e2"].ok


# -- lifecycle -------------------------------------------------------------------------------


def test_workers_start_lazily_are_reused_and_are_gone_after_close(tmp_path: Path) -> None:
    items = make_card(tmp_path, [f"f{i}" for i in range(8)])
    pool = DecodePool(LIMITS, workers=2, task=scripted_task)
    assert pool.worker_pids() == []  # nothing started until there is work
    first = list(pool.analyse(tmp_path, items[:1]))
    assert len(pool.worker_pids()) == 1  # one file needs one worker
    second = list(pool.analyse(tmp_path, items))
    workers = set(pool.worker_pids())
    assert len(workers) == 2 and pids_of(first + second) <= workers  # no restarts
    pool.close()
    assert pool.worker_pids() == []
    assert_gone(workers)
    assert not (spawned_children() & workers)
    with pytest.raises(RuntimeError, match="closed"):
        pool.analyse(tmp_path, items)


def test_close_kills_a_worker_stuck_in_a_file(tmp_path: Path) -> None:
    items = make_card(tmp_path, ["g1", "hang"])
    pool = DecodePool(LIMITS, workers=2, task=scripted_task)
    results = pool.analyse(tmp_path, items)
    assert next(results).parts == ("g1",)  # the other worker is now stuck in "hang"
    workers = set(pool.worker_pids())
    assert len(workers) == 2
    pool.close()
    assert_gone(workers)
    assert list(results) == []  # the abandoned iterator just ends


def test_closing_the_iterator_early_abandons_the_busy_worker(tmp_path: Path) -> None:
    items = make_card(tmp_path, ["h1", "hang", "h2"])
    with DecodePool(LIMITS, workers=2, task=scripted_task) as pool:
        results = pool.analyse(tmp_path, items[:2])
        assert next(results).ok  # h1; one worker is now stuck in "hang", the other idle
        results.close()
        assert len(pool.worker_pids()) == 1  # the stuck one was killed, the idle one kept
        again = list(pool.analyse(tmp_path, items[2:]))  # no stale reply mixes in
        assert [r.parts for r in again] == [("h2",)] and again[0].ok


@pytest.mark.timeout(60)
def test_cancel_stops_promptly_while_every_worker_is_stuck(tmp_path: Path) -> None:
    names = ["hang1", "hang2", "never"]
    items = make_card(tmp_path, names)
    for name in names[:2]:
        os.mkfifo(tmp_path / f"{name}.fifo")
    cancel = threading.Event()
    stuck: list[int] = []

    def watch() -> None:  # wait (on the FIFOs, no sleeping) until both workers are stuck
        for name in names[:2]:
            with (tmp_path / f"{name}.fifo").open() as fh:
                stuck.append(int(fh.read()))
        cancel.set()

    watcher = threading.Thread(target=watch)
    watcher.start()
    limits = DecodeLimits(max_pixels=10**8, timeout_s=600.0, memory_mb=256)
    with DecodePool(limits, workers=2, task=scripted_task) as pool:
        results = list(pool.analyse(tmp_path, items, cancelled=cancel.is_set))
        assert results == []  # nothing finished, "never" never started
        assert pool.worker_pids() == []
    watcher.join()
    assert len(stuck) == 2
    assert_gone(stuck)


@pytest.mark.timeout(60)
def test_workers_that_cannot_start_fail_the_step_cleanly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The task's module vanished after the app imported it (say, an upgrade underneath a
    # running kiosk): every worker dies before it is ready. One clear error, no endless respawn.
    module = tmp_path / "vanishing_task.py"
    module.write_text("def task(root, parts, identity, limits):\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import vanishing_task

    module.unlink()
    items = make_card(tmp_path, ["i1"])
    with DecodePool(LIMITS, workers=1, task=vanishing_task.task) as pool:
        with pytest.raises(FailedSafely, match="image decoder could not start"):
            list(pool.analyse(tmp_path, items))
        assert pool.worker_pids() == []


def test_workers_zero_means_one_per_core(cfg: Config) -> None:
    assert DecodePool(LIMITS, workers=0).size == len(os.sched_getaffinity(0))
    pool = DecodePool.from_config(cfg.with_overrides({"imaging": {"workers": 3}}))
    assert (pool.size, pool.limits) == (3, DecodeLimits.from_config(cfg))
    with pytest.raises(ValueError):
        DecodePool(LIMITS, workers=-1)


# -- the real decoder in workers -------------------------------------------------------------


def write_grey_png(path: Path, width: int, height: int) -> Path:
    """A valid all-black 8-bit grey PNG, streamed (no image of that size is ever in memory)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    packer = zlib.compressobj(1)
    row = b"\0" * (width + 1)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data)
                     + chunk(b"IEND", b""))
    return path


def test_real_decoder_out_of_memory_in_a_worker(tmp_path: Path) -> None:
    write_grey_png(tmp_path / "huge.png", 10_000, 10_000)  # 100 MB of pixels when decoded
    Image.new("RGB", (640, 480), "teal").save(tmp_path / "small.jpg")
    items = [(("huge.png",), None), (("small.jpg",), None)]
    limits = DecodeLimits(max_pixels=200_000_000, timeout_s=60.0, memory_mb=48)
    with DecodePool(limits, workers=1) as pool:
        results = by_name(pool.analyse(tmp_path, items))
    assert results["huge.png"].reason == "decoder ran out of memory"
    assert results["small.jpg"].ok and results["small.jpg"].thumbnail_jpeg


def test_bomb_is_refused_in_a_worker_without_allocating(tmp_path: Path) -> None:
    write_grey_png(tmp_path / "bomb.png", 50_000, 1)
    data = bytearray((tmp_path / "bomb.png").read_bytes())
    data[20:24] = struct.pack(">I", 50_000)  # now declares 50000x50000; CRC fixed below
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    (tmp_path / "bomb.png").write_bytes(bytes(data))
    limits = DecodeLimits(max_pixels=200_000_000, timeout_s=30.0, memory_mb=16)
    with DecodePool(limits, workers=1) as pool:
        [result] = pool.analyse(tmp_path, [(("bomb.png",), None)])
    assert result.reason == "decompression bomb: 2.5 gigapixels exceeds the 200 MP limit"


def test_real_card_files_through_the_pool(media_dir: Path) -> None:
    folders = ("gps", "plain", "hostile")
    with DecodePool(LIMITS, workers=2) as pool:
        for folder in folders:
            root = media_dir / folder
            names = sorted(p.name for p in root.iterdir())
            identities = [FileIdentity.from_stat(os.stat(root / n)) for n in names]
            items = [((n,), ident) for n, ident in zip(names, identities, strict=True)]
            results = by_name(pool.analyse(root, items))
            assert set(results) == set(names)
            for name, result in results.items():
                assert result.ok is (folder != "hostile"), (name, result.reason)
                assert (result.thumbnail_jpeg is not None) is result.ok
    assert spawned_children() == set()
