"""Skinny M (M <= 8, decoding): the int8 and fp32 BSR kernels vectorized over output channels.

Every level vs numpy (int8: s32 bit-exact; fp32: within float32 rounding), shapes around the 4-channel groups, pairs of groups and odd
chunk ends, empty groups; the skinny kernel and the SpMM tile kernel agree bit for bit on the rows
they share; the kernel switch happens at M = 8 / 9.
"""

from __future__ import annotations

import numpy as np
import pytest

import _util
import sparsecpu
from sparsecpu import testing

LEVELS = testing.levels()
E = _util.EPS32
SEED = 20261124

PARAMS = {
    "M": [1, 2, 3, 5, 8],
    "N": [1, 4, 5, 8, 12, 20, 770, 3072],
    "K": [1, 4, 7, 33, 768],
    "density": [0.05, 0.3, 1.0],
    "activation": [None, "relu", "gelu", "gelu_tanh"],
    "layout": list(_util.LAYOUTS),
    "dtype": ["int8", "fp32"],
}


def _ok(c) -> bool:
    return c["M"] * c["N"] * c["K"] * c["density"] <= 4e6


CASES = _util.pairwise(PARAMS, seed=SEED, feasible=_util.completable(PARAMS, ["M", "N", "K", "density"], _ok))


def _id(c) -> str:
    return f"M{c['M']}-N{c['N']}-K{c['K']}-d{c['density']:g}-{c['activation'] or 'noact'}-{c['layout']}-{c['dtype']}"


def test_pairwise_cases_cover_every_pair():
    assert _util.uncovered_pairs(PARAMS, CASES) == []
    assert len(CASES) < 80


@pytest.mark.parametrize("index", range(len(CASES)), ids=[_id(c) for c in CASES])
def test_skinny_every_level(index):
    c = CASES[index]
    rng = np.random.default_rng([SEED, index])
    w, _ = _util.pruned_weight(rng, c["N"], c["K"], c["density"])
    x = rng.standard_normal((c["M"], c["K"])).astype(np.float32)
    bias = (rng.standard_normal(c["N"]) + 0.5).astype(np.float32)  # empty groups give bias-only outputs
    packed = sparsecpu.pack(w, dtype=c["dtype"], format="bsr")
    xl = _util.in_layout(x, c["layout"])
    if c["dtype"] == "fp32":
        pre, expected, absprod = _util.fp32_expected(x, packed.to_dense(), bias, c["activation"])
        tol = 8 * E * np.sqrt(c["K"]) * (absprod + np.abs(bias.astype(np.float64))[None, :]) + 1e-30
    else:
        ex = _util.int8_expected(x, w, bias, c["activation"])
        pre, expected, tol = ex.pre, ex.y, 8 * E * ex.mag + 1e-30
    for level in LEVELS:
        with testing.isa(level):
            assert "skinny" in testing.kernel_for(packed, c["M"])
            y = sparsecpu.linear(xl, packed, bias=_util.bias_in_layout(bias, c["layout"]), activation=c["activation"])
            if c["dtype"] == "int8":
                s32 = _util.out_as_2d(testing.spmm_s32(xl, packed), c["layout"], c["M"], c["N"], np.int32)
                np.testing.assert_array_equal(s32.astype(np.int64), ex.acc, err_msg=f"s32 at {level}")
        y = _util.out_as_2d(y, c["layout"], c["M"], c["N"])
        _util.assert_within(y, expected, tol, f"{level} vs numpy ({c['dtype']})")
    _util.assert_informative(pre, pre, None, _id(c))


@pytest.mark.parametrize("m", [1, 2, 5, 8])
def test_skinny_matches_spmm_tile_bitwise(m):
    """Rows quantize independently, so rows 0..m-1 of a 16-row call (SpMM tile kernel) must hold the
    same s32 accumulators and outputs as the m-row call (skinny kernel)."""
    rng = np.random.default_rng([SEED, 100, m])
    w, _ = _util.pruned_weight(rng, 772, 300, 0.2)
    x = rng.standard_normal((16, 300)).astype(np.float32)
    bias = rng.standard_normal(772).astype(np.float32)
    packed = sparsecpu.pack(w, format="bsr")
    for level in LEVELS:
        with testing.isa(level):
            assert "skinny" in testing.kernel_for(packed, m) and "skinny" not in testing.kernel_for(packed, 16)
            np.testing.assert_array_equal(testing.spmm_s32(x[:m], packed), testing.spmm_s32(x, packed)[:m])
            np.testing.assert_allclose(
                sparsecpu.linear(x[:m], packed, bias=bias, activation="gelu"),
                sparsecpu.linear(x, packed, bias=bias, activation="gelu")[:m], rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("m", range(1, 9))
def test_skinny_group_lengths(m):
    """Groups of every length class: empty (all-zero channels), 1..3 quads of blocks, whole steps of 16
    blocks (the AVX-512 kernels' step; the last 1..3 quads of a group go masked) and more, and a group
    that keeps every column; 4 groups share one 16-channel store, with G and N not multiples of it."""
    rng = np.random.default_rng([SEED, 400, m])
    k = 101
    kept = [0, 1, 3, 4, 5, 12, 15, 16, 17, 31, 32, 33, 48, 64, 0, 2, 101, 7]  # blocks per group
    n = 4 * len(kept) - 1
    w = np.zeros((n, k), np.float32)
    for g, c in enumerate(kept):
        lo, hi = 4 * g, min(n, 4 * g + 4)
        w[lo:hi, np.sort(rng.choice(k, size=c, replace=False))] = rng.standard_normal((hi - lo, c))
    x = rng.standard_normal((m, k)).astype(np.float32)
    bias = (rng.standard_normal(n) + 0.5).astype(np.float32)
    packed = sparsecpu.pack(w, dtype="int8", format="bsr")
    ex = _util.int8_expected(x, w, bias, "gelu")
    for level in LEVELS:
        with testing.isa(level):
            assert "skinny" in testing.kernel_for(packed, m)
            y = sparsecpu.linear(x, packed, bias=bias, activation="gelu")
            np.testing.assert_array_equal(testing.spmm_s32(x, packed).astype(np.int64), ex.acc, err_msg=f"s32 at {level}")
        _util.assert_within(y, ex.y, 8 * E * ex.mag + 1e-30, f"{level} vs numpy int8 mirror")
    _util.assert_informative(ex.pre, ex.pre, None, f"m={m}")


def test_kernel_switch_at_m_8():
    w = np.ones((8, 8), np.float32)
    p = sparsecpu.pack(w, format="bsr")
    for level in LEVELS:
        with testing.isa(level):
            assert [("skinny" in testing.kernel_for(p, m)) for m in (0, 1, 8, 9, 128)] == [True, True, True, False, False]
            assert testing.kernel_for(sparsecpu.pack(w, format="dense"), 1).startswith("gemm_s8")
            fp32 = sparsecpu.pack(w, dtype="fp32")
            assert [testing.kernel_for(fp32, m).startswith("spmm_4x1_f32_skinny") for m in (1, 8, 9)] == [True, True, False]


def test_skinny_fp32_rejects_nan_and_inf_anywhere():
    """x is checked whole, not only at the columns the weight reads."""
    w = np.zeros((4, 64), np.float32)
    w[:, 3] = 1.0
    packed = sparsecpu.pack(w, dtype="fp32")
    for bad in (np.nan, np.inf, -np.inf):
        x = np.ones((3, 64), np.float32)
        x[2, 50] = bad  # a column no block reads
        for level in LEVELS:
            with testing.isa(level), pytest.raises(ValueError, match="NaN or Inf"):
                sparsecpu.linear(x, packed)


@pytest.mark.parametrize("dtype", ["int8", "fp32"])
@pytest.mark.parametrize("n", [4, 8, 12, 20, 28])
def test_skinny_group_pairs_and_chunk_ends(n, dtype, num_threads):
    """Groups are joined in pairs for the epilogue; with 2 threads a chunk may end on an unpaired
    group. Every output channel must still be right and bit-identical across thread counts."""
    int8 = dtype == "int8"
    rng = np.random.default_rng([SEED, 200 if int8 else 300, n])
    k = 12000  # enough work for the second thread even at N = 4
    w, _ = _util.pruned_weight(rng, n, k, 1.0)
    x = rng.standard_normal((8 if int8 else 5, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    activation = "relu" if int8 else "gelu"
    packed = sparsecpu.pack(w, dtype=dtype, format="bsr")
    if int8:
        ex = _util.int8_expected(x, w, bias, activation)
        expected, tol = ex.y, 8 * E * ex.mag + 1e-30
    else:
        _, expected, absprod = _util.fp32_expected(x, packed.to_dense(), bias, activation)
        tol = 8 * E * np.sqrt(k) * (absprod + 1.0) + 1e-30
    outs = []
    for threads in (1, 2):
        num_threads(threads)
        for level in LEVELS:
            with testing.isa(level):
                y = sparsecpu.linear(x, packed, bias=bias, activation=activation)
                if int8:
                    np.testing.assert_array_equal(testing.spmm_s32(x, packed).astype(np.int64), ex.acc)
            _util.assert_within(y, expected, tol, f"{level}, {threads} threads")
            outs.append((level, y.tobytes()))
    for level in LEVELS:
        assert len({b for lv, b in outs if lv == level}) == 1


@pytest.mark.parametrize("m", range(1, 9))
def test_skinny_fp32_every_row_count(m):
    """fp32 skinny at every row count of the 8-row call (4-row folds, a partial second one; M = 1 with an
    odd and an even number of quads per group), groups of 0..5 quads, and 4-group (16-channel) tiles
    with G and N not multiples of them."""
    rng = np.random.default_rng([SEED, 500, m])
    k = 77
    kept = [0, 1, 4, 5, 8, 9, 12, 20, 3, 0, 17, 2, 77, 6]  # blocks per group (padded to whole quads)
    n = 4 * len(kept) - 2
    w = np.zeros((n, k), np.float32)
    for g, c in enumerate(kept):
        lo, hi = 4 * g, min(n, 4 * g + 4)
        w[lo:hi, np.sort(rng.choice(k, size=c, replace=False))] = rng.standard_normal((hi - lo, c))
    x = rng.standard_normal((m, k)).astype(np.float32)
    bias = (rng.standard_normal(n) + 0.5).astype(np.float32)
    packed = sparsecpu.pack(w, dtype="fp32", format="bsr")
    pre, expected, absprod = _util.fp32_expected(x, packed.to_dense(), bias, "gelu")
    tol = 8 * E * np.sqrt(k) * (absprod + np.abs(bias.astype(np.float64))[None, :]) + 1e-30
    for level in LEVELS:
        with testing.isa(level):
            assert "skinny" in testing.kernel_for(packed, m)
            y = sparsecpu.linear(x, packed, bias=bias, activation="gelu")
        _util.assert_within(y, expected, tol, f"{level} vs numpy (fp32)")
    _util.assert_informative(pre, pre, None, f"m={m}")
