"""This machine's per-core compute peaks (``sparsecpu bench peak``), and a benchmark row's share of them.

``sparsecpu._C.peak()`` times, on one thread, a loop of one arithmetic instruction on independent
accumulators for every ISA level the CPU has natively (``csrc/bench/peak*.cc``; an emulated level's speed
says nothing about the machine, so the levels the CPU lacks come back with the reason instead):

- ``fp32_fma``: ``vfmadd231ps`` ymm (avx2) and zmm (avx512);
- ``int8``: the exact u8 x s8 dot each int8 kernel level uses: ``vpmaddwd`` + ``vpaddd`` ymm (avx2) and
  zmm (avx512: AVX-512BW without VNNI), ``vpdpbusd`` zmm (avx512_vnni).

One op is one multiply or one add of the ``2 M N K`` the kernel benchmark counts for a dense product:
an fp32 FMA lane is 2 ops, a u8 x s8 multiply-add is 2 ops (so ``vpmaddwd`` + ``vpaddd`` ymm = 16
multiply-adds = 32 ops, ``vpdpbusd`` zmm = 64 multiply-adds = 128 ops). A row's GOP/s over
``per-core peak x threads`` is then its fraction of what those cores can issue, on any machine: int8
rows against the int8 peak of the best native level, fp32 rows against the FMA peak of the best level.
Each loop runs a fixed number of iterations (~2 ms), best of ``runs``; the whole measurement takes
well under a second. Needs neither torch nor numpy.
"""

from __future__ import annotations

import copy
import math
import textwrap
from typing import Any, Dict, List, Mapping, MutableMapping, Optional, Sequence

from .. import _C
from .report import render_table

__all__ = [
    "KINDS",
    "add_percent_peak",
    "machine_peak",
    "measure",
    "peak_records",
    "peak_summary",
    "peak_table",
    "per_core_gops",
    "percent_of_peak",
]

KINDS = ("fp32_fma", "int8")
"""The kinds of arithmetic measured, in table order (an AMX ``tdpbusd`` loop would be one more level of
``int8``)."""
_KIND_OF_DTYPE = {"fp32": "fp32_fma", "int8": "int8"}
_LABEL = {"fp32_fma": "fp32 FMA", "int8": "int8"}

PEAK_FOOTNOTE = (
    "one op = one multiply or one add of the 2*M*N*K a dense product counts: an fp32 FMA lane or a u8 x s8 "
    "multiply-add is 2 ops (vpmaddwd + vpaddd ymm: 32 ops; vpdpbusd zmm: 128). per core: one thread, best "
    "of {runs} runs of a fixed loop on independent accumulators; x {threads} threads: per core x {threads} "
    "(one thread per core; SMT siblings share a core's units). * = the best native level of each kind, "
    "the peak that 'sparsecpu bench kernels' states its % peak against."
)

_measured: Optional[Dict[str, Any]] = None


def measure(runs: int = 20) -> Dict[str, Any]:
    """Measures the peaks now: ``sparsecpu._C.peak(runs)``.

    Returns ``{"fp32_fma": entry, "int8": entry}``; an entry is the best native level's figures
    (``isa``, ``instruction``, ``ops_per_instruction``, ``gflops`` (fp32) or ``gops`` (int8), ``seconds``
    of the fastest run) plus ``levels``: every level by name, the ones this CPU lacks as
    ``{"isa", "instruction", "ops_per_instruction", "absent": reason}``. A kind that no level runs
    here has ``"isa": None`` and an ``absent`` reason.
    """
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs must be a positive int, got {runs!r}")
    return _C.peak(runs)


def machine_peak(refresh: bool = False) -> Dict[str, Any]:
    """:func:`measure` once per process (the first call, or again with ``refresh``); a copy."""
    global _measured
    if _measured is None or refresh:
        _measured = measure()
    return copy.deepcopy(_measured)


def _gops(entry: Mapping[str, Any]) -> Optional[float]:
    v = entry.get("gops", entry.get("gflops"))
    return float(v) if v is not None else None


def per_core_gops(peak: Mapping[str, Any], dtype: str) -> Optional[float]:
    """The per-core peak (1e9 ops/s) of a benchmark row of ``dtype`` ("int8" or "fp32"): the int8 or FMA
    peak of the best native level; None where the CPU has no level of that kind (or ``peak`` lacks it)."""
    if dtype not in _KIND_OF_DTYPE:
        raise ValueError(f"dtype must be 'int8' or 'fp32', got {dtype!r}")
    entry = peak.get(_KIND_OF_DTYPE[dtype])
    return _gops(entry) if entry else None


def percent_of_peak(gops: Optional[float], dtype: str, threads: int, peak: Mapping[str, Any]) -> Optional[float]:
    """``100 * gops / (per-core peak of dtype x threads)``; None when ``gops`` or the peak is missing."""
    per_core = per_core_gops(peak, dtype)
    if gops is None or not per_core or not math.isfinite(gops) or threads < 1:
        return None
    return 100.0 * gops / (per_core * threads)


def add_percent_peak(records: Sequence[MutableMapping[str, Any]], peak: Mapping[str, Any]) -> None:
    """Sets ``pct_peak`` of each kernel record: its ``gops_effective`` (the work it performs: stored
    entries only for sparse formats, ``2 M N K`` for dense ones) as a percentage of
    ``per_core_gops(peak, dtype) x threads``."""
    for r in records:
        r["pct_peak"] = percent_of_peak(r.get("gops_effective"), r["dtype"], r["threads"], peak)


def peak_records(peak: Mapping[str, Any], threads: int) -> List[Dict[str, Any]]:
    """One record per (kind, level), in :data:`KINDS` then level order: ``kind``, ``isa``,
    ``instruction``, ``ops_per_instruction``, ``best`` (the level % peak uses), ``gops_per_core``,
    ``threads``, ``gops_threads`` (per core x threads) and ``absent`` (why not measured, else None)."""
    out = []
    for kind in KINDS:
        entry = peak.get(kind) or {}
        for isa, level in (entry.get("levels") or {}).items():
            per_core = _gops(level)
            out.append({
                "kind": kind,
                "isa": isa,
                "instruction": level.get("instruction"),
                "ops_per_instruction": level.get("ops_per_instruction"),
                "best": per_core is not None and isa == entry.get("isa"),
                "gops_per_core": per_core,
                "threads": threads,
                "gops_threads": per_core * threads if per_core is not None else None,
                "absent": level.get("absent"),
            })
    return out


def peak_summary(peak: Mapping[str, Any]) -> str:
    """One line for a benchmark header: ``peak/core fp32 FMA 99.2 GFLOP/s (avx2), int8 160.1 GOP/s (avx2)``."""
    parts = []
    for kind in KINDS:
        entry = peak.get(kind) or {}
        v = _gops(entry)
        unit = "GFLOP/s" if kind == "fp32_fma" else "GOP/s"
        parts.append(f"{_LABEL[kind]} {v:.1f} {unit} ({entry['isa']})" if v is not None else f"{_LABEL[kind]} n/a")
    return "peak/core " + ", ".join(parts)


def peak_table(peak: Mapping[str, Any], threads: int, runs: int = 20, markdown: bool = False) -> str:
    """The table of ``sparsecpu bench peak``: per (kind, level) the instruction, ops per instruction,
    GOP/s per core and x ``threads``, or why the level is absent; then a footnote."""
    header = ["kind", "isa", "instruction", "ops/instr", "GOP/s per core", f"GOP/s x {threads} threads"]
    rows = []
    absent = []
    for r in peak_records(peak, threads):
        if r["gops_per_core"] is None:
            absent.append(f"{_LABEL[r['kind']]} {r['isa']} ({r['instruction']}): {r['absent']}")
            continue
        rows.append([_LABEL[r["kind"]], r["isa"] + (" *" if r["best"] else ""), r["instruction"],
                     f"{r['ops_per_instruction']:g}", f"{r['gops_per_core']:.1f}", f"{r['gops_threads']:.1f}"])
    out = render_table(header, rows, markdown, left=(0, 1, 2))
    notes = [PEAK_FOOTNOTE.format(runs=runs, threads=threads)] + [f"absent: {a}" for a in absent]
    if markdown:
        return out + "\n\n" + "\n".join(f"- {n}" for n in notes)
    return out + "\n" + "\n".join(textwrap.fill(n, 110, subsequent_indent="  ") for n in notes)
