"""Interleaved timing: every implementation of a case timed round-robin in the same run."""

from __future__ import annotations

import contextlib
import gc
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np

__all__ = ["SETTLE_S", "Timing", "calibrate", "default_threads", "gc_off", "run_for", "summarize", "time_interleaved",
           "timed_batch"]

SETTLE_S = 0.02
"""Seconds of untimed calls before each timed batch: longer than torch's OpenMP workers spin after an op."""


def default_threads() -> int:
    """The number of CPUs this process may run on (sparsecpu's own default thread count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Timing:
    """Per-call wall time over the repeats of :func:`time_interleaved`, in seconds."""

    median_s: float
    p10_s: float
    p90_s: float
    calls_per_repeat: int


def _batch_seconds(fn: Callable[[], Any], calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return time.perf_counter() - t0


def run_for(fn: Callable[[], Any], seconds: float = SETTLE_S) -> None:
    """Calls ``fn`` (at least twice) until ``seconds`` have passed: untimed calls that let the thread
    pool of whatever ran before go idle (see :func:`time_interleaved`)."""
    end = time.perf_counter() + seconds
    fn()
    fn()
    while time.perf_counter() < end:
        fn()


def calibrate(fn: Callable[[], Any], min_time: float = 2e-3, settle: float = SETTLE_S) -> int:
    """Warms ``fn`` up (untimed calls for ``settle`` seconds: first calls allocate, compile, spin up
    pools), then doubles its number of calls until a batch lasts at least ``min_time`` seconds; returns
    that number of calls per timed batch."""
    run_for(fn, settle)
    n = 1
    while _batch_seconds(fn, n) < min_time:
        n *= 2
    return n


def timed_batch(fn: Callable[[], Any], calls: int, settle: float = SETTLE_S, settle_by_calls: bool = True) -> float:
    """Seconds per call of one timed batch of ``calls`` calls, after ``settle`` seconds in which the
    thread pool of whatever ran before goes idle (see :func:`time_interleaved`)."""
    if settle_by_calls:
        run_for(fn, settle)
    else:
        time.sleep(settle)
    return _batch_seconds(fn, calls) / calls


def summarize(times: Sequence[float], calls: int) -> Timing:
    """Median, p10 and p90 of the per-call times of the repeats."""
    p10, median, p90 = np.percentile(times, [10, 50, 90])
    return Timing(float(median), float(p10), float(p90), calls)


@contextlib.contextmanager
def gc_off() -> Iterator[None]:
    """The garbage collector off (as it was afterwards): no collection lands in a timed batch."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def time_interleaved(
    fns: Mapping[str, Callable[[], Any]],
    repeat: int = 15,
    min_time: float = 2e-3,
    settle: float = SETTLE_S,
    settle_by_calls: bool = True,
    progress: Optional[Callable[[int], None]] = None,
) -> Dict[str, Timing]:
    """Times each zero-argument callable; returns median, p10 and p90 of the time per call.

    Each callable is warmed up, then its number of calls per repeat is doubled until a batch lasts at
    least ``min_time`` seconds (:func:`calibrate`). The ``repeat`` batches are interleaved round-robin
    (a, b, c, a, b, c, ...) so that machine noise hits every implementation alike. Each batch (and each
    warm-up) starts after ``settle`` seconds in which the thread pool of whatever ran before goes idle
    (torch's OpenMP workers and ONNX Runtime's pool spin for milliseconds after an op, and on a small
    machine they would slow the next implementation down several times over): by untimed calls of the
    callable itself (``settle_by_calls``, right for calls much shorter than ``settle``: the callable's
    own pool is then awake as in a loop of calls), or else by sleeping (right for calls of a whole
    model, which last far longer than any pool takes to wake). The garbage collector is off while
    timing. ``progress``, if given, is called with the number of finished rounds after each round.

    Everything runs in this process; ``sparsecpu bench`` runs each implementation in a worker process
    of its own instead (:mod:`sparsecpu.bench.workers`), with the same steps.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    with gc_off():
        calls = {name: calibrate(fn, min_time, settle) for name, fn in fns.items()}
        per_call: Dict[str, List[float]] = {name: [] for name in fns}
        for done in range(1, repeat + 1):
            for name, fn in fns.items():
                per_call[name].append(timed_batch(fn, calls[name], settle, settle_by_calls))
            if progress is not None:
                progress(done)
    return {name: summarize(times, calls[name]) for name, times in per_call.items()}
