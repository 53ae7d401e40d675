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
from sparsecpu import testing


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
