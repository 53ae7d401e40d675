"""Fuzz target: ONNX Runtime kernel creation of com.sparsecpu:SparseLinear (atheris).

Each input is a model with one SparseLinear node (fuzz/_fuzzlib.py: ``ort_model``): 8 control bytes
choose its attributes (N, K, dtype, format, activation, norm, epsilon: matching the packed weight,
missing, off by one, out of range or of the wrong type), its optional inputs and how the packed
weight is given; the rest of the input is the packed weight, stored as an initializer. Creating an
``onnxruntime.InferenceSession`` with ``libsparsecpu_ort.so`` registered must raise an ONNX Runtime
exception or succeed; a session that is created runs once (where N and K are small), again ending in
an ONNX Runtime exception or an output of the right shape. A crash or a sanitizer report is a finding.

    python fuzz/fuzz_ort.py [libFuzzer flags] CORPUS_DIR [SEED_DIR...]
    python fuzz/fuzz_ort.py --write-seeds DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))

with atheris.instrument_imports(include=["sparsecpu", "_fuzzlib"]):
    import numpy as np

    import _fuzzlib
    import sparsecpu.onnx

import onnxruntime as ort

classify_error = atheris.instrument_func(_fuzzlib.classify_error)

# One SessionOptions with the library registered, shared by every session: registering it anew per
# input would only add a dlopen and the library's per-registration domain to each run.
_OPTIONS = ort.SessionOptions()
_OPTIONS.register_custom_ops_library(sparsecpu.onnx.library_path())
_OPTIONS.intra_op_num_threads = 1
_OPTIONS.inter_op_num_threads = 1
_OPTIONS.log_severity_level = 4  # fatal only: rejected models are the point here
_RNG = np.random.default_rng(5)


def _is_ort_error(e: BaseException) -> bool:
    return type(e).__module__.startswith("onnxruntime")


def check(data: bytes) -> None:
    model, (run, extra) = _fuzzlib.ort_model(data)
    try:
        sess = ort.InferenceSession(model, sess_options=_OPTIONS, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ONNX Runtime raises its own types
        if not _is_ort_error(e):
            raise
        classify_error(str(e))
        return
    if run is None:
        return
    n, k = run
    feeds = {"X": _RNG.standard_normal((2, k)).astype(np.float32)}
    for name, shape in extra.items():
        feeds[name] = shape if name == "W" else np.ones(shape, np.float32)
    try:
        (y,) = sess.run(None, feeds)
    except Exception as e:  # noqa: BLE001
        if not _is_ort_error(e):
            raise
        classify_error(str(e))
        return
    assert y.shape == (2, n) and y.dtype == np.float32, (y.shape, y.dtype)


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' name
    check(data)


def CustomMutator(data: bytes, max_size: int, seed: int) -> bytes:  # noqa: N802
    return _fuzzlib.mutate(data, max_size, seed, atheris.Mutate, prefix=_fuzzlib.CONTROL_BYTES)


def main(argv) -> None:
    if len(argv) == 3 and argv[1] == "--write-seeds":
        print(f"{_fuzzlib.write_corpus('ort', argv[2])} seeds written to {argv[2]}")
        return
    atheris.Setup(_fuzzlib.with_default_flags(argv), TestOneInput, custom_mutator=CustomMutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
