"""Leaks and concurrency: memory stays flat over many calls of every front door, and Python threads
sharing one ONNX Runtime session and one sparsified torch model get the single-threaded results.

RSS is read from /proc/self/statm after a warm-up (which fills the allocator's arenas, numpy's and
torch's caches, ORT's arena and the thread pools) and again after the loop, both after
``gc.collect()``. The slack, 2 MiB over 10**4 calls, catches a leak of about 200 bytes or more per
call: any leaked output array (the outputs here are 4 KiB to 16 KiB), packed buffer, pybind11 or ORT
tensor, or per-call C++ allocation; it tolerates the allocator's own noise (a page or two of
fragmentation, a late-grown arena), which a true leak outgrows on every loop. So a loop that ends
above the slack is run once more, and only growth in both loops fails the test.
"""

from __future__ import annotations

import gc
import os
import struct
import sys
import threading

import numpy as np
import pytest

import _util
import sparsecpu

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
if not sys.platform.startswith("linux"):
    pytest.skip("RSS is read from /proc/self/statm", allow_module_level=True)
if "asan" in os.environ.get("LD_PRELOAD", ""):
    # scripts/sanitize.sh: ASan holds freed memory in its quarantine, so RSS grows without a leak.
    pytest.skip("RSS is not a leak measure under AddressSanitizer", allow_module_level=True)

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import sparsecpu.onnx  # noqa: E402
from _onnx_util import make_model, save  # noqa: E402

CALLS = 10_000
SLACK_MIB = 2.0
_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE / 2**20


def _loop_growth(fn, calls: int) -> float:
    gc.collect()
    before = rss_mib()
    for i in range(calls):
        fn(i)
    gc.collect()
    return rss_mib() - before


def assert_flat(fn, *, calls: int = CALLS, warmup: int = 500, what: str = "") -> None:
    """RSS grows by less than SLACK_MIB over ``calls`` calls of ``fn(i)`` after ``warmup`` calls
    (measured twice if the first loop ends above the slack: see the module docstring)."""
    for i in range(warmup):
        fn(i)
    first = _loop_growth(fn, calls)
    if first < SLACK_MIB:
        return
    second = _loop_growth(fn, calls)
    assert second < SLACK_MIB, (
        f"{what}: RSS grew by {first:.2f} MiB, then by {second:.2f} MiB over two loops of {calls} calls "
        f"(slack {SLACK_MIB} MiB): a leak of about {second * 2**20 / calls:.0f} bytes per call"
    )


# ---------------------------------------------------------------------------------------------
# A small MLP, pruned in 4x1 blocks: the torch model (sparsified) and the same weights as an ONNX graph
# (MatMul + Add + Relu, converted to SparseLinear nodes).

DIMS = (64, 128, 96, 32)


def _mlp_weights(seed: int = 11):
    rng = np.random.default_rng(seed)
    out = []
    for k, n in zip(DIMS[:-1], DIMS[1:]):
        w, _ = _util.pruned_weight(rng, n, k, 0.3)
        out.append((w, rng.standard_normal(n).astype(np.float32)))
    return out


def torch_mlp(dtype: str = "int8") -> torch.nn.Module:
    layers = []
    for i, (w, b) in enumerate(_mlp_weights()):
        lin = torch.nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w))
            lin.bias.copy_(torch.from_numpy(b))
        layers.append(lin)
        if i < len(DIMS) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers).eval()
    report = sparsecpu.sparsify(model, dtype=dtype)
    assert sum(isinstance(m, sparsecpu.nn.SparseLinear) for m in model) == len(DIMS) - 1, report
    return model


def onnx_mlp(tmp_path, dtype: str = "int8") -> str:
    nodes, inits = [], []
    h = "x"
    weights = _mlp_weights()
    for i, (w, b) in enumerate(weights):
        inits += [numpy_helper.from_array(w.T.copy(), f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [helper.make_node("MatMul", [h, f"w{i}"], [f"mm{i}"], name=f"mm{i}"),
                  helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"a{i}"], name=f"add{i}")]
        h = f"a{i}"
        if i < len(weights) - 1:
            nodes.append(helper.make_node("Relu", [h], [f"r{i}"], name=f"relu{i}"))
            h = f"r{i}"
    nodes[-1].output[0] = "y"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", DIMS[0]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    src = save(make_model(nodes, [x], [y], inits), tmp_path / "mlp.onnx")
    dst = str(tmp_path / f"mlp.{dtype}.onnx")
    sparsecpu.onnx.convert(src, dst, dtype=dtype)
    assert [n.op_type for n in onnx.load(dst).graph.node].count("SparseLinear") == len(weights)
    return dst


# ---------------------------------------------------------------------------------------------
# RSS over 10**4 calls


def test_linear_leaks_nothing(num_threads):
    """sparsecpu.linear on every kernel path: BSR int8 (row tile and skinny), BSR fp32, dense int8,
    int8 with outlier columns, with bias and activation, numpy and torch inputs, and the error path.
    One thread: the loop measures allocations, and a busy 2-core machine (CI) would spend most of its
    time waking workers; the threaded paths are the concurrency test's."""
    num_threads(1)
    rng = np.random.default_rng(1)
    w, _ = _util.pruned_weight(rng, 256, 192, 0.4)
    bias = rng.standard_normal(256).astype(np.float32)
    packs = [sparsecpu.pack(w, dtype="int8", format="bsr"), sparsecpu.pack(w, dtype="fp32"),
             sparsecpu.pack(w, dtype="int8", format="dense"),
             sparsecpu.pack(w, dtype="int8", format="bsr", outlier_threshold=2.5)]
    xs = [rng.standard_normal((m, 192)).astype(np.float32) for m in (16, 1, 5)]
    xt = torch.from_numpy(xs[0])
    bad_x = xs[0].copy()
    bad_x[3, 7] = np.nan

    def call(i: int) -> None:
        p = packs[i % len(packs)]
        if i % 7 == 6:
            with pytest.raises(ValueError):
                sparsecpu.linear(bad_x, p)
        elif i % 5 == 4:
            sparsecpu.linear(xt, p, bias=bias, activation="gelu")
        else:
            sparsecpu.linear(xs[i % len(xs)], p, bias=bias if i % 2 else None, activation="relu" if i % 3 else None)

    assert_flat(call, what="sparsecpu.linear")


def test_packed_weight_validation_leaks_nothing():
    """Rebuilding packed weights from bytes, accepted and rejected (the exception path of _C.validate)."""
    w, _ = _util.pruned_weight(np.random.default_rng(2), 64, 96, 0.4)
    good = [sparsecpu.pack(w, dtype=d, format=f).to_bytes() for d, f in (("int8", "bsr"), ("fp32", "bsr"), ("int8", "dense"))]
    bad = []
    for g in good:
        b = bytearray(g)
        # One kept block fewer than the data holds: found only at the end of the full check.
        struct.pack_into("<Q", b, 56, struct.unpack_from("<Q", b, 56)[0] - 1)
        bad.append(bytes(b))

    def call(i: int) -> None:
        if i % 2:
            sparsecpu.PackedWeight.from_bytes(good[i % 3])
        else:
            with pytest.raises(ValueError):
                sparsecpu.PackedWeight.from_bytes(bad[i % 3])

    assert_flat(call, what="PackedWeight.from_bytes")


def test_sparse_linear_forward_leaks_nothing(num_threads):
    num_threads(1)
    rng = np.random.default_rng(3)
    lin = torch.nn.Linear(192, 256)
    w, _ = _util.pruned_weight(rng, 256, 192, 0.4)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w))
    layers = [sparsecpu.nn.SparseLinear.from_linear(lin, dtype=d) for d in ("int8", "fp32")]
    xs = [torch.from_numpy(rng.standard_normal(s).astype(np.float32)) for s in ((2, 8, 192), (1, 192))]

    def call(i: int) -> None:
        with torch.inference_mode():
            layers[i % 2](xs[(i // 2) % 2])

    assert_flat(call, what="SparseLinear.forward")


def test_ort_session_run_leaks_nothing(tmp_path):
    sess = sparsecpu.onnx.session(onnx_mlp(tmp_path), threads=2)
    rng = np.random.default_rng(4)
    xs = [rng.standard_normal((m, DIMS[0])).astype(np.float32) for m in (16, 1, 7)]

    def call(i: int) -> None:
        sess.run(None, {"x": xs[i % 3]})

    assert_flat(call, what="InferenceSession.run with the custom ops")


def test_creating_and_dropping_sessions_leaks_nothing(tmp_path):
    """100 sessions, each registering the custom-op library, running once and dropped; and 100 whose
    creation fails in the custom op's kernel creation (a corrupted packed weight). The library keeps
    one small domain object per registration for the life of the process (ORT gives it no moment to
    free it), tens of bytes each: far under the slack."""
    path = onnx_mlp(tmp_path)
    model = onnx.load(path)
    init = next(t for t in model.graph.initializer if t.data_type == TensorProto.UINT8)
    raw = numpy_helper.to_array(init).copy()
    raw[56:64] = np.frombuffer(struct.pack("<Q", struct.unpack_from("<Q", raw, 56)[0] - 1), np.uint8)  # kept blocks
    init.CopyFrom(numpy_helper.from_array(raw, init.name))
    bad = model.SerializeToString()
    x = np.random.default_rng(5).standard_normal((4, DIMS[0])).astype(np.float32)

    def call(i: int) -> None:
        if i % 2:
            with pytest.raises(Exception, match="invalid packed weight"):
                sparsecpu.onnx.session(bad, threads=2)
        else:
            sparsecpu.onnx.session(path, threads=2).run(None, {"x": x})

    assert_flat(call, calls=200, warmup=20, what="onnxruntime sessions with the custom-op library")


# ---------------------------------------------------------------------------------------------
# Concurrency


def test_threads_sharing_a_session_and_a_model_get_the_single_threaded_bits(tmp_path):
    """4 Python threads run one ORT session (SparseLinear nodes on ORT's intra-op pool) and one
    sparsified torch model (sparsecpu's kernels on torch's OpenMP runtime) at the same time, on
    inputs of several row counts (skinny and tiled kernels); every output equals, bit for bit, the
    one computed before on one thread."""
    sess = sparsecpu.onnx.session(onnx_mlp(tmp_path), threads=2)
    model = torch_mlp()
    rng = np.random.default_rng(6)
    xs = [rng.standard_normal((m, DIMS[0])).astype(np.float32) for m in (1, 3, 8, 9, 16, 33, 64, 5)]
    with torch.inference_mode():
        want_torch = [model(torch.from_numpy(x)).numpy().copy() for x in xs]
    want_ort = [sess.run(None, {"x": x})[0] for x in xs]
    assert not np.array_equal(want_ort[0], np.zeros_like(want_ort[0]))

    threads, rounds = 4, 60
    start = threading.Barrier(threads)
    errors: list = []

    def worker(t: int) -> None:
        try:
            start.wait()
            for r in range(rounds):
                i = (t * 3 + r) % len(xs)
                (y,) = sess.run(None, {"x": xs[i]})
                if not np.array_equal(y, want_ort[i]):
                    errors.append(f"thread {t} round {r}: ORT output for M = {len(xs[i])} differs")
                with torch.inference_mode():
                    yt = model(torch.from_numpy(xs[(i + 1) % len(xs)])).numpy()
                if not np.array_equal(yt, want_torch[(i + 1) % len(xs)]):
                    errors.append(f"thread {t} round {r}: torch output for M = {len(xs[(i + 1) % len(xs)])} differs")
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(f"thread {t}: {type(e).__name__}: {e}")

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(timeout=120)
    assert not any(th.is_alive() for th in pool), "a worker thread hung"
    assert not errors, "\n".join(errors[:10])
