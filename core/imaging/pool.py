"""A small pool of decoder processes that outlives the files it decodes.

Why not ``concurrent.futures.ProcessPoolExecutor``: one worker killed by a signal breaks the whole
executor, and a running task can be neither timed out nor killed on its own. Here each worker has
its own pipe and one file at a time, so the parent always knows which file a worker held when it
crashed, hung or ran out of memory: that file is reported unreadable, a fresh worker takes over,
and the session carries on. This is Pillow's security handbook applied (decode untrusted images in
worker processes with memory and CPU limits and a timeout); it also spreads decoding over the cores.

Workers are started with the "spawn" method (a fresh interpreter: safe although the parent has
threads, as the TUI does), ignore Ctrl-C (the parent decides), write nothing to the terminal,
cannot dump core (a core file would hold patient images), and run under RLIMIT_AS (address-space
headroom) and RLIMIT_CPU; the parent enforces a wall-clock deadline per file with SIGKILL.
Replies are unpickled with an allow-list of classes: a worker taken over by a malicious file must
not gain code execution in the session process through a crafted pickle.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import math
import multiprocessing
import os
import pickle
import resource
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, is_dataclass, replace
from enum import Enum
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import FailedSafely
from core.imaging import decode
from core.imaging.decode import OUT_OF_MEMORY, DecodeLimits, ImageAnalysis, analyse_image

if TYPE_CHECKING:
    from core.media.safe_open import FileIdentity

__all__ = ["DecodeLimits", "DecodePool", "ImageAnalysis", "TaskFunction"]

# (root, parts, identity, limits) -> ImageAnalysis; must be a module-level function (pickled by
# name). The default is decode.analyse_image; tests inject functions that crash or hang.
TaskFunction = Callable[[str, tuple[str, ...], "FileIdentity | None", DecodeLimits], ImageAnalysis]

MIB = 1024 * 1024
_STARTUP_S = 60.0  # a worker that has not loaded its decoders by then is not going to
_QUIT_S = 2.0  # grace for an idle worker to exit after being told to
_POLL_S = 0.05  # how often cancelled() is asked while waiting
_MAX_REPLY = 16 * MIB  # a reply is a few hundred bytes plus a ~30 KB thumbnail
_MAX_START_FAILURES = 3
_EXIT_OUT_OF_MEMORY = 86  # a worker whose MemoryError could not even be reported exits with this
# One thread per worker: the pool provides the parallelism, and BLAS/OpenMP thread pools would
# each reserve address space counted against RLIMIT_AS.
_THREAD_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass
class _Task:
    seq: int
    root: str
    parts: tuple[str, ...]
    identity: FileIdentity | None


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection
    started: float
    ready: bool = False
    task: _Task | None = None
    deadline: float = math.inf


class DecodePool:
    """Decode images in worker processes; a context manager (``close()`` ends every worker).

    Workers start lazily, up to ``workers`` (0 = one per available core). ``task`` replaces
    ``analyse_image`` in the workers; it exists for tests that need a decoder which crashes,
    hangs or exhausts memory. One ``analyse()`` runs at a time.
    """

    def __init__(self, limits: DecodeLimits, workers: int = 0, *,
                 task: TaskFunction = analyse_image) -> None:
        if workers < 0:
            raise ValueError("workers must be 0 (one per core) or more")
        self.limits = limits
        self.size = workers or _available_cores()
        self._task = task
        self._ctx = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        self._seq = 0
        self._start_failures = 0
        self._running = False
        self._closed = False

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> DecodePool:
        """From a loaded ``core.config.Config`` or its ``[imaging]`` section."""
        imaging = cfg.get("imaging", cfg)
        return cls(DecodeLimits.from_config(imaging), workers=int(imaging["workers"]))

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (for diagnostics and tests)."""
        return [w.process.pid for w in self._workers if w.process.pid is not None]

    def analyse(self, root: Path, items: Iterable[tuple[tuple[str, ...], FileIdentity | None]],
                *, cancelled: Callable[[], bool] | None = None) -> Iterator[ImageAnalysis]:
        """Analyse each ``(parts, identity)`` under ``root``; yield results as they complete.

        Every item yields exactly one ``ImageAnalysis`` unless the run is cancelled: when
        ``cancelled()`` turns True (it is asked at least every 50 ms) the iterator stops, the
        files being decoded are abandoned (their workers killed) and the rest are not started.
        Closing the iterator early does the same.
        """
        if self._closed:
            raise RuntimeError("DecodePool is closed")
        tasks = (_Task(self._next_seq(), str(root), tuple(parts), identity)
                 for parts, identity in items)
        return self._run(tasks, cancelled or (lambda: False))

    def close(self) -> None:
        """End every worker: idle ones are asked to quit, the rest are killed; all are reaped."""
        self._closed = True
        asked: set[int] = set()
        for worker in self._workers:
            if worker.ready and worker.task is None:
                with contextlib.suppress(OSError):
                    worker.conn.send(None)
                    asked.add(id(worker))
        for worker in list(self._workers):
            self._reap(worker, grace=_QUIT_S if id(worker) in asked else 0.0)

    # -- the scheduler --------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _run(self, tasks: Iterator[_Task], cancelled: Callable[[], bool]
             ) -> Iterator[ImageAnalysis]:
        if self._running:
            raise RuntimeError("DecodePool.analyse() is already running")
        self._running = True
        backlog: deque[_Task] = deque()
        exhausted = False
        done: list[ImageAnalysis] = []
        try:
            while True:
                if self._closed:
                    return
                # Keep up to `size` tasks in hand: enough to know how many workers are worth
                # starting, without reading a lazily produced item list far ahead.
                while not exhausted and len(backlog) < self.size:
                    task = next(tasks, None)
                    if task is None:
                        exhausted = True
                    else:
                        backlog.append(task)
                for worker in self._workers:
                    if worker.ready and worker.task is None and backlog:
                        self._assign(worker, backlog)
                starting = sum(1 for w in self._workers if not w.ready)
                for _ in range(min(len(backlog) - starting, self.size - len(self._workers))):
                    self._start_worker()

                for result in done:  # workers already hold their next file while we yield
                    yield result
                    if cancelled():
                        return
                done.clear()
                if cancelled():
                    return
                if exhausted and not backlog and all(w.task is None for w in self._workers):
                    return
                self._wait_and_collect(done)
        finally:
            # Abandoned files: kill their workers, or their late replies would be taken for
            # replies to the next analyse().
            for worker in [w for w in self._workers if w.task is not None]:
                self._kill(worker)
            self._running = False

    def _assign(self, worker: _Worker, backlog: deque[_Task]) -> None:
        task = backlog.popleft()
        try:
            worker.conn.send((task.seq, task.root, task.parts, task.identity))
        except OSError:  # died while idle: its sentinel reports it; the file goes to another
            backlog.appendleft(task)
            return
        worker.task = task
        worker.deadline = time.monotonic() + self.limits.timeout_s

    def _start_worker(self) -> None:
        parent_end, child_end = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(target=_worker_main, args=(child_end, self.limits, self._task),
                                    name="clinivault-decoder", daemon=True)
        try:
            process.start()
        except OSError as exc:  # no processes or memory left on the machine
            parent_end.close()
            raise FailedSafely(f"could not start an image decoder process: {exc.strerror or exc}",
                               "Close other programs and try again") from None
        finally:
            child_end.close()
        self._workers.append(_Worker(process, parent_end, started=time.monotonic()))

    def _wait_and_collect(self, done: list[ImageAnalysis]) -> None:
        now = time.monotonic()
        deadlines = [w.deadline if w.ready else w.started + _STARTUP_S for w in self._workers]
        timeout = max(0.0, min([_POLL_S, *(d - now for d in deadlines)]))
        waitables: list[Any] = [w.conn for w in self._workers]
        waitables += [w.process.sentinel for w in self._workers]
        ready = set(wait(waitables, timeout))

        for worker in list(self._workers):
            if worker.conn in ready:
                self._receive(worker, done)
            elif worker.process.sentinel in ready:
                self._lost(worker, done)
        now = time.monotonic()
        for worker in list(self._workers):
            if worker.task is not None and now >= worker.deadline:
                task = worker.task
                self._kill(worker)
                done.append(ImageAnalysis(task.parts, ok=False, reason=self._timeout_reason(),
                                          decode_ms=round(self.limits.timeout_s * 1000, 1)))
            elif not worker.ready and now >= worker.started + _STARTUP_S:
                self._kill(worker)
                raise FailedSafely(f"the image decoder did not start within {_STARTUP_S:g} s",
                                   "Check the machine's load and free memory, then try again")

    def _receive(self, worker: _Worker, done: list[ImageAnalysis]) -> None:
        try:
            message = _ReplyUnpickler(io.BytesIO(worker.conn.recv_bytes(_MAX_REPLY))).load()
        except (EOFError, OSError):  # the worker is gone (or sent more than any reply can be)
            self._lost(worker, done)
            return
        except Exception:  # a reply that is not ours to trust
            self._lost(worker, done, reason="decoder sent a malformed reply")
            return
        kind = message[0] if isinstance(message, tuple) and message else None
        if kind == "ready" and not worker.ready:
            worker.ready = True
            self._start_failures = 0
        elif kind == "failed" and len(message) == 2 and not worker.ready:
            self._reap(worker, grace=_QUIT_S)
            raise FailedSafely(f"the image decoder could not start: {message[1]}")
        elif (kind == "result" and len(message) == 4 and worker.task is not None
              and message[1] == worker.task.seq and isinstance(message[3], ImageAnalysis)):
            _, _, retire, result = message
            done.append(replace(result, parts=worker.task.parts))  # the parts we asked about
            worker.task = None
            worker.deadline = math.inf
            if retire:  # its heap ran out; it exits by itself
                self._reap(worker, grace=_QUIT_S)
        else:
            self._lost(worker, done, reason="decoder sent a malformed reply")

    def _lost(self, worker: _Worker, done: list[ImageAnalysis], reason: str | None = None) -> None:
        """The worker died or misbehaved: reap it and report the file it held, if any."""
        task, was_ready = worker.task, worker.ready
        exitcode = self._reap(worker, grace=_QUIT_S if reason is None else 0.0)
        if task is not None:
            done.append(ImageAnalysis(task.parts, ok=False,
                                      reason=reason or self._death_reason(exitcode)))
        elif not was_ready:
            self._start_failures += 1
            if self._start_failures >= _MAX_START_FAILURES:
                raise FailedSafely(f"the image decoder could not start (exit code {exitcode})",
                                   "Check the machine's free memory and the installation")

    def _kill(self, worker: _Worker) -> None:
        self._reap(worker, grace=0.0)

    def _reap(self, worker: _Worker, grace: float) -> int | None:
        """Wait up to ``grace`` for the worker to exit, then SIGKILL it; always reap it."""
        if grace > 0:
            worker.process.join(grace)
        if worker.process.exitcode is None:
            worker.process.kill()
            worker.process.join()
        worker.conn.close()
        exitcode = worker.process.exitcode
        worker.process.close()
        self._workers.remove(worker)
        return exitcode

    def _timeout_reason(self) -> str:
        return f"decoder timed out after {self.limits.timeout_s:g} s"

    def _death_reason(self, exitcode: int | None) -> str:
        if exitcode is not None and exitcode < 0:
            if -exitcode == signal.SIGXCPU:  # RLIMIT_CPU: the backstop for the deadline
                return self._timeout_reason()
            return f"decoder crashed (signal {-exitcode})"
        if exitcode == _EXIT_OUT_OF_MEMORY:
            return OUT_OF_MEMORY
        return f"decoder exited unexpectedly (code {exitcode})"


def _available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


# -- replies ----------------------------------------------------------------------------------

# Classes a reply may contain besides plain values (str, bytes, numbers, tuples, lists, dicts).
_REPLY_CLASSES = {
    ("core.imaging.decode", "ImageAnalysis"),
    ("numpy", "dtype"),  # numpy scalars in metrics (np.float64 and kin)
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "scalar"),
}


class _ReplyUnpickler(pickle.Unpickler):
    """Only ImageAnalysis, numpy scalars, and dataclasses or enums of ``core.quality``."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _REPLY_CLASSES:
            return super().find_class(module, name)
        if module == "core.quality":
            value = getattr(importlib.import_module(module), name, None)
            if isinstance(value, type) and (is_dataclass(value) or issubclass(value, Enum)):
                return value
        raise pickle.UnpicklingError(f"a decoder reply may not contain {module}.{name}")


# -- the worker process -----------------------------------------------------------------------


def _worker_main(conn: Connection, limits: DecodeLimits, task: TaskFunction) -> None:
    """Entry point of a worker: set up, report ready, then decode one file per message."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _silence_output()
    for name in _THREAD_ENV:
        os.environ[name] = "1"
    try:
        decode.prepare_decoders()
        _limit_resources(limits)
    except Exception as exc:
        conn.send_bytes(pickle.dumps(("failed", f"{type(exc).__name__}: {exc}")))
        return
    conn.send_bytes(pickle.dumps(("ready", os.getpid())))
    try:
        while True:
            try:
                message = conn.recv()
            except EOFError:  # the session process is gone
                return
            if message is None:
                return
            seq, root, parts, identity = message
            _allow_cpu(limits)
            retire = False
            try:
                result = task(root, parts, identity, limits)
            except MemoryError:
                result, retire = ImageAnalysis(parts, ok=False, reason=OUT_OF_MEMORY), True
            except Exception as exc:
                result = ImageAnalysis(parts, ok=False,
                                       reason=f"decoder failed: {type(exc).__name__}: {exc}")
            conn.send_bytes(pickle.dumps(("result", seq, retire, result),
                                         protocol=pickle.HIGHEST_PROTOCOL))
            if retire:
                return
    except MemoryError:
        os._exit(_EXIT_OUT_OF_MEMORY)


def _silence_output() -> None:
    """Decoder libraries may print warnings; in the TUI that would garble the screen."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)


def _limit_resources(limits: DecodeLimits) -> None:
    """No core files; address space = what is mapped now (decoders loaded) + memory_mb.

    Headroom rather than an absolute cap because the baseline differs between machines (it
    grows with thread pools and libraries, about 60 MB for Python + Pillow + pillow-heif and
    180 MB with numpy here), while memory_mb is what one decode may use.
    """
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    cap = _mapped_bytes() + limits.memory_mb * MIB
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def _allow_cpu(limits: DecodeLimits) -> None:
    """RLIMIT_CPU for this file: a runaway decoder dies (SIGXCPU) even if the parent is gone."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    budget = usage.ru_utime + usage.ru_stime + 2 * limits.timeout_s + 5
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    soft = math.ceil(budget) if hard == resource.RLIM_INFINITY else min(math.ceil(budget), hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _mapped_bytes() -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    return 0
