"""ONNX Runtime side: the custom-op library, sessions, and the comparison behind ``--verify``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

_LIBRARY = "libsparsecpu_ort.so"

SLOW_FUSIONS = ("SkipLayerNormFusion",)
"""ONNX Runtime graph optimizers that :func:`session` turns off by default, because on CPU their
fused node is slower than the nodes it replaces: onnxruntime 1.31's ``SkipLayerNormalization``
takes 315 us for a 1 x 128 x 768 fp32 residual add + LayerNorm on 2 threads (600 us on 1), where
``Add`` + ``LayerNormalization`` take 82 us (93 us): 25 such pairs per BERT-base forward."""


def _need(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(f"sparsecpu.onnx needs {module}: pip install sparsecpu[onnx]") from None


def _library_file() -> Path:
    """Where the package keeps ``libsparsecpu_ort.so``: beside ``_C``, in the package directory."""
    return Path(__file__).resolve().parent.parent / _LIBRARY


def library_status() -> Tuple[Optional[str], Optional[str]]:
    """``(path, None)`` when the custom-op library is installed, else ``(None, why and how to get it)``.

    The build skips the library, with a warning, when it cannot find or fetch the ONNX Runtime C API
    header (an offline machine); the file beside the package is what tells: nothing else could be
    out of date with it.
    """
    path = _library_file()
    if path.is_file():
        return str(path), None
    return None, (
        f"{path} is missing: this sparsecpu installation was built without its ONNX Runtime custom-op "
        "library (the build found no onnxruntime_c_api.h and could not fetch it; `pip install -v` shows "
        "the build's warning). sparsecpu.onnx.convert works without it; to run converted models, "
        "reinstall from the source tree with the header's directory given: ONNXRUNTIME_INCLUDE_DIR=/path/to/"
        "dir/holding/onnxruntime_c_api.h pip install . (e.g. /usr/include/onnxruntime from Debian's "
        "libonnxruntime-dev), or run a plain `pip install .` where deb.debian.org can be reached"
    )


def library_path() -> str:
    """Absolute path of ``libsparsecpu_ort.so``, the ONNX Runtime custom-op library shipped in the
    package (for ``SessionOptions.register_custom_ops_library``).

    Raises:
        FileNotFoundError: the package was built without it (no ONNX Runtime header at build
            time); the message says how to build it.
    """
    path, missing = library_status()
    if path is None:
        raise FileNotFoundError(missing)
    return path


def session(path: Any, threads: Optional[int] = None, *, spinning: bool = False, **kw):
    """An ``onnxruntime.InferenceSession`` for ``path`` (a file name or serialized model bytes)
    with sparsecpu's custom ops registered.

    Args:
        path: model file (``str`` or ``os.PathLike``) or the model as ``bytes``.
        threads: ONNX Runtime's intra-op threads, which the ``SparseLinear`` kernels share (they
            run on ONNX Runtime's intra-op pool, not a pool of their own). Default: ONNX Runtime's
            default (one per physical core).
        spinning: let ONNX Runtime's idle intra-op threads busy-wait for the next parallel section
            (``session.intra_op.allow_spinning``). Off by default: spinning threads take whole cores
            from anything else runnable (another process, torch in the same one), and on a small or
            shared machine that slows every op more than the wake-up latency it saves (BERT-base,
            2 shared cores: 2-2.5x slower with spinning). Turn it on for a dedicated machine.
        **kw: passed to ``InferenceSession`` (``sess_options`` is extended, not replaced;
            ``providers`` defaults to the CPU provider, the only one the custom op runs on;
            ``disabled_optimizers`` defaults to :data:`SLOW_FUSIONS`, pass ``[]`` to keep them).

    Inter-op parallelism stays off (``ORT_SEQUENTIAL``, one inter-op thread) so that one pool owns
    the cores.
    """
    ort = _need("onnxruntime")
    so = kw.pop("sess_options", None) or ort.SessionOptions()
    so.register_custom_ops_library(library_path())
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    so.inter_op_num_threads = 1
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive int, got {threads!r}")
        so.intra_op_num_threads = threads
    kw.setdefault("providers", ["CPUExecutionProvider"])
    kw.setdefault("disabled_optimizers", list(SLOW_FUSIONS))
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    return ort.InferenceSession(path, sess_options=so, **kw)


_NP_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def random_inputs(sess, dims: Optional[Mapping[str, int]] = None, seed: int = 0) -> Dict[str, np.ndarray]:
    """Random feeds for every input of an ``InferenceSession``, built from the graph's input types.

    Symbolic or unknown dimensions take ``dims[name]`` or 4. Floating-point inputs are standard
    normal; integer inputs (token ids, token types, positions) are 0 or 1, which is valid for any
    vocabulary, and inputs whose name contains ``mask`` are all ones; booleans are ``True``.
    """
    dims = dict(dims or {})
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in sess.get_inputs():
        if i.type not in _NP_TYPES:
            raise ValueError(f"cannot make random data for input {i.name!r} of type {i.type}")
        shape = [d if isinstance(d, int) and d >= 0 else dims.get(d, 4) if isinstance(d, str) else 4 for d in i.shape]
        dt = np.dtype(_NP_TYPES[i.type])
        if dt.kind == "f":
            feeds[i.name] = rng.standard_normal(shape).astype(dt)
        elif dt.kind == "b":
            feeds[i.name] = np.ones(shape, dt)
        elif "mask" in i.name.lower():
            feeds[i.name] = np.ones(shape, dt)
        else:
            feeds[i.name] = rng.integers(0, 2, size=shape).astype(dt)
    return feeds


def verify(
    original: Any,
    converted: Any,
    *,
    feeds: Optional[Mapping[str, np.ndarray]] = None,
    dims: Optional[Mapping[str, int]] = None,
    threads: Optional[int] = None,
    seed: int = 0,
) -> Dict[str, Dict[str, float]]:
    """Runs ONNX Runtime on both models with the same inputs and compares every output.

    Args:
        original, converted: model paths (or bytes).
        feeds: inputs to use; default: :func:`random_inputs` of the original model.
        dims: sizes for symbolic dimensions of the random inputs (default 4 each).
        threads: intra-op threads for both sessions.
        seed: seed of the random inputs.

    Returns:
        ``{output name: {"max_abs_diff": ..., "cosine": ..., "max_abs": ...}}`` where ``max_abs``
        is the largest magnitude in the original output (the scale ``max_abs_diff`` is read against).
    """
    ort = _need("onnxruntime")
    so = ort.SessionOptions()
    if threads is not None:
        so.intra_op_num_threads = threads
    ref = ort.InferenceSession(os.fspath(original) if isinstance(original, os.PathLike) else original,
                               sess_options=so, providers=["CPUExecutionProvider"])
    new = session(converted, threads=threads)
    feeds = dict(feeds) if feeds is not None else random_inputs(ref, dims, seed)
    names = [o.name for o in ref.get_outputs()]
    a = ref.run(names, feeds)
    b = new.run(names, feeds)
    out = {}
    for name, x, y in zip(names, a, b):
        x64 = np.asarray(x, np.float64).ravel()
        y64 = np.asarray(y, np.float64).ravel()
        denom = float(np.linalg.norm(x64) * np.linalg.norm(y64))
        out[name] = {
            "max_abs_diff": float(np.max(np.abs(x64 - y64))) if x64.size else 0.0,
            "cosine": float(x64 @ y64 / denom) if denom > 0 else float(np.array_equal(x64, y64)),
            "max_abs": float(np.max(np.abs(x64))) if x64.size else 0.0,
        }
    return out


def format_verify(result: Mapping[str, Mapping[str, float]], names: Sequence[str] = ()) -> str:
    """The :func:`verify` result as a table."""
    rows = [("output", "max |diff|", "max |orig|", "cosine")]
    for name in names or result:
        r = result[name]
        rows.append((name, f"{r['max_abs_diff']:.3g}", f"{r['max_abs']:.3g}", f"{r['cosine']:.6f}"))
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r)) for r in rows)
