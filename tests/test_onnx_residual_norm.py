"""The residual add + LayerNorm in ONNX: the SparseLinear node's R / Scale / B inputs and its norm /
epsilon attributes (against the Python binding, bit for bit), what a bad node gets, and the
rewriter folding Add + LayerNormalization after a converted layer, or leaving it when it must."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import _util
import sparsecpu
import sparsecpu.onnx
from sparsecpu import _C
from _onnx_util import assert_node_error, make_model, op_types, save

F32 = np.float32
NODE = "SparseLinear node 'sl'"  # how errors name the node under test
N, K = 40, 24


def _packed(dtype: str, seed: int = 0) -> sparsecpu.PackedWeight:
    return sparsecpu.pack(_util.pruned_weight(np.random.default_rng(seed), N, K, 0.4)[0], dtype=dtype)


def _node_model(packed, *, bias, scale, beta, const_params, attrs, lead_dims):
    """One SparseLinear node with R (a graph input), Scale / B as initializers or graph inputs; the
    inputs' dims are symbolic, so that the node itself sees (and checks) what a run feeds."""
    inits = [numpy_helper.from_array(np.frombuffer(packed.to_bytes(), np.uint8).copy(), "W")]
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [*lead_dims, K]),
                    helper.make_tensor_value_info("R", TensorProto.FLOAT, [*(f"r{d}" for d in lead_dims), "n"])]
    names = ["X", "W", "", "R", "", ""]
    for i, (name, value) in ((2, ("bias", bias)), (4, ("Scale", scale)), (5, ("B", beta))):
        if value is None:
            continue
        names[i] = name
        if const_params or name == "bias":
            inits.append(numpy_helper.from_array(value, name))
        else:
            graph_inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["c"]))
    while not names[-1]:
        names.pop()
    node = helper.make_node("SparseLinear", names, ["Y"], name="sl", domain=sparsecpu.onnx.DOMAIN, N=N, K=K,
                            dtype=packed.dtype, format="bsr", activation="gelu", **attrs)
    return make_model([node], graph_inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits,
                      domains=[sparsecpu.onnx.DOMAIN])


CASES = _util.pairwise({
    "dtype": ["int8", "fp32"],
    "lead": [(1,), (0,), (7,), (2, 65), (130,)],
    "bias": [True, False],
    "params": ["both", "scale", "none"],
    "const_params": [True, False],
}, seed=3)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_node_with_residual_and_norm_matches_the_binding(case, tmp_path):
    rng = np.random.default_rng(len(case["lead"]) * 7 + sum(case["lead"]))
    packed = _packed(case["dtype"])
    lead = case["lead"]
    bias = rng.standard_normal(N).astype(F32) if case["bias"] else None
    scale = rng.uniform(0.5, 2.0, N).astype(F32) if case["params"] != "none" else None
    beta = rng.standard_normal(N).astype(F32) if case["params"] == "both" else None
    model = _node_model(packed, bias=bias, scale=scale, beta=beta, const_params=case["const_params"],
                        attrs={"norm": 1, "epsilon": 1e-6}, lead_dims=[f"d{i}" for i in range(len(lead))])
    sess = sparsecpu.onnx.session(save(model, tmp_path / "m.onnx"))
    x = rng.standard_normal((*lead, K)).astype(F32)
    r = rng.standard_normal((*lead, N)).astype(F32)
    feeds = {"X": x, "R": r}
    if not case["const_params"]:
        feeds.update({k: v for k, v in (("Scale", scale), ("B", beta)) if v is not None})
    (y,) = sess.run(None, feeds)
    want = np.empty((*lead, N), F32)
    _C.linear(x, packed.buffer, bias, "gelu", want, False, r, True, scale, beta, 1e-6)
    np.testing.assert_array_equal(y, want)
    if y.size:
        plain = sparsecpu.linear(x, packed, bias=bias, activation="gelu").astype(np.float64) + r
        ln = (plain - plain.mean(-1, keepdims=True)) / np.sqrt(plain.var(-1, keepdims=True) + 1e-6)
        ln = ln * (1.0 if scale is None else scale) + (0.0 if beta is None else beta)
        np.testing.assert_allclose(y, ln, rtol=0, atol=3e-5 * np.abs(ln).max())


@pytest.mark.parametrize("attrs, scale, match", [
    ({"norm": 2}, None, r"attribute 'norm' must be 0 or 1, got 2"),
    ({"norm": 1, "epsilon": -1.0}, None, r"norm_eps \(epsilon\) must be finite and >= 0, got -1"),
    ({"norm": 1, "epsilon": float("nan")}, None, r"norm_eps \(epsilon\) must be finite and >= 0, got nan"),
    ({"norm": 1}, np.ones(N + 1, F32), r"norm_weight \(Scale\) must be a float32 tensor of shape \[40\], got \[41\]"),
    ({}, np.ones(N, F32), r"norm_weight \(Scale\) is given but norm is off"),
])
def test_bad_norm_attributes_or_params_fail_session_creation(attrs, scale, match, tmp_path):
    model = _node_model(_packed("int8"), bias=None, scale=scale, beta=None, const_params=True, attrs=attrs,
                        lead_dims=["m"])
    assert_node_error(NODE, lambda: sparsecpu.onnx.session(save(model, tmp_path / "m.onnx")), match)


def test_bad_residual_or_params_fail_the_run(tmp_path):
    scale = np.ones(N, F32)
    x = np.ones((3, K), F32)
    normed = sparsecpu.onnx.session(save(_node_model(_packed("fp32"), bias=None, scale=scale, beta=None, const_params=False,
                                                     attrs={"norm": 1}, lead_dims=["m"]), tmp_path / "a.onnx"))
    assert_node_error(NODE, lambda: normed.run(None, {"X": x, "R": np.ones((3, N - 1), F32), "Scale": scale}),
           r"residual \(R\) must be a float32 tensor of the output's shape \[3, 40\], got \[3, 39\]")
    assert_node_error(NODE, lambda: normed.run(None, {"X": x, "R": np.ones((1, N), F32), "Scale": scale}),
           r"residual \(R\) must be a float32 tensor of the output's shape \[3, 40\], got \[1, 40\]")
    assert_node_error(NODE, lambda: normed.run(None, {"X": x, "R": np.ones((3, N), F32), "Scale": np.ones(3, F32)}),
           r"norm_weight \(Scale\) must be a float32 tensor of shape \[40\], got \[3\]")
    plain = sparsecpu.onnx.session(save(_node_model(_packed("fp32"), bias=None, scale=scale, beta=None, const_params=False,
                                                    attrs={}, lead_dims=["m"]), tmp_path / "b.onnx"))
    assert_node_error(NODE, lambda: plain.run(None, {"X": x, "R": np.ones((3, N), F32), "Scale": scale}),
           r"norm_weight \(Scale\) is given but norm is off")


# ---------------------------------------------------------------------------------------------
# The rewriter


def _block_model(rng, *, residual_shape=("b", "s", 32), axis=-1, extra_output=None, stash_type=None,
                 residual_is_x=False, lead=("b", "s"), scale_shape=(32,)):
    """x [b, s, 32] -> MatMul -> + bias -> + residual -> LayerNormalization -> y: a BERT output block."""
    w = _util.pruned_weight(rng, 32, 32, 0.25)[0]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [*lead, 32])]
    r = "x" if residual_is_x else "r"
    if not residual_is_x:
        inputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, list(residual_shape)))
    ln_attrs = {"axis": axis, "epsilon": 1e-12}
    if stash_type is not None:
        ln_attrs["stash_type"] = stash_type
    ln_outputs = ["y"] + (["mean"] if extra_output == "mean" else [])
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="fc"),
             helper.make_node("Add", ["h", "bias"], ["h2"]),
             helper.make_node("Add", [r, "h2"], ["t"]),
             helper.make_node("LayerNormalization", ["t", "g", "beta"], ln_outputs, **ln_attrs)]
    outputs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ln_outputs]
    if extra_output == "sum":
        outputs.append(helper.make_tensor_value_info("t", TensorProto.FLOAT, None))
    inits = [numpy_helper.from_array(w.T.copy(), "W"), numpy_helper.from_array(rng.standard_normal(32).astype(F32), "bias"),
             numpy_helper.from_array(rng.uniform(0.5, 2, scale_shape).astype(F32), "g"),
             numpy_helper.from_array(rng.standard_normal(scale_shape).astype(F32), "beta")]
    return make_model(nodes, inputs, outputs, inits)


def _convert(tmp_path, model, **kw):
    src = save(model, tmp_path / "src.onnx")
    dst = str(tmp_path / "dst.onnx")
    return src, dst, sparsecpu.onnx.convert(src, dst, **kw)


@pytest.mark.parametrize("dtype", ["int8", "fp32"])
@pytest.mark.parametrize("residual_is_x", [False, True])
def test_output_block_folds_into_one_node(dtype, residual_is_x, tmp_path):
    """The graph states no value_info: the rewriter learns the residual's shape by shape inference."""
    rng = np.random.default_rng(5)
    src, dst, report = _convert(tmp_path, _block_model(rng, residual_is_x=residual_is_x), dtype=dtype)
    assert op_types(dst) == ["SparseLinear"]
    assert report.nodes[0].reason.split("; ")[0] == f"bsr {dtype} + bias + residual add + LayerNorm"
    feeds = {"x": rng.standard_normal((2, 70, 32)).astype(F32)}
    if not residual_is_x:
        feeds["r"] = rng.standard_normal((2, 70, 32)).astype(F32)
    res = sparsecpu.onnx.verify(src, dst, feeds=feeds)["y"]
    assert res["cosine"] > (0.9999 if dtype == "int8" else 0.9999999) and res["max_abs"] > 0.5
    if dtype == "fp32":
        assert res["max_abs_diff"] < 1e-4
    _, unfused, report = _convert(tmp_path, _block_model(rng, residual_is_x=residual_is_x), dtype=dtype, fuse_norm=False)
    assert op_types(unfused) == ["SparseLinear", "Add", "LayerNormalization"] and report.nodes[0].reason.split("; ")[0] == f"bsr {dtype} + bias"


@pytest.mark.parametrize("variant", [
    {"residual_shape": (1, 1, 32)},  # broadcast residual
    {"residual_shape": ("b", "t", 32)},  # a shape not known to be y's
    {"axis": 1, "lead": (2, 5), "residual_shape": (2, 5, 32), "scale_shape": (5, 32)},  # over more than the channels
    {"extra_output": "mean"},  # the norm's Mean is a graph output
    {"extra_output": "sum"},  # the residual sum is read too
    {"stash_type": 0},  # the norm computes in another precision
])
def test_output_block_left_when_it_must(variant, tmp_path):
    rng = np.random.default_rng(6)
    model = _block_model(rng, **variant)
    src, dst, report = _convert(tmp_path, model, dtype="fp32")
    assert op_types(dst) == ["SparseLinear", "Add", "LayerNormalization"], variant
    assert report.nodes[0].reason.split("; ")[0] == "bsr fp32 + bias"
    b = 1 if variant.get("residual_shape") == (1, 1, 32) else 2
    feeds = {"x": rng.standard_normal((2, 5, 32)).astype(F32), "r": rng.standard_normal((b, 5 if b == 2 else 1, 32)).astype(F32)}
    for out in sparsecpu.onnx.verify(src, dst, feeds=feeds).values():
        assert out["max_abs_diff"] < 1e-4



def test_cli_no_fuse_norm(tmp_path):
    src = save(_block_model(np.random.default_rng(8)), tmp_path / "src.onnx")
    for flags, ops in (([], ["SparseLinear"]), (["--no-fuse-norm"], ["SparseLinear", "Add", "LayerNormalization"])):
        dst = str(tmp_path / "dst.onnx")
        r = subprocess.run([sys.executable, "-m", "sparsecpu", "onnx", "convert", src, dst, "--dtype", "fp32", *flags],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        assert op_types(dst) == ops
        assert ("+ residual add + LayerNorm" in r.stdout) == (not flags)
