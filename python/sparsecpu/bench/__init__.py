"""Benchmark harness behind ``sparsecpu bench``: pruned test weights, interleaved timing, kernel and
model comparisons against PyTorch and ONNX Runtime (each implementation in a worker process of its own,
``workers``), tables, JSON and plots.

The kernel and model benchmarks need torch; the ONNX Runtime baselines need onnx and onnxruntime, plots
need matplotlib, the model benchmark needs transformers (``pip install sparsecpu[bench]``). The machine's
compute peaks (``peak``: ``sparsecpu bench peak``) need none of them: the names below are imported from
their submodule on first use, so this package imports without torch. Used by ``sparsecpu bench kernels``,
``sparsecpu bench model``, ``sparsecpu bench peak``, ``sparsecpu demo``, ``bench/kernels.py`` and the
pytest-benchmark suite in ``bench/``.
"""

import importlib
from typing import Any, List

_EXPORTS = {
    "kernels": ("BASELINES", "BERT_BASE_SHAPES", "DEFAULT_BASELINES", "DEFAULT_MS", "DEFAULT_SPARSITIES", "IMPLS",
                "SHAPE_PRESETS", "Impl", "build_impls", "pruned_weight", "run_kernel_cases"),
    "peak": ("machine_peak", "peak_table", "percent_of_peak"),
    "report": ("environment", "kernel_table", "plot_speedups", "render_table", "write_json"),
    "timing": ("SETTLE_S", "Timing", "default_threads", "run_for", "time_interleaved"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))
