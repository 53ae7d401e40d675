"""The ONNX Runtime custom op (libsparsecpu_ort.so): single-node graphs against sparsecpu.linear
(the same ops/ code through the Python binding: bit-identical) and against numpy mirrors."""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import _util
import sparsecpu
import sparsecpu.onnx
from _onnx_util import make_model, run, save, sparse_linear_model

E = _util.EPS32

PARAMS = {
    "dtype": ["int8", "fp32"],
    "activation": ["none", "relu", "gelu", "gelu_tanh"],
    "bias": [True, False],
    # leading dims of X: M = 0, 1, below / above a 64-row tile, several units (split by rows), 3-D
    "lead": [(1,), (0,), (7,), (2, 3), (1, 65), (130,), (2, 0, 5)],
    "nk": [(40, 64), (13, 37), (128, 96), (4, 1)],
}


def _cases():
    return _util.pairwise(PARAMS, seed=5)


@pytest.mark.parametrize("case", _cases(), ids=lambda c: "-".join(str(v) for v in c.values()))
def test_single_node_matches_linear_and_numpy(case, tmp_path):
    n, k = case["nk"]
    lead = case["lead"]
    m = int(np.prod(lead))
    rng = np.random.default_rng(zlib.crc32(repr(case).encode()))
    w, _ = _util.pruned_weight(rng, n, k, 0.3 if k > 1 else 1.0)
    bias = (rng.standard_normal(n) + 0.5).astype(np.float32) if case["bias"] else None
    x = rng.standard_normal((*lead, k)).astype(np.float32)
    packed = sparsecpu.pack(w, dtype=case["dtype"])
    act = case["activation"]
    path = save(sparse_linear_model(packed.to_bytes(), n, k, dtype=case["dtype"], bias=bias, activation=act,
                                    x_shape=[f"d{i}" for i in range(len(lead))] + [k]), tmp_path / "m.onnx")
    (y,) = run(path, {"X": x})
    assert y.shape == (*lead, n) and y.dtype == np.float32
    # Bit-identical to the Python front door: one copy of the logic.
    expected = sparsecpu.linear(x, packed, bias=bias, activation=None if act == "none" else act)
    np.testing.assert_array_equal(y, expected)
    if m == 0:
        return
    x2, y2 = x.reshape(m, k), y.reshape(m, n)
    a = None if act == "none" else act
    if case["dtype"] == "int8":
        ex = _util.int8_expected(x2, w, bias, a)
        pre, want, tol = ex.pre, ex.y, 8 * E * ex.mag + 1e-30
    else:
        pre, want, absprod = _util.fp32_expected(x2, w, bias, a)
        tol = 8 * E * np.sqrt(k) * (absprod + (np.abs(bias) if bias is not None else 0)) + 1e-30
    _util.assert_within(y2, want, tol, "ORT vs numpy")
    if m * n >= 8:
        _util.assert_informative(pre, want, a)


def test_pairwise_cases_cover_every_pair():
    assert _util.uncovered_pairs(PARAMS, _cases()) == []


def test_runs_on_onnxruntime_pool_not_a_second_one(tmp_path):
    """The op splits work over ONNX Runtime's intra-op pool: running it starts no thread."""
    rng = np.random.default_rng(1)
    w, _ = _util.pruned_weight(rng, 768, 768, 0.2)
    path = save(sparse_linear_model(sparsecpu.pack(w, dtype="int8").to_bytes(), 768, 768, dtype="int8"), tmp_path / "m.onnx")
    sess = sparsecpu.onnx.session(path, threads=2)  # ORT starts its pool here
    x = rng.standard_normal((256, 768)).astype(np.float32)
    before = len(os.listdir("/proc/self/task"))
    (y,) = sess.run(None, {"X": x})
    sess.run(None, {"X": x})
    assert len(os.listdir("/proc/self/task")) == before
    np.testing.assert_array_equal(y, sparsecpu.linear(x, sparsecpu.pack(w, dtype="int8")))


@pytest.mark.parametrize("threads", [1, 2])
def test_thread_counts_agree(threads, tmp_path):
    rng = np.random.default_rng(2)
    w, _ = _util.pruned_weight(rng, 96, 80, 0.4)
    packed = sparsecpu.pack(w, dtype="int8")
    path = save(sparse_linear_model(packed.to_bytes(), 96, 80, dtype="int8", activation="gelu"), tmp_path / "m.onnx")
    for m in (1, 3, 200):
        x = rng.standard_normal((m, 80)).astype(np.float32)
        (y,) = run(path, {"X": x}, threads=threads)
        np.testing.assert_array_equal(y, sparsecpu.linear(x, packed, activation="gelu"))


def test_isa_env_var_reaches_the_library(tmp_path):
    """SPARSECPU_ISA caps the ORT library's kernels too (its own dispatch state, same rules)."""
    rng = np.random.default_rng(3)
    w, _ = _util.pruned_weight(rng, 40, 64, 0.5)
    x = rng.standard_normal((5, 64)).astype(np.float32)
    packed = sparsecpu.pack(w, dtype="int8")
    path = save(sparse_linear_model(packed.to_bytes(), 40, 64, dtype="int8"), tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", x)
    code = (
        "import numpy as np, sparsecpu.onnx as so;"
        f"y = so.session({path!r}).run(None, {{'X': np.load({str(tmp_path / 'x.npy')!r})}})[0];"
        f"np.save({str(tmp_path / 'y.npy')!r}, y)"
    )
    env = dict(os.environ, SPARSECPU_ISA="reference", PYTHONPATH=str(Path(sparsecpu.__file__).parent.parent))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with sparsecpu.testing.isa("reference"):
        expected = sparsecpu.linear(x, packed)
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), expected)


def test_library_path_and_plain_registration(tmp_path):
    lib = Path(sparsecpu.onnx.library_path())
    assert lib.is_file() and lib.name == "libsparsecpu_ort.so"
    assert lib.parent == Path(sparsecpu.__file__).parent
    rng = np.random.default_rng(4)
    w, _ = _util.pruned_weight(rng, 8, 16, 0.5)
    path = save(sparse_linear_model(sparsecpu.pack(w, dtype="fp32").to_bytes(), 8, 16, dtype="fp32"), tmp_path / "m.onnx")
    so = ort.SessionOptions()
    so.register_custom_ops_library(str(lib))
    sess = ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])
    x = rng.standard_normal((3, 16)).astype(np.float32)
    np.testing.assert_allclose(sess.run(None, {"X": x})[0], x @ w.T, rtol=1e-5, atol=1e-5)


def test_session_options_and_errors(tmp_path):
    rng = np.random.default_rng(5)
    w, _ = _util.pruned_weight(rng, 8, 16, 0.5)
    path = save(sparse_linear_model(sparsecpu.pack(w, dtype="fp32").to_bytes(), 8, 16, dtype="fp32"), tmp_path / "m.onnx")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = sparsecpu.onnx.session(Path(path), sess_options=so)
    assert sess.get_providers() == ["CPUExecutionProvider"]
    opts = sess.get_session_options()
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert opts.inter_op_num_threads == 1 and opts.log_severity_level == 3
    spin = sparsecpu.onnx.session(path, threads=2, spinning=True).get_session_options()
    assert spin.get_session_config_entry("session.intra_op.allow_spinning") == "1" and spin.intra_op_num_threads == 2
    with open(path, "rb") as f:
        assert sparsecpu.onnx.session(f.read(), threads=1).get_outputs()[0].name == "Y"
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="threads"):
            sparsecpu.onnx.session(path, threads=bad)


@pytest.mark.parametrize(
    "x_shape, y_shape",
    [(["b", "s", 16], ["b", "s", 8]), ([3, 16], [3, 8]), (["m", "k"], ["m", 8]), ([2, 3, 4, 16], [2, 3, 4, 8]),
     ([None, 16], None), (None, None)],
)
def test_output_shape_inferred(x_shape, y_shape, tmp_path):
    """ORT learns Y = X's shape with the last dim N (symbolic dims kept); an unknown rank or an
    unknown unnamed dim leaves Y's shape unknown (the C API cannot say "unknown" without a name)."""
    w = np.zeros((8, 16), np.float32)
    w[:4, 3] = 1.0
    path = save(sparse_linear_model(sparsecpu.pack(w, dtype="fp32").to_bytes(), 8, 16, dtype="fp32", x_shape=x_shape),
                tmp_path / "m.onnx")
    out = sparsecpu.onnx.session(path).get_outputs()[0]
    if y_shape is None:
        assert out.shape is None or out.shape == [] or all(isinstance(d, str) for d in out.shape), out.shape
    else:
        assert [None if isinstance(d, int) and d < 0 else d for d in out.shape] == y_shape
    x = np.ones((2, 3, 4, 16), np.float32) if x_shape in ([2, 3, 4, 16], None) else None
    if x is not None:
        (y,) = run(path, {"X": x})
        assert y.shape == (2, 3, 4, 8) and (y[..., :4] == 1).all() and (y[..., 4:] == 0).all()


@pytest.mark.parametrize(
    "x_shape, feed_shape, match",
    [
        (["m", "k"], (3, 15), "x must be a float32 tensor of shape \\[..., 16\\], got \\[3, 15\\]"),
        (["k"], (5,), "x must be a float32 tensor of shape \\[..., 16\\], got \\[5\\]"),
    ],
)
def test_wrong_input_shape_is_an_error_naming_the_node(x_shape, feed_shape, match, tmp_path):
    rng = np.random.default_rng(6)
    w, _ = _util.pruned_weight(rng, 8, 16, 0.5)
    path = save(sparse_linear_model(sparsecpu.pack(w, dtype="int8").to_bytes(), 8, 16, dtype="int8",
                                    x_shape=x_shape), tmp_path / "m.onnx")
    sess = sparsecpu.onnx.session(path)
    with pytest.raises(Exception, match="SparseLinear node 'sl': " + match):
        sess.run(None, {"X": np.ones(feed_shape, np.float32)})


@pytest.mark.parametrize("dtype", ["int8", "fp32"])
def test_nan_input_is_an_error(dtype, tmp_path):
    rng = np.random.default_rng(7)
    w, _ = _util.pruned_weight(rng, 8, 16, 0.5)
    path = save(sparse_linear_model(sparsecpu.pack(w, dtype=dtype).to_bytes(), 8, 16, dtype=dtype), tmp_path / "m.onnx")
    x = np.ones((2, 16), np.float32)
    x[1, 3] = np.nan
    with pytest.raises(Exception, match="SparseLinear node 'sl': x contains NaN or Inf"):
        run(path, {"X": x})


def _op_types_after_optimization(path, tmp_path, **kw):
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    sparsecpu.onnx.session(path, sess_options=so, **kw)
    return {n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node}


def test_session_keeps_residual_add_and_layernorm_unfused(tmp_path):
    """sparsecpu.onnx.session turns off ONNX Runtime's SkipLayerNormFusion (SLOW_FUSIONS: its fused
    node is several times slower on CPU); disabled_optimizers=[] gives it back."""
    shape = [1, 128, 32]
    nodes = [helper.make_node("Add", ["a", "b"], ["t"]),
             helper.make_node("LayerNormalization", ["t", "g", "beta"], ["y"], axis=-1, epsilon=1e-12)]
    inits = [numpy_helper.from_array(np.full(32, 1.5, np.float32), "g"),
             numpy_helper.from_array(np.full(32, 0.25, np.float32), "beta")]
    model = make_model(nodes, [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in "ab"],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits)
    path = save(model, tmp_path / "add_ln.onnx")
    assert sparsecpu.onnx.SLOW_FUSIONS == ("SkipLayerNormFusion",)
    assert _op_types_after_optimization(path, tmp_path) == {"Add", "LayerNormalization"}
    assert "SkipLayerNormalization" in _op_types_after_optimization(path, tmp_path, disabled_optimizers=[])
    rng = np.random.default_rng(6)
    a, b = (rng.standard_normal(shape).astype(np.float32) for _ in "ab")
    t = a + b
    want = (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, keepdims=True) + 1e-12) * 1.5 + 0.25
    np.testing.assert_allclose(sparsecpu.onnx.session(path).run(None, {"a": a, "b": b})[0], want, rtol=1e-4, atol=1e-4)
