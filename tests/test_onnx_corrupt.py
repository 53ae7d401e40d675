"""Model files are untrusted: a corrupted SparseLinear node makes session creation fail with an ORT
error naming the node and the problem, never a crash or an out-of-bounds read. Run these under
AddressSanitizer with ``bash scripts/sanitize.sh -k onnx_corrupt`` (see the README)."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import _util
import sparsecpu
import sparsecpu.onnx
from _onnx_util import make_model, save, sparse_linear_model

N, K = 12, 16
COLS = {0: [1, 3, 9, 12, 14], 2: [0, 7, 15]}  # group 1 empty


def weight() -> np.ndarray:
    rng = np.random.default_rng(21)
    w = np.zeros((N, K), np.float32)
    for g, cols in COLS.items():
        w[4 * g : 4 * g + 4, cols] = rng.uniform(0.5, 2.0, (4, len(cols))) * rng.choice([-1, 1], (4, len(cols)))
    return w


def packed(dtype: str) -> bytes:
    return sparsecpu.pack(weight(), dtype=dtype).to_bytes()


def edited(dtype: str, edit) -> bytes:
    b = _util.Buffer.of(packed(dtype))
    edit(b)
    return b.tobytes()


_set = _util.header_edit
_arr = _util.array_edit


# (id, packed bytes of a dtype, message regex)
BUFFER_CORRUPTIONS = [
    ("version-3", lambda dt: edited(dt, _set("version", 3)), r"version 3 is not supported"),
    ("bad-magic", lambda dt: edited(dt, _set("magic", b"NOTSPCPU")), r"bad magic"),
    ("truncated", lambda dt: packed(dt)[:-64], r"length is \d+ bytes"),
    ("truncated-header", lambda dt: packed(dt)[:40], r"shorter than the header"),
    ("trailing-bytes", lambda dt: packed(dt) + bytes(64), r"length is \d+ bytes"),
    ("empty", lambda dt: b"", r"shorter than the header"),
    ("col-out-of-range", lambda dt: edited(dt, _arr("col_idx", 11, 16)), r"column index 16 out of range \(K = 16\)"),
    ("col-max", lambda dt: edited(dt, _arr("col_idx", 2, 65535)), r"column index 65535 out of range"),
    ("row-ptr-past-end", lambda dt: edited(dt, _arr("row_ptr", 3, 16)), r"row_ptr of group 2 is out of range"),
    ("row-ptr-decreasing", lambda dt: edited(dt, _arr("row_ptr", 2, 4)), r"out of range or decreasing"),
    ("nnzb-grown", lambda dt: edited(dt, _set("nnzb", 64)), r"length is \d+ bytes"),
    ("n-huge", lambda dt: edited(dt, _set("n", 2**40)), r"2\*\*31"),
]


def _expect_session_error(path, match):
    with pytest.raises(Exception) as info:
        sparsecpu.onnx.session(path)
    msg = str(info.value)
    assert "SparseLinear node 'sl': " in msg, msg
    assert re.search(match, msg), msg


@pytest.mark.parametrize("dtype", ["int8", "fp32"])
@pytest.mark.parametrize("name, make, match", BUFFER_CORRUPTIONS, ids=[c[0] for c in BUFFER_CORRUPTIONS])
def test_corrupted_packed_weight_fails_session_creation(dtype, name, make, match, tmp_path):
    path = save(sparse_linear_model(make(dtype), N, K, dtype=dtype), tmp_path / "m.onnx")
    _expect_session_error(path, match)


def test_the_uncorrupted_model_runs(tmp_path):
    """The corruptions above start from a model that loads and computes the right thing."""
    for dtype in ("int8", "fp32"):
        b = _util.Buffer.of(packed(dtype))
        assert b.row_ptr.tolist() == [0, 8, 8, 12] and b.header["index_bytes"] == 2
        path = save(sparse_linear_model(packed(dtype), N, K, dtype=dtype), tmp_path / f"{dtype}.onnx")
        x = np.random.default_rng(0).standard_normal((3, K)).astype(np.float32)
        y = sparsecpu.onnx.session(path).run(None, {"X": x})[0]
        np.testing.assert_allclose(y, x @ weight().T, rtol=0.05, atol=0.05)


@pytest.mark.parametrize(
    "attrs, match",
    [
        ({"N": 16}, r"attributes N = 16, K = 16 do not match the packed weight \(N = 12, K = 16\)"),
        ({"K": 15}, r"attributes N = 12, K = 15 do not match"),
        ({"N": -1}, r"do not match"),
        ({"N": None}, r"missing or non-integer attribute 'N'"),
        ({"dtype": "fp32"}, r"attribute dtype = fp32 does not match the packed weight \(int8\)"),
        ({"dtype": "int4"}, r"attribute 'dtype' must be int8 or fp32"),
        ({"format": "csr"}, r"attribute 'format' must be bsr, dense or panel, got 'csr'"),
        ({"format": "dense"}, r"attribute format = dense does not match the packed weight \(bsr\)"),
        ({"activation": "swish"}, r"activation must be one of none, relu, gelu, gelu_tanh, got 'swish'"),
    ],
)
def test_bad_attributes_fail_session_creation(attrs, match, tmp_path):
    path = save(sparse_linear_model(packed("int8"), N, K, dtype="int8", attrs=attrs), tmp_path / "m.onnx")
    _expect_session_error(path, match)


def test_panel_weight_runs_and_its_format_attribute_must_match(tmp_path):
    """The custom op runs the panel format (the AMX kernel at the amx level, the reference below it), like
    sparsecpu.linear; a node that says another format fails session creation."""
    p = sparsecpu.pack(weight(), dtype="int8", format="panel")
    path = save(sparse_linear_model(p.to_bytes(), N, K, dtype="int8"), tmp_path / "m.onnx")  # format="panel"
    x = np.random.default_rng(3).standard_normal((5, K)).astype(np.float32)
    (y,) = sparsecpu.onnx.session(path, threads=1).run(None, {"X": x})
    np.testing.assert_array_equal(y, sparsecpu.linear(x, p))
    path = save(sparse_linear_model(p.to_bytes(), N, K, dtype="int8", attrs={"format": "bsr"}), tmp_path / "bsr.onnx")
    _expect_session_error(path, r"attribute format = bsr does not match the packed weight \(panel\)")


def test_bias_of_the_wrong_length(tmp_path):
    path = save(sparse_linear_model(packed("int8"), N, K, dtype="int8", bias=np.ones(N + 1, np.float32)), tmp_path / "m.onnx")
    _expect_session_error(path, r"bias must be a float32 tensor of shape \[12\], got \[13\]")


def test_non_constant_bias_checked_at_run(tmp_path):
    """A bias fed at run time (not an initializer) is checked on every run."""
    node = helper.make_node("SparseLinear", ["X", "W", "B"], ["Y"], name="sl", domain=sparsecpu.onnx.DOMAIN,
                            N=N, K=K, dtype="fp32", format="bsr", activation="none")
    w = numpy_helper.from_array(np.frombuffer(packed("fp32"), np.uint8).copy(), "W")
    model = make_model(
        [node],
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["m", K]),
         helper.make_tensor_value_info("B", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], [w], domains=[sparsecpu.onnx.DOMAIN])
    sess = sparsecpu.onnx.session(save(model, tmp_path / "m.onnx"))
    x = np.ones((2, K), np.float32)
    y = sess.run(None, {"X": x, "B": np.arange(N, dtype=np.float32)})[0]
    np.testing.assert_allclose(y, x @ weight().T + np.arange(N), rtol=1e-5, atol=1e-5)
    with pytest.raises(Exception, match=r"SparseLinear node 'sl': bias must be a float32 tensor of shape \[12\], got \[5\]"):
        sess.run(None, {"X": x, "B": np.ones(5, np.float32)})


def test_weight_that_is_not_an_initializer(tmp_path):
    node = helper.make_node("SparseLinear", ["X", "W"], ["Y"], name="sl", domain=sparsecpu.onnx.DOMAIN,
                            N=N, K=K, dtype="int8", format="bsr", activation="none")
    model = make_model(
        [node],
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["m", K]),
         helper.make_tensor_value_info("W", TensorProto.UINT8, ["b"])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], [], domains=[sparsecpu.onnx.DOMAIN])
    _expect_session_error(save(model, tmp_path / "m.onnx"), r"packed weight \(input 1\) must be a constant initializer")


def test_weight_of_the_wrong_rank(tmp_path):
    model = sparse_linear_model(packed("int8"), N, K, dtype="int8")
    raw = np.frombuffer(packed("int8"), np.uint8)
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(raw.reshape(-1, 64).copy(), "W"))
    _expect_session_error(save(model, tmp_path / "m.onnx"), r"must be a 1-D uint8 tensor, got shape \[\d+, 64\]")


@pytest.mark.parametrize("dtype", ["int8", "fp32"])
def test_random_byte_corruption_never_crashes(dtype, tmp_path):
    """Flipped bytes anywhere in the packed weight: the session fails cleanly, or (a flip in padding
    between sections) it loads and runs."""
    rng = np.random.default_rng(99)
    raw = np.frombuffer(packed(dtype), np.uint8)
    x = rng.standard_normal((2, K)).astype(np.float32)
    failures = 0
    for trial in range(40):
        bad = raw.copy()
        at = rng.choice(bad.size, size=int(rng.integers(1, 4)), replace=False)
        bad[at] ^= rng.integers(1, 256, size=at.size).astype(np.uint8)
        path = save(sparse_linear_model(bad.tobytes(), N, K, dtype=dtype), tmp_path / f"m{trial}.onnx")
        try:
            sess = sparsecpu.onnx.session(path)
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
            assert "SparseLinear node 'sl': invalid packed weight: " in str(e) or "do not match" in str(e), str(e)
            failures += 1
            continue
        assert np.isfinite(sess.run(None, {"X": x})[0]).all()
    assert failures >= 20


def test_converted_model_with_edited_initializer(tmp_path):
    """The same checks guard a model written by convert() and edited afterwards."""
    rng = np.random.default_rng(8)
    w, _ = _util.pruned_weight(rng, 32, 48, 0.3)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", 48])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    src = save(make_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [x], [y],
                          [numpy_helper.from_array(w.T.copy(), "w")]), tmp_path / "src.onnx")
    dst = str(tmp_path / "dst.onnx")
    sparsecpu.onnx.convert(src, dst, dtype="int8")
    model = onnx.load(dst)
    (init,) = [t for t in model.graph.initializer if t.data_type == TensorProto.UINT8]
    b = _util.Buffer.of(numpy_helper.to_array(init).tobytes())
    b.col_idx[0] = 48
    init.CopyFrom(numpy_helper.from_array(np.frombuffer(b.tobytes(), np.uint8).copy(), init.name))
    onnx.save(model, dst)
    with pytest.raises(Exception, match=r"SparseLinear node 'mm': invalid packed weight: column index 48 out of range"):
        sparsecpu.onnx.session(dst)
