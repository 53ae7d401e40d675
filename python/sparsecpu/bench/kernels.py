"""Kernel benchmark: ``sparsecpu.linear`` (int8 and fp32) against ``F.linear`` and ``torch._int_mm``.

What each implementation is timed doing:

- ``sparsecpu_int8`` / ``sparsecpu_fp32``: ``sparsecpu.linear(x, packed)`` as a user calls it, float32
  torch ``x [M, K]`` in, float32 torch ``y [M, N]`` out; for int8, quantizing ``x`` and dequantizing
  ``y`` happen inside the call.
- ``torch_linear``: ``F.linear(x, w)`` on the same pruned weight, stored dense (fp32, MKL/oneDNN).
- ``torch_int_mm``: ``torch._int_mm(xq, wq)`` (oneDNN s8 GEMM) on int8 ``xq [M, K]`` and ``wq [K, N]``
  quantized beforehand, returning raw int32: it skips the quantize/dequantize work sparsecpu's int8
  timing includes.
"""

from __future__ import annotations

import functools
import gc
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

import sparsecpu

__all__ = [
    "BERT_BASE_SHAPES",
    "DEFAULT_MS",
    "DEFAULT_SPARSITIES",
    "SETTLE_S",
    "Impl",
    "Timing",
    "build_impls",
    "default_threads",
    "format_table",
    "pruned_weight",
    "run_for",
    "run_kernel_cases",
    "time_interleaved",
]

BERT_BASE_SHAPES: Tuple[Tuple[int, int], ...] = ((768, 768), (3072, 768), (768, 3072))
"""``(N, K)`` of BERT-base's linear layers: attention projections, FFN up, FFN down."""
DEFAULT_MS: Tuple[int, ...] = (128,)
"""Rows of ``x`` benchmarked by default: 128 tokens."""
DEFAULT_SPARSITIES: Tuple[float, ...] = (0.7, 0.8, 0.9)
"""Fractions of zero 4x1 blocks benchmarked by default."""

SETTLE_S = 0.02
"""Seconds of untimed calls before each timed batch: longer than torch's OpenMP workers spin after an op."""

# (name, column label, dtype), in table-column and round-robin order: each sparsecpu dtype beside its baseline.
_IMPLS = (
    ("sparsecpu_int8", "sparsecpu int8", "int8"),
    ("torch_int_mm", "torch._int_mm", "int8"),
    ("sparsecpu_fp32", "sparsecpu fp32", "fp32"),
    ("torch_linear", "F.linear", "fp32"),
)
# (table label, record key, ours, baseline): speedup = baseline median / ours median.
_RATIOS = (
    ("int8 vs _int_mm", "speedup_vs_torch_int_mm", "sparsecpu_int8", "torch_int_mm"),
    ("fp32 vs F.linear", "speedup_vs_torch_linear", "sparsecpu_fp32", "torch_linear"),
)
_FOOTNOTE = (
    "median time per call; speedup = baseline / sparsecpu (> 1: sparsecpu faster). sparsecpu: float32 torch x in,\n"
    "y out, int8 quantization inside the call; torch._int_mm: pre-quantized int8 in, raw int32 out."
)
# Largest accepted ||y - F.linear(x, w)|| / ||F.linear(x, w)|| per sparsecpu dtype: the benchmark refuses
# to time a kernel that computes the wrong thing.
_TOLERANCE = {"int8": 5e-2, "fp32": 1e-4}


def default_threads() -> int:
    """The number of CPUs this process may run on (sparsecpu's own default thread count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def pruned_weight(n: int, k: int, sparsity: float, seed: int = 0) -> torch.Tensor:
    """A random normal ``N x K`` float32 weight with whole 4x1 blocks (4 output rows x 1 column) zeroed.

    Exactly ``round(sparsity * blocks)`` of the ``ceil(N / 4) * K`` blocks are zero, chosen uniformly
    at random; the rest are dense normal values. Deterministic for a given ``seed``.
    """
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    blocks = ((n + 3) // 4) * k
    keep = torch.ones(blocks, dtype=torch.bool)
    keep[torch.randperm(blocks, generator=g)[: round(sparsity * blocks)]] = False
    mask = keep.view(-1, k).repeat_interleave(4, dim=0)[:n]
    return w.masked_fill_(~mask, 0.0)


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
    fns: Mapping[str, Callable[[], Any]], repeat: int = 15, min_time: float = 2e-3, settle: float = SETTLE_S
) -> Dict[str, Timing]:
    """Times each zero-argument callable; returns median, p10 and p90 of the time per call.

    Each callable is warmed up, then its number of calls per repeat is doubled until a batch lasts at
    least ``min_time`` seconds. The ``repeat`` batches are interleaved round-robin (a, b, c, a, b, c,
    ...) so that machine noise hits every implementation alike. Each batch (and each warm-up) starts
    with untimed calls of its callable for ``settle`` seconds: the thread pool of whatever ran before
    must go idle first (torch's OpenMP workers spin for milliseconds after an op, and on a small
    machine they would slow the next implementation down several times over). The garbage collector
    is off while timing.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        calls = {}
        for name, fn in fns.items():
            run_for(fn, settle)
            n = 1
            while _batch_seconds(fn, n) < min_time:
                n *= 2
            calls[name] = n
        per_call: Dict[str, List[float]] = {name: [] for name in fns}
        for _ in range(repeat):
            for name, fn in fns.items():
                run_for(fn, settle)
                per_call[name].append(_batch_seconds(fn, calls[name]) / calls[name])
    finally:
        if gc_was_enabled:
            gc.enable()
    out = {}
    for name, times in per_call.items():
        p10, median, p90 = np.percentile(times, [10, 50, 90])
        out[name] = Timing(float(median), float(p10), float(p90), calls[name])
    return out


@dataclass(frozen=True)
class Impl:
    """One implementation of a benchmark case: ``fn`` runs it once; ``fn`` is None (and ``error`` says
    why) when this torch build cannot run it."""

    name: str
    label: str
    dtype: str
    format: str
    fn: Optional[Callable[[], Any]]
    error: Optional[str] = None


def _quantize_rows(t: torch.Tensor) -> torch.Tensor:
    """Symmetric per-row int8 quantization (for the ``_int_mm`` baseline's inputs)."""
    scale = t.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0
    return torch.round(t / scale).clamp_(-127, 127).to(torch.int8)


def _check(impl_name: str, y: torch.Tensor, ref: torch.Tensor, dtype: str) -> None:
    err = float(torch.linalg.vector_norm(y - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-30))
    if not err <= _TOLERANCE[dtype]:
        raise RuntimeError(
            f"{impl_name} output differs from F.linear: relative error {err:.3g} > {_TOLERANCE[dtype]:g} "
            f"(shape {tuple(ref.shape)}); refusing to time a wrong kernel"
        )


def build_impls(
    n: int, k: int, m: int, sparsity: float, dtypes: Sequence[str] = ("int8", "fp32"), seed: int = 0
) -> List[Impl]:
    """Sets up one case: an ``N x K`` weight pruned to ``sparsity`` in 4x1 blocks and ``x [M, K]``.

    Returns the implementations of the requested ``dtypes`` (sparsecpu and its torch baseline for
    each), in :data:`_IMPLS` order, with packing and baseline quantization already done. Each sparsecpu
    output is checked against ``F.linear`` first (``RuntimeError`` if it is wrong).
    """
    unknown = set(dtypes) - {"int8", "fp32"}
    if unknown:
        raise ValueError(f"dtypes must be 'int8' and/or 'fp32', got {sorted(unknown)}")
    w = pruned_weight(n, k, sparsity, seed)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(seed + 1))
    ref = F.linear(x, w)
    impls = []
    for name, label, dtype in _IMPLS:
        if dtype not in dtypes:
            continue
        if name.startswith("sparsecpu"):
            packed = sparsecpu.pack(w, dtype=dtype)
            fn = functools.partial(sparsecpu.linear, x, packed)
            _check(name, fn(), ref, dtype)
            impls.append(Impl(name, label, dtype, f"{packed.format}_{packed.block[0]}x{packed.block[1]}", fn))
        elif name == "torch_linear":
            impls.append(Impl(name, label, dtype, "dense", functools.partial(F.linear, x, w)))
        else:
            fn = functools.partial(torch._int_mm, _quantize_rows(x), _quantize_rows(w).t().contiguous())
            try:
                fn()
            except RuntimeError as e:  # e.g. CPU builds that want M > 16
                impls.append(Impl(name, label, dtype, "dense", None, f"{type(e).__name__}: {e}"))
            else:
                impls.append(Impl(name, label, dtype, "dense", fn))
    return impls


def run_kernel_cases(
    shapes: Sequence[Tuple[int, int]] = BERT_BASE_SHAPES,
    ms: Sequence[int] = DEFAULT_MS,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    dtypes: Sequence[str] = ("int8", "fp32"),
    threads: Optional[Sequence[int]] = None,
    repeat: int = 15,
    progress: Optional[Callable[[str], None]] = None,
    seed: int = 0,
) -> List[Dict[str, Any]]:
    """Benchmarks every (threads, shape ``(N, K)``, M, sparsity) case; returns one record per (impl, case).

    ``threads`` defaults to ``[default_threads()]``; for each count both torch and sparsecpu are set to
    it (and restored afterwards). ``progress``, if given, receives one line per finished case.

    Record keys: ``op`` ("linear"), ``impl``, ``dtype``, ``format``, ``M``, ``N``, ``K``, ``sparsity``,
    ``threads``, ``median_s``, ``p10_s``, ``p90_s`` (None if unavailable), ``calls_per_repeat``,
    ``repeat``, ``error`` (why the impl is unavailable, else None), and ``speedup_vs_torch_int_mm`` /
    ``speedup_vs_torch_linear``: that baseline's median over this impl's median from the same run
    (None when either is missing).
    """
    thread_counts = list(threads) if threads is not None else [default_threads()]
    cases = [(t, nk, m, s) for t in thread_counts for nk in shapes for m in ms for s in sparsities]
    saved = torch.get_num_threads(), sparsecpu.get_num_threads()
    records: List[Dict[str, Any]] = []
    try:
        with torch.inference_mode():
            for i, (t, (n, k), m, s) in enumerate(cases, 1):
                torch.set_num_threads(t)
                sparsecpu.set_num_threads(t)
                impls = build_impls(n, k, m, s, dtypes, seed)
                timings = time_interleaved({im.name: im.fn for im in impls if im.fn is not None}, repeat)
                case = [_record(im, timings.get(im.name), n, k, m, s, t, repeat) for im in impls]
                medians = {r["impl"]: r["median_s"] for r in case}
                for r in case:
                    for _, key, _, base in _RATIOS:
                        b = medians.get(base)
                        r[key] = b / r["median_s"] if b is not None and r["median_s"] is not None else None
                records.extend(case)
                if progress is not None:
                    parts = ", ".join(f"{im.label} {_us(medians[im.name])}" for im in impls)
                    progress(f"[{i}/{len(cases)}] {n}x{k} M={m} sparsity={s:g} threads={t}: {parts}")
    finally:
        torch.set_num_threads(saved[0])
        sparsecpu.set_num_threads(saved[1])
    return records


def _record(im: Impl, timing: Optional[Timing], n: int, k: int, m: int, s: float, t: int, repeat: int) -> Dict[str, Any]:
    return {
        "op": "linear",
        "impl": im.name,
        "dtype": im.dtype,
        "format": im.format,
        "M": m,
        "N": n,
        "K": k,
        "sparsity": s,
        "threads": t,
        "median_s": timing.median_s if timing else None,
        "p10_s": timing.p10_s if timing else None,
        "p90_s": timing.p90_s if timing else None,
        "calls_per_repeat": timing.calls_per_repeat if timing else None,
        "repeat": repeat,
        "error": im.error,
    }


def _us(seconds: Optional[float]) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e6:.1f} µs"


def format_table(records: Sequence[Mapping[str, Any]]) -> str:
    """A fixed-width table of :func:`run_kernel_cases` records: one row per case, each implementation's
    median in µs, and the speedups ``baseline / sparsecpu`` (> 1: sparsecpu is faster)."""
    cases: Dict[Tuple, Dict[str, Mapping[str, Any]]] = {}
    for r in records:
        cases.setdefault((r["N"], r["K"], r["M"], r["sparsity"], r["threads"]), {})[r["impl"]] = r
    present = {r["impl"] for r in records}
    impls = [(name, label) for name, label, _ in _IMPLS if name in present]
    ratios = [(label, key, ours) for label, key, ours, base in _RATIOS if ours in present and base in present]
    header = ["N x K", "M", "sparsity", "threads"] + [f"{label} µs" for _, label in impls] + [r[0] for r in ratios]
    rows = []
    for (n, k, m, s, t), by_impl in cases.items():
        row = [f"{n}x{k}", str(m), f"{s:g}", str(t)]
        for name, _ in impls:
            med = by_impl[name]["median_s"] if name in by_impl else None
            row.append("n/a" if med is None else f"{med * 1e6:.1f}")
        for _, key, ours in ratios:
            speedup = by_impl[ours][key] if ours in by_impl else None
            row.append("n/a" if speedup is None else f"{speedup:.2f}x")
        rows.append(row)
    widths = [max(len(line[c]) for line in [header] + rows) for c in range(len(header))]
    lines = ["  ".join(cell.rjust(w) if c else cell.ljust(w) for c, (cell, w) in enumerate(zip(line, widths)))
             for line in [header] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(_FOOTNOTE)
    return "\n".join(lines)
