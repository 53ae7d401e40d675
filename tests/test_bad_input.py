"""Inputs linear() and pack() must reject (with ValueError/TypeError, never a crash), and unusual
but valid inputs they must handle: empty batches, K = 0, any strides, leading dims."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import _util
import sparsecpu
from sparsecpu import testing

DTYPES = ["int8", "fp32"]
LEVELS = testing.levels()
N, K = 12, 37


@pytest.fixture(scope="module", params=DTYPES)
def packed(request):
    rng = np.random.default_rng(21)
    w, _ = _util.pruned_weight(rng, N, K, 0.5)
    return sparsecpu.pack(w, dtype=request.param)


def _x(m=5, k=K, seed=22):
    return np.random.default_rng(seed).standard_normal((m, k)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# linear(): rejected inputs.


@pytest.mark.parametrize(
    "x",
    [
        pytest.param(np.zeros((3, K + 1), np.float32), id="np-last-dim-too-big"),
        pytest.param(np.zeros((3, K - 1), np.float32), id="np-last-dim-too-small"),
        pytest.param(np.zeros((K, 3), np.float32), id="np-transposed-shape"),
        pytest.param(np.zeros((), np.float32), id="np-0d"),
        pytest.param(torch.zeros(3, K + 1), id="torch-last-dim"),
        pytest.param(torch.zeros(2, 3, 4), id="torch-3d-wrong-k"),
    ],
)
def test_wrong_last_dim(packed, x):
    with pytest.raises(ValueError, match=str(K)):
        sparsecpu.linear(x, packed)


@pytest.mark.parametrize(
    "x",
    [
        pytest.param(np.zeros((3, K), np.float64), id="np-float64"),
        pytest.param(np.zeros((3, K), np.float16), id="np-float16"),
        pytest.param(np.zeros((3, K), np.int32), id="np-int32"),
        pytest.param(np.zeros((3, K), np.uint8), id="np-uint8"),
        pytest.param(np.zeros((3, K), np.bool_), id="np-bool"),
        pytest.param(np.zeros((3, K), ">f4"), id="np-big-endian-float32"),
        pytest.param(torch.zeros(3, K, dtype=torch.float64), id="torch-float64"),
        pytest.param(torch.zeros(3, K, dtype=torch.bfloat16), id="torch-bfloat16"),
        pytest.param(torch.zeros(3, K, dtype=torch.int64), id="torch-int64"),
        pytest.param(torch.zeros(3, K, dtype=torch.int8), id="torch-int8"),
        pytest.param(torch.zeros(3, K, dtype=torch.complex64), id="torch-complex64"),
        pytest.param([[0.0] * K] * 3, id="list"),
        pytest.param(None, id="none"),
        pytest.param(3.0, id="scalar"),
    ],
)
def test_wrong_dtype_or_kind(packed, x):
    with pytest.raises(TypeError):
        sparsecpu.linear(x, packed)


def test_non_cpu_tensor(packed):
    x = torch.empty(2, K, device="meta")
    with pytest.raises((ValueError, TypeError), match="meta|CPU|cpu"):
        sparsecpu.linear(x, packed)
    with pytest.raises((ValueError, TypeError)):
        sparsecpu.linear(torch.empty(2, 4, device="meta"), packed)


def test_sparse_tensor(packed):
    with pytest.raises((ValueError, TypeError)):
        sparsecpu.linear(torch.zeros(3, K).to_sparse(), packed)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize(
    "value, where",
    [
        (np.nan, (0, 0)),                  # first element
        (np.inf, (4, K - 1)),              # last element, in the scalar tail of a row
        (-np.inf, (2, 16)),                # inside the vectorized part
        (np.inf, (13, 33)),                # in the 4-wide remainder (fp32 transpose: K % 8)
        (np.nan, (69, 5)),                 # second 64-row unit
    ],
    ids=["nan-first", "inf-last", "neg-inf-middle", "inf-remainder", "nan-row-69"],
)
def test_non_finite_x(packed, level, value, where):
    x = _x(70)
    x[where] = value
    with testing.isa(level):
        with pytest.raises(ValueError, match="NaN or Inf"):
            sparsecpu.linear(x, packed)
        with pytest.raises(ValueError, match="NaN or Inf"):
            sparsecpu.linear(torch.from_numpy(x), packed, bias=torch.ones(N))
        # The failure leaves nothing behind: the next call is right.
        x[where] = 0.0
        y = sparsecpu.linear(x, packed)
    if packed.dtype == "fp32":
        ref = x.astype(np.float64) @ packed.to_dense().T.astype(np.float64)
        np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    else:
        ex = _util.int8_expected(x, _dense_source(packed), None, None)
        _util.assert_within(y, ex.y, 8 * _util.EPS32 * ex.mag + 1e-30, "after a NaN error")


def _dense_source(packed):
    # Re-quantizing to_dense() = wq * s gives wq back (the scale up to an ulp, within tolerance).
    return packed.to_dense()


@pytest.mark.parametrize(
    "bias, exc",
    [
        pytest.param(np.zeros(N + 1, np.float32), ValueError, id="too-long"),
        pytest.param(np.zeros(N - 1, np.float32), ValueError, id="too-short"),
        pytest.param(np.zeros((1, N), np.float32), ValueError, id="2d"),
        pytest.param(np.zeros((), np.float32), ValueError, id="0d"),
        pytest.param(np.zeros(N, np.float64), TypeError, id="float64"),
        pytest.param(np.zeros(N, np.int32), TypeError, id="int32"),
        pytest.param(torch.zeros(N, dtype=torch.float64), TypeError, id="torch-float64"),
        pytest.param(torch.zeros(N + 1), ValueError, id="torch-too-long"),
        pytest.param(torch.empty(N, device="meta"), ValueError, id="torch-meta"),
        pytest.param([0.0] * N, TypeError, id="list"),
    ],
)
def test_bad_bias(packed, bias, exc):
    with pytest.raises(exc):
        sparsecpu.linear(_x(), packed, bias=bias)


@pytest.mark.parametrize("activation", ["tanh", "GELU", "Relu", "", "sigmoid", 1])
def test_unknown_activation(packed, activation):
    with pytest.raises(ValueError, match="activation"):
        sparsecpu.linear(_x(), packed, activation=activation)


@pytest.mark.parametrize(
    "bad",
    [None, "packed", b"SPCPUPW\0", np.zeros(512, np.uint8), {"n": N}],
    ids=["none", "str", "bytes", "uint8-array", "dict"],
)
def test_packed_of_wrong_type(bad):
    with pytest.raises(TypeError, match="PackedWeight"):
        sparsecpu.linear(_x(), bad)


def test_packed_from_bytes_is_accepted(packed):
    x = _x()
    y = sparsecpu.linear(x, sparsecpu.PackedWeight(packed.to_bytes()))
    assert y.tobytes() == sparsecpu.linear(x, packed).tobytes()


def test_requires_grad(packed):
    x = torch.from_numpy(_x()).requires_grad_()
    with pytest.raises(ValueError, match="grad"):
        sparsecpu.linear(x, packed)
    with pytest.raises(ValueError, match="grad"):
        sparsecpu.linear(x * 2, packed)  # a non-leaf tensor in a graph
    expected = sparsecpu.linear(x.detach(), packed)
    with torch.no_grad():
        y = sparsecpu.linear(x, packed)
    assert not y.requires_grad and torch.equal(y, expected)
    with torch.inference_mode():
        assert torch.equal(sparsecpu.linear(x, packed), expected)
    assert torch.count_nonzero(expected) > expected.numel() // 2


@pytest.mark.parametrize(
    "x_shape,out_shape",
    [((5, K), (5, N + 1)), ((5, K), (4, N)), ((2, 3, K), (6, N)), ((2, 3, K), (3, 2, N)), ((K,), (1, N)),
     ((5, K - 1), (5, N)), ((), (N,))],
)
def test_binding_checks_shapes(packed, x_shape, out_shape):
    """The extension's own entry point checks x [..., K] against out [..., N] (same leading dims)
    itself: it writes M x N floats to out."""
    from sparsecpu import _C

    x, out = np.zeros(x_shape, np.float32), np.zeros(out_shape, np.float32)
    with pytest.raises(ValueError, match="shape"):
        _C.linear(x, packed.buffer, None, None, out, False)


def test_spmm_s32_needs_int8():
    p = sparsecpu.pack(np.ones((4, 4), np.float32), dtype="fp32")
    with pytest.raises(ValueError, match="int8"):
        testing.spmm_s32(np.ones((1, 4), np.float32), p)


# ---------------------------------------------------------------------------------------------
# linear(): unusual but valid inputs.


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize(
    "shape", [(0, K), (2, 0, K), (0, 3, K)], ids=["M0", "lead-2x0", "lead-0x3"]
)
def test_empty_batch(packed, shape, level):
    with testing.isa(level):
        y = sparsecpu.linear(np.zeros(shape, np.float32), packed, bias=np.ones(N, np.float32), activation="relu")
        assert isinstance(y, np.ndarray) and y.shape == shape[:-1] + (N,) and y.dtype == np.float32
        t = sparsecpu.linear(torch.zeros(shape), packed)
        assert isinstance(t, torch.Tensor) and tuple(t.shape) == shape[:-1] + (N,) and t.dtype == torch.float32
        if packed.dtype == "int8":
            s = testing.spmm_s32(np.zeros(shape, np.float32), packed)
            assert s.shape == shape[:-1] + (N,) and s.dtype == np.int32


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_k_zero(dtype, level):
    """K = 0: the product is empty, so the output is activation(bias), or zeros."""
    n = 6
    p = sparsecpu.pack(np.zeros((n, 0), np.float32), dtype=dtype)
    assert p.shape == (n, 0)
    b = np.linspace(-2, 3, n, dtype=np.float32)
    with testing.isa(level):
        y = sparsecpu.linear(np.zeros((3, 0), np.float32), p, bias=b, activation="gelu")
        assert y.shape == (3, n)
        np.testing.assert_allclose(y, _util.activation_f64(np.tile(b, (3, 1)), "gelu"), rtol=1e-5, atol=1e-6)
        y = sparsecpu.linear(np.zeros((3, 0), np.float32), p)
        assert y.shape == (3, n) and (y == 0).all()
        t = sparsecpu.linear(torch.zeros(2, 3, 0), p, bias=torch.from_numpy(b))
        assert tuple(t.shape) == (2, 3, n) and (t.numpy() == b).all()
        assert sparsecpu.linear(np.zeros((0, 0), np.float32), p).shape == (0, n)
        if dtype == "int8":
            assert (testing.spmm_s32(np.zeros((3, 0), np.float32), p) == 0).all()


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_n_zero(dtype, level):
    p = sparsecpu.pack(np.zeros((0, 5), np.float32), dtype=dtype)
    with testing.isa(level):
        y = sparsecpu.linear(np.ones((130, 5), np.float32), p, bias=np.zeros(0, np.float32), activation="relu")
    assert y.shape == (130, 0) and y.dtype == np.float32


def _noncontiguous_variants(x: np.ndarray):
    """Views with the values of x (M x K) but other strides."""
    m, k = x.shape
    wide = np.zeros((m, 3 * k), np.float32)
    wide[:, ::3] = x
    tall = np.zeros((2 * m, k), np.float32)
    tall[::2] = x
    xt = np.ascontiguousarray(x.T)
    return {
        "np-column-stride": wide[:, ::3],
        "np-row-stride": tall[::2],
        "np-transposed": xt.T,
        "np-fortran": np.asfortranarray(x),
        "np-reversed": np.ascontiguousarray(x[::-1])[::-1],
        "np-read-only": _read_only(x.copy()),
        "torch-transposed": torch.from_numpy(xt).T,
        "torch-row-stride": torch.from_numpy(tall)[::2],
        "torch-column-slice": torch.from_numpy(wide)[:, ::3],
        "torch-expanded-batch": torch.from_numpy(x).unsqueeze(0).expand(2, m, k),
    }


def _read_only(a):
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("level", LEVELS)
def test_non_contiguous_x(packed, level):
    x = _x(19)
    bias = np.random.default_rng(23).standard_normal(N).astype(np.float32)
    with testing.isa(level):
        expected = sparsecpu.linear(x, packed, bias=bias, activation="gelu_tanh")
        _util.assert_informative(expected, expected, "gelu_tanh")
        for name, xv in _noncontiguous_variants(x).items():
            y = sparsecpu.linear(xv, packed, bias=bias, activation="gelu_tanh")
            if isinstance(xv, torch.Tensor):
                assert isinstance(y, torch.Tensor), name
                y = y.numpy()
            assert y.shape == tuple(xv.shape[:-1]) + (N,), name
            assert (y == expected).all(), name  # same values, same kernel: bitwise equal
        # A broadcast row (stride 0) and a strided bias.
        row = np.broadcast_to(x[3], (4, K))
        assert (sparsecpu.linear(row, packed) == sparsecpu.linear(np.tile(x[3], (4, 1)), packed)).all()
        bias_strided = np.repeat(bias, 2)[::2]
        assert (sparsecpu.linear(x, packed, bias=bias_strided, activation="gelu_tanh") == expected).all()


def test_leading_dims_and_1d(packed):
    x = _x(24)
    flat = sparsecpu.linear(x, packed)
    y = sparsecpu.linear(x.reshape(2, 3, 4, K), packed)
    assert y.shape == (2, 3, 4, N) and (y.reshape(24, N) == flat).all()
    v = sparsecpu.linear(x[5], packed)
    t = sparsecpu.linear(torch.from_numpy(x[5]), packed)
    assert v.shape == (N,) and tuple(t.shape) == (N,) and (t.numpy() == v).all()
    if packed.dtype == "int8":
        assert (v == flat[5]).all()  # exact s32 in both kernels, same epilogue
    else:
        # One row takes the skinny kernel, 24 the SpMM tile: fp32 sums in another order.
        np.testing.assert_allclose(v, flat[5], rtol=1e-5, atol=1e-5 * np.abs(flat).max())


def test_output_is_fresh_and_writable(packed):
    x = _x()
    y1 = sparsecpu.linear(x, packed)
    y2 = sparsecpu.linear(x, packed)
    assert y1.flags.writeable and not np.shares_memory(y1, y2) and not np.shares_memory(y1, x)
    y1[:] = 0
    assert (y2 == sparsecpu.linear(x, packed)).all()
    t = sparsecpu.linear(torch.from_numpy(x), packed)
    t.add_(1.0)  # a normal, writable tensor


# ---------------------------------------------------------------------------------------------
# pack(): rejected inputs.


@pytest.mark.parametrize(
    "weight, kwargs, exc, match",
    [
        pytest.param(np.ones(8, np.float32), {}, ValueError, "2-D", id="1d"),
        pytest.param(np.ones((4, 4, 4), np.float32), {}, ValueError, "2-D", id="3d"),
        pytest.param(np.ones((), np.float32), {}, ValueError, "2-D", id="0d"),
        pytest.param(torch.ones(2, 4, 4), {}, ValueError, "2-D", id="torch-3d"),
        pytest.param(np.full((4, 4), np.nan, np.float32), {}, ValueError, "NaN", id="nan"),
        pytest.param(np.where(np.eye(8) > 0, np.nan, 1).astype(np.float32), {"dtype": "fp32"}, ValueError, "NaN", id="nan-fp32"),
        pytest.param(np.full((4, 4), np.inf, np.float32), {"dtype": "fp32"}, ValueError, "Inf", id="inf-fp32"),
        pytest.param(np.array([[1, -np.inf]] * 4, np.float32), {}, ValueError, "Inf", id="neg-inf-int8"),
        pytest.param(np.ones((4, 4), np.float32), {"dtype": "int4"}, ValueError, "dtype", id="dtype-int4"),
        pytest.param(np.ones((4, 4), np.float32), {"dtype": "float32"}, ValueError, "dtype", id="dtype-float32"),
        pytest.param(np.ones((4, 4), np.float32), {"dtype": "INT8"}, ValueError, "dtype", id="dtype-INT8"),
        pytest.param(np.ones((4, 4), np.float32), {"block": (1, 4)}, ValueError, "block", id="block-1x4"),
        pytest.param(np.ones((4, 4), np.float32), {"block": (8, 1)}, ValueError, "block", id="block-8x1"),
        pytest.param(np.ones((4, 4), np.float32), {"block": (4, 4)}, ValueError, "block", id="block-4x4"),
        pytest.param(np.ones((4, 4), np.float32), {"format": "csr"}, ValueError, "format", id="format-csr"),
        pytest.param(np.ones((4, 4), np.float32), {"format": "dense", "dtype": "fp32"}, ValueError, "format", id="format-dense-fp32"),
        pytest.param(np.ones((4, 4), np.float32), {"outlier_threshold": -1.0}, ValueError, "outlier_threshold", id="outliers-negative"),
        pytest.param(np.ones((4, 4), np.float32), {"outlier_threshold": float("nan")}, ValueError, "outlier_threshold", id="outliers-nan"),
        pytest.param(np.ones((4, 4), np.float32), {"outlier_threshold": 0.0}, ValueError, "outlier_threshold", id="outliers-zero"),
        pytest.param(np.ones((4, 4), np.float32), {"outlier_threshold": "6"}, TypeError, "outlier_threshold", id="outliers-str"),
        pytest.param(np.ones((4, 4), np.float32), {"outlier_threshold": 6.0, "dtype": "fp32"}, ValueError, "int8", id="outliers-fp32"),
        pytest.param(np.ones((4, 4), np.int32), {}, TypeError, "float32", id="int32-weight"),
        pytest.param(torch.ones(4, 4, dtype=torch.int64), {}, TypeError, "float32", id="torch-int64-weight"),
        pytest.param([[1.0] * 4] * 4, {}, TypeError, "ndarray", id="list-weight"),
        pytest.param(torch.empty(4, 4, device="meta"), {}, ValueError, "CPU", id="meta-weight"),
    ],
)
def test_pack_rejects(weight, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        sparsecpu.pack(weight, **kwargs)


def test_pack_block_as_list_is_fine():
    w = np.ones((4, 4), np.float32)
    assert sparsecpu.pack(w, block=[4, 1]) == sparsecpu.pack(w)
