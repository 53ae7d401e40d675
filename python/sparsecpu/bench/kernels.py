"""Kernel benchmark: ``sparsecpu.linear`` (int8 and fp32) against the kernels people would otherwise use.

What each implementation is timed doing (``x [M, K]`` float32, the ``N x K`` weight pruned in 4x1 blocks):

- ``sparsecpu_int8`` / ``sparsecpu_fp32``: ``sparsecpu.linear(x, packed)`` as a user calls it, float32
  torch ``x`` in, float32 torch ``y [M, N]`` out; for int8, quantizing ``x`` and dequantizing ``y``
  happen inside the call.
- ``torch_linear``: ``F.linear(x, w)`` on the same weight stored dense (fp32, MKL/oneDNN).
- ``torch_dynamic_int8``: an ``nn.Linear`` holding the weight after
  ``torch.ao.quantization.quantize_dynamic`` (int8 weights, activations quantized per call; fbgemm).
- ``torch_int_mm``: ``torch._int_mm(xq, wq)`` (oneDNN s8 GEMM) on int8 ``xq [M, K]`` and ``wq [K, N]``
  quantized beforehand, returning raw int32: it skips the quantize/dequantize work the other int8
  timings include. Very slow on some CPUs (a fallback path), so not in the default baselines.
- ``torch_csr``: ``torch.mm(w_csr, x.T).T`` with ``w_csr = w.to_sparse_csr()`` (MKL sparse, fp32).
- ``ort_fp32``: ONNX Runtime running a one-node ``MatMul`` graph with the weight as an initializer.
- ``ort_int8``: the same graph after ONNX Runtime's ``quantize_dynamic`` (s8 weights, u8 activations
  quantized per call), so ``DynamicQuantizeLinear`` + ``MatMulInteger`` fused by the session.

Every implementation's output is checked against ``F.linear`` before it is timed.
"""

from __future__ import annotations

import functools
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import sparsecpu

from . import _ort
from .peak import machine_peak, percent_of_peak
from .timing import Timing, default_threads
from .workers import FACT_KEYS, Worker, WorkerError, run_all, start_workers, time_round_robin

__all__ = [
    "BASELINES",
    "DEFAULT_BASELINES",
    "DEFAULT_MS",
    "DEFAULT_SPARSITIES",
    "IMPLS",
    "SHAPE_PRESETS",
    "BERT_BASE_SHAPES",
    "Impl",
    "build_impls",
    "pruned_weight",
    "run_kernel_cases",
]

SHAPE_PRESETS: Dict[str, Tuple[Tuple[int, int], ...]] = {
    "bert-base": ((768, 768), (3072, 768), (768, 3072)),
    "bert-large": ((1024, 1024), (4096, 1024), (1024, 4096)),
    "gpt2": ((2304, 768), (768, 768), (3072, 768), (768, 3072)),
}
"""``(N, K)`` of each model's linear layers: BERT's attention projections, FFN up, FFN down; GPT-2's
fused QKV projection, attention output, MLP up and down."""
BERT_BASE_SHAPES = SHAPE_PRESETS["bert-base"]
DEFAULT_MS: Tuple[int, ...] = (128,)
"""Rows of ``x`` benchmarked by default: 128 tokens."""
DEFAULT_SPARSITIES: Tuple[float, ...] = (0.7, 0.8, 0.9)
"""Fractions of zero 4x1 blocks benchmarked by default."""


@dataclass(frozen=True)
class ImplInfo:
    """What an implementation is: its record name, table label, dtype, and whether it is sparsecpu."""

    name: str
    label: str
    dtype: str
    ours: bool


IMPLS: Tuple[ImplInfo, ...] = (
    ImplInfo("sparsecpu_int8", "sparsecpu int8", "int8", True),
    ImplInfo("sparsecpu_fp32", "sparsecpu fp32", "fp32", True),
    ImplInfo("torch_dynamic_int8", "torch qdynamic int8", "int8", False),
    ImplInfo("ort_int8", "ORT qdynamic int8", "int8", False),
    ImplInfo("torch_int_mm", "torch._int_mm", "int8", False),
    ImplInfo("torch_linear", "F.linear", "fp32", False),
    ImplInfo("torch_csr", "torch CSR", "fp32", False),
    ImplInfo("ort_fp32", "ORT MatMul fp32", "fp32", False),
)
"""Every implementation, in table and round-robin order."""
BASELINES: Tuple[str, ...] = tuple(i.name for i in IMPLS if not i.ours)
DEFAULT_BASELINES: Tuple[str, ...] = tuple(b for b in BASELINES if b != "torch_int_mm")
"""Baselines timed unless asked otherwise: all but ``torch_int_mm`` (tens of ms per call on CPUs where
oneDNN falls back to a slow path, e.g. AMD Zen 3)."""
_INFO = {i.name: i for i in IMPLS}

# Largest accepted ||y - F.linear(x, w)|| / ||F.linear(x, w)|| per dtype: the benchmark refuses to time
# an implementation that computes the wrong thing.
_TOLERANCE = {"int8": 5e-2, "fp32": 1e-4}


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
class Impl:
    """One implementation of a benchmark case, set up and checked.

    ``fn`` runs it once; it is None (and ``error`` says why) when the implementation cannot run here
    (a package is missing, this build rejects the shape, or its output was wrong). ``ops`` is the
    number of multiply-adds x 2 it actually performs (kept blocks only, for the sparse ones).
    """

    name: str
    label: str
    dtype: str
    format: str
    fn: Optional[Callable[[], Any]]
    ops: float
    error: Optional[str] = None


def _quantize_rows(t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 quantization (for the ``_int_mm`` baseline's inputs): values, scales."""
    scale = t.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0
    return torch.round(t / scale).clamp_(-127, 127).to(torch.int8), scale


def _error(y: Any, ref: torch.Tensor) -> float:
    y = torch.as_tensor(np.asarray(y)) if not isinstance(y, torch.Tensor) else y
    return float(torch.linalg.vector_norm(y.float() - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-30))


def _setup(name: str, w: torch.Tensor, x: torch.Tensor, threads: int) -> Tuple[Callable[[], Any], str, float, Callable[[Any], Any]]:
    """``(fn, format, ops, to_output)`` of one implementation: ``to_output(fn())`` is its ``y [M, N]``;
    ``ops`` is 2 x the multiply-adds it performs (dense: ``M N K``; sparse: only the stored entries)."""
    same = lambda y: y  # noqa: E731
    m, (n, k) = x.shape[0], w.shape
    dense_ops = 2.0 * m * n * k
    if name.startswith("sparsecpu_"):
        packed = sparsecpu.pack(w, dtype=_INFO[name].dtype)
        fmt = f"{packed.format}_{packed.block[0]}x{packed.block[1]}"
        ops = 2.0 * m * 4 * packed.kept_blocks if packed.format == "bsr" else dense_ops
        return functools.partial(sparsecpu.linear, x, packed), fmt, ops, same
    if name == "torch_linear":
        return functools.partial(F.linear, x, w), "dense", dense_ops, same
    if name == "torch_dynamic_int8":
        linear = nn.Linear(k, n, bias=False)
        linear.weight.data.copy_(w)
        with warnings.catch_warnings():  # torch.ao.quantization and qint8 tensors announce their deprecation
            warnings.simplefilter("ignore")
            q = torch.ao.quantization.quantize_dynamic(nn.Sequential(linear), {nn.Linear}, dtype=torch.qint8)
        return functools.partial(q, x), "dense", dense_ops, same
    if name == "torch_int_mm":
        xq, sx = _quantize_rows(x)
        wq, sw = _quantize_rows(w)
        return functools.partial(torch._int_mm, xq, wq.t().contiguous()), "dense", dense_ops, lambda y: y * sx * sw.t()
    if name == "torch_csr":
        with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
            warnings.simplefilter("ignore", UserWarning)
            w_csr = w.to_sparse_csr()
        xt = x.t()
        return lambda: torch.mm(w_csr, xt).t(), "csr", 2.0 * m * w_csr.values().numel(), same
    if name in ("ort_fp32", "ort_int8"):
        reason = _ort.missing()
        if reason is not None:
            raise _Unavailable(reason)
        model = _ort.matmul_model(w.t().numpy())
        if name == "ort_int8":
            model = _ort.quantize_dynamic_bytes(model)
        sess = _ort.session(model, threads)
        feed = {"x": x.numpy()}
        return functools.partial(sess.run, None, feed), "dense", dense_ops, lambda y: y[0]
    raise ValueError(f"unknown implementation {name!r}; expected one of {[i.name for i in IMPLS]}")


class _Unavailable(Exception):
    """An implementation that cannot run here, with the reason."""


def _check_names(dtypes: Sequence[str], baselines: Sequence[str]) -> None:
    unknown = set(dtypes) - {"int8", "fp32"}
    if unknown:
        raise ValueError(f"dtypes must be 'int8' and/or 'fp32', got {sorted(unknown)}")
    unknown = set(baselines) - set(BASELINES)
    if unknown:
        raise ValueError(f"unknown baselines {sorted(unknown)}; expected some of {list(BASELINES)}")


def _selected(dtypes: Sequence[str], baselines: Sequence[str]) -> List[ImplInfo]:
    """sparsecpu and the requested baselines of ``dtypes``, in :data:`IMPLS` order."""
    return [i for i in IMPLS if i.dtype in dtypes and (i.ours or i.name in baselines)]


def _case_inputs(n: int, k: int, m: int, sparsity: float, seed: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(w, x, F.linear(x, w))`` of a case; the same in every process for the same arguments."""
    w = pruned_weight(n, k, sparsity, seed)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(seed + 1))
    return w, x, F.linear(x, w)


def _build(info: ImplInfo, w: torch.Tensor, x: torch.Tensor, ref: torch.Tensor, threads: int) -> Impl:
    """One implementation of a case set up and checked against ``ref``. A wrong sparsecpu result raises
    ``RuntimeError``; a wrong or unavailable baseline comes back with ``fn=None`` and the reason in
    ``error``."""
    m, (n, k) = x.shape[0], w.shape
    fn, fmt, ops, error = None, "dense", 2.0 * m * n * k, None
    try:
        fn, fmt, ops, to_output = _setup(info.name, w, x, threads)
        err = _error(to_output(fn()), ref)
    except _Unavailable as e:
        error = str(e)
    except RuntimeError as e:  # e.g. _int_mm builds that want M > 16
        if info.ours:
            raise
        error = f"{type(e).__name__}: {e}"
    else:
        if not err <= _TOLERANCE[info.dtype]:
            error = (f"output differs from F.linear: relative error {err:.3g} > {_TOLERANCE[info.dtype]:g} "
                     f"(shape {tuple(ref.shape)}); not timed")
            if info.ours:
                raise RuntimeError(f"{info.name} {error}")
    if error is not None:
        fn = None
    return Impl(info.name, info.label, info.dtype, fmt, fn, ops, error)


def build_impls(
    n: int,
    k: int,
    m: int,
    sparsity: float,
    dtypes: Sequence[str] = ("int8", "fp32"),
    seed: int = 0,
    baselines: Sequence[str] = DEFAULT_BASELINES,
    threads: Optional[int] = None,
) -> List[Impl]:
    """Sets up one case in this process: an ``N x K`` weight pruned to ``sparsity`` in 4x1 blocks and
    ``x [M, K]`` (for timing in one process, e.g. the pytest-benchmark suite in ``bench/``;
    :func:`run_kernel_cases` sets up each implementation in a worker process of its own instead).

    Returns sparsecpu and the requested ``baselines``, restricted to ``dtypes``, in :data:`IMPLS`
    order, with packing, quantization and session creation already done. ``threads`` sizes ONNX
    Runtime's sessions (default: the CPUs this process may use; torch and sparsecpu use whatever they
    are set to). Each output is checked against ``F.linear`` first: a wrong sparsecpu result raises
    ``RuntimeError``; a wrong or failing baseline comes back with ``fn=None`` and the reason in ``error``.
    """
    _check_names(dtypes, baselines)
    threads = threads or default_threads()
    w, x, ref = _case_inputs(n, k, m, sparsity, seed)
    return [_build(info, w, x, ref, threads) for info in _selected(dtypes, baselines)]


def _worker_case(state: Dict[str, Any], name: str, n: int, k: int, m: int, sparsity: float, seed: int,
                 threads: int) -> Dict[str, Any]:
    """In ``name``'s worker: sets up the case (the previous one is dropped first) and stores the call to
    time under ``"linear"``; returns what the record needs (``format``, ``ops``, ``error``)."""
    state["fns"].clear()
    state["facts"].clear()
    with torch.inference_mode():
        w, x, ref = _case_inputs(n, k, m, sparsity, seed)
        impl = _build(_INFO[name], w, x, ref, threads)
    if impl.fn is not None:
        state["fns"]["linear"] = impl.fn
        if name.startswith("ort_"):  # fn is functools.partial(session.run, ...): the session's own setting
            state["facts"]["ort_intra_op_threads"] = impl.fn.func.__self__.get_session_options().intra_op_num_threads
    return {"format": impl.format, "ops": impl.ops, "error": impl.error}


def run_kernel_cases(
    shapes: Sequence[Tuple[int, int]] = BERT_BASE_SHAPES,
    ms: Sequence[int] = DEFAULT_MS,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    dtypes: Sequence[str] = ("int8", "fp32"),
    threads: Optional[Sequence[int]] = None,
    repeat: int = 15,
    progress: Optional[Callable[[str], None]] = None,
    seed: int = 0,
    baselines: Sequence[str] = DEFAULT_BASELINES,
    peak: Optional[Mapping[str, Any]] = None,
    initializer: Optional[Callable[[], Any]] = None,
) -> List[Dict[str, Any]]:
    """Benchmarks every (threads, shape ``(N, K)``, M, sparsity) case; returns one record per (impl, case).

    Each implementation runs in a worker process of its own (:mod:`sparsecpu.bench.workers`), started
    once per thread count: torch at its defaults with ``torch.set_num_threads(t)``, sparsecpu's workers
    also ``sparsecpu.set_num_threads(t)``, ONNX Runtime sessions with ``t`` intra-op threads; this
    process's own settings are not touched. For each case every worker builds the same weight and ``x``
    (same seed), sets up its implementation and checks its output against ``F.linear``; then the
    workers are timed round-robin (:func:`~sparsecpu.bench.workers.time_round_robin`). A sparsecpu
    implementation that fails its set-up raises ``RuntimeError``; a baseline that fails (its package
    missing, a wrong output, an exception, its worker dying) gets a record with the reason in
    ``error`` and the others go on. ``threads`` defaults to ``[default_threads()]``; ``progress``, if
    given, receives one line per finished case; ``initializer``, if given, is a picklable (module-level)
    callable each worker runs once at start-up (for tests).

    Record keys: ``op`` ("linear"), ``impl``, ``dtype``, ``format``, ``M``, ``N``, ``K``, ``sparsity``,
    ``threads``, ``median_s``, ``p10_s``, ``p90_s`` (None if unavailable), ``calls_per_repeat``,
    ``repeat``, ``error`` (why the impl is unavailable, else None), ``gops_effective`` (operations the
    impl performs / median, in 1e9/s), ``gops_dense`` (``2 M N K`` / median), and ``speedup``: for a
    baseline, its median over the median of sparsecpu of the same dtype from the same run (> 1:
    sparsecpu is faster; None for sparsecpu's own records or when either is missing), and ``pct_peak``:
    ``gops_effective`` as a percentage of the per-core peak of the row's dtype x ``threads``
    (:func:`sparsecpu.bench.peak.percent_of_peak`) from ``peak`` (default: this machine's, measured
    once per process before the first case; None where the CPU has no native level of that kind).
    Each record also says how its worker ran (:data:`~sparsecpu.bench.workers.FACT_KEYS`): ``pid``,
    ``env`` (the ``OMP_*``, ``GOMP_*``, ``KMP_*``, ``MKL_*``, ``SPARSECPU_*`` variables set there),
    ``torch_threads``, ``torch_interop_threads``, ``sparsecpu_threads``, ``sparsecpu_threading``
    (``sparsecpu.info()["threading"]``) and ``ort_intra_op_threads`` (ONNX Runtime rows, else None);
    all None but ``pid`` where the worker could not answer, all None where none was started.
    """
    _check_names(dtypes, baselines)
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    thread_counts = list(threads) if threads is not None else [default_threads()]
    peak = machine_peak() if peak is None else peak
    selected = _selected(dtypes, baselines)
    # Packages missing here are missing in the workers too: no process is started for those rows.
    ort_missing = _ort.missing() if any(i.name.startswith("ort_") for i in selected) else None
    unavailable = {i.name: ort_missing for i in selected if i.name.startswith("ort_") and ort_missing}
    names = [i.name for i in selected if i.name not in unavailable]
    cases = [(t, nk, m, s) for t in thread_counts for nk in shapes for m in ms for s in sparsities]
    records: List[Dict[str, Any]] = []
    start = time.perf_counter()
    for t in thread_counts:
        workers = start_workers(names, t, lambda name: _INFO[name].ours, initializer)
        try:
            for n, k in shapes:
                for m in ms:
                    for s in sparsities:
                        case = _run_case(workers, selected, unavailable, n, k, m, s, t, repeat, seed, peak, initializer)
                        records.extend(case)
                        if progress is not None:
                            i = len(records) // len(selected)
                            elapsed = time.perf_counter() - start
                            eta = elapsed / i * (len(cases) - i)
                            parts = ", ".join(f"{r['impl']} {_us(r['median_s'])}" for r in case)
                            progress(f"[{i}/{len(cases)} {elapsed:.0f}s, ~{eta:.0f}s left] {n}x{k} M={m} "
                                     f"sparsity={s:g} threads={t}: {parts}")
        finally:
            for w in workers.values():
                w.close()
    return records


def _run_case(workers: Dict[str, Worker], selected: Sequence[ImplInfo], unavailable: Mapping[str, str], n: int, k: int,
              m: int, s: float, t: int, repeat: int, seed: int, peak: Mapping[str, Any],
              initializer: Optional[Callable[[], Any]]) -> List[Dict[str, Any]]:
    """One case of :func:`run_kernel_cases`: set up in every worker (a worker that died in an earlier
    case is replaced first), timed round-robin; its records in :data:`IMPLS` order."""
    for name, w in list(workers.items()):
        if w.dead:
            w.close()
            workers[name] = Worker(name, t, t if _INFO[name].ours else None, initializer)
    calls = {name: (_worker_case, dict(name=name, n=n, k=k, m=m, sparsity=s, seed=seed, threads=t)) for name in workers}
    setups = run_all(workers, calls, jobs=default_threads())
    impls: Dict[str, Dict[str, Any]] = {}
    for info in selected:
        got = setups.get(info.name)
        if isinstance(got, WorkerError):
            if info.ours:
                raise RuntimeError(f"{info.name} could not be set up for {n}x{k} M={m} sparsity={s:g}: {got}")
            got = {"error": str(got)}
        elif got is None:
            got = {"error": unavailable[info.name]}
        impls[info.name] = {"format": "dense", "ops": 2.0 * m * n * k, **got}
    timed = {name: workers[name] for name, im in impls.items() if im["error"] is None}
    timings, failed = time_round_robin(timed, "linear", repeat)
    facts = {name: w.facts() for name, w in workers.items()}
    case = []
    for info in selected:
        im = impls[info.name]
        error = im["error"] or failed.get(info.name)
        case.append(_record(info, im["format"], im["ops"], error, timings.get(info.name), n, k, m, s, t, repeat,
                            facts.get(info.name, dict.fromkeys(FACT_KEYS))))
    ours = {r["dtype"]: r["median_s"] for r in case if _INFO[r["impl"]].ours}
    for r in case:
        mine = ours.get(r["dtype"])
        ok = not _INFO[r["impl"]].ours and mine is not None and r["median_s"] is not None
        r["speedup"] = r["median_s"] / mine if ok else None
        r["pct_peak"] = percent_of_peak(r["gops_effective"], r["dtype"], t, peak)
    return case


def _record(info: ImplInfo, fmt: str, ops: float, error: Optional[str], timing: Optional[Timing], n: int, k: int,
            m: int, s: float, t: int, repeat: int, facts: Mapping[str, Any]) -> Dict[str, Any]:
    med = timing.median_s if timing else None
    return {
        "op": "linear",
        "impl": info.name,
        "dtype": info.dtype,
        "format": fmt,
        "M": m,
        "N": n,
        "K": k,
        "sparsity": s,
        "threads": t,
        "median_s": med,
        "p10_s": timing.p10_s if timing else None,
        "p90_s": timing.p90_s if timing else None,
        "calls_per_repeat": timing.calls_per_repeat if timing else None,
        "repeat": repeat,
        "gops_effective": ops / med / 1e9 if med else None,
        "gops_dense": 2.0 * m * n * k / med / 1e9 if med else None,
        "error": error,
        **{key: facts.get(key) for key in FACT_KEYS},
    }


def _us(seconds: Optional[float]) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e6:.1f} µs"
