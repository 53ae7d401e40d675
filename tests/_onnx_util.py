"""Helpers for the ONNX tests: tiny models built with onnx.helper, run in ONNX Runtime."""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import sparsecpu
import sparsecpu.onnx

# onnx 1.23's make_model writes IR version 14, which onnxruntime 1.31 refuses: every model here
# says which IR version it is.
IR_VERSION = 8


def make_model(nodes, inputs, outputs, initializers, opset: int = 17, domains: Sequence[str] = ()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION)


def _header_format(packed_bytes: bytes) -> str:
    """The format a packed buffer's header names (bytes 12..16; "bsr" for one too short or unknown),
    read without validating: the corruption tests hand in broken buffers on purpose."""
    code = int.from_bytes(packed_bytes[12:16], "little") if len(packed_bytes) >= 16 else 1
    return {2: "dense", 3: "panel"}.get(code, "bsr")


def sparse_linear_model(
    packed_bytes: bytes,
    n: int,
    k: int,
    *,
    dtype: str,
    bias: Optional[np.ndarray] = None,
    activation: str = "none",
    x_shape: Optional[List] = "default",
    attrs: Optional[dict] = None,
    node_name: str = "sl",
) -> onnx.ModelProto:
    """One SparseLinear node: Y = act(X W^T + bias) with W given as a packed buffer."""
    inits = [numpy_helper.from_array(np.frombuffer(packed_bytes, np.uint8).copy(), "W")]
    inputs = ["X", "W"]
    if bias is not None:
        inits.append(numpy_helper.from_array(np.asarray(bias, np.float32), "B"))
        inputs.append("B")
    a = dict(N=n, K=k, dtype=dtype, format=_header_format(packed_bytes), activation=activation)
    a.update(attrs or {})
    a = {key: v for key, v in a.items() if v is not None}
    node = helper.make_node("SparseLinear", inputs, ["Y"], name=node_name, domain=sparsecpu.onnx.DOMAIN, **a)
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape if x_shape != "default" else ["m", k])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    return make_model([node], [x], [y], inits, domains=[sparsecpu.onnx.DOMAIN])


def save(model: onnx.ModelProto, path: Path) -> str:
    onnx.save(model, str(path))
    return str(path)


def run(path, feeds: dict, threads: int = 2) -> List[np.ndarray]:
    sess = sparsecpu.onnx.session(str(path), threads=threads)
    return sess.run(None, feeds)


def assert_node_error(node: str, fn, match: str) -> None:
    """``fn()`` raises an ONNX Runtime error that names ``node`` (e.g. "Attention node 'att'") and
    matches the regular expression ``match``."""
    with pytest.raises(Exception) as info:
        fn()
    msg = str(info.value)
    assert f"{node}: " in msg and re.search(match, msg), msg


def op_types(path) -> List[str]:
    return [n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node]
