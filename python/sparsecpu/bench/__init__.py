"""Benchmark harness behind ``sparsecpu bench``: pruned test weights, interleaved timing, kernel and
model comparisons against PyTorch and ONNX Runtime, tables, JSON and plots.

Needs torch; the ONNX Runtime baselines need onnx and onnxruntime, plots need matplotlib, the model
benchmark needs transformers (``pip install sparsecpu[bench]``). Used by ``sparsecpu bench kernels``,
``sparsecpu bench model``, ``sparsecpu demo``, ``bench/kernels.py`` and the pytest-benchmark suite in
``bench/``.
"""

from .kernels import (
    BASELINES,
    BERT_BASE_SHAPES,
    DEFAULT_BASELINES,
    DEFAULT_MS,
    DEFAULT_SPARSITIES,
    IMPLS,
    SHAPE_PRESETS,
    Impl,
    build_impls,
    pruned_weight,
    run_kernel_cases,
)
from .report import environment, kernel_table, plot_speedups, render_table, write_json
from .timing import SETTLE_S, Timing, default_threads, run_for, time_interleaved

__all__ = [
    "BASELINES",
    "BERT_BASE_SHAPES",
    "DEFAULT_BASELINES",
    "DEFAULT_MS",
    "DEFAULT_SPARSITIES",
    "IMPLS",
    "SETTLE_S",
    "SHAPE_PRESETS",
    "Impl",
    "Timing",
    "build_impls",
    "default_threads",
    "environment",
    "kernel_table",
    "plot_speedups",
    "pruned_weight",
    "render_table",
    "run_for",
    "run_kernel_cases",
    "time_interleaved",
    "write_json",
]
