"""Deterministic crash injection for the crash-safety tests.

``CLINIVAULT_CRASH_AT="step:n"`` makes the process SIGKILL itself the n-th time (1-based) it
reaches durable step *step* (e.g. ``journal.archiving:1``, ``object.rename:3``). Steps are
named where the code calls :func:`reached`; :data:`REACHED` records every step reached in
this process, so a harness can first run once to enumerate the steps, then kill at each one.
``CLINIVAULT_CRASH_TRACE=FILE`` appends each step reached to FILE (for enumeration across a
subprocess). With neither variable set this costs one dict lookup per step.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV_CRASH_AT = "CLINIVAULT_CRASH_AT"
ENV_TRACE = "CLINIVAULT_CRASH_TRACE"

REACHED: Counter[str] = Counter()


def _target() -> tuple[str, int] | None:
    spec = os.environ.get(ENV_CRASH_AT)
    if not spec:
        return None
    step, _, count = spec.rpartition(":")
    if not step or not count.isdigit():
        return (spec, 1)
    return (step, int(count))


def reached(step: str) -> None:
    """Mark *step* as reached; die here if the environment asks for it."""
    REACHED[step] += 1
    trace = os.environ.get(ENV_TRACE)
    if trace:
        with open(trace, "a", encoding="utf-8") as fh:
            fh.write(f"{step}:{REACHED[step]}\n")
    target = _target()
    if target is not None and target == (step, REACHED[step]):
        os.kill(os.getpid(), signal.SIGKILL)
