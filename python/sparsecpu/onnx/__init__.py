"""ONNX front door: rewrite an exported model so that ONNX Runtime runs its sparse layers through
sparsecpu's custom-op library.

>>> import sparsecpu.onnx
>>> report = sparsecpu.onnx.convert("bert.onnx", "bert.sparse.onnx", dtype="int8")
>>> print(report)                                   # per MatMul/Gemm: converted or kept, and why
>>> sess = sparsecpu.onnx.session("bert.sparse.onnx", threads=2)
>>> outputs = sess.run(None, feeds)

The custom op is ``com.sparsecpu:SparseLinear``; ``library_path()`` is the library that implements
it (for ``SessionOptions.register_custom_ops_library`` in code that builds its own session); a
build that found no ONNX Runtime header (offline) leaves it out, and then ``library_path()`` and
``session()`` raise ``FileNotFoundError`` saying how to build it, while ``convert`` still works.
``onnx`` and ``onnxruntime`` are needed only by the functions that use them:
``pip install sparsecpu[onnx]``.
"""

from .rewrite import DOMAIN, OP_TYPE, ConvertReport, NodeReport, convert
from ._runtime import SLOW_FUSIONS, library_path, session, verify

__all__ = [
    "convert",
    "session",
    "verify",
    "library_path",
    "ConvertReport",
    "NodeReport",
    "DOMAIN",
    "OP_TYPE",
    "SLOW_FUSIONS",
]
