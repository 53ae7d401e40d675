"""The rewriter: which chains become SparseLinear, what is kept and why, external data, the CLI."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import _util
import sparsecpu
import sparsecpu.onnx
from sparsecpu._layout import DEFAULT_MIN_SPARSITY
from _onnx_util import make_model, op_types, run, save

F32 = np.float32


def _w(rng, n, k, density=0.25):
    return _util.pruned_weight(rng, n, k, density)[0]


def _x_info(name="x", k=32, lead=("b", "s")):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [*lead, k])


def _out(name="y"):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)


def _c(name, value):
    return numpy_helper.from_array(np.asarray(value, F32), name)


def _gelu_nodes(y, out, kind, form):
    """The Erf or Tanh form of GELU on tensor ``y`` as exporters write it (three arrangements of the 0.5)."""
    if kind == "erf":
        nodes = [helper.make_node("Div", [y, "sqrt2"], ["g_div"]),
                 helper.make_node("Erf", ["g_div"], ["g_erf"]),
                 helper.make_node("Add", ["g_erf", "one"], ["g_add"])]
    else:
        nodes = [helper.make_node("Pow", [y, "three"], ["g_pow"]),
                 helper.make_node("Mul", ["g_pow", "c0"], ["g_cube"]),
                 helper.make_node("Add", [y, "g_cube"], ["g_inner"]),
                 helper.make_node("Mul", ["c1", "g_inner"], ["g_scaled"]),
                 helper.make_node("Tanh", ["g_scaled"], ["g_tanh"]),
                 helper.make_node("Add", ["g_tanh", "one"], ["g_add"])]
    if form == "mul_then_half":
        nodes += [helper.make_node("Mul", [y, "g_add"], ["g_mul"]), helper.make_node("Mul", ["g_mul", "half"], [out])]
    elif form == "half_first":
        nodes += [helper.make_node("Mul", [y, "half"], ["g_half"]), helper.make_node("Mul", ["g_half", "g_add"], [out])]
    else:
        nodes += [helper.make_node("Mul", ["g_add", "half"], ["g_ah"]), helper.make_node("Mul", [y, "g_ah"], [out])]
    consts = [_c("one", 1.0), _c("half", 0.5)]
    if kind == "erf":
        consts.append(_c("sqrt2", math.sqrt(2)))
    else:
        consts += [_c("three", 3.0), _c("c0", 0.044715), _c("c1", math.sqrt(2 / math.pi))]
    return nodes, consts


def _gelu(v, kind):
    if kind == "tanh":
        return 0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3)))
    erf = np.vectorize(math.erf)
    return 0.5 * v * (1 + erf(v / math.sqrt(2)))


def _convert(tmp_path, model, **kw):
    src = save(model, tmp_path / "src.onnx")
    dst = str(tmp_path / "dst.onnx")
    report = sparsecpu.onnx.convert(src, dst, **kw)
    return src, dst, report


@pytest.mark.parametrize("dtype", ["int8", "fp32"])
@pytest.mark.parametrize("kind", ["erf", "tanh"])
@pytest.mark.parametrize("form", ["mul_then_half", "half_first", "half_on_erf"])
def test_matmul_add_gelu_pattern_fused(dtype, kind, form, tmp_path):
    rng = np.random.default_rng(1)
    w = _w(rng, 48, 32)
    b = (rng.standard_normal(48) + 0.5).astype(F32)
    gelu, consts = _gelu_nodes("h2", "y", kind, form)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="fc"), helper.make_node("Add", ["B", "h"], ["h2"])] + gelu
    model = make_model(nodes, [_x_info()], [_out()], [_c("W", w.T), _c("B", b)] + consts)
    src, dst, report = _convert(tmp_path, model, dtype=dtype)
    assert op_types(dst) == ["SparseLinear"]
    (r,) = report.nodes
    act = "gelu" if kind == "erf" else "gelu_tanh"
    assert r.converted and r.node == "fc" and r.shape == (48, 32) and r.reason == f"bsr {dtype} + bias + {act}; {r.layout.reason}"
    if dtype == "int8":  # the measured choice (the suite's calibration, conftest.py)
        assert r.layout.reason.startswith("measured choice: bsr (predicted")
    else:
        assert r.layout.reason == f"block sparsity {1 - r.density:.3f} >= min_sparsity {DEFAULT_MIN_SPARSITY[dtype]:g}"
    m = onnx.load(dst)
    assert {t.name for t in m.graph.initializer} == {"W.sparsecpu_" + dtype, "fc.sparsecpu_bias"}
    assert {a.name: helper.get_attribute_value(a) for a in m.graph.node[0].attribute} == {
        "N": 48, "K": 32, "dtype": dtype.encode(), "format": b"bsr", "activation": act.encode()}
    assert m.ir_version == 8 and (sparsecpu.onnx.DOMAIN, 1) in [(o.domain, o.version) for o in m.opset_import]
    x = rng.standard_normal((2, 5, 32)).astype(F32)
    (y,) = run(dst, {"x": x})
    expected = sparsecpu.linear(x, sparsecpu.pack(w, dtype=dtype), bias=b, activation=act)
    np.testing.assert_array_equal(y, expected)
    want = _gelu(x.astype(np.float64) @ w.T.astype(np.float64) + b, kind)
    tol = 0.05 if dtype == "int8" else 1e-4
    np.testing.assert_allclose(y, want, atol=tol * np.abs(want).max())


def test_gelu_pattern_with_a_second_reader_is_not_fused(tmp_path):
    """A chain node whose output something else also reads stays: fusing would lose that value."""
    rng = np.random.default_rng(9)
    w = _w(rng, 16, 32)
    gelu, consts = _gelu_nodes("h", "y", "erf", "mul_then_half")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="fc")] + gelu
    model = make_model(nodes, [_x_info()], [_out(), _out("g_erf")], [_c("W", w.T)] + consts)
    src, dst, report = _convert(tmp_path, model, dtype="fp32")
    assert report.nodes[0].reason == f"bsr fp32; {report.nodes[0].layout.reason}"
    assert op_types(dst) == ["SparseLinear", "Div", "Erf", "Add", "Mul", "Mul"]
    x = rng.standard_normal((1, 3, 32)).astype(F32)
    res = sparsecpu.onnx.verify(src, dst, feeds={"x": x})
    assert res["y"]["max_abs_diff"] < 1e-5 and res["g_erf"]["max_abs_diff"] < 1e-5


@pytest.mark.parametrize("op, attrs, act", [
    ("Relu", {}, "relu"), ("Gelu", {}, "gelu"), ("Gelu", {"approximate": "tanh"}, "gelu_tanh")])
def test_activation_ops_fused(op, attrs, act, tmp_path):
    rng = np.random.default_rng(2)
    w = _w(rng, 24, 32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="fc"), helper.make_node(op, ["h"], ["y"], **attrs)]
    model = make_model(nodes, [_x_info()], [_out()], [_c("W", w.T)], opset=20)
    _, dst, report = _convert(tmp_path, model, dtype="fp32")
    assert op_types(dst) == ["SparseLinear"] and report.nodes[0].reason.startswith(f"bsr fp32 + {act}; block sparsity ")
    x = rng.standard_normal((3, 4, 32)).astype(F32)
    (y,) = run(dst, {"x": x})
    np.testing.assert_array_equal(y, sparsecpu.linear(x, sparsecpu.pack(w, dtype="fp32"), activation=act))


@pytest.mark.parametrize("format, min_sparsity, density", [("dense", 0.5, 0.25), ("auto", None, 0.9), ("bsr", 0.0, 0.9)])
def test_format_follows_pack(format, min_sparsity, density, tmp_path):
    """The packed weight's format is pack()'s choice (auto: dense int8 for a dense weight), written
    to the node, and ORT gives sparsecpu.linear's bits."""
    rng = np.random.default_rng(4)
    w = _util.pruned_weight(rng, 20, 32, density, holes=False)[0]
    model = make_model([helper.make_node("MatMul", ["x", "W"], ["y"], name="fc")], [_x_info()], [_out()], [_c("W", w.T)])
    src, dst, report = _convert(tmp_path, model, dtype="int8", format=format, min_sparsity=min_sparsity)
    packed = sparsecpu.pack(w, dtype="int8", format=format)
    assert report.nodes[0].layout.format == packed.format
    assert report.nodes[0].reason == f"{packed.format} int8; {report.nodes[0].layout.reason}"
    assert packed.format == ("bsr" if format == "bsr" else "dense")
    (node,) = onnx.load(dst).graph.node
    assert {a.name: a.s for a in node.attribute}["format"] == packed.format.encode()
    x = rng.standard_normal((2, 3, 32)).astype(F32)
    (y,) = run(dst, {"x": x})
    np.testing.assert_array_equal(y, sparsecpu.linear(x, packed))
    _util.assert_informative(y, y, None)


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("bias_shape", [None, (20,), (1, 20)])
def test_gemm(trans_b, bias_shape, tmp_path):
    rng = np.random.default_rng(3)
    w = _w(rng, 20, 36)
    alpha, beta = 0.5, 2.0
    inits = [_c("B", w if trans_b else w.T)]
    inputs = ["x", "B"]
    c = None
    if bias_shape:
        c = rng.standard_normal(bias_shape).astype(F32)
        inits.append(_c("C", c))
        inputs.append("C")
    node = helper.make_node("Gemm", inputs, ["y"], name="gemm", alpha=alpha, beta=beta, transB=trans_b)
    model = make_model([node], [_x_info(k=36, lead=("m",))], [_out()], inits)
    src, dst, report = _convert(tmp_path, model, dtype="fp32")
    assert op_types(dst) == ["SparseLinear"] and report.nodes[0].converted
    x = rng.standard_normal((7, 36)).astype(F32)
    (y,) = run(dst, {"x": x})
    want = alpha * (x.astype(np.float64) @ w.T) + (beta * c.reshape(-1) if c is not None else 0)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    (y_src,) = sparsecpu.onnx.session(src).run(None, {"x": x})
    np.testing.assert_allclose(y, y_src, rtol=1e-5, atol=1e-5)


def test_kept_nodes_and_reasons(tmp_path):
    rng = np.random.default_rng(4)
    dense = rng.standard_normal((32, 16)).astype(F32)  # K x N, no zero blocks
    sparse = _w(rng, 16, 32)
    nodes = [
        helper.make_node("MatMul", ["x", "Wd"], ["h1"], name="dense_fc"),
        helper.make_node("MatMul", ["x", "x2"], ["h2"], name="activation_mm"),
        helper.make_node("Gemm", ["x2d", "Wg"], ["h3"], name="gemm_ta", transA=1),
        helper.make_node("MatMul", ["x", "Ws"], ["h4"], name="sparse_fc"),
        helper.make_node("Add", ["h4", "h4b"], ["h5"], name="not_a_bias"),
    ]
    inputs = [_x_info(lead=("s",)), helper.make_tensor_value_info("x2", TensorProto.FLOAT, [32, 16]),
              helper.make_tensor_value_info("x2d", TensorProto.FLOAT, [32, 8]),
              helper.make_tensor_value_info("h4b", TensorProto.FLOAT, [16])]
    outputs = [_out("h1"), _out("h2"), _out("h3"), _out("h5"), _out("h4")]
    model = make_model(nodes, inputs, outputs, [_c("Wd", dense), _c("Wg", rng.standard_normal((32, 4))), _c("Ws", sparse.T)])
    src, dst, report = _convert(tmp_path, model, dtype="fp32", min_sparsity=0.5)
    by_name = {r.node: r for r in report.nodes}
    assert not by_name["dense_fc"].converted and "block sparsity 0.000 < min_sparsity 0.5" in by_name["dense_fc"].reason
    assert by_name["dense_fc"].density == 1.0
    assert not by_name["activation_mm"].converted and "not a constant initializer" in by_name["activation_mm"].reason
    assert not by_name["gemm_ta"].converted and by_name["gemm_ta"].reason == "transA = 1"
    # h4 is a graph output too, so the Add cannot be folded in.
    assert by_name["sparse_fc"].converted and by_name["sparse_fc"].reason.startswith("bsr fp32; block sparsity ")
    assert op_types(dst) == ["MatMul", "MatMul", "Gemm", "SparseLinear", "Add"]
    text = str(report)
    assert "1 of 4 MatMul/Gemm nodes converted (fp32)" in text and "kept: transA = 1" in text
    x = rng.standard_normal((3, 32)).astype(F32)
    feeds = {"x": x, "x2": rng.standard_normal((32, 16)).astype(F32), "x2d": rng.standard_normal((32, 8)).astype(F32),
             "h4b": rng.standard_normal(16).astype(F32)}
    res = sparsecpu.onnx.verify(src, dst, feeds=feeds)
    for name in ("h1", "h2", "h3"):
        assert res[name]["max_abs_diff"] == 0.0
    assert res["h5"]["cosine"] > 0.999 and res["h4"]["cosine"] > 0.999


def test_shared_weight_packed_once_and_dead_initializers_dropped(tmp_path):
    rng = np.random.default_rng(5)
    w = _w(rng, 16, 32)
    keep = rng.standard_normal(3).astype(F32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["a"], name="fc1"),
             helper.make_node("MatMul", ["x", "W"], ["b"], name="fc2"),
             helper.make_node("Add", ["a", "b"], ["y"]),
             helper.make_node("Identity", ["K3"], ["k3_out"])]
    model = make_model(nodes, [_x_info(lead=("s",))], [_out(), _out("k3_out")], [_c("W", w.T), _c("K3", keep), _c("unused", [1.0])])
    _, dst, report = _convert(tmp_path, model, dtype="int8")
    assert [r.converted for r in report.nodes] == [True, True]
    m = onnx.load(dst)
    # W is gone (nothing reads it), the other initializers are untouched, even the unused one that
    # the rewrite did not make dead.
    assert sorted(t.name for t in m.graph.initializer) == ["K3", "W.sparsecpu_int8", "unused"]
    assert [n.input[1] for n in m.graph.node if n.op_type == "SparseLinear"] == ["W.sparsecpu_int8"] * 2


@pytest.mark.parametrize("dtype", ["int8", "fp32"])
def test_external_data(dtype, tmp_path):
    rng = np.random.default_rng(6)
    w1, w2 = _w(rng, 64, 48), _w(rng, 48, 64)
    b1 = rng.standard_normal(64).astype(F32)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"), helper.make_node("Add", ["h", "B1"], ["h2"]),
             helper.make_node("Relu", ["h2"], ["h3"]), helper.make_node("MatMul", ["h3", "W2"], ["y"], name="fc2")]
    model = make_model(nodes, [_x_info(k=48)], [_out()], [_c("W1", w1.T), _c("B1", b1), _c("W2", w2.T)])
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    src = str(src_dir / "model.onnx")
    onnx.save_model(model, src, save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin",
                    size_threshold=0)
    assert (src_dir / "weights.bin").exists()
    dst_dir = tmp_path / "dst"
    dst_dir.mkdir()
    dst = str(dst_dir / "model.onnx")
    report = sparsecpu.onnx.convert(src, dst, dtype=dtype)
    assert [r.reason.split("; ")[0] for r in report.nodes] == [f"bsr {dtype} + bias + relu", f"bsr {dtype}"]
    assert (dst_dir / "model.onnx.data").exists()
    stored = onnx.load(dst, load_external_data=False)
    assert all(t.data_location == TensorProto.EXTERNAL for t in stored.graph.initializer if t.name.endswith(dtype))
    x = rng.standard_normal((2, 3, 48)).astype(F32)
    (y,) = run(dst, {"x": x})
    h = sparsecpu.linear(x, sparsecpu.pack(w1, dtype=dtype), bias=b1, activation="relu")
    np.testing.assert_array_equal(y, sparsecpu.linear(h, sparsecpu.pack(w2, dtype=dtype)))
    assert np.count_nonzero(y) > y.size // 2


def test_convert_argument_errors(tmp_path):
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [_x_info()], [_out()], [])
    src = save(model, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="dtype"):
        sparsecpu.onnx.convert(src, tmp_path / "o.onnx", dtype="int4")
    with pytest.raises(ValueError, match="format"):
        sparsecpu.onnx.convert(src, tmp_path / "o.onnx", format="csr")
    with pytest.raises(ValueError, match="min_sparsity"):
        sparsecpu.onnx.convert(src, tmp_path / "o.onnx", min_sparsity=1.5)
    with pytest.raises(ValueError, match="dst must differ"):
        sparsecpu.onnx.convert(src, src)
    (tmp_path / "junk.onnx").write_bytes(b"\x0a\xff\xff not a model")
    with pytest.raises(ValueError, match="cannot read .*junk.onnx as an ONNX model"):
        sparsecpu.onnx.convert(tmp_path / "junk.onnx", tmp_path / "o.onnx")
    with pytest.raises(FileNotFoundError, match="no such model file"):
        sparsecpu.onnx.convert(tmp_path / "missing.onnx", tmp_path / "o.onnx")
    report = sparsecpu.onnx.convert(src, tmp_path / "o.onnx")
    assert report.nodes == [] and op_types(tmp_path / "o.onnx") == ["Relu"]
    assert onnx.load(str(tmp_path / "o.onnx")).opset_import == model.opset_import


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(sparsecpu.__file__).parent.parent)
    return env


def _cli_model(tmp_path):
    rng = np.random.default_rng(7)
    w = _w(rng, 40, 32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="fc"), helper.make_node("Add", ["h", "B"], ["y"])]
    model = make_model(nodes, [_x_info()], [_out()], [_c("W", w.T), _c("B", rng.standard_normal(40))])
    return save(model, tmp_path / "in.onnx")


@pytest.mark.parametrize("how", ["module", "script"])
def test_cli_convert_verify(how, tmp_path):
    src = _cli_model(tmp_path)
    dst = str(tmp_path / "out.onnx")
    if how == "module":
        cmd = [sys.executable, "-m", "sparsecpu"]
    else:
        script = Path(sys.executable).parent / "sparsecpu"
        if not script.exists():
            pytest.skip("the sparsecpu console script is not installed in this environment")
        cmd = [str(script)]
    r = subprocess.run(cmd + ["onnx", "convert", src, dst, "--dtype", "fp32", "--verify", "--dim", "s=3"],
                       capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "fc    MatMul  40x32" in r.stdout and "converted: bsr fp32 + bias" in r.stdout
    assert "1 of 1 MatMul/Gemm nodes converted (fp32)" in r.stdout
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("y ")][0]
    diff, _, cosine = (float(v) for v in line.split()[1:])
    assert diff < 1e-4 and cosine > 0.999999
    assert op_types(dst) == ["SparseLinear"]


def test_cli_errors(tmp_path):
    r = subprocess.run([sys.executable, "-m", "sparsecpu", "onnx", "convert", str(tmp_path / "missing.onnx"),
                        str(tmp_path / "o.onnx")], capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 1 and "missing.onnx" in r.stderr
    src = _cli_model(tmp_path)
    for bad in (["--dtype", "int4"], ["--min-sparsity", "2"], ["--dim", "s"]):
        r = subprocess.run([sys.executable, "-m", "sparsecpu", "onnx", "convert", src, str(tmp_path / "o.onnx"), *bad],
                           capture_output=True, text=True, env=_env(), timeout=120)
        assert r.returncode == 2 and "usage" in r.stderr, (bad, r.stderr)


def test_panel_format_through_onnx_runtime(tmp_path):
    """format="panel" (the AMX format; what the measured choice takes where it is fastest) converts and
    runs in ONNX Runtime as sparsecpu.linear runs it: the same kernel, the same bits."""
    rng = np.random.default_rng(4)
    w = (rng.standard_normal((48, 160)) * np.repeat(rng.random((3, 160)) < 0.2, 16, axis=0)).astype(F32)
    b = rng.standard_normal(48).astype(F32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="fc"), helper.make_node("Add", ["h", "B"], ["y"])]
    model = make_model(nodes, [_x_info(k=160)], [_out()], [_c("W", w.T), _c("B", b)])
    src, dst, report = _convert(tmp_path, model, dtype="int8", format="panel")
    (r,) = report.nodes
    assert r.converted and r.reason.startswith("panel int8 + bias; format='panel' requested") and op_types(dst) == ["SparseLinear"]
    x = rng.standard_normal((2, 5, 160)).astype(F32)
    (y,) = sparsecpu.onnx.session(dst, threads=2).run(None, {"x": x})
    want = sparsecpu.linear(x, sparsecpu.pack(w, dtype="int8", format="panel"), bias=b)
    np.testing.assert_array_equal(y, want)
    with pytest.raises(ValueError, match="format='panel' needs dtype='int8'"):
        _convert(tmp_path, model, dtype="fp32", format="panel")
