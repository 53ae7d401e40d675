"""Shared fixtures for the sparsecpu suite. Helpers (data, pairwise cases, numpy mirrors of the
kernels, the packed-buffer reader) live in ``_util.py`` next to this file."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

# The default (prepend) import mode already puts tests/ on sys.path (it has no __init__.py); this
# keeps ``import _util`` working under --import-mode=importlib too.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

# The suite's format calibrations (sparsecpu.calibration) go to a directory of its own, not the user's cache.
os.environ.setdefault("SPARSECPU_CACHE_DIR", tempfile.mkdtemp(prefix="sparsecpu-test-cache-"))

import sparsecpu
from sparsecpu import calibration, testing


def _level() -> tuple:
    d = sparsecpu.info()
    return d["isa"], d["emulated"]


def _describe_levels() -> str:
    return ", ".join(level if level.endswith(":emulated") else f"{level}:native" for level in testing.levels())


def pytest_report_header(config):
    d = sparsecpu.info()
    return [
        f"sparsecpu {d['version']} from {sparsecpu.__file__}",
        f"cpu: {d['cpu']} ({d['vendor']}); isa: {d['isa']} (detected {d['detected_isa']}); "
        f"levels under test: {_describe_levels()}; threads: {d['threads']}",
    ]


@pytest.fixture(autouse=True)
def _restore_threads_and_isa():
    """Every test leaves the thread pool size and the ISA level as it found them."""
    threads = sparsecpu.get_num_threads()
    isa = _level()
    yield
    if sparsecpu.get_num_threads() != threads:
        sparsecpu.set_num_threads(threads)
    assert _level() == isa, "a test left the ISA level changed"


@pytest.fixture
def num_threads():
    """Sets sparsecpu's thread count for the test: ``num_threads(2)``; restored afterwards
    (by the autouse fixture above)."""

    def set_(n: int) -> None:
        sparsecpu.set_num_threads(n)
        assert sparsecpu.get_num_threads() == n

    return set_


# format="auto" (sparsify, onnx convert, pack) decides int8 layouts from a calibration measured on the
# machine. The suite decides from this fixed one instead, not from this run's timings: the crossover
# measured on the reference AVX2 machine (block-sparse up to 4x1 block density 0.75 at 128 rows, 0.33 at
# 1 row). Tests marked measured_calibration (test_calibration.py) take the real one.
SUITE_CALIBRATION = calibration.Calibration(
    {"cpu": "the suite's fixed calibration", "isa": "avx2", "threads": 2, "sparsecpu": sparsecpu.__version__,
     "version": calibration.VERSION},
    {"bsr": {1: (5e-6, 6e-5), 128: (7e-5, 1.43e-3 / 0.75)}, "dense": {1: (0.0, 2.5e-5), 128: (0.0, 1.5e-3)}},
)


def pytest_configure(config):
    config.addinivalue_line("markers", "measured_calibration: use this machine's measured format calibration")


@pytest.fixture(autouse=True)
def _suite_calibration(request, monkeypatch):
    if request.node.get_closest_marker("measured_calibration") is None:
        monkeypatch.setattr(calibration, "load", lambda refresh=False: SUITE_CALIBRATION)
