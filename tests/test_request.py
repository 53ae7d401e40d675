"""One validated request per op (ops/linear.h LinearRequest, ops/attention.h AttentionRequest): each
fault of a linear or attention call fails the Python front door (the ``_C`` binding, and the public
API where the fault is reachable from it) and an ONNX Runtime session with the custom op with the
same error text, the session's after the node's name."""

from __future__ import annotations

import re
import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import _util
import sparsecpu
import sparsecpu.nn  # registers the torch ops
import sparsecpu.onnx
from sparsecpu import _C
from _onnx_util import make_model, save

F32 = np.float32
N, K, M = 12, 20, 3


@pytest.fixture(scope="module")
def packed():
    return sparsecpu.pack(_util.pruned_weight(np.random.default_rng(7), N, K, 0.4)[0], dtype="int8")


def _error(fn) -> str:
    """The text of the ValueError ``fn()`` raises."""
    with pytest.raises(ValueError) as info:
        fn()
    return str(info.value)


def _ort_error(node: str, fn) -> str:
    """The text after ``<node>: `` of the ONNX Runtime error ``fn()`` raises."""
    with pytest.raises(Exception) as info:
        fn()
    found = re.search(re.escape(node) + ": (.*)", str(info.value), re.S)
    assert found, str(info.value)
    return found.group(1).strip()


# ---------------------------------------------------------------------------------------------
# linear


def _linear_session(tmp_path, packed, attrs: dict, inputs: dict, constants: dict):
    """One SparseLinear node 'sl': X and the optional inputs named in ``inputs`` (bias, R, Scale, B)
    are graph inputs of unknown shape, fed at run; ``constants`` are initializers."""
    inits = [numpy_helper.from_array(np.frombuffer(packed.to_bytes(), np.uint8).copy(), "W")]
    names = ["X", "W", "", "", "", ""]
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)]
    for i, name in ((2, "bias"), (3, "R"), (4, "Scale"), (5, "B")):
        if name in inputs:
            graph_inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
            names[i] = name
        elif name in constants:
            inits.append(numpy_helper.from_array(constants[name], name))
            names[i] = name
    while not names[-1]:
        names.pop()
    node = helper.make_node("SparseLinear", names, ["Y"], name="sl", domain=sparsecpu.onnx.DOMAIN, N=N, K=K,
                            dtype=packed.dtype, format="bsr", **attrs)
    model = make_model([node], graph_inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits,
                       domains=[sparsecpu.onnx.DOMAIN])
    return save(model, tmp_path / "sl.onnx")


def _x(shape=(M, K)):
    return np.random.default_rng(8).standard_normal(shape).astype(F32)


# id, x, keyword arguments of _C.linear (bias, residual, norm, norm_weight, norm_bias, norm_eps, activation)
LINEAR_FAULTS = [
    ("x-last-dim", _x((M, K + 1)), {}),
    ("x-3d-last-dim", _x((2, M, K - 1)), {}),
    ("x-0d", np.zeros((), F32), {}),
    ("bias-length", _x(), {"bias": np.ones(N + 1, F32)}),
    ("bias-2d", _x(), {"bias": np.ones((1, N), F32)}),
    ("residual-shape", _x(), {"residual": np.ones((M, N - 1), F32)}),
    ("residual-broadcast", _x(), {"residual": np.ones((1, N), F32)}),
    ("residual-flat", _x(), {"residual": np.ones(M * N, F32)}),
    ("norm-weight-length", _x(), {"norm": True, "norm_weight": np.ones(N - 1, F32)}),
    ("norm-bias-length", _x(), {"norm": True, "norm_bias": np.ones(N + 4, F32)}),
    ("norm-weight-without-norm", _x(), {"norm_weight": np.ones(N, F32)}),
    ("norm-bias-without-norm", _x(), {"norm_bias": np.ones(N, F32)}),
    ("eps-negative", _x(), {"norm": True, "norm_eps": -1.0}),
    ("eps-nan", _x(), {"norm": True, "norm_eps": float("nan")}),
    ("eps-inf", _x(), {"norm": True, "norm_eps": float("inf")}),
    ("activation-unknown", _x(), {"activation": "swish"}),
    ("activation-case", _x(), {"activation": "GELU"}),
]


def _binding_linear(x, packed, activation="none", bias=None, residual=None, norm=False, norm_weight=None,
                    norm_bias=None, norm_eps=1e-5):
    out = np.empty((*x.shape[:-1], N), F32)
    _C.linear(x, packed.buffer, bias, activation, out, False, residual, norm, norm_weight, norm_bias, norm_eps)


def _ort_linear(tmp_path, x, packed, activation="none", bias=None, residual=None, norm=False, norm_weight=None,
                norm_bias=None, norm_eps=1e-5):
    """The fault through ONNX Runtime: attributes and the per-channel vectors as initializers fail
    session creation, inputs fed at run fail the run."""
    attrs = {"activation": activation, "norm": int(norm), "epsilon": norm_eps}
    feeds = {"X": x, "bias": bias, "R": residual, "Scale": norm_weight, "B": norm_bias}
    feeds = {k: v for k, v in feeds.items() if v is not None}
    path = _linear_session(tmp_path, packed, attrs, {k for k in feeds if k != "X"}, {})
    return lambda: sparsecpu.onnx.session(path).run(None, feeds)


@pytest.mark.parametrize("x, kwargs", [c[1:] for c in LINEAR_FAULTS], ids=[c[0] for c in LINEAR_FAULTS])
def test_linear_fault_reads_the_same_from_both_doors(packed, x, kwargs, tmp_path):
    want = _error(lambda: _binding_linear(x, packed, **kwargs))
    assert _ort_error("SparseLinear node 'sl'", _ort_linear(tmp_path, x, packed, **kwargs)) == want


@pytest.mark.parametrize("vector, value", [("bias", np.ones(N + 1, F32)), ("Scale", np.ones(N, F32)), ("B", np.ones(3, F32))])
def test_constant_vectors_fail_session_creation_with_the_binding_text(packed, vector, value, tmp_path):
    """A per-channel initializer is checked when ONNX Runtime creates the kernel (norm is off here:
    Scale and B are refused whatever their shape, bias for its length)."""
    path = _linear_session(tmp_path, packed, {}, set(), {vector: value})
    got = _ort_error("SparseLinear node 'sl'", lambda: sparsecpu.onnx.session(path))
    name = {"bias": "bias", "Scale": "norm_weight", "B": "norm_bias"}[vector]
    assert got == _error(lambda: _binding_linear(_x(), packed, **{name: value}))


def test_public_api_faults_read_as_the_binding(packed):
    """sparsecpu.linear and the torch ops reach the same checks (x's last dim in Python first, with
    the same text, since the output is allocated before C++ sees x)."""
    x = _x()
    for bad_x in (_x((M, K + 1)), np.zeros((), F32)):
        assert _error(lambda: sparsecpu.linear(bad_x, packed)) == _error(lambda: _binding_linear(bad_x, packed))
    bias = np.ones(N + 1, F32)
    assert _error(lambda: sparsecpu.linear(x, packed, bias=bias)) == _error(lambda: _binding_linear(x, packed, bias=bias))
    assert _error(lambda: sparsecpu.linear(x, packed, activation="swish")) == _error(
        lambda: _binding_linear(x, packed, activation="swish"))
    buf = torch.from_numpy(np.frombuffer(packed.to_bytes(), np.uint8).copy())
    op = torch.ops.sparsecpu.linear_residual_norm
    xt, r = torch.from_numpy(x), torch.zeros(M, N)
    cases = [
        ((xt, buf, None, N, "none", torch.zeros(M, N - 1), None, None, 1e-5),
         {"residual": np.zeros((M, N - 1), F32), "norm": True}),
        ((xt, buf, None, N, "none", r, torch.ones(N - 1), None, 1e-5),
         {"residual": np.zeros((M, N), F32), "norm": True, "norm_weight": np.ones(N - 1, F32)}),
        ((xt, buf, None, N, "none", r, None, None, -1.0), {"residual": np.zeros((M, N), F32), "norm": True, "norm_eps": -1.0}),
        ((xt, buf, None, N, "relu6", r, None, None, 1e-5), {"residual": np.zeros((M, N), F32), "norm": True, "activation": "relu6"}),
    ]
    for args, kwargs in cases:
        assert _error(lambda: op(*args)) == _error(lambda: _binding_linear(x, packed, **kwargs))


def test_activation_table_is_the_one_both_doors_take(packed, tmp_path):
    """Every name of _C.activations() runs in both doors with the same result; None means none."""
    names = _C.activations()
    assert names == ("none", "relu", "gelu", "gelu_tanh") and sparsecpu.ops.ACTIVATIONS == (None, *names)
    x = _x()
    for name in names:
        (y,) = sparsecpu.onnx.session(_linear_session(tmp_path, packed, {"activation": name}, set(), {})).run(None, {"X": x})
        np.testing.assert_array_equal(y, sparsecpu.linear(x, packed, activation=name))
    np.testing.assert_array_equal(sparsecpu.linear(x, packed, activation=None), sparsecpu.linear(x, packed, activation="none"))


# ---------------------------------------------------------------------------------------------
# attention

B, H, SQ, SKV, D = 2, 3, 5, 7, 8


def _qkv(q=(B, H, SQ, D), k=(B, H, SKV, D), v=(B, H, SKV, D)):
    rng = np.random.default_rng(9)
    return tuple(rng.standard_normal(s).astype(F32) for s in (q, k, v))


def _attention_session(tmp_path, scale: float, mask: bool):
    inputs = ["Q", "K", "V"] + (["M"] if mask else [])
    node = helper.make_node("Attention", inputs, ["O"], name="att", domain=sparsecpu.onnx.DOMAIN, scale=scale)
    infos = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in inputs]
    model = make_model([node], infos, [helper.make_tensor_value_info("O", TensorProto.FLOAT, None)], [],
                       domains=[sparsecpu.onnx.DOMAIN])
    return save(model, tmp_path / "att.onnx")


# id, (q, k, v), mask, scale
ATTENTION_FAULTS = [
    ("q-3d", _qkv(q=(H, SQ, D)), None, 1.0),
    ("v-head-dim", _qkv(v=(B, H, SKV, D + 1)), None, 1.0),
    ("v-batch", _qkv(v=(1, H, SKV, D)), None, 1.0),
    ("v-3d", _qkv(v=(H, SKV, D)), None, 1.0),
    ("k-keys", _qkv(k=(B, H, SKV + 1, D)), None, 1.0),
    ("k-head-dim", _qkv(k=(B, H, SKV, D - 1)), None, 1.0),
    ("k-heads", _qkv(k=(B, 1, SKV, D)), None, 1.0),
    ("mask-heads", _qkv(), np.zeros((1, 2, SQ, SKV), F32), 1.0),
    ("mask-keys", _qkv(), np.zeros((B, 1, 1, SKV + 1), F32), 1.0),
    ("mask-queries", _qkv(), np.zeros((1, 1, SQ - 1, SKV), F32), 1.0),
    ("mask-3d", _qkv(), np.zeros((1, SQ, SKV), F32), 1.0),
    ("mask-5d", _qkv(), np.zeros((1, 1, 1, SQ, SKV), F32), 1.0),
    ("scale-inf", _qkv(), None, float("inf")),
    ("scale-nan", _qkv(), None, float("nan")),
]


@pytest.mark.parametrize("qkv, mask, scale", [c[1:] for c in ATTENTION_FAULTS], ids=[c[0] for c in ATTENTION_FAULTS])
def test_attention_fault_reads_the_same_from_both_doors(qkv, mask, scale, tmp_path):
    q, k, v = qkv
    want = _error(lambda: _C.attention(q, k, v, None, mask, scale))
    torch_args = [torch.from_numpy(t) for t in (q, k, v)] + [None if mask is None else torch.from_numpy(mask), scale]
    assert _error(lambda: torch.ops.sparsecpu.attention(*torch_args)) == want
    feeds = {"Q": q, "K": k, "V": v} | ({} if mask is None else {"M": mask})
    path = _attention_session(tmp_path, scale, mask is not None)
    assert _ort_error("Attention node 'att'", lambda: sparsecpu.onnx.session(path).run(None, feeds)) == want


@pytest.mark.parametrize("mask_shape", [(1, 1, 1, SKV), (B, 1, 1, SKV), (1, H, SQ, SKV), (B, H, SQ, SKV), (B, 1, SQ, 1)])
def test_mask_broadcast_strides_agree(mask_shape, tmp_path):
    """A mask dim of 1 is broadcast (read at stride 0) by both doors; the binding takes any strides
    (here a strided view), ONNX Runtime row-major masks: the results are bit-identical."""
    q, k, v = _qkv()
    rng = np.random.default_rng(10)
    mask = rng.standard_normal(mask_shape).astype(F32)
    strided = np.zeros((*mask_shape[:-1], 2 * mask_shape[-1]), F32)
    strided[..., ::2] = mask
    want = np.empty((B, SQ, H, D), F32)
    _C.attention(q, k, v, want.transpose(0, 2, 1, 3), strided[..., ::2], 0.3)
    (o,) = sparsecpu.onnx.session(_attention_session(tmp_path, 0.3, True)).run(None, {"Q": q, "K": k, "V": v, "M": mask})
    np.testing.assert_array_equal(o, want.transpose(0, 2, 1, 3))
    assert np.abs(o).max() > 0.1
