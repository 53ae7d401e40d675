"""Interleaved timing: every implementation of a case timed round-robin in the same run."""

from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np

__all__ = ["SETTLE_S", "Timing", "default_threads", "run_for", "time_interleaved"]

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
    least ``min_time`` seconds. The ``repeat`` batches are interleaved round-robin (a, b, c, a, b, c,
    ...) so that machine noise hits every implementation alike. Each batch (and each warm-up) starts
    after ``settle`` seconds in which the thread pool of whatever ran before goes idle (torch's OpenMP
    workers and ONNX Runtime's pool spin for milliseconds after an op, and on a small machine they
    would slow the next implementation down several times over): by untimed calls of the callable
    itself (``settle_by_calls``, right for calls much shorter than ``settle``: the callable's own pool
    is then awake as in a loop of calls), or else by sleeping (right for calls of a whole model, which
    last far longer than any pool takes to wake). The garbage collector is off while timing.
    ``progress``, if given, is called with the number of finished rounds after each round.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")

    def settle_before(fn: Callable[[], Any]) -> None:
        if settle_by_calls:
            run_for(fn, settle)
        else:
            time.sleep(settle)

    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        calls = {}
        for name, fn in fns.items():
            run_for(fn, settle)  # warm-up: first calls allocate, compile, spin up pools
            n = 1
            while _batch_seconds(fn, n) < min_time:
                n *= 2
            calls[name] = n
        per_call: Dict[str, List[float]] = {name: [] for name in fns}
        for done in range(1, repeat + 1):
            for name, fn in fns.items():
                settle_before(fn)
                per_call[name].append(_batch_seconds(fn, calls[name]) / calls[name])
            if progress is not None:
                progress(done)
    finally:
        if gc_was_enabled:
            gc.enable()
    out = {}
    for name, times in per_call.items():
        p10, median, p90 = np.percentile(times, [10, 50, 90])
        out[name] = Timing(float(median), float(p10), float(p90), calls[name])
    return out
