"""Fuzz target: ``PackedWeight.from_bytes`` / ``_C.validate`` on mutated packed buffers (atheris).

Each input is a candidate packed buffer. It must be rejected with ``ValueError``, or accepted and then
usable: validating again, ``to_dense`` and ``sparsecpu.linear`` (the skinny kernel at M = 3 and the
row tile at M = 9) succeed and agree with each other. Anything else (another exception type, a
crash, a sanitizer report) is a finding.

    python fuzz/fuzz_packed.py [libFuzzer flags] CORPUS_DIR [SEED_DIR...]
    python fuzz/fuzz_packed.py --write-seeds DIR     # the seed corpus (valid buffers of every format)

``scripts/fuzz.sh`` runs it under ASan + UBSan on a coverage-instrumented build of the extension;
``tests/test_fuzz.py`` runs a short, seeded run of it on the installed package.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))

with atheris.instrument_imports(include=["sparsecpu", "_fuzzlib"]):
    import numpy as np

    import _fuzzlib
    import sparsecpu
    from sparsecpu import _C

classify_error = atheris.instrument_func(_fuzzlib.classify_error)

# Accepted buffers are run only up to these sizes (a valid header may claim K = 2**31 - 1 with no
# blocks: to_dense would then be an 8 GiB array, which is the caller's request, not a defect).
MAX_DENSE = 1 << 18
MAX_K = 1 << 16
_RNG = np.random.default_rng(7)
_X = {m: _RNG.uniform(-2.0, 2.0, (m, MAX_K)).astype(np.float32) for m in (3, 9)}


def _check_linear(p: sparsecpu.PackedWeight, dense: np.ndarray) -> None:
    """``linear`` agrees with ``x @ to_dense().T`` up to the error of the kernel's arithmetic (where
    that reference is finite: a valid int8 scale may be as large as FLT_MAX, and 127 x FLT_MAX is not)."""
    n, k = p.shape
    w64 = dense.astype(np.float64)
    absw = np.abs(w64)
    for m, xs in _X.items():
        x = np.ascontiguousarray(xs[:, :k])
        y = sparsecpu.linear(x, p)
        assert y.shape == (m, n) and y.dtype == np.float32, (y.shape, y.dtype)
        with np.errstate(all="ignore"):
            ref = x.astype(np.float64) @ w64.T
            mag = np.abs(x.astype(np.float64)) @ absw.T
            if p.dtype == "int8":
                # Per-row u8 quantization of x: each element is off by at most one step of its row's range.
                step = (np.maximum(x.max(axis=1, initial=0), 0) - np.minimum(x.min(axis=1, initial=0), 0)) / 255.0
                tol = step[:, None] * absw.sum(axis=1)[None, :] + 1e-4 * mag + 1e-6
            else:
                tol = 1e-4 * mag + 1e-30
            finite = np.isfinite(ref) & np.isfinite(tol) & (np.abs(ref) < 1e30)
            bad = finite & ~(np.abs(y.astype(np.float64) - ref) <= tol)
        assert not bad.any(), f"{p!r}: linear(M={m}) differs from x @ to_dense().T at {np.argwhere(bad)[:5].tolist()}"


def check(data: bytes) -> None:
    raw = np.frombuffer(data, np.uint8)
    try:
        p = sparsecpu.PackedWeight.from_bytes(data)
    except ValueError as e:
        classify_error(str(e))
        # The binding says the same about the same bytes.
        try:
            _C.validate(raw)
        except ValueError as e2:
            assert str(e2) == str(e) or "aligned" in str(e2), (str(e), str(e2))
        else:
            raise AssertionError(f"PackedWeight rejected a buffer that _C.validate accepts: {e}")
        return
    meta = _C.validate(p.buffer)
    _fuzzlib.classify_accepted(meta)
    assert meta["nbytes"] == len(data) == p.nbytes
    assert p.to_bytes() == data
    p.validate()
    # An unaligned copy of a valid buffer is refused, not read (the kernels load 8-byte fields).
    shifted = np.frombuffer(b"\0" + data, np.uint8)[1:]
    if shifted.ctypes.data % 8:
        try:
            _C.validate(shifted)
        except ValueError as e:
            assert "aligned" in str(e), str(e)
        else:
            raise AssertionError("an unaligned buffer was accepted")
    n, k = p.shape
    if n * k > MAX_DENSE or k > MAX_K:
        return
    dense = p.to_dense()
    assert dense.shape == (n, k) and dense.dtype == np.float32
    _check_linear(p, dense)


def TestOneInput(data: bytes) -> None:  # noqa: N802 - atheris' name
    check(data)


def CustomMutator(data: bytes, max_size: int, seed: int) -> bytes:  # noqa: N802
    return _fuzzlib.mutate(data, max_size, seed, atheris.Mutate)


def main(argv) -> None:
    if len(argv) == 3 and argv[1] == "--write-seeds":
        print(f"{_fuzzlib.write_corpus('packed', argv[2])} seeds written to {argv[2]}")
        return
    atheris.Setup(_fuzzlib.with_default_flags(argv), TestOneInput, custom_mutator=CustomMutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
