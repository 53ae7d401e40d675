"""ONNX Runtime baselines: sessions sized to the benchmark's thread count, dynamic int8 quantization."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from typing import Any, Dict, Iterator, Mapping, Optional

import numpy as np

IR_VERSION = 10
"""IR version written into the models built here: onnx >= 1.23 defaults to IR 14, which onnxruntime
1.31 refuses (it reads up to 13)."""
OPSET = 18
"""ONNX opset of the models built and exported here (torch's exporter implements nothing older)."""


def missing() -> Optional[str]:
    """Why the ONNX Runtime baselines cannot run (a package is missing), or None if they can."""
    for module, package in (("onnx", "onnx"), ("onnxruntime", "onnxruntime")):
        try:
            __import__(module)
        except ImportError:
            return f"{package} is not installed (pip install {package})"
    return None


def session(model: Any, threads: int) -> Any:
    """An ``onnxruntime.InferenceSession`` of ``model`` (a path or serialized bytes) on the CPU with
    ``threads`` intra-op threads that do not spin, sequential execution, and the graph optimizers
    that ``sparsecpu.onnx.session`` turns off turned off here too (the baselines get the same
    session settings as the converted model)."""
    import onnxruntime as ort

    from ..onnx._runtime import SLOW_FUSIONS

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # Spinning intra-op threads keep busy-waiting after a run and take the cores from whatever the
    # interleaved benchmark times next (measured: sparsecpu and F.linear both ~2x slower beside a
    # spinning ORT session); off, as in sparsecpu.onnx.session.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: the benchmark prints its own notes
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(SLOW_FUSIONS))


def matmul_model(w_kn: np.ndarray) -> bytes:
    """A one-node ONNX graph ``y = MatMul(x, W)`` with ``W`` (``K x N`` float32) as an initializer and
    ``x`` of shape ``[M, K]`` (M symbolic), serialized."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    k, n = w_kn.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", n])],
        [numpy_helper.from_array(np.ascontiguousarray(w_kn, dtype=np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model.SerializeToString()


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silences what exporters and quantizers print and log (progress lines, pre-processing advice)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


def quantize_dynamic(src: str, dst: str) -> None:
    """ONNX Runtime's own dynamic int8 quantization (``onnxruntime.quantization.quantize_dynamic`` with
    its defaults and s8 weights): ``src`` model file to ``dst``."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    with quiet():
        ort_quantize_dynamic(src, dst, weight_type=QuantType.QInt8)


def quantize_dynamic_bytes(model: bytes) -> bytes:
    """:func:`quantize_dynamic` on serialized models (through a temporary directory)."""
    with tempfile.TemporaryDirectory() as d:
        src, dst = os.path.join(d, "fp32.onnx"), os.path.join(d, "int8.onnx")
        with open(src, "wb") as f:
            f.write(model)
        quantize_dynamic(src, dst)
        with open(dst, "rb") as f:
            return f.read()


def setup_model_row(state: Dict[str, Any], name: str, src: str, tmp: str, threads: int,
                    inputs: Mapping[str, np.ndarray]) -> None:
    """In the worker of ``bench model``'s ONNX Runtime row ``name`` (no torch there): turns the exported
    model ``src`` into that row's session with ``threads`` intra-op threads and stores its run on
    ``inputs`` (those the graph declares) under ``"forward"``. ``ort_fp32``: ``src`` itself;
    ``ort_dynamic_int8``: after :func:`quantize_dynamic`; ``sparsecpu_ort_<dtype>``: after
    ``sparsecpu.onnx.convert``, run by ``sparsecpu.onnx.session``. Files go to ``tmp``."""
    if name == "ort_fp32":
        sess = session(src, threads)
    elif name == "ort_dynamic_int8":
        dst = os.path.join(tmp, "model.int8.onnx")
        quantize_dynamic(src, dst)
        sess = session(dst, threads)
    elif name.startswith("sparsecpu_ort_"):
        import sparsecpu.onnx

        dtype = name[len("sparsecpu_ort_"):]
        dst = os.path.join(tmp, f"model.sparsecpu.{dtype}.onnx")
        with quiet():
            sparsecpu.onnx.convert(src, dst, dtype=dtype)
        sess = sparsecpu.onnx.session(dst, threads)
    else:
        raise ValueError(f"not an ONNX Runtime row: {name!r}")
    feed = {i.name: inputs[i.name] for i in sess.get_inputs()}
    state["fns"]["forward"] = lambda: sess.run(None, feed)
    state["facts"]["ort_intra_op_threads"] = sess.get_session_options().intra_op_num_threads
