"""Benchmark harness: pruned test weights, interleaved timing, and kernel comparisons against PyTorch.

Needs torch (``pip install sparsecpu[bench]``). Used by ``sparsecpu bench kernels``, ``sparsecpu demo``,
``bench/kernels.py`` and the pytest-benchmark suite in ``bench/``.
"""

from .kernels import (
    BERT_BASE_SHAPES,
    DEFAULT_MS,
    DEFAULT_SPARSITIES,
    SETTLE_S,
    Impl,
    Timing,
    build_impls,
    default_threads,
    format_table,
    pruned_weight,
    run_for,
    run_kernel_cases,
    time_interleaved,
)

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
