"""Test hooks: force an ISA level, read int8 accumulators before the epilogue.

Not part of the stable API; the test suite and bug reports use them.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, List

from . import _C
from .formats import PackedWeight
from .ops import _run

__all__ = ["isa", "supported_isas", "spmm_s32", "kernel_for"]


def supported_isas() -> List[str]:
    """ISA levels this CPU runs, lowest (``"reference"``) first."""
    return list(_C.supported_isas())


@contextlib.contextmanager
def isa(level: str) -> Iterator[str]:
    """Caps the kernel level inside the ``with`` block (like ``SPARSECPU_ISA``); yields the level in force."""
    previous = _C.get_isa()
    _C.set_isa(level)
    try:
        yield _C.get_isa()
    finally:
        _C.set_isa(previous)


def spmm_s32(x: Any, packed: PackedWeight):
    """The int32 accumulators ``sum_k q(x)[m, k] * w_q[n, k]`` of an int8 weight (block-sparse or
    dense), before dequantization.

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
