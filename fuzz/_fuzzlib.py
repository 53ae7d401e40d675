"""Shared by the fuzz targets: the seed corpus (valid packed buffers of every format and dtype), the
ONNX model a SparseLinear fuzz input describes, and error-class feedback for the coverage-guided runs.

Packed buffers are untrusted input (``PackedWeight.from_bytes``, ``_C.validate``, the initializers of a
model that ``libsparsecpu_ort.so`` loads): every target here must end in success or in the documented
error, never in a crash, a sanitizer report or another exception type.
"""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

import sparsecpu

HEADER = struct.Struct("<8s6I5QfI")  # magic, version, format, dtype, block_n, block_k, index_bytes,
#                                      n, k, nnzb, kept_blocks, total_bytes, outlier_threshold, reserved
assert HEADER.size == 80

# ---------------------------------------------------------------------------------------------
# Seed corpus


def _block_weight(rng: np.random.Generator, n: int, k: int, cols_per_group: Dict[int, List[int]]) -> np.ndarray:
    w = np.zeros((n, k), np.float32)
    for g, cols in cols_per_group.items():
        rows = slice(4 * g, min(4 * g + 4, n))
        shape = (rows.stop - rows.start, len(cols))
        w[rows, cols] = rng.uniform(0.25, 2.0, shape) * rng.choice([-1, 1], shape)
    return w


def seed_buffers() -> Dict[str, bytes]:
    """Valid packed buffers, small (at most a few KB) so that mutations stay cheap, of every format,
    dtype and header variant: BSR int8 and fp32 (2- and 4-byte column indices), dense int8, the panel
    format where the build has it, with and without an outlier threshold, a version-1 header, and the
    edge shapes (N not a multiple of 4 or 16, N = 0, K = 0, an all-zero weight). The repair step of the
    custom mutator knows the BSR and dense layouts; panel buffers are mutated as raw bytes."""
    rng = np.random.default_rng(20240518)
    out: Dict[str, bytes] = {}
    # 12 x 16 with an empty middle group (the layout of tests/test_onnx_corrupt.py).
    w = _block_weight(rng, 12, 16, {0: [1, 3, 9, 12, 14], 2: [0, 7, 15]})
    # 10 x 24: N not a multiple of 4, a partial last group, a group whose list needs padding.
    w10 = _block_weight(rng, 10, 24, {0: [0, 5, 6], 1: [2, 3, 4, 5, 23], 2: [11]})
    # A denser weight for the dense format (every block of 17 x 20 kept, one channel negative).
    wd = rng.uniform(-1.5, 1.5, (17, 20)).astype(np.float32)
    wd[3] = 0.0  # an all-zero channel: scale 1 in the header's eyes
    for dtype in ("int8", "fp32"):
        out[f"bsr_{dtype}_12x16"] = sparsecpu.pack(w, dtype=dtype, format="bsr").to_bytes()
        out[f"bsr_{dtype}_10x24"] = sparsecpu.pack(w10, dtype=dtype, format="bsr").to_bytes()
        out[f"bsr_{dtype}_zero_8x8"] = sparsecpu.pack(np.zeros((8, 8), np.float32), dtype=dtype, format="bsr").to_bytes()
        out[f"bsr_{dtype}_empty_0x8"] = sparsecpu.pack(np.zeros((0, 8), np.float32), dtype=dtype, format="bsr").to_bytes()
        out[f"bsr_{dtype}_empty_5x0"] = sparsecpu.pack(np.zeros((5, 0), np.float32), dtype=dtype, format="bsr").to_bytes()
    out["bsr_int8_outliers_12x16"] = sparsecpu.pack(w, dtype="int8", format="bsr", outlier_threshold=3.0).to_bytes()
    out["dense_int8_17x20"] = sparsecpu.pack(wd, dtype="int8", format="dense").to_bytes()
    out["dense_int8_12x16"] = sparsecpu.pack(w, dtype="int8", format="dense").to_bytes()
    out["dense_int8_outliers_17x20"] = sparsecpu.pack(wd, dtype="int8", format="dense", outlier_threshold=1.0).to_bytes()
    out["dense_int8_1x1"] = sparsecpu.pack(np.ones((1, 1), np.float32), dtype="int8", format="dense").to_bytes()
    # 4-byte column indices: fp32 with K > 65536 (int8 stops at K = 65535).
    wide = np.zeros((5, 70000), np.float32)
    wide[0:4, [5, 65536, 69999]] = rng.uniform(0.5, 1.0, (4, 3))
    wide[4, 3] = -1.0
    out["bsr_fp32_wide_index_5x70000"] = sparsecpu.pack(wide, dtype="fp32", format="bsr").to_bytes()
    # The AMX panel format (16 channels sharing their kept columns), where this build has it.
    try:
        out["panel_int8_12x16"] = sparsecpu.pack(w, dtype="int8", format="panel").to_bytes()
        out["panel_int8_outliers_17x20"] = sparsecpu.pack(wd, dtype="int8", format="panel", outlier_threshold=1.0).to_bytes()
    except ValueError:
        pass
    # Version 1 (BSR only, no outlier threshold): the same sections, the last 8 header bytes padding.
    v1 = bytearray(out["bsr_int8_12x16"])
    struct.pack_into("<I", v1, 8, 1)
    out["bsr_int8_v1_12x16"] = bytes(v1)
    for name, b in out.items():  # the corpus starts from buffers the library accepts
        sparsecpu.PackedWeight.from_bytes(b)
    return out


# ---------------------------------------------------------------------------------------------
# Repair: most byte mutations of a valid buffer break a derived field (a weight sum, the kept-block
# count, the length) and stop at the first check. The custom mutator repairs a random subset of those
# fields afterwards, the way a packer would have computed them, so that the fuzzer also reaches
# buffers that pass validation with strange contents (empty or duplicated columns, nonzero padding
# blocks, huge scales, edge shapes) and runs the kernels on them. A subset, not all: the checks of
# each field stay exercised too. Mirrors csrc/core/format.{h,cc}.

_ALIGN = 64
_OFF_NNZB, _OFF_KEPT, _OFF_TOTAL = 48, 56, 64
MAX_REPAIR_BYTES = 1 << 16


def _round_up(v: int) -> int:
    return (v + _ALIGN - 1) // _ALIGN * _ALIGN


def layout(fmt: int, dtype: int, n: int, k: int, index_bytes: int, nnzb: int) -> Optional[Dict[str, int]]:
    """Section offsets of a header (None when the sizes are absurd)."""
    if n >= 2**31 or k >= 2**31 or nnzb >= 2**40:
        return None
    out: Dict[str, int] = {}
    cursor = 80

    def place(name: str, nbytes: int) -> None:
        nonlocal cursor
        out[name] = _round_up(cursor)
        cursor = out[name] + nbytes

    if fmt == 2:
        panels, kq = (n + 15) // 16, (k + 3) // 4
        place("values", panels * kq * 64)
        place("w_scale", panels * 64)
        place("w_sum", panels * 64)
    else:
        groups = (n + 3) // 4
        place("row_ptr", (groups + 1) * 4)
        place("col_idx", nnzb * index_bytes)
        place("values", nnzb * 4 * (1 if dtype == 1 else 4))
        if dtype == 1:
            place("w_scale", groups * 16)
            place("w_sum", groups * 16)
    out["total"] = _round_up(cursor)
    return out


def repair(data: bytes, rng, max_size: int) -> bytes:
    """``data`` with a random subset of its derived fields recomputed (unchanged if the header is
    unreadable or implies a buffer over ``max_size``)."""
    if len(data) < 80 or data[:8] != b"SPCPUPW\0":
        return data
    _, version, fmt, dtype, _, _, ib, n, k, nnzb, _, _, _, _ = HEADER.unpack_from(data)
    if dtype not in (1, 2) or (fmt == 2 and dtype != 1) or fmt not in (1, 2):
        return data
    if fmt == 1:
        nnzb -= nnzb % 4
        if rng.random() < 0.5:
            ib = 2 if k <= 65536 else 4
    if fmt == 1 and ib not in (2, 4):
        return data
    lay = layout(fmt, dtype, n, k, ib, nnzb if fmt == 1 else 0)
    if lay is None or lay["total"] > min(max_size, MAX_REPAIR_BYTES):
        return data
    b = bytearray(data[: lay["total"]].ljust(lay["total"], b"\0"))
    if rng.random() < 0.9:
        struct.pack_into("<Q", b, _OFF_TOTAL, lay["total"])
    if fmt == 1:
        struct.pack_into("<I", b, 28, ib)
        struct.pack_into("<Q", b, _OFF_NNZB, nnzb)
    int8 = dtype == 1
    if fmt == 2:
        panels, kq = (n + 15) // 16, (k + 3) // 4
        vals = np.frombuffer(b, np.int8, panels * kq * 64, lay["values"]).reshape(panels, kq, 16, 4)
        if rng.random() < 0.7:  # padding channels and columns hold zeros
            full = vals.transpose(0, 2, 1, 3).reshape(panels * 16, kq * 4)
            full[n:] = 0
            full[:, k:] = 0
            vals[...] = full.reshape(panels, 16, kq, 4).transpose(0, 2, 1, 3)
        chan = vals.transpose(0, 2, 1, 3).reshape(panels * 16, kq * 4)
        channels = panels * 16
        sums = chan.astype(np.int64).sum(axis=1)
        nzb = (chan[:n, :k] != 0)
        g = (n + 3) // 4
        padded = np.zeros((g * 4, k), bool)
        padded[:n] = nzb
        kept = int(padded.reshape(g, 4, k).any(axis=1).sum())
    else:
        groups = (n + 3) // 4
        rp = np.frombuffer(b, np.uint32, groups + 1, lay["row_ptr"])
        if rng.random() < 0.7:  # non-decreasing multiples of 4 from 0 to nnzb
            fixed = np.sort(np.minimum(rp.astype(np.int64), nnzb)) // 4 * 4
            fixed[0], fixed[-1] = 0, nnzb
            rp[:] = fixed.astype(np.uint32)
        cols = np.frombuffer(b, np.uint16 if ib == 2 else np.uint32, nnzb, lay["col_idx"])
        ok = bool(rp[0] == 0 and rp[-1] == nnzb and np.all(np.diff(rp.astype(np.int64)) >= 0))
        if ok and k > 0 and rng.random() < 0.7:  # in range and sorted per group
            for gi in range(groups):
                seg = cols[rp[gi] : rp[gi + 1]]
                seg[:] = np.sort(seg.astype(np.int64) % k).astype(seg.dtype)
        vals = np.frombuffer(b, np.int8 if int8 else np.float32, nnzb * 4, lay["values"]).reshape(-1, 4, 4)
        if not int8 and rng.random() < 0.7:
            vals[~np.isfinite(vals)] = 0.0
        channels = groups * 4
        sums = np.zeros(channels, np.int64)
        kept = 0
        if ok:
            for gi in range(groups):
                for blk in range(int(rp[gi]), int(rp[gi + 1])):
                    v = vals[blk // 4, :, blk % 4]  # the 4 channels of block blk
                    kept += bool(np.any(v != 0))
                    if int8:
                        sums[4 * gi : 4 * gi + 4] += v.astype(np.int64)
    if rng.random() < 0.9:
        struct.pack_into("<Q", b, _OFF_KEPT, kept)
    if int8:
        scale = np.frombuffer(b, np.float32, channels, lay["w_scale"])
        if rng.random() < 0.7:
            scale[~(np.isfinite(scale) & (scale > 0))] = 1.0
        if rng.random() < 0.9:
            np.frombuffer(b, np.int32, channels, lay["w_sum"])[:] = sums.astype(np.int32)
    return bytes(b)


# Seeds are at most ~1 KB; a little room to grow, and no slow ramp-up of the length limit.
DEFAULT_FLAGS = ("-max_len=4096", "-len_control=0")


def with_default_flags(argv: List[str]) -> List[str]:
    """``argv`` with DEFAULT_FLAGS added where it does not set them itself."""
    given = {a.split("=", 1)[0] for a in argv[1:] if a.startswith("-")}
    return [argv[0]] + [f for f in DEFAULT_FLAGS if f.split("=", 1)[0] not in given] + list(argv[1:])


def mutate(data: bytes, max_size: int, seed: int, mutate_bytes: Callable[[bytes, int], bytes], prefix: int = 0) -> bytes:
    """libFuzzer's mutation of ``data`` (``mutate_bytes``: ``atheris.Mutate``), then, for most inputs, a
    repair of the packed buffer that starts ``prefix`` bytes in."""
    import random

    try:
        rng = random.Random(seed)
        out = mutate_bytes(data, max_size)
        if rng.random() < 0.75:
            out = out[:prefix] + repair(out[prefix:], rng, max_size - prefix)
        return out[:max_size]
    except BaseException:  # a bug of the harness, not a finding: say so and stop at once
        import traceback

        traceback.print_exc()
        sys.stderr.write("fuzz harness error: the custom mutator raised (this is not a finding)\n")
        sys.stderr.flush()
        os._exit(3)  # raising into libFuzzer's mutation loop hangs it until its alarm fires


# ---------------------------------------------------------------------------------------------
# The ONNX model of one SparseLinear fuzz input: CONTROL_BYTES bytes choose attributes and the
# shape of the node's inputs, the rest is the packed weight (so libFuzzer's mutations of a seed edit
# the buffer in place).

CONTROL_BYTES = 8
_DOMAIN = "com.sparsecpu"


def header_fields(buf: bytes) -> Tuple[int, int, int, int]:
    """``(format code, dtype code, N, K)`` as the header claims them (0 where the buffer is too short)."""
    fmt = int.from_bytes(buf[12:16], "little") if len(buf) >= 16 else 0
    dt = int.from_bytes(buf[16:20], "little") if len(buf) >= 20 else 0
    n = int.from_bytes(buf[32:40], "little") if len(buf) >= 40 else 0
    k = int.from_bytes(buf[40:48], "little") if len(buf) >= 48 else 0
    return fmt, dt, n, k


_OMIT = object()
_INT64_MAX = 2**63 - 1


def _int_choices(v: int) -> list:
    # The header's value (clamped to int64), missing, off by one, zero, negative, huge, wrong type.
    v = min(v, _INT64_MAX)
    return [v, _OMIT, v + 1 if v < _INT64_MAX else 0, v - 1, 0, -1, 2**31, _INT64_MAX, "12", 1.5]


def _pick(options: list, byte: int):
    return options[byte % len(options)]


def ort_model(data: bytes) -> Tuple[bytes, Tuple[Optional[Tuple[int, int]], Dict[str, object]]]:
    """The serialized model a fuzz input describes, and ``(run, feeds)``: ``run`` is ``(N, K)`` to run
    it with X of shape [2, K] (None: do not run it: attributes that cannot match, or sizes too large),
    ``feeds`` the shapes of the other graph inputs (the uint8 array itself for a W that is an input).

    Control byte i (missing bytes read as 0, which gives attributes that match the buffer's header
    and a plain ``Y = X W^T`` node):
      0, 1: attribute N, K;  2: dtype;  3: format;  4: activation;  5: norm / epsilon;
      6: optional inputs (bias, residual, LayerNorm Scale / B; right or wrong shape; constant or fed);
      7: how W is given (1-D uint8 initializer, 2-D, int8, a graph input, a Constant node, ...).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    ctrl = data[:CONTROL_BYTES].ljust(CONTROL_BYTES, b"\0")
    buf = data[CONTROL_BYTES:]
    fmt_code, dt_code, hn, hk = header_fields(buf)
    attrs = {
        "N": _pick(_int_choices(hn), ctrl[0]),
        "K": _pick(_int_choices(hk), ctrl[1]),
        "dtype": _pick([{2: "fp32"}.get(dt_code, "int8"), _OMIT, "int8", "fp32", "int4", "", 1], ctrl[2]),
        "format": _pick([{2: "dense", 3: "panel"}.get(fmt_code, "bsr"), _OMIT, "bsr", "dense", "csr", 2, "panel"], ctrl[3]),
        "activation": _pick([_OMIT, "none", "relu", "gelu", "gelu_tanh", "swish", 1], ctrl[4]),
    }
    norm_eps = _pick([{}, {"norm": 1}, {"norm": 2}, {"norm": -1}, {"norm": 1, "epsilon": 1e-3},
                      {"epsilon": float("nan")}, {"epsilon": -1.0}, {"epsilon": float("inf")},
                      {"norm": 0, "epsilon": 0.0}, {"norm": "1"}], ctrl[5])
    attrs.update(norm_eps)
    attrs = {key: v for key, v in attrs.items() if v is not _OMIT}

    n_run = hn if isinstance(attrs.get("N"), int) and attrs["N"] == hn else None
    k_run = hk
    vec_n = max(0, min(hn, 1 << 16))  # per-channel vectors: the header's N (bounded), or off by one
    inits = []
    inputs_info = [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["m", hk if hk < 2**62 else None])]
    nodes = []
    names = ["X", "W"]
    extra = ctrl[6] % 10
    feeds_extra: Dict[str, Tuple[int, ...]] = {}
    if extra == 1:
        inits.append(numpy_helper.from_array(np.linspace(-1, 1, vec_n, dtype=np.float32), "bias"))
        names.append("bias")
    elif extra == 2:
        inits.append(numpy_helper.from_array(np.ones(vec_n + 1, np.float32), "bias"))
        names.append("bias")
    elif extra == 3:  # a bias fed at run time: checked on every run
        inputs_info.append(helper.make_tensor_value_info("bias", TensorProto.FLOAT, ["n"]))
        names.append("bias")
        feeds_extra["bias"] = (vec_n,)
    elif extra == 4:  # residual R: Y's shape
        inputs_info.append(helper.make_tensor_value_info("R", TensorProto.FLOAT, ["m", "n"]))
        names += ["", "R"]
        feeds_extra["R"] = (2, vec_n)
    elif extra == 5:  # LayerNorm Scale and B constants
        inits.append(numpy_helper.from_array(np.ones(vec_n, np.float32), "S"))
        inits.append(numpy_helper.from_array(np.zeros(vec_n, np.float32), "Bn"))
        names += ["", "", "S", "Bn"]
    elif extra == 6:  # Scale of the wrong length, B 2-D
        inits.append(numpy_helper.from_array(np.ones(vec_n + 3, np.float32), "S"))
        inits.append(numpy_helper.from_array(np.zeros((1, vec_n), np.float32), "Bn"))
        names += ["", "", "S", "Bn"]
    elif extra == 7:  # a seventh input
        inits.append(numpy_helper.from_array(np.ones(1, np.float32), "Z"))
        names += ["", "", "", "", "Z"]
    elif extra == 8:  # bias of rank 0
        inits.append(numpy_helper.from_array(np.array(1.0, np.float32), "bias"))
        names.append("bias")
    elif extra == 9:  # bias of another element type
        inits.append(numpy_helper.from_array(np.ones(vec_n, np.float64), "bias"))
        names.append("bias")

    raw = np.frombuffer(buf, np.uint8)
    w_mode = ctrl[7] % 8
    if w_mode == 0:
        inits.append(numpy_helper.from_array(raw.copy(), "W"))
    elif w_mode == 1:  # 2-D
        cols = 8 if raw.size % 8 == 0 and raw.size else 1
        inits.append(numpy_helper.from_array(raw.reshape(-1, cols).copy(), "W"))
    elif w_mode == 2:  # int8 elements
        inits.append(numpy_helper.from_array(raw.view(np.int8).copy(), "W"))
    elif w_mode == 3:  # not a constant
        inputs_info.append(helper.make_tensor_value_info("W", TensorProto.UINT8, ["b"]))
        feeds_extra["W"] = raw
    elif w_mode == 4:  # a Constant node (ONNX Runtime turns it into an initializer)
        nodes.append(helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(raw.copy(), "Wc")))
    elif w_mode == 5:  # scalar
        inits.append(numpy_helper.from_array(np.array(raw[0] if raw.size else 0, np.uint8), "W"))
    elif w_mode == 6:  # the weight stored as int32 data of the uint8 tensor (not raw_data)
        inits.append(helper.make_tensor("W", TensorProto.UINT8, [raw.size], raw.tolist()))
    else:  # W is missing: an empty optional input name
        names[1] = ""

    nodes.append(helper.make_node("SparseLinear", names, ["Y"], name="sl", domain=_DOMAIN, **attrs))
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "g", inputs_info, [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(_DOMAIN, 1)],
                              ir_version=8)
    run = None
    if n_run is not None and 0 <= k_run <= 4096 and 0 <= n_run <= 4096 and w_mode in (0, 4, 6):
        run = (n_run, k_run)
    return model.SerializeToString(), (run, feeds_extra)


def ort_seeds() -> Dict[str, bytes]:
    """Seeds for the ONNX Runtime target: every valid buffer with matching attributes, and a few
    control-byte variants of one of them (so the corpus starts with each branch of ort_model)."""
    bufs = seed_buffers()
    out = {name: bytes(CONTROL_BYTES) + b for name, b in bufs.items()}
    base = bufs["bsr_int8_12x16"]
    for i in range(CONTROL_BYTES):
        for v in (1, 2, 3, 4, 5):
            ctrl = bytearray(CONTROL_BYTES)
            ctrl[i] = v
            out[f"ctrl{i}_{v}_bsr_int8_12x16"] = bytes(ctrl) + base
    out["gelu_norm_dense_17x20"] = bytes([0, 0, 0, 0, 3, 1, 5, 0]) + bufs["dense_int8_17x20"]
    return out


def write_corpus(kind: str, directory: os.PathLike) -> int:
    """Writes the seeds of ``kind`` ("packed": raw buffers, for fuzz_packed.py and validate_fuzzer;
    "ort": control bytes + buffer, for fuzz_ort.py) into ``directory``; returns how many."""
    seeds = seed_buffers() if kind == "packed" else ort_seeds()
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for name, b in seeds.items():
        (d / f"seed_{name}").write_bytes(b)
    return len(seeds)


# ---------------------------------------------------------------------------------------------
# Error-class feedback. The fuzzer's coverage comes from the instrumented Python code (and, in a
# sanitizer build from scripts/fuzz.sh, from the C++ too). Without C++ coverage every rejected buffer
# looks the same to libFuzzer; branching on which check rejected it gives each check its own edge, so
# an input that reaches a new check is kept in the corpus and mutated further.

ERROR_CLASSES = [
    # csrc/core/format.cc
    "shorter than the header", "not 8-byte aligned", "bad magic", "format version", "unknown format code",
    "unknown dtype code", "dense format with dtype fp32", "is not supported (", "2**31 or more",
    "int8 weight with K > 65535", "outlier threshold is not finite", "outlier threshold on an fp32",
    "reserved header field", "dense format with a block index", "exceeds the number of blocks",
    "section sizes overflow", "index width", "is not a multiple of 4", "exceeds the stored block count",
    "length is", "has a scale that is not finite", "nonzero padding value", "weight sum of channel",
    "header counts", "row_ptr[0] is", "row_ptr of group", "holds a block count that is not",
    "column index", "column indices of group", "non-finite weight value", "row_ptr does not end",
    # csrc/ort/custom_op.cc
    "non-integer attribute 'N'", "non-integer attribute 'K'", "non-string attribute 'dtype'",
    "attribute 'activation' must", "attribute 'norm' must", "attribute 'epsilon' must",
    "attribute 'dtype' must", "attribute 'format' must", "must be a constant initializer",
    "must be a 1-D uint8 tensor", "do not match the packed weight (N", "attribute format =",
    "attribute dtype =", "at most 6 inputs", "bias must be", "Scale must be", "B must be", "R must be",
    "is given but attribute norm is 0",
]


def _make_classifier(classes: List[str]) -> Callable[[str], int]:
    # One `if` per class, written out, so that each is an edge of its own for the instrumentation.
    lines = ["def classify(m):"]
    lines += [f"    if {c!r} in m:\n        return {i}" for i, c in enumerate(classes)]
    lines.append(f"    return {len(classes)}")
    scope: dict = {}
    exec(compile("\n".join(lines), "<error-classes>", "exec"), scope)  # noqa: S102 - fixed text
    return scope["classify"]


classify_error = _make_classifier(ERROR_CLASSES)


def classify_accepted(meta: dict) -> int:
    """Coverage feedback for accepted buffers: one edge per kind of buffer."""
    c = 0
    if meta["format"] == "dense":
        c += 1
    if meta["dtype"] == "fp32":
        c += 2
    if meta["outlier_threshold"] > 0:
        c += 4
    if meta["n"] == 0:
        c += 8
    if meta["k"] == 0:
        c += 16
    if meta["n"] % 4:
        c += 32
    if meta["kept_blocks"] == 0:
        c += 64
    return c
