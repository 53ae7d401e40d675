"""Test hooks: force an ISA level (native or emulated), read int8 accumulators before the epilogue.

Not part of the stable API; the test suite and bug reports use them.

Levels: ``"reference"``, ``"avx2"``, ``"avx512"``, ``"avx512_vnni"``, ``"amx"``. Every AVX-512 and AMX
kernel is also built for AVX2 (the same source, emulated: slow, exact; AVX-512 through SIMDe, the AMX
tiles on sparsecpu's own tile machine), so on any AVX2 CPU those levels can be tested as
``"avx512:emulated"`` / ``"avx512_vnni:emulated"`` / ``"amx:emulated"``, and on a CPU that has them
natively the two builds can be checked against each other.
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, List

from . import _C
from .formats import PackedWeight
from .ops import _run

__all__ = ["isa", "supported_isas", "levels", "spmm_s32", "kernel_for", "kernel_calls"]


def supported_isas() -> List[str]:
    """ISA levels this CPU runs, lowest (``"reference"``) first."""
    return list(_C.supported_isas())


def levels() -> List[str]:
    """Every level this machine can test, lowest first: the native ones (:func:`supported_isas`),
    then, on a CPU with AVX2, each AVX-512 and AMX level emulated (``"avx512_vnni:emulated"``,
    ``"amx:emulated"``)."""
    return list(_C.test_targets())


@contextlib.contextmanager
def isa(level: str, emulated: bool = False) -> Iterator[str]:
    """Sets the kernel level inside the ``with`` block; yields the level in force.

    A native level is capped at the CPU (like ``SPARSECPU_ISA``). ``emulated=True``, or a level
    written ``"avx512_vnni:emulated"``, runs that AVX-512 or AMX level's emulated kernels instead, on
    any CPU with AVX2 (``ValueError`` elsewhere, and for the levels below AVX-512). At ``"amx"``
    only the ops that have an AMX kernel run one (the dense int8 GEMM, the panel SpMM); the others run
    the level below's (``avx512_vnni``), as dispatch picks the best kernel at or below the level. The
    panel format's op has no kernel between the reference and AMX: below ``"amx"`` it runs the reference.
    """
    if emulated and not level.endswith(":emulated"):
        level += ":emulated"
    previous = _C.get_isa()
    _C.set_isa(level)
    try:
        yield _C.get_isa()
    finally:
        _C.set_isa(previous)


def kernel_calls() -> Dict[str, int]:
    """Calls of each registered kernel (registry name, emulated builds ending in ``":emulated"``)
    since the library was loaded: the tests check that every kernel this machine can run was run."""
    return {e["name"]: e["calls"] for e in _C.kernel_registry()}


def spmm_s32(x: Any, packed: PackedWeight):
    """The int32 accumulators ``sum_k q(x)[m, k] * w_q[n, k]`` of an int8 weight (block-sparse, dense
    or panel), before dequantization.

    ``q(x)`` is the per-row u8 quantization the kernel applies. Integer accumulation is exact, so
    every ISA level (and the skinny and the SpMM kernel of a block-sparse weight) must return
    bit-identical results. With an outlier threshold and outliers present in ``x``, these are the
    accumulators of the int8 part: ``x`` with the outlier columns set to zero.
    """
    if packed.dtype != "int8":
        raise ValueError("spmm_s32 needs an int8 packed weight")
    return _run(x, packed, None, None, raw_s32=True)


def kernel_for(packed: PackedWeight, m: int) -> str:
    """Name of the kernel :func:`sparsecpu.linear` runs for ``packed`` and ``m`` rows at the active level."""
    return _C.kernel_for(packed.buffer, int(m))
