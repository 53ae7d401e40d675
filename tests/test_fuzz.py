"""Seeded, bounded runs of the coverage-guided fuzz targets in fuzz/ on the installed package (no
sanitizers: ``bash scripts/fuzz.sh [seconds]`` runs them for long under ASan + UBSan, with the C++
coverage steering the mutations, and adds the libFuzzer target on csrc/core directly).

Each run is deterministic: libFuzzer's -seed and -runs are fixed, the seed corpus is generated from
fixed weights, and the custom mutator draws from the seed libFuzzer hands it. A finding (a crash, an
unexpected exception, an accepted buffer the kernels disagree on) fails the test with the fuzzer's
report and leaves the input that caused it in the test's temporary directory.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import sparsecpu

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
if not (FUZZ / "_fuzzlib.py").is_file():
    pytest.skip(f"{FUZZ} is not here (a test run outside the source tree)", allow_module_level=True)
sys.path.insert(0, str(FUZZ))

import _fuzzlib  # noqa: E402

# Executions per target: about 20 s (packed) and 15 s (ort) on an idle 2-core reference machine.
RUNS = {"fuzz_packed.py": 40_000, "fuzz_ort.py": 10_000}


def test_seed_corpus_covers_every_format_and_dtype():
    seen = set()
    for name, b in _fuzzlib.seed_buffers().items():
        p = sparsecpu.PackedWeight.from_bytes(b)
        seen.add((p.format, p.dtype, p.outlier_threshold is not None))
        assert len(b) <= 4096, name  # the fuzzers' -max_len
    assert seen >= {("bsr", "int8", False), ("bsr", "fp32", False), ("dense", "int8", False),
                    ("bsr", "int8", True), ("dense", "int8", True)}, seen
    headers = [_fuzzlib.HEADER.unpack_from(b) for b in _fuzzlib.seed_buffers().values()]
    assert {h[1] for h in headers} == {1, 2}, "version 1 and 2 headers"
    assert {h[6] for h in headers} >= {2, 4}, "2- and 4-byte column indices"


def test_ort_seeds_make_models_that_load_and_run():
    """The ORT target starts from models that ONNX Runtime loads and runs (with all-zero control
    bytes: attributes that match the buffer), and the repair step keeps a valid buffer valid."""
    pytest.importorskip("onnxruntime")
    import random

    for name, b in _fuzzlib.seed_buffers().items():
        model, (run, _) = _fuzzlib.ort_model(bytes(_fuzzlib.CONTROL_BYTES) + b)
        sess = sparsecpu.onnx.session(model, threads=1)
        if run is not None:  # None: K over the size the target runs (the 4-byte index seed)
            n, k = run
            (y,) = sess.run(None, {"X": np.ones((2, k), np.float32)})
            assert y.shape == (2, n), name
        else:
            assert "wide_index" in name, name
        assert _fuzzlib.repair(b, random.Random(0), 1 << 16) == b, name


@pytest.mark.skipif(sys.platform != "linux", reason="atheris ships Linux wheels only")
@pytest.mark.parametrize("target", sorted(RUNS))
def test_fuzz_target_bounded_run(target, tmp_path):
    try:
        import atheris  # noqa: F401
    except ImportError:
        pytest.skip("atheris is not installed (pip install atheris; it is in the [test] extra on Linux x86-64): "
                    "bash scripts/fuzz.sh runs the fuzz targets, installing it")
    if "asan" in os.environ.get("LD_PRELOAD", ""):
        pytest.skip("under scripts/sanitize.sh: scripts/fuzz.sh runs the fuzz targets with the sanitizers")
    if target == "fuzz_ort.py":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")
    seeds, corpus = tmp_path / "seeds", tmp_path / "corpus"
    corpus.mkdir()
    subprocess.run([sys.executable, str(FUZZ / target), "--write-seeds", str(seeds)], check=True, capture_output=True)
    runs = RUNS[target]
    cmd = [sys.executable, str(FUZZ / target), "-seed=1", f"-runs={runs}", "-timeout=60", "-print_final_stats=1",
           f"-artifact_prefix={tmp_path}/", str(corpus), str(seeds)]
    # libFuzzer's -rss_limit_mb (2 GB) checks the peak RSS (getrusage's ru_maxrss), which Linux carries
    # across exec: a target started straight from pytest would count pytest's own peak, over 2 GB after
    # the model tests. A shell that forks the target gives it a peak of its own.
    proc = subprocess.run(["/bin/sh", "-c", '"$@"; exit $?', "sh", *cmd], capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    findings = [p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-", "leak-"))]
    tail = "\n".join(log.splitlines()[-40:])
    assert proc.returncode == 0 and not findings, f"{' '.join(cmd)}\nexit {proc.returncode}, findings {findings}:\n{tail}"
    done = re.search(r"^stat::number_of_executed_units:\s*(\d+)", log, re.M)
    assert done and int(done.group(1)) == runs, tail
