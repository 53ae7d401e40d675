"""The com.sparsecpu:Attention node (against the Python binding, bit for bit, and numpy), what a bad
node gets, and the rewriter replacing attention subgraphs as exporters write them, or leaving them
when it must."""

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
NODE = "Attention node 'att'"  # how errors name the node under test
NEG = float(np.finfo(np.float32).min)


def _attention_node_model(*, mask: bool, attrs: dict):
    inputs = ["Q", "K", "V"] + (["M"] if mask else [])
    node = helper.make_node("Attention", inputs, ["O"], name="att", domain=sparsecpu.onnx.DOMAIN, **attrs)
    # Shapes left unknown: the node itself sees (and checks) what a run feeds.
    infos = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in inputs]
    return make_model([node], infos, [helper.make_tensor_value_info("O", TensorProto.FLOAT, None)], [],
                      domains=[sparsecpu.onnx.DOMAIN])


CASES = _util.pairwise({
    "bh": [(1, 1), (2, 3), (1, 12)],
    "sq": [1, 6, 13, 64],
    "skv": [1, 16, 33],
    "d": [8, 24, 64],
    "k_transposed": [0, 1],
    "mask": ["none", "keys", "full", "heads_empty_row"],
}, seed=8)


def _mask(rng, kind, b, h, sq, skv):
    """An additive mask: padding keys per batch row (finfo.min, as exporters write it), random values
    per query, or -inf per head with the last query row left without any key."""
    if kind == "full":
        return rng.standard_normal((b, 1, sq, skv)).astype(F32)
    if kind == "keys":
        m = np.where(rng.random((b, 1, 1, skv)) < 0.3, NEG, 0.0).astype(F32)
        m[..., 0] = 0.0  # every row keeps a key
        return m
    m = np.where(rng.random((1, h, sq, skv)) < 0.3, -np.inf, 0.0).astype(F32)
    m[..., 0] = 0.0
    m[..., -1, :] = -np.inf
    return m


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_attention_node_matches_the_binding(case, tmp_path):
    (b, h), sq, skv, d = case["bh"], case["sq"], case["skv"], case["d"]
    rng = np.random.default_rng(sq * 100 + skv * 10 + d)
    q = rng.standard_normal((b, h, sq, d)).astype(F32)
    k = rng.standard_normal((b, h, skv, d)).astype(F32)
    v = rng.standard_normal((b, h, skv, d)).astype(F32)
    mask = None if case["mask"] == "none" else _mask(rng, case["mask"], b, h, sq, skv)
    scale = 0.8 / np.sqrt(d)
    model = _attention_node_model(mask=mask is not None, attrs={"scale": scale, "k_transposed": case["k_transposed"]})
    feeds = {"Q": q, "K": k.transpose(0, 1, 3, 2).copy() if case["k_transposed"] else k, "V": v}
    if mask is not None:
        feeds["M"] = mask
    (o,) = sparsecpu.onnx.session(save(model, tmp_path / "m.onnx")).run(None, feeds)
    want = np.empty((b, sq, h, d), F32)
    _C.attention(q, k, v, want.transpose(0, 2, 1, 3), mask, float(np.float32(scale)))
    np.testing.assert_array_equal(o, want.transpose(0, 2, 1, 3))
    s = np.einsum("bhqd,bhkd->bhqk", q.astype(np.float64), k) * np.float32(scale) + (0 if mask is None else mask)
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.exp(s - s.max(-1, keepdims=True))
        p = np.nan_to_num(e / e.sum(-1, keepdims=True))
    np.testing.assert_allclose(o, p @ v, rtol=0, atol=1e-5)
    if case["mask"] == "heads_empty_row":
        assert (o[:, :, -1] == 0).all()


@pytest.mark.parametrize("attrs, match", [
    ({}, r"missing or non-float attribute 'scale'"),
    ({"scale": float("inf")}, r"scale must be finite, got inf"),
    ({"scale": 1.0, "k_transposed": 2}, r"attribute 'k_transposed' must be 0 or 1, got 2"),
    ({"scale": 1.0, "precision": "fp16"}, r"precision must be 'fp32' or 'bf16', got 'fp16'"),
])
def test_bad_attention_attributes_fail_session_creation(attrs, match, tmp_path):
    path = save(_attention_node_model(mask=False, attrs=attrs), tmp_path / "m.onnx")
    assert_node_error(NODE, lambda: sparsecpu.onnx.session(path), match)


def test_bad_attention_inputs_fail_the_run(tmp_path):
    sess = sparsecpu.onnx.session(save(_attention_node_model(mask=True, attrs={"scale": 1.0, "k_transposed": 1}),
                                       tmp_path / "m.onnx"))
    q = np.ones((1, 2, 5, 8), F32)
    kt, v, m = np.ones((1, 2, 8, 7), F32), np.ones((1, 2, 7, 8), F32), np.zeros((1, 1, 5, 7), F32)
    assert_node_error(NODE, lambda: sess.run(None, {"Q": q, "K": np.ones((1, 2, 7, 8), F32), "V": v, "M": m}),
           r"k must be a float32 tensor K\^T \[B, H, D, Skv\] = \[1, 2, 8, 7\] to match q and v, got \[1, 2, 7, 8\]")
    assert_node_error(NODE, lambda: sess.run(None, {"Q": q, "K": kt, "V": np.ones((1, 2, 7, 9), F32), "M": m}),
           r"v must be a float32 tensor \[B, H, Skv, D\] = \[1, 2, Skv, 8\] to match q \[1, 2, 5, 8\], got \[1, 2, 7, 9\]")
    assert_node_error(NODE, lambda: sess.run(None, {"Q": q, "K": kt, "V": v, "M": np.zeros((1, 3, 5, 7), F32)}),
           r"mask \(M\) must be a float32 or bool tensor that broadcasts to the scores \[B, H, Sq, Skv\] = \[1, 2, 5, 7\], got \[1, 3, 5, 7\]")
    assert_node_error(NODE, lambda: sess.run(None, {"Q": q[0], "K": kt, "V": v, "M": m}), r"q must be a 4-D float32 tensor \[B, H, Sq, D\], got \[2, 5, 8\]")


# ---------------------------------------------------------------------------------------------
# The rewriter


def _subgraph(rng, *, form, b=2, h=3, s=9, d=8, mask="full", softmax_axis=-1, guard_value=0.0, extra_output=None):
    """An attention subgraph on graph inputs q [b, h, s, d], k [b, h, s, d], v, m, as exporters write it:
    form "torchscript": Div(MatMul(q, Transpose(k)), sqrt d) + m; "dynamo": MatMul(q c, Transpose(k) c) + m
    with the Where(IsNaN(P), 0, P) guard."""
    c = float(d) ** -0.25
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2])]
    inits = [numpy_helper.from_array(np.array(np.sqrt(d), F32), "sqrt_d"), numpy_helper.from_array(np.array(c, F32), "c"),
             numpy_helper.from_array(np.array(guard_value, F32), "zero")]
    if form == "torchscript":
        nodes += [helper.make_node("MatMul", ["q", "kt"], ["raw"]), helper.make_node("Div", ["raw", "sqrt_d"], ["sc"])]
    else:
        nodes += [helper.make_node("Mul", ["q", "c"], ["qc"]), helper.make_node("Mul", ["kt", "c"], ["ktc"]),
                  helper.make_node("MatMul", ["qc", "ktc"], ["sc"])]
    scores = "sc"
    if mask != "none":
        nodes.append(helper.make_node("Add", ["m", "sc"], ["masked"]))
        scores = "masked"
    nodes.append(helper.make_node("Softmax", [scores], ["p"], axis=softmax_axis))
    probs = "p"
    if form == "dynamo":
        nodes += [helper.make_node("IsNaN", ["p"], ["nan"]), helper.make_node("Where", ["nan", "zero", "p"], ["pg"])]
        probs = "pg"
    nodes.append(helper.make_node("MatMul", [probs, "v"], ["o"]))
    mshape = {"full": [b, 1, s, s], "keys": [b, 1, 1, s], "bad": [b, 1, s, s + 1], "none": None}[mask]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [b, h, s, d]) for n in "qkv"]
    feeds = {n: rng.standard_normal((b, h, s, d)).astype(F32) for n in "qkv"}
    if mshape:
        inputs.append(helper.make_tensor_value_info("m", TensorProto.FLOAT, mshape))
        feeds["m"] = np.where(rng.random(mshape) < 0.3, NEG, 0.0).astype(F32)
        feeds["m"][..., 0] = 0.0
    outputs = [helper.make_tensor_value_info("o", TensorProto.FLOAT, None)]
    if extra_output:
        outputs.append(helper.make_tensor_value_info(extra_output, TensorProto.FLOAT, None))
    return make_model(nodes, inputs, outputs, inits, opset=18), feeds


def _convert(tmp_path, model, **kw):
    src, dst = save(model, tmp_path / "src.onnx"), str(tmp_path / "dst.onnx")
    return src, dst, sparsecpu.onnx.convert(src, dst, **kw)


@pytest.mark.parametrize("form", ["torchscript", "dynamo"])
@pytest.mark.parametrize("mask", ["full", "keys", "none"])
def test_attention_subgraph_replaced(form, mask, tmp_path):
    rng = np.random.default_rng(11)
    model, feeds = _subgraph(rng, form=form, mask=mask)
    if mask == "none":
        feeds.pop("m", None)
    src, dst, report = _convert(tmp_path, model)
    assert op_types(dst) == ["Transpose", "Attention"] and report.attention == ["sparsecpu_attention"]
    assert "1 attention subgraphs -> com.sparsecpu:Attention (precision bf16)" in str(report)
    res = sparsecpu.onnx.verify(src, dst, feeds=feeds)["o"]
    assert res["max_abs_diff"] < 1e-5 and res["max_abs"] > 0.5
    _, kept, report = _convert(tmp_path, model, fuse_attention=False)
    assert "Softmax" in op_types(kept) and not report.attention


@pytest.mark.parametrize("variant", [
    {"softmax_axis": 2},  # over queries, not keys
    {"mask": "bad"},  # a mask that does not broadcast to the scores
    {"guard_value": 1.0},  # the guard writes something else than 0
    {"extra_output": "p"},  # the probabilities are read too
    {"extra_output": "sc"},  # the scores are read too
])
def test_attention_subgraph_left_when_it_must(variant, tmp_path):
    rng = np.random.default_rng(12)
    model, feeds = _subgraph(rng, form="dynamo", **variant)
    src, dst, report = _convert(tmp_path, model)
    assert "Attention" not in op_types(dst) and not report.attention, variant
    assert op_types(dst) == op_types(src)


def test_cli_no_fuse_attention(tmp_path):
    model, _ = _subgraph(np.random.default_rng(13), form="torchscript")
    src = save(model, tmp_path / "src.onnx")
    for flags, fused in (([], True), (["--no-fuse-attention"], False)):
        dst = str(tmp_path / "dst.onnx")
        r = subprocess.run([sys.executable, "-m", "sparsecpu", "onnx", "convert", src, dst, *flags],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        assert ("Attention" in op_types(dst)) == fused


# ---------------------------------------------------------------------------------------------
# Merged heads: the node reads the projections' [B, S, H D] tensors and writes the merged output


@pytest.mark.parametrize("b, h, sq, skv, d", [(1, 12, 128, 128, 64), (2, 3, 7, 13, 24), (1, 1, 1, 5, 8)])
def test_merged_heads_node_matches_the_binding(b, h, sq, skv, d, tmp_path):
    rng = np.random.default_rng(b * h + sq)
    q = rng.standard_normal((b, sq, h * d)).astype(F32)
    k, v = (rng.standard_normal((b, skv, h * d)).astype(F32) for _ in "kv")
    m = np.where(rng.random((b, 1, 1, skv)) < 0.3, NEG, 0.0).astype(F32)
    m[..., 0] = 0.0
    sess = sparsecpu.onnx.session(save(_attention_node_model(mask=True, attrs={"scale": 0.125, "num_heads": h}), tmp_path / "m.onnx"))
    (o,) = sess.run(None, {"Q": q, "K": k, "V": v, "M": m})
    q4, k4, v4 = (t.reshape(b, -1, h, d).transpose(0, 2, 1, 3) for t in (q, k, v))  # views: [B, H, S, D]
    want = np.empty((b, sq, h, d), F32)
    _C.attention(q4, k4, v4, want.transpose(0, 2, 1, 3), m, 0.125)
    assert o.shape == (b, sq, h * d)
    np.testing.assert_array_equal(o, want.reshape(b, sq, h * d))


def test_bad_merged_heads_nodes(tmp_path):
    for attrs, match in (({"scale": 1.0, "num_heads": -1}, r"attribute 'num_heads' must be >= 0, got -1"),
                         ({"scale": 1.0, "num_heads": 2, "k_transposed": 1}, r"k_transposed = 1 needs the \[B, H, S, D\] layout")):
        path = save(_attention_node_model(mask=True, attrs=attrs), tmp_path / "m.onnx")
        assert_node_error(NODE, lambda: sparsecpu.onnx.session(path), match)
    sess = sparsecpu.onnx.session(save(_attention_node_model(mask=False, attrs={"scale": 1.0, "num_heads": 3}),
                                       tmp_path / "m.onnx"))
    q = np.ones((1, 4, 12), F32)
    assert_node_error(NODE, lambda: sess.run(None, {"Q": np.ones((1, 4, 10), F32), "K": q, "V": q}),
           r"q's last dim 10 is not a multiple of num_heads = 3")
    assert_node_error(NODE, lambda: sess.run(None, {"Q": q, "K": np.ones((1, 5, 12), F32), "V": q}),
           r"v must have shape \[B, Skv, H D\] = \[1, 5, 12\] to match q \[1, 4, 12\], got \[1, 4, 12\]")
    assert_node_error(NODE, lambda: sess.run(None, {"Q": q[0], "K": q, "V": q}), r"q must be a 3-D float32 tensor \[B, S, H D\] \(num_heads = 3\), got \[4, 12\]")


def _projected_subgraph(rng, out_perm=(0, 2, 1, 3), b=2, h=3, s=9, d=8):
    """Attention on [B, S, H D] inputs split into heads by Reshape + Transpose (K^T by a second
    Transpose), its output merged back by Transpose(out_perm) + Reshape: what the dynamo exporter writes."""
    n = h * d
    inits = [numpy_helper.from_array(np.array([b, s, h, d], np.int64), "heads_shape"),
             numpy_helper.from_array(np.array([b, s, n], np.int64), "merged_shape"),
             numpy_helper.from_array(np.array(float(d) ** -0.5, F32), "scale")]
    nodes = []
    for t in "qkv":
        nodes += [helper.make_node("Reshape", [t, "heads_shape"], [f"{t}4"]),
                  helper.make_node("Transpose", [f"{t}4"], [f"{t}h"], perm=[0, 2, 1, 3])]
    nodes += [helper.make_node("Transpose", ["kh"], ["kth"], perm=[0, 1, 3, 2]),
              helper.make_node("MatMul", ["qh", "kth"], ["raw"]),
              helper.make_node("Mul", ["raw", "scale"], ["sc"]),
              helper.make_node("Softmax", ["sc"], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "vh"], ["oh"]),
              helper.make_node("Transpose", ["oh"], ["ot"], perm=list(out_perm)),
              helper.make_node("Reshape", ["ot", "merged_shape"], ["o"])]
    inputs = [helper.make_tensor_value_info(t, TensorProto.FLOAT, [b, s, n]) for t in "qkv"]
    model = make_model(nodes, inputs, [helper.make_tensor_value_info("o", TensorProto.FLOAT, None)], inits, opset=18)
    return model, {t: rng.standard_normal((b, s, n)).astype(F32) for t in "qkv"}


def test_projected_heads_read_and_written_merged(tmp_path):
    rng = np.random.default_rng(14)
    model, feeds = _projected_subgraph(rng)
    src, dst, report = _convert(tmp_path, model)
    assert op_types(dst) == ["Attention"] and len(report.attention) == 1
    res = sparsecpu.onnx.verify(src, dst, feeds=feeds)["o"]
    assert res["max_abs_diff"] < 1e-5 and res["max_abs"] > 0.5
    # An output that does not merge the heads back ([B, S, D, H] here): the views stay.
    model, feeds = _projected_subgraph(rng, out_perm=(0, 2, 3, 1))
    src, dst, _ = _convert(tmp_path, model)
    assert "Attention" in op_types(dst) and op_types(dst).count("Transpose") == 5
    assert sparsecpu.onnx.verify(src, dst, feeds=feeds)["o"]["max_abs_diff"] < 1e-5


def test_attention_precision_attribute_and_convert(tmp_path):
    """precision = "bf16" runs what the binding runs at "bf16" (AMX-BF16 tiles where the CPU has them, the
    fp32 kernel elsewhere), bit for bit; onnx convert sets it with dtype="int8" unless told otherwise."""
    rng = np.random.default_rng(14)
    b, h, sq, skv, d = 2, 3, 9, 11, 16
    q = rng.standard_normal((b, sq, h * d)).astype(F32)
    k, v = (rng.standard_normal((b, skv, h * d)).astype(F32) for _ in "kv")
    attrs = {"scale": 0.25, "num_heads": h, "precision": "bf16"}
    (o,) = sparsecpu.onnx.session(save(_attention_node_model(mask=False, attrs=attrs), tmp_path / "m.onnx")).run(
        None, {"Q": q, "K": k, "V": v})
    q4, k4, v4 = (t.reshape(b, -1, h, d).transpose(0, 2, 1, 3) for t in (q, k, v))
    want = _C.attention(q4, k4, v4, None, None, 0.25, "bf16")
    np.testing.assert_array_equal(o, want.reshape(b, sq, h * d))

    model, _ = _subgraph(np.random.default_rng(15), form="torchscript", mask="none")
    for kw, precision in (({}, "bf16"), ({"dtype": "fp32"}, None), ({"attention_precision": "fp32"}, None),
                          ({"dtype": "fp32", "attention_precision": "bf16"}, "bf16")):
        _, dst, report = _convert(tmp_path, model, **kw)
        import onnx

        (node,) = [n for n in onnx.load(dst).graph.node if n.op_type == "Attention"]
        got = {a.name: helper.get_attribute_value(a) for a in node.attribute}.get("precision")
        assert (got.decode() if got else None) == precision and report.attention_precision == (precision or "fp32"), kw
    with pytest.raises(ValueError, match="attention_precision must be 'fp32' or 'bf16'"):
        _convert(tmp_path, model, attention_precision="half")
