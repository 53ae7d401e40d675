"""Outlier-aware int8 (LLM.int8() decomposition): pack(..., outlier_threshold=t).

At run time the input columns holding some |x| > t are computed in fp32 with the dequantized weight,
beside the int8 product of the other columns (whose quantization no longer sees the outliers). Checked
against a numpy mirror on every level, for the skinny, SpMM-tile and dense kernels; no outliers
present gives exactly the output of a weight without a threshold.
"""

from __future__ import annotations

import numpy as np
import pytest

import _util
import sparsecpu
from sparsecpu import testing

LEVELS = testing.levels()
E = _util.EPS32
SEED = 20261125
T = 6.0


def mirror(x, w, bias, activation, threshold):
    """(int8 part Int8Expected of x with the outlier columns zeroed, expected y float64, tol, columns)."""
    cols = np.flatnonzero((np.abs(x) > threshold).any(axis=0))
    xz = x.copy()
    xz[:, cols] = 0.0
    ex = _util.int8_expected(xz, w, None, None)
    wdq = (ex.wq * ex.w_scale[:, None]).astype(np.float64)
    side = x[:, cols].astype(np.float64) @ wdq[:, cols].T
    pre = ex.pre.astype(np.float64) + side + (0.0 if bias is None else bias.astype(np.float64)[None, :])
    mag = ex.mag + np.abs(x[:, cols]).astype(np.float64) @ np.abs(wdq[:, cols]).T
    if bias is not None:
        mag = mag + np.abs(bias.astype(np.float64))[None, :]
    return ex, _util.activation_f64(pre, activation), 16 * E * mag + 1e-30, cols


def _data(m, n, k, density, seed, outlier_cols=(), rows=None):
    rng = np.random.default_rng([SEED, seed])
    w, _ = _util.pruned_weight(rng, n, k, density)
    x = np.clip(rng.standard_normal((m, k)), -4, 4).astype(np.float32)
    for j, c in enumerate(outlier_cols):
        r = rows if rows is not None else slice(None)
        x[r, c] = np.float32((-1) ** j * (20.0 + 10 * j))
    bias = (rng.standard_normal(n) + 0.5).astype(np.float32)
    return x, w, bias


KERNELS = [("bsr", 1), ("bsr", 5), ("bsr", 70), ("dense", 1), ("dense", 70)]


@pytest.mark.parametrize("fmt, m", KERNELS, ids=[f"{f}-M{m}" for f, m in KERNELS])
@pytest.mark.parametrize("activation", [None, "gelu"])
def test_outliers_present_every_level(fmt, m, activation):
    x, w, bias = _data(m, 50, 300, 0.4, [m, 1], outlier_cols=(3, 150, 299), rows=slice(0, 1))
    packed = sparsecpu.pack(w, format=fmt, outlier_threshold=T)
    assert packed.outlier_threshold == T
    ex, expected, tol, cols = mirror(x, w, bias, activation, T)
    assert cols.tolist() == [3, 150, 299]  # only row 0 holds them: the columns go fp32 for every row
    for level in LEVELS:
        with testing.isa(level):
            y = sparsecpu.linear(x, packed, bias=bias, activation=activation)
            s32 = testing.spmm_s32(x, packed)
        np.testing.assert_array_equal(s32.astype(np.int64), ex.acc, err_msg=f"int8 part at {level}")
        _util.assert_within(y, expected, tol, f"{level} vs numpy decomposition")
    _util.assert_informative(ex.pre, ex.pre, None)


@pytest.mark.parametrize("fmt, m", KERNELS, ids=[f"{f}-M{m}" for f, m in KERNELS])
def test_no_outliers_present_is_the_plain_int8_path(fmt, m):
    x, w, bias = _data(m, 40, 200, 0.5, [m, 2])
    assert np.abs(x).max() <= 4.0 < T
    on = sparsecpu.pack(w, format=fmt, outlier_threshold=T)
    off = sparsecpu.pack(w, format=fmt)
    for level in LEVELS:
        with testing.isa(level):
            assert sparsecpu.linear(x, on, bias=bias, activation="relu").tobytes() == \
                sparsecpu.linear(x, off, bias=bias, activation="relu").tobytes()
            assert testing.spmm_s32(x, on).tobytes() == testing.spmm_s32(x, off).tobytes()


def test_value_at_threshold_is_not_an_outlier():
    x, w, bias = _data(3, 8, 16, 1.0, 3)
    x[1, 5] = np.float32(T)
    on, off = sparsecpu.pack(w, outlier_threshold=T), sparsecpu.pack(w)
    assert sparsecpu.linear(x, on).tobytes() == sparsecpu.linear(x, off).tobytes()
    x[1, 5] = np.nextafter(np.float32(T), np.float32(np.inf))
    assert sparsecpu.linear(x, on).tobytes() != sparsecpu.linear(x, off).tobytes()


@pytest.mark.parametrize("fmt", ["bsr", "dense"])
def test_outliers_recover_accuracy(fmt):
    """One feature column of magnitude 60 (GPT-style): without the decomposition it sets every row's
    quantization step and the other columns lose their precision."""
    rng = np.random.default_rng([SEED, 4])
    w = rng.standard_normal((64, 256)).astype(np.float32) * 0.05
    # The outlier column's weights on the int8 grid, so that only the activations' error is measured.
    _, scale = _util.quantize_weight(w)
    w[:, 17] = np.round(w[:, 17] / scale) * scale
    x = rng.standard_normal((9, 256)).astype(np.float32)
    x[:, 17] = 60.0
    exact = x.astype(np.float64) @ w.astype(np.float64).T
    err = {}
    for t in (None, T):
        y = sparsecpu.linear(x, sparsecpu.pack(w, format=fmt, outlier_threshold=t))
        err[t] = np.linalg.norm(y - exact) / np.linalg.norm(exact)
    assert err[T] < 0.01 and err[T] * 4 < err[None], err


@pytest.mark.parametrize("fmt, m", [("bsr", 3), ("bsr", 129), ("dense", 128), ("dense", 129)])
def test_outliers_threads_bitwise_identical(fmt, m, num_threads):
    x, w, bias = _data(m, 772, 768, 0.3, [m, 5], outlier_cols=(0, 400), rows=slice(m // 2, m // 2 + 1))
    packed = sparsecpu.pack(w, format=fmt, outlier_threshold=T)
    outs = []
    for threads in (1, 2):
        num_threads(threads)
        outs.append(sparsecpu.linear(x, packed, bias=bias, activation="gelu_tanh").tobytes())
    assert outs[0] == outs[1]
    _, expected, tol, _ = mirror(x, w, bias, "gelu_tanh", T)
    _util.assert_within(np.frombuffer(outs[0], np.float32).reshape(m, 772), expected, tol, "vs mirror")


def test_every_column_an_outlier():
    x, w, bias = _data(4, 12, 10, 1.0, 6)
    x *= 10
    x[np.abs(x) <= T] = 7.0
    packed = sparsecpu.pack(w, outlier_threshold=T)
    ex, expected, tol, cols = mirror(x, w, bias, None, T)
    assert len(cols) == 10 and not ex.acc.any()
    for level in LEVELS:
        with testing.isa(level):
            _util.assert_within(sparsecpu.linear(x, packed, bias=bias), expected, tol, level)
