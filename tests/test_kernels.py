"""Kernel correctness: every kernel on every ISA level this machine supports against the reference
level, and the reference level against numpy.

Case selection: the parameters below are covered pairwise (every value of every parameter, and every
pair of values of any two parameters, appears in some case) by the seeded greedy generator
``_util.pairwise`` -- not the Cartesian product. Constraints (``_case_ok``) keep the scalar reference
kernel's work per case bounded and make sure expected outputs are mostly nonzero (weights with
holes and no bias need enough kept blocks per group; density 0 always comes with a bias).

Each case runs once per ISA level (``testing.isa(level)``):
  * level ``reference``: output vs numpy (fp32: float64 product of ``to_dense()``; int8: the numpy
    quantization mirror, whose int64 accumulators must equal ``testing.spmm_s32`` exactly), plus
    the check that the data is informative (``_util.assert_informative``) and has the intended
    holes (empty groups, unused input columns);
  * other levels: int8 ``spmm_s32`` bit-identical to the reference level, float outputs within a
    tolerance that grows with K (fp32: accumulation order/FMA; int8: only the epilogue rounding and
    the vectorized GELU approximation).
"""

from __future__ import annotations

import functools
import threading

import numpy as np
import pytest

import _util
import sparsecpu
from sparsecpu import testing

LEVELS = testing.levels()
FAST_LEVELS = [lv for lv in LEVELS if lv != "reference"]
E = _util.EPS32

PARAMS = {
    "dtype": ["int8", "fp32"],
    "M": [0, 1, 3, 15, 16, 17, 64, 129],
    "N": [4, 12, 20, 768, 772, 3072],
    "K": [1, 4, 7, 64, 768, 3072],
    "density": [0.0, 0.01, 0.1, 0.5, 1.0],
    "bias": [False, True],
    "activation": [None, "relu", "gelu", "gelu_tanh"],
    "layout": list(_util.LAYOUTS),
}
SEED = 20240611
# Bounds per case: reference kernel work (multiply-adds + per-output epilogue + quantization) and
# the dense float64 numpy product used as the expectation.
MAX_REF_WORK = 2.5e7
MAX_DENSE_WORK = 1.5e8


def _ref_work(c) -> float:
    g = _util.groups_of(c["N"])
    return c["M"] * (4 * g * c["K"] * c["density"] + 4 * g + c["K"])


def _case_ok(c) -> bool:
    if _ref_work(c) > MAX_REF_WORK or c["M"] * c["N"] * c["K"] > MAX_DENSE_WORK:
        return False
    # Without a bias, outputs of empty groups are exactly 0: keep the expected output mostly nonzero.
    if c["M"] and not c["bias"] and _util.nonzero_fraction_estimate(c["N"], c["K"], c["density"]) < 0.65:
        return False
    return True


def make_cases():
    return _util.pairwise(
        PARAMS, seed=SEED, feasible=_util.completable(PARAMS, ["M", "N", "K", "density", "bias"], _case_ok)
    )


CASES = make_cases()


def case_id(c) -> str:
    return (
        f"{c['dtype']}-M{c['M']}-N{c['N']}-K{c['K']}-d{c['density']:g}-"
        f"{'bias' if c['bias'] else 'nobias'}-{c['activation'] or 'noact'}-{c['layout']}"
    )


def test_pairwise_cases_cover_every_pair():
    assert _util.uncovered_pairs(PARAMS, CASES) == []
    for name, vals in PARAMS.items():
        assert {c[name] for c in CASES} == set(vals), name
    assert all(_case_ok(c) for c in CASES)
    assert make_cases() == CASES, "the case list must be deterministic"
    assert len(CASES) < 80, "pairwise, not a product"


def _run(fn, case, data, packed):
    x = _util.in_layout(data.x, case["layout"])
    if fn is testing.spmm_s32:
        y, dtype = fn(x, packed), np.int32
    else:
        y = fn(x, packed, bias=_util.bias_in_layout(data.bias, case["layout"]), activation=case["activation"])
        dtype = np.float32
    return _util.out_as_2d(y, case["layout"], case["M"], case["N"], dtype).copy()


@functools.lru_cache(maxsize=1)
def _reference(index: int):
    """Data, packed weight and the reference level's outputs of case ``index`` (cached: the items of
    one case run back to back, one per level)."""
    c = CASES[index]
    data = _util.make_case_data([SEED, index], c["M"], c["N"], c["K"], c["density"], c["bias"])
    packed = sparsecpu.pack(data.w, dtype=c["dtype"], format="bsr")
    with testing.isa("reference") as got:
        assert got == "reference"
        assert sparsecpu.info()["kernels"]["spmm_s8"].endswith("__ref")
        y = _run(sparsecpu.linear, c, data, packed)
        s32 = _run(testing.spmm_s32, c, data, packed) if c["dtype"] == "int8" else None
    return data, packed, y, s32


# Tolerances, in units of float32 eps times the size of the terms (measured worst cases are below
# a quarter of these).
def _fp32_scale(c, data, packed):
    _, _, absprod = _util.fp32_expected(data.x, packed.to_dense(), None, None)
    mag = absprod + (0.0 if data.bias is None else np.abs(data.bias.astype(np.float64))[None, :])
    return E * np.sqrt(max(c["K"], 1)) * mag


def _check_reference_against_numpy(c, data, packed, y, s32):
    act = c["activation"]
    if c["dtype"] == "fp32":
        pre, expected, _ = _util.fp32_expected(data.x, packed.to_dense(), data.bias, act)
        _util.assert_within(y, expected, 6 * _fp32_scale(c, data, packed) + 1e-30, "reference vs float64 numpy")
    else:
        ex = _util.int8_expected(data.x, data.w, data.bias, act)
        assert s32.dtype == np.int32
        np.testing.assert_array_equal(s32.astype(np.int64), ex.acc, err_msg="spmm_s32 vs numpy int64 q @ wq.T")
        # The dequantized weight the kernels use is the mirror's wq * scale.
        np.testing.assert_array_equal(packed.to_dense(), (ex.wq * ex.w_scale[:, None]).astype(np.float32))
        pre = ex.pre
        _util.assert_within(y, ex.y, 4 * E * ex.mag + 1e-30, "reference vs numpy int8 mirror")
    _util.assert_informative(pre, y, act, case_id(c))


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("index", range(len(CASES)), ids=[case_id(c) for c in CASES])
def test_linear_every_level(index, level):
    c = CASES[index]
    data, packed, y_ref, s32_ref = _reference(index)
    if level == "reference":
        # The data is what the case says it is.
        assert packed.shape == (c["N"], c["K"]) and packed.dtype == c["dtype"]
        assert packed.kept_blocks == int(data.mask.sum())
        if 0 < c["density"] < 1:
            if data.mask.shape[0] >= 2:
                assert (~data.mask.any(axis=1)).any(), "no empty group"
            if c["K"] >= 2:
                assert (~data.mask.any(axis=0)).any(), "no unused input column"
        _check_reference_against_numpy(c, data, packed, y_ref, s32_ref)
        return
    with testing.isa(level) as got:
        assert got == level and sparsecpu.info()["isa"] == level.partition(":")[0]
        y = _run(sparsecpu.linear, c, data, packed)
        s32 = _run(testing.spmm_s32, c, data, packed) if c["dtype"] == "int8" else None
    if c["dtype"] == "int8":
        np.testing.assert_array_equal(s32, s32_ref, err_msg=f"spmm_s32 at {level} vs reference")
        ex = _util.int8_expected(data.x, data.w, data.bias, c["activation"])
        tol = 8 * E * ex.mag + 1e-30
    else:
        tol = 8 * _fp32_scale(c, data, packed) + 1e-30
    _util.assert_within(y, y_ref, tol, f"{level} vs reference")


# ---------------------------------------------------------------------------------------------
# Shapes outside the pairwise list.


def _levels_outputs(x, packed, bias=None, activation=None):
    """{level: (y, s32 or None)} for every supported level."""
    out = {}
    for level in LEVELS:
        with testing.isa(level):
            y = sparsecpu.linear(x, packed, bias=bias, activation=activation)
            s32 = testing.spmm_s32(x, packed) if packed.dtype == "int8" else None
        out[level] = (y, s32)
    return out


def _check_all_levels_vs_numpy(x, w, packed, bias, activation, fp32_factor=8):
    """Every level vs numpy directly: s32 exact, float output within tolerance."""
    k = x.shape[1]
    outs = _levels_outputs(x, packed, bias, activation)
    if packed.dtype == "int8":
        ex = _util.int8_expected(x, w, bias, activation)
        pre, expected, tol = ex.pre, ex.y, 8 * E * ex.mag + 1e-30
    else:
        pre, expected, absprod = _util.fp32_expected(x, packed.to_dense(), bias, activation)
        mag = absprod + (0.0 if bias is None else np.abs(bias.astype(np.float64))[None, :])
        tol = fp32_factor * E * np.sqrt(max(k, 1)) * mag + 1e-30
    _util.assert_informative(pre, outs["reference"][0], activation)
    for level, (y, s32) in outs.items():
        if s32 is not None:
            np.testing.assert_array_equal(s32.astype(np.int64), ex.acc, err_msg=f"spmm_s32 at {level}")
        _util.assert_within(y, expected, tol, f"{level} vs numpy")
    return outs


@pytest.mark.parametrize("dtype", ["int8", "fp32"])
@pytest.mark.parametrize("n", [1, 2, 3, 5, 6, 7, 13, 770])
def test_n_not_multiple_of_4(n, dtype):
    rng = np.random.default_rng([SEED, 1, n])
    w, _ = _util.pruned_weight(rng, n, 37, 0.5, holes=False)
    x = rng.standard_normal((70, 37)).astype(np.float32)
    bias = (rng.standard_normal(n) + 0.5).astype(np.float32)
    packed = sparsecpu.pack(w, dtype=dtype, format="bsr")
    assert packed.shape == (n, 37)
    outs = _check_all_levels_vs_numpy(x, w, packed, bias, "gelu")
    assert outs["reference"][0].shape == (70, n)


@pytest.mark.parametrize("blocks", [[1], [4, 4, 4, 4], [5, 3, 9, 2, 0, 6], [41, 1, 0, 7, 13]], ids=str)
def test_activation_prefetch_near_the_end_of_the_column_list(blocks):
    """From K = 2048 up (int8; 512 for fp32) the M > 8 kernels prefetch the activation rows of the
    block 16 ahead, only while that block is inside the weight's column list: groups of a few
    blocks each put that limit inside, at the start of, or before every group (and a weight of
    fewer than 16 blocks never prefetches)."""
    k = 2304
    rng = np.random.default_rng([SEED, 9, len(blocks), sum(blocks)])
    w = np.zeros((4 * len(blocks), k), np.float32)
    for g, count in enumerate(blocks):
        cols = rng.choice(k, size=count, replace=False)
        w[4 * g:4 * g + 4, cols] = rng.standard_normal((4, count))
    x = rng.standard_normal((40, k)).astype(np.float32)
    bias = (rng.standard_normal(w.shape[0]) + 1.0).astype(np.float32)
    for dtype in ("int8", "fp32"):
        packed = sparsecpu.pack(w, dtype=dtype, format="bsr")
        _check_all_levels_vs_numpy(x, w, packed, bias, None)


def _edge_rows(k: int, rng) -> np.ndarray:
    """Rows that stress the per-row u8 quantization (zero point 0 and 255, exact zeros, constant
    rows, denormal and very large ranges, round-half cases)."""
    half = np.float32(1.0) * (np.arange(k) % 2 * 2 - 1)  # +-1 alternating: zero point 127.5 -> 128
    rows = [
        np.zeros(k),
        np.full(k, 3.0),                               # all positive, constant: q = 255
        np.full(k, -2.0),                              # all negative: zero point 255, q = 0
        np.where(np.arange(k) == k // 2, 5.0, 0.0),    # one nonzero
        half,
        np.abs(rng.standard_normal(k)),                # zero point 0
        -np.abs(rng.standard_normal(k)),               # zero point 255
        rng.standard_normal(k) * 1e-36,                # range below 1e-30: scale 1, q = zero point
        rng.standard_normal(k) * 1e30,                 # large, output still finite
        (np.arange(k) - k / 3.0) * 0.5,                # ramp
        rng.standard_normal(k) + 4.0,
    ]
    x = np.stack(rows).astype(np.float32)
    extra = rng.standard_normal((70 - len(rows), k)).astype(np.float32)
    return np.concatenate([x, extra])


@pytest.mark.parametrize("k", [5, 64, 100])
def test_int8_quantization_edge_rows(k):
    rng = np.random.default_rng([SEED, 2, k])
    w, _ = _util.pruned_weight(rng, 20, k, 0.6, holes=False)
    x = _edge_rows(k, rng)
    packed = sparsecpu.pack(w, dtype="int8", format="bsr")
    bias = (rng.standard_normal(20) + 0.5).astype(np.float32)
    _check_all_levels_vs_numpy(x, w, packed, bias, None)


def test_int8_extreme_magnitudes_s32():
    """Rows spanning nearly the whole float range: the output overflows, the accumulators must not
    differ between levels or from the mirror."""
    rng = np.random.default_rng([SEED, 3])
    k = 48
    w, _ = _util.pruned_weight(rng, 8, k, 1.0)
    x = rng.standard_normal((5, k)).astype(np.float32)
    x[0] *= np.float32(1e38)
    x[1] = np.float32(3.4e38)
    x[1, ::3] = np.float32(-3.4e38)
    x[2] = np.finfo(np.float32).tiny
    x[3, 7] = np.float32(3e38)
    packed = sparsecpu.pack(w, dtype="int8", format="bsr")
    with np.errstate(over="ignore"):  # the float outputs overflow; only the accumulators matter
        ex = _util.int8_expected(x, w, None, None)
    for level in LEVELS:
        with testing.isa(level):
            s32 = testing.spmm_s32(x, packed)
        np.testing.assert_array_equal(s32.astype(np.int64), ex.acc, err_msg=level)
    assert np.count_nonzero(ex.acc) > ex.acc.size // 2


def _random_shapes(count=40, seed=SEED + 8):
    """Seeded odd shapes around the kernels' tile edges (rows: 16/32/64-row tiles and 64-row units;
    channels: 4-channel groups staged 16 channels at a time), plus one tall batch."""
    rng = np.random.default_rng(seed)
    edges_m = [2, 31, 32, 33, 48, 63, 65, 96, 127, 128, 191, 193, 256, 300]
    out = []
    for i in range(count):
        m = int(rng.choice(edges_m)) if i % 2 else int(rng.integers(1, 300))
        n = int(rng.integers(1, 100)) if i % 3 else int(rng.choice([8, 24, 40, 56, 72]))
        k = int(rng.integers(1, 300))
        out.append(dict(
            M=m, N=n, K=k, density=float(rng.choice([0.05, 0.3, 0.7, 1.0])),
            dtype=["int8", "fp32"][i % 2], activation=[None, "relu", "gelu", "gelu_tanh"][(i // 2) % 4],
        ))
    out.append(dict(M=5000, N=24, K=40, density=0.5, dtype="int8", activation="relu"))
    out.append(dict(M=5000, N=24, K=40, density=0.5, dtype="fp32", activation="gelu"))
    return out


RANDOM_SHAPES = _random_shapes()


@pytest.mark.parametrize(
    "index", range(len(RANDOM_SHAPES)),
    ids=[f"{c['dtype']}-M{c['M']}-N{c['N']}-K{c['K']}-d{c['density']:g}-{c['activation'] or 'noact'}" for c in RANDOM_SHAPES],
)
def test_random_shapes_every_level(index):
    c = RANDOM_SHAPES[index]
    rng = np.random.default_rng([SEED, 9, index])
    w, _ = _util.pruned_weight(rng, c["N"], c["K"], c["density"])
    x = rng.standard_normal((c["M"], c["K"])).astype(np.float32)
    bias = (rng.standard_normal(c["N"]) + 0.5).astype(np.float32)
    packed = sparsecpu.pack(w, dtype=c["dtype"], format="bsr")
    _check_all_levels_vs_numpy(x, w, packed, bias, c["activation"])


# ---------------------------------------------------------------------------------------------
# Large K: int32 accumulation at the format's limit, wide column indices.

K_MAX_INT8 = 65535


def test_int8_largest_k_s32_does_not_overflow():
    """K = 65535 with q = 255 and weights +-127 everywhere: |acc| = 255 * 127 * 65535 = 2122350975,
    within 0.02% of INT32_MAX; every level must return it exactly."""
    k = K_MAX_INT8
    rng = np.random.default_rng([SEED, 4])
    w = np.empty((8, k), np.float32)
    w[0] = 1.0                                   # wq = +127 everywhere
    w[1] = -0.5                                  # wq = -127 everywhere
    w[2] = np.where(np.arange(k) % 2, 2.0, -2.0)  # alternating +-127
    w[3] = rng.standard_normal(k)                # max |w| quantizes to +-127
    w[4:] = np.where(rng.random((4, k)) < 0.5, 0.75, -0.75)
    w[4:, :100] = 0.0                            # some unused columns in group 1
    x = np.empty((4, k), np.float32)
    x[0] = 1.5        # all positive: zero point 0, q = 255
    x[1] = -1.5       # all negative: zero point 255, q = 0
    x[2] = np.where(np.arange(k) % 3 == 0, -1.0, 2.0)
    x[3] = rng.standard_normal(k)
    packed = sparsecpu.pack(w, dtype="int8", format="bsr")
    ex = _util.int8_expected(x, w, None, None)
    q, zp = ex.q, ex.zp
    assert (q[0] == 255).all() and zp[0] == 0 and (q[1] == 0).all() and zp[1] == 255
    assert (np.abs(ex.wq[:2]) == 127).all()
    full = 255 * 127 * k
    assert ex.acc[0, 0] == full and ex.acc[0, 1] == -full
    assert full > 2**31 - 2**26  # really near the int32 limit
    bias = np.linspace(-1, 1, 8, dtype=np.float32)
    outs = _check_all_levels_vs_numpy(x, w, packed, bias, None)
    for level, (y, s32) in outs.items():
        assert s32[0, 0] == full and s32[0, 1] == -full, level
        # The all-positive row: sum of 1.5 * w over K, through the int8 path.
        np.testing.assert_allclose(y[0, 0], 1.5 * k - 1.0, rtol=1e-5, err_msg=level)
        np.testing.assert_allclose(y[0, 1], -0.75 * k - 1.0 + 2.0 / 7, rtol=1e-5, err_msg=level)


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh"])
@pytest.mark.parametrize("m", [3, 40])
def test_gelu_far_from_zero(activation, m):
    """Pre-activations far out on both sides (|v| up to 60): where exp underflows and erf or tanh is
    +-1 in float32. Results stay finite and accurate (the epilogue clamps before exp, so nothing
    goes through denormals or 0 * inf)."""
    n = 64
    w = np.zeros((n, 4), np.float32)
    w[:, 0] = 1.0  # v[m, c] = x[m, 0] + bias[c], exact in float32
    rows = np.linspace(-30.0, 30.0, m, dtype=np.float32)
    x = np.zeros((m, 4), np.float32)
    x[:, 0] = rows
    bias = np.linspace(-30.0, 30.0, n, dtype=np.float32)
    v = rows.astype(np.float64)[:, None] + bias.astype(np.float64)[None, :]
    expected = _util.activation_f64(v, activation)
    packed = sparsecpu.pack(w, dtype="fp32")
    for level, (y, _) in _levels_outputs(x, packed, bias, activation).items():
        assert np.isfinite(y).all(), level
        np.testing.assert_allclose(y, expected, rtol=2e-6, atol=1e-6, err_msg=level)


def test_gelu_accuracy_over_the_whole_range():
    """The erf GELU against float64 on a fine sweep of [-12, 12] (the A&S erfc error, <= ~4.1e-7
    absolute at |v| ~ 3-4, where torch's own float32 GELU is off by ~3.7e-7) and at huge |v|:
    gelu(1e30) = 1e30, gelu(-1e30) ~ 0 (the clamps hold h normal without letting x h grow)."""
    k = 64
    sweep = np.linspace(-12.0, 12.0, 64 * 96, dtype=np.float32)
    extremes = np.array([-1e30, 1e30, -100.0, 100.0, -20.5, 20.5, -11.7, 11.7, 0.0, -0.0], np.float32)
    v = np.concatenate([sweep, extremes, np.zeros(-(sweep.size + extremes.size) % k, np.float32)])
    x = v.reshape(-1, k)
    packed = sparsecpu.pack(np.eye(k, dtype=np.float32), dtype="fp32")
    expected = _util.activation_f64(x, "gelu")
    for level, (y, _) in _levels_outputs(x, packed, None, "gelu").items():
        assert np.isfinite(y).all(), level
        np.testing.assert_allclose(y, expected, rtol=1e-6, atol=4.5e-7, err_msg=level)


def test_int8_k_over_limit_rejected():
    with pytest.raises(ValueError, match="65535"):
        sparsecpu.pack(np.ones((4, K_MAX_INT8 + 1), np.float32), dtype="int8")
    sparsecpu.pack(np.ones((4, K_MAX_INT8 + 1), np.float32), dtype="fp32")  # fp32 has no such limit


@pytest.mark.parametrize("k, index_bytes", [(65536, 2), (65537, 4)])
def test_fp32_column_index_width(k, index_bytes):
    """Column indices switch from u16 to u32 above K = 65536; both paths of every kernel."""
    rng = np.random.default_rng([SEED, 5, k])
    w, mask = _util.pruned_weight(rng, 8, k, 0.01)
    mask[:, k - 1] = True  # the last column, the widest index
    w[:, k - 1] = rng.standard_normal(8)
    packed = sparsecpu.pack(w, dtype="fp32", format="bsr")
    assert _util.Buffer.of(packed.to_bytes()).header["index_bytes"] == index_bytes
    assert packed.to_dense()[:, k - 1].tolist() == w[:, k - 1].tolist()
    x = rng.standard_normal((3, k)).astype(np.float32)
    _check_all_levels_vs_numpy(x, w, packed, (rng.standard_normal(8) + 0.5).astype(np.float32), "relu")


# ---------------------------------------------------------------------------------------------
# Threads: splitting work must not change a single bit.


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("kind", ["int8", "fp32", "dense"])
@pytest.mark.parametrize(
    "m", [1, 5, 128, 129], ids=["M1-by-channels", "M5-by-channels", "M128-by-rows", "M129-by-channels"]
)
def test_threads_bitwise_identical(m, kind, level, num_threads):
    """int8 / fp32: block-sparse (M <= 8: the skinny kernel for int8); dense: the dense int8 GEMM."""
    rng = np.random.default_rng([SEED, 6, m])
    n, k = 772, 768
    w, _ = _util.pruned_weight(rng, n, k, 0.1)
    x = rng.standard_normal((m, k)).astype(np.float32)
    bias = (rng.standard_normal(n) + 0.5).astype(np.float32)
    dtype = "fp32" if kind == "fp32" else "int8"
    packed = sparsecpu.pack(w, dtype=dtype, format="dense" if kind == "dense" else "bsr")
    results = {}
    with testing.isa(level):
        for threads in (1, 2, 3):
            num_threads(threads)
            for run in range(2):
                results[(threads, run)] = sparsecpu.linear(x, packed, bias=bias, activation="gelu")
                if dtype == "int8":
                    results[(threads, run, "s32")] = testing.spmm_s32(x, packed)
    base = results[(1, 0)]
    _util.assert_informative(base, base, "gelu")
    # ... and is right, not just stable.
    if dtype == "int8":
        ex = _util.int8_expected(x, w, bias, "gelu")
        np.testing.assert_array_equal(results[(1, 0, "s32")].astype(np.int64), ex.acc)
        _util.assert_within(base, ex.y, 8 * E * ex.mag + 1e-30, "vs numpy mirror")
    else:
        _, expected, absprod = _util.fp32_expected(x, packed.to_dense(), bias, "gelu")
        _util.assert_within(base, expected, 8 * E * np.sqrt(k) * (absprod + np.abs(bias)), "vs numpy")
    for key, y in results.items():
        other = results[(1, 0, "s32")] if "s32" in key else base
        assert y.tobytes() == other.tobytes(), f"threads={key[0]} run={key[1]} differs from 1 thread"


def test_concurrent_calls_from_python_threads():
    """linear() releases the GIL; concurrent callers must each get their own correct result."""
    rng = np.random.default_rng([SEED, 7])
    w, _ = _util.pruned_weight(rng, 772, 768, 0.1)
    packed = {dt: sparsecpu.pack(w, dtype=dt, format="bsr") for dt in ("int8", "fp32")}
    xs = [rng.standard_normal((m, 768)).astype(np.float32) for m in (1, 17, 128, 129)]
    expected = {(dt, i): sparsecpu.linear(x, packed[dt]) for dt in packed for i, x in enumerate(xs)}
    failures = []

    def worker(seed):
        r = np.random.default_rng(seed)
        try:
            for _ in range(30):
                dt = ("int8", "fp32")[r.integers(2)]
                i = int(r.integers(len(xs)))
                if not np.array_equal(sparsecpu.linear(xs[i], packed[dt]), expected[(dt, i)]):
                    failures.append((dt, i))
        except Exception as e:  # pragma: no cover - reported below
            failures.append(repr(e))

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
