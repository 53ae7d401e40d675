"""The packed format: what pack() stores (checked byte by byte against csrc/core/format.h), the
PackedWeight properties, serialization round trips, and validation of untrusted buffers."""

from __future__ import annotations

import io
import pickle
import struct

import numpy as np
import pytest
import torch

import _util
import sparsecpu
from sparsecpu import PackedWeight

DTYPES = ["int8", "fp32"]

# A small weight with a known structure: N = 10 (3 groups, the last one half padding), K = 16.
#   group 0: columns 0, 3, 4, 9, 15      (5 blocks -> 8 stored)
#   group 1: no block                    (an empty group)
#   group 2: columns 2, 3, 9, 10         (4 blocks; channels 10 and 11 are padding)
# Columns 1, 5, 6, 7, 8, 11, 12, 13, 14 are never used.
KNOWN_N, KNOWN_K = 10, 16
KNOWN_COLS = {0: [0, 3, 4, 9, 15], 1: [], 2: [2, 3, 9, 10]}


def known_weight() -> np.ndarray:
    rng = np.random.default_rng(11)
    w = np.zeros((KNOWN_N, KNOWN_K), np.float32)
    for g, cols in KNOWN_COLS.items():
        for k in cols:
            rows = slice(4 * g, min(4 * g + 4, KNOWN_N))
            w[rows, k] = rng.uniform(0.5, 2.0, size=len(range(KNOWN_N)[rows])) * rng.choice([-1, 1])
    # Any nonzero keeps a block: in block (group 0, column 9) only channel 2 is nonzero.
    w[0:4, 9] = [0.0, 0.0, -0.75, 0.0]
    # -0.0 is zero: this block is not kept.
    w[4:8, 5] = -0.0
    return w


def known_mask() -> np.ndarray:
    mask = np.zeros((3, KNOWN_K), bool)
    for g, cols in KNOWN_COLS.items():
        mask[g, cols] = True
    return mask


@pytest.mark.parametrize("dtype", DTYPES)
def test_pack_properties_and_layout(dtype):
    w = known_weight()
    p = sparsecpu.pack(w, dtype=dtype, format="bsr")
    mask = known_mask()
    row_ptr, cols, kept = _util.expected_structure(mask)
    assert kept == 9
    assert p.shape == (10, 16)
    assert p.dtype == dtype and p.format == "bsr" and p.block == (4, 1)
    assert p.kept_blocks == 9
    assert p.density == 9 / (3 * 16)
    raw = p.to_bytes()
    assert isinstance(raw, bytes) and p.nbytes == len(raw)
    assert p.buffer.dtype == np.uint8 and p.buffer.ndim == 1 and p.buffer.tobytes() == raw
    b = _util.Buffer.of(raw)
    h = b.header
    assert h["magic"] == b"SPCPUPW\0"
    assert (h["version"], h["format"], h["dtype"]) == (2, 1, _util.DTYPE_CODES[dtype])
    assert (h["outlier_threshold"], h["reserved"]) == (0.0, 0) and p.outlier_threshold is None
    assert (h["block_n"], h["block_k"], h["index_bytes"]) == (4, 1, 2)
    assert (h["n"], h["k"], h["nnzb"], h["kept_blocks"]) == (10, 16, 12, 9)
    assert h["total_bytes"] == len(raw) == b.offsets["total"]
    assert b.offsets["row_ptr"] == 128
    np.testing.assert_array_equal(b.row_ptr, row_ptr)
    assert row_ptr.tolist() == [0, 8, 8, 12]
    np.testing.assert_array_equal(b.col_idx, cols)
    assert b.col_idx.tolist() == [0, 3, 4, 9, 15, 15, 15, 15, 2, 3, 9, 10]
    # Values: block b, channel c at (b // 4) * 16 + c * 4 + b % 4; padding blocks and channels hold 0.
    if dtype == "fp32":
        stored = lambda v: v  # noqa: E731
    else:
        wq, scale = _util.quantize_weight(w)
        wq_pad = np.zeros((12, KNOWN_K), np.float32)
        wq_pad[:10] = wq
        stored = None
        np.testing.assert_array_equal(b.w_scale[:10], scale)
        np.testing.assert_array_equal(b.w_scale[10:], [1.0, 1.0])
        np.testing.assert_array_equal(b.w_sum, wq_pad.sum(axis=1).astype(np.int32))
        assert b.w_sum[4:8].tolist() == [0, 0, 0, 0]  # the empty group
    w_pad = np.zeros((12, KNOWN_K), np.float32)
    w_pad[:10] = w
    for g in range(3):
        for blk in range(int(row_ptr[g]), int(row_ptr[g + 1])):
            is_pad = blk > row_ptr[g] and cols[blk] == cols[blk - 1]
            for c in range(4):
                got = b.value(blk, c)
                if is_pad:
                    assert got == 0, (g, blk, c)
                elif dtype == "fp32":
                    assert got == w_pad[4 * g + c, cols[blk]], (g, blk, c)
                else:
                    assert got == wq_pad[4 * g + c, cols[blk]], (g, blk, c)
    p.validate()


@pytest.mark.parametrize("dtype", DTYPES)
def test_to_dense_is_the_pruned_weight(dtype):
    rng = np.random.default_rng(12)
    w, _ = _util.pruned_weight(rng, 22, 70, 0.3)
    p = sparsecpu.pack(w, dtype=dtype)
    d = p.to_dense()
    assert d.dtype == np.float32 and d.shape == (22, 70)
    if dtype == "fp32":
        np.testing.assert_array_equal(d, w)
    else:
        wq, scale = _util.quantize_weight(w)
        np.testing.assert_array_equal(d, (wq * scale[:, None]).astype(np.float32))
        # Within half a quantization step of each channel (plus float rounding).
        assert (np.abs(d - w) <= scale[:, None] * (0.5 + 1e-5)).all()
        assert (w[d != 0] != 0).all()  # pruned zeros stay zero
    assert np.count_nonzero(d) > 0.2 * d.size


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 2, 3, 5, 6, 7, 9])
def test_n_not_multiple_of_4(n, dtype):
    rng = np.random.default_rng([13, n])
    w = rng.standard_normal((n, 9)).astype(np.float32)
    w[:, 4] = 0.0
    p = sparsecpu.pack(w, dtype=dtype, format="bsr")
    groups = (n + 3) // 4
    assert p.shape == (n, 9)
    assert p.kept_blocks == groups * 8
    assert p.density == 8 / 9
    d = p.to_dense()
    assert d.shape == (n, 9)
    if dtype == "fp32":
        np.testing.assert_array_equal(d, w)
    else:
        _, scale = _util.quantize_weight(w)
        assert (np.abs(d - w) <= scale[:, None] * (0.5 + 1e-5)).all()
    h = _util.Buffer.of(p.to_bytes()).header
    assert h["n"] == n and h["nnzb"] == groups * 8


@pytest.mark.parametrize("dtype", DTYPES)
def test_density_extremes(dtype):
    assert sparsecpu.pack(np.zeros((8, 5), np.float32), dtype=dtype).density == 0.0
    assert sparsecpu.pack(np.zeros((8, 5), np.float32), dtype=dtype).kept_blocks == 0
    assert sparsecpu.pack(np.ones((8, 5), np.float32), dtype=dtype).density == 1.0
    empty_k = sparsecpu.pack(np.zeros((8, 0), np.float32), dtype=dtype)
    assert empty_k.shape == (8, 0) and empty_k.density == 0.0 and empty_k.to_dense().shape == (8, 0)
    empty_n = sparsecpu.pack(np.zeros((0, 5), np.float32), dtype=dtype)
    assert empty_n.shape == (0, 5) and empty_n.density == 0.0
    one = np.zeros((8, 5), np.float32)
    one[6, 2] = 1e-30  # one nonzero anywhere keeps its block
    assert sparsecpu.pack(one, dtype=dtype).kept_blocks == 1
    assert sparsecpu.pack(one, dtype=dtype).density == 1 / 10


def test_pack_inputs_torch_float64_noncontiguous():
    rng = np.random.default_rng(14)
    w, _ = _util.pruned_weight(rng, 12, 20, 0.5)
    for dtype in DTYPES:
        ref = sparsecpu.pack(w, dtype=dtype)
        assert sparsecpu.pack(torch.from_numpy(w), dtype=dtype) == ref
        assert sparsecpu.pack(w.astype(np.float64), dtype=dtype) == ref
        assert sparsecpu.pack(np.asfortranarray(w), dtype=dtype) == ref
        assert sparsecpu.pack(torch.from_numpy(np.ascontiguousarray(w.T)).T, dtype=dtype) == ref
        param = torch.nn.Parameter(torch.from_numpy(w.copy()))  # requires_grad: packing is fine
        assert sparsecpu.pack(param, dtype=dtype) == ref
        half = w.astype(np.float16)
        assert sparsecpu.pack(torch.from_numpy(half), dtype=dtype) == sparsecpu.pack(half.astype(np.float32), dtype=dtype)


def test_int8_block_quantizing_to_zero_still_packs():
    """A block whose values are all below half a quantization step of their channels: pack() must
    accept the weight (it currently builds a buffer its own validation rejects: the header counts
    the block as kept from the float values, the check recounts it from the int8 values, all 0)."""
    w = np.zeros((4, 3), np.float32)
    w[:, 0] = 1.0
    w[:, 1] = 1e-4  # 1e-4 / (1 / 127) rounds to 0 in every channel
    w[:, 2] = -0.5
    p = sparsecpu.pack(w, dtype="int8")
    _, scale = _util.quantize_weight(w)
    assert (np.abs(p.to_dense() - w) <= scale[:, None] * 0.5).all()
    x = np.ones((2, 3), np.float32)
    np.testing.assert_allclose(sparsecpu.linear(x, p), x @ p.to_dense().T, rtol=1e-5)


def test_int8_denormal_channel_scale():
    """A channel whose largest |w| is ~1e-44: max/127 underflows to a zero scale. pack() must not
    turn that into garbage (0/0 -> NaN -> -127 in every block) and reject its own buffer."""
    w = np.zeros((4, 3), np.float32)
    w[0, 0] = np.float32(1e-44)
    w[1, :] = 1.0
    p = sparsecpu.pack(w, dtype="int8")
    d = p.to_dense()
    assert np.isfinite(d).all() and np.abs(d - w).max() <= 1e-37
    y = sparsecpu.linear(np.ones((1, 3), np.float32), p)
    np.testing.assert_allclose(y[0], [0.0, 3.0, 0.0, 0.0], atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Serialization round trips.


def _packed_pair(dtype):
    rng = np.random.default_rng(15)
    w, _ = _util.pruned_weight(rng, 20, 33, 0.4)
    x = rng.standard_normal((5, 33)).astype(np.float32)
    bias = rng.standard_normal(20).astype(np.float32)
    return sparsecpu.pack(w, dtype=dtype, format="bsr"), x, bias


def _same(p: PackedWeight, q: PackedWeight, x, bias):
    assert isinstance(q, PackedWeight)
    assert q == p and not (q != p)
    assert (q.shape, q.dtype, q.format, q.block, q.density, q.kept_blocks, q.nbytes) == (
        p.shape, p.dtype, p.format, p.block, p.density, p.kept_blocks, p.nbytes
    )
    assert q.to_bytes() == p.to_bytes()
    y_p = sparsecpu.linear(x, p, bias=bias, activation="gelu")
    y_q = sparsecpu.linear(x, q, bias=bias, activation="gelu")
    assert y_p.tobytes() == y_q.tobytes()
    _util.assert_informative(y_p, y_p, "gelu")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("protocol", range(2, pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_round_trip(dtype, protocol):
    p, x, bias = _packed_pair(dtype)
    _same(p, pickle.loads(pickle.dumps(p, protocol=protocol)), x, bias)


@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_save_load_round_trip(dtype, tmp_path):
    p, x, bias = _packed_pair(dtype)
    path = tmp_path / "packed.pt"
    torch.save(p, path)
    _same(p, torch.load(path, weights_only=False), x, bias)
    buf = io.BytesIO()
    torch.save({"layer.weight": p, "layer.bias": torch.from_numpy(bias)}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=False)
    _same(p, state["layer.weight"], x, state["layer.bias"])


@pytest.mark.parametrize("dtype", DTYPES)
def test_from_bytes_round_trip(dtype):
    p, x, bias = _packed_pair(dtype)
    raw = p.to_bytes()
    _same(p, PackedWeight.from_bytes(raw), x, bias)
    _same(p, PackedWeight(raw), x, bias)
    _same(p, PackedWeight(bytearray(raw)), x, bias)
    _same(p, PackedWeight(memoryview(b"\0" + raw)[1:]), x, bias)  # misaligned source: copied
    _same(p, PackedWeight(p.buffer), x, bias)
    _same(p, PackedWeight(np.frombuffer(raw, np.uint8).copy()), x, bias)


def test_equality():
    p, _, _ = _packed_pair("int8")
    q, _, _ = _packed_pair("fp32")
    assert p != q
    assert p != p.to_bytes() and p != None  # noqa: E711
    w = p.to_dense()
    w[0, 0] = 0 if w[0, 0] else 1
    assert sparsecpu.pack(w, dtype="int8") != p
    with pytest.raises(TypeError):
        hash(p)
    assert "PackedWeight" in repr(p) and "(20, 33)" in repr(p) and "int8" in repr(p)


def test_source_buffer_is_copied():
    p, x, bias = _packed_pair("fp32")
    raw = bytearray(p.to_bytes())
    q = PackedWeight(raw)
    raw[:8] = b"XXXXXXXX"
    raw[200:] = b"\xff" * (len(raw) - 200)
    q.validate()
    _same(p, q, x, bias)


def test_buffer_is_read_only():
    """The kernels trust a validated buffer, so nobody may change it afterwards: writes must fail,
    and so must making it writable again (numpy allows that on an array that owns its memory, after
    which a corrupt column index makes linear() read out of bounds)."""
    p, _, _ = _packed_pair("fp32")
    buf = p.buffer
    assert not buf.flags.writeable
    with pytest.raises(ValueError):
        buf[0] = 1
    with pytest.raises(ValueError):
        p.buffer.flags.writeable = True
    assert p.buffer.tobytes() == p.to_bytes()
    p.validate()


# ---------------------------------------------------------------------------------------------
# Untrusted buffers: every corruption is a ValueError naming the problem.


def _int8_value(b: _util.Buffer, blk: int, c: int, v: int) -> None:
    b.values[_util.value_index(blk, c)] = v


def _zero_block(b: _util.Buffer, blk: int) -> None:
    for c in range(4):
        b.values[_util.value_index(blk, c)] = 0


_set = _util.header_edit
_arr = _util.array_edit


# (id, dtypes, edit of a _util.Buffer copy of the known weight's buffer, or a function of the raw
# bytes returning new bytes, message regex)
CORRUPTIONS = [
    ("truncated-header", DTYPES, ("raw", lambda r: r[:71]), r"shorter than the header"),
    ("empty", DTYPES, ("raw", lambda r: b""), r"shorter than the header"),
    ("truncated-1", DTYPES, ("raw", lambda r: r[:-1]), r"length is \d+ bytes"),
    ("truncated-section", DTYPES, ("raw", lambda r: r[:-64]), r"length is \d+ bytes"),
    ("trailing-bytes", DTYPES, ("raw", lambda r: r + bytes(64)), r"length is \d+ bytes"),
    ("bad-magic", DTYPES, _set("magic", b"SPCPUPX\0"), r"bad magic"),
    ("magic-of-nothing", DTYPES, ("raw", lambda r: bytes(len(r))), r"bad magic"),
    ("version-3", DTYPES, _set("version", 3), r"version 3 is not supported"),
    ("version-0", DTYPES, _set("version", 0), r"version 0 is not supported"),
    ("format-code", DTYPES, _set("format", 4), r"unknown format code 4"),
    ("format-panel-on-bsr-data", DTYPES, _set("format", 3), r"panel format with dtype fp32|block 4x1 is not supported \(16x1\)"),
    ("format-dense-on-bsr-data", DTYPES, _set("format", 2), r"dense format with dtype fp32|block 4x1 is not supported"),
    ("outlier-threshold-nan", ["int8"], _set("outlier_threshold", float("nan")), r"outlier threshold is not finite"),
    ("outlier-threshold-negative", ["int8"], _set("outlier_threshold", -1.0), r"outlier threshold is not finite"),
    ("outlier-threshold-on-fp32", ["fp32"], _set("outlier_threshold", 6.0), r"outlier threshold on an fp32 weight"),
    ("reserved", DTYPES, _set("reserved", 1), r"reserved header field"),
    ("dtype-code-3", DTYPES, _set("dtype", 3), r"unknown dtype code 3"),
    ("dtype-code-0", DTYPES, _set("dtype", 0), r"unknown dtype code 0"),
    ("block-8x1", DTYPES, _set("block_n", 8), r"block 8x1 is not supported"),
    ("block-4x2", DTYPES, _set("block_k", 2), r"block 4x2 is not supported"),
    ("index-width", DTYPES, _set("index_bytes", 4), r"index width 4 does not match K"),
    ("n-2**31", DTYPES, _set("n", 2**31), r"2\*\*31"),
    ("int8-k-over-limit", ["int8"], _set("k", 70000), r"K > 65535"),
    ("nnzb-not-multiple-of-4", DTYPES, _set("nnzb", 13), r"block count 13 is not a multiple of 4"),
    ("nnzb-huge", DTYPES, _set("nnzb", 2**62), r"overflow|length is"),
    ("nnzb-grown", DTYPES, _set("nnzb", 64), r"length is \d+ bytes"),
    ("total-bytes", DTYPES, lambda b: b.set_header("total_bytes", b.header["total_bytes"] + 64), r"header says"),
    ("kept-exceeds-stored", DTYPES, _set("kept_blocks", 13), r"kept block count exceeds"),
    ("kept-blocks-header", DTYPES, _set("kept_blocks", 8), r"header counts 8 kept blocks, the data holds 9"),
    ("kept-blocks-data", DTYPES, lambda b: _zero_block(b, 1), r"header counts 9 kept blocks, the data holds 8"),
    ("row-ptr-0", DTYPES, _arr("row_ptr", 0, 4), r"row_ptr\[0\]"),
    ("row-ptr-end", DTYPES, _arr("row_ptr", 3, 8), r"row_ptr does not end at the block count"),
    ("row-ptr-decreasing", DTYPES, _arr("row_ptr", 2, 4), r"row_ptr of group 1 is out of range or decreasing"),
    ("row-ptr-past-end", DTYPES, _arr("row_ptr", 3, 16), r"row_ptr of group 2 is out of range"),
    ("row-ptr-not-multiple-of-4", DTYPES, _arr("row_ptr", 1, 6), r"group 0 holds a block count that is not a multiple of 4"),
    ("col-out-of-range", DTYPES, _arr("col_idx", 11, 16), r"column index 16 out of range \(K = 16\)"),
    ("col-max-u16", DTYPES, _arr("col_idx", 11, 65535), r"column index 65535 out of range"),
    ("cols-unsorted", DTYPES, _arr("col_idx", 1, 5), r"column indices of group 0 are not sorted"),
    ("cols-unsorted-group-2", DTYPES, _arr("col_idx", 8, 4), r"column indices of group 2 are not sorted"),
    ("w-sum", ["int8"], _arr("w_sum", 0, 12345), r"weight sum of channel 0 does not match"),
    ("w-sum-via-value", ["int8"], lambda b: _int8_value(b, 0, 1, int(b.value(0, 1)) // 2 + 1), r"weight sum of channel 1"),
    ("scale-nan", ["int8"], _arr("w_scale", 2, np.nan), r"channel 2 has a scale that is not finite and > 0"),
    ("scale-inf", ["int8"], _arr("w_scale", 3, np.inf), r"channel 3 has a scale that is not finite"),
    ("scale-zero", ["int8"], _arr("w_scale", 0, 0.0), r"channel 0 has a scale"),
    ("scale-negative", ["int8"], _arr("w_scale", 11, -1.0), r"channel 11 has a scale"),
    ("value-nan", ["fp32"], _arr("values", 5, np.nan), r"non-finite weight value"),
    ("value-inf-in-padding", ["fp32"], _arr("values", _util.value_index(6, 2), np.inf), r"non-finite weight value"),
]


def _corrupt(dtype, edit) -> bytes:
    raw = sparsecpu.pack(known_weight(), dtype=dtype).to_bytes()
    if isinstance(edit, tuple):
        return edit[1](raw)
    b = _util.Buffer.of(raw)
    edit(b)
    return b.tobytes()


@pytest.mark.parametrize(
    "dtype, edit, match",
    [pytest.param(dt, edit, match, id=f"{name}-{dt}") for name, dts, edit, match in CORRUPTIONS for dt in dts],
)
def test_corrupt_buffer_rejected(dtype, edit, match):
    bad = _corrupt(dtype, edit)
    with pytest.raises(ValueError, match=match) as info:
        PackedWeight.from_bytes(bad)
    assert str(info.value).startswith("invalid packed weight: ")
    with pytest.raises(ValueError, match=match):
        PackedWeight(np.frombuffer(bad, np.uint8))


def test_corruption_edits_are_the_intended_ones():
    """The unedited known buffer validates, and the structure the edits rely on is as assumed."""
    for dtype in DTYPES:
        b = _util.Buffer.of(sparsecpu.pack(known_weight(), dtype=dtype).to_bytes())
        assert b.row_ptr.tolist() == [0, 8, 8, 12]
        assert b.header["nnzb"] == 12 and b.header["kept_blocks"] == 9
        PackedWeight(b.tobytes()).validate()
        if dtype == "int8":
            assert b.value(0, 1) != 0


def test_wide_index_buffer_rejects_out_of_range_column():
    w = np.zeros((4, 65537), np.float32)
    w[:, [3, 65536]] = 1.0
    b = _util.Buffer.of(sparsecpu.pack(w, dtype="fp32").to_bytes())
    assert b.header["index_bytes"] == 4 and b.col_idx.tolist()[:2] == [3, 65536]
    b.col_idx[1] = 65537
    with pytest.raises(ValueError, match=r"column index 65537 out of range"):
        PackedWeight(b.tobytes())


def test_not_a_buffer_type():
    with pytest.raises(TypeError):
        PackedWeight(12)
    with pytest.raises(TypeError):
        PackedWeight(np.zeros(100, np.int8))
    with pytest.raises(TypeError):
        PackedWeight(np.zeros((10, 10), np.uint8))
    with pytest.raises(TypeError):
        PackedWeight("SPCPUPW")


@pytest.mark.parametrize("dtype", DTYPES)
def test_random_corruption_never_crashes(dtype):
    """Seeded random byte edits: each buffer is rejected with ValueError, or accepted and then
    consistent (to_dense and linear agree, nothing non-finite)."""
    rng = np.random.default_rng([16, len(dtype)])
    base = np.frombuffer(sparsecpu.pack(known_weight(), dtype=dtype).to_bytes(), np.uint8)
    x = rng.standard_normal((3, KNOWN_K)).astype(np.float32)
    rejected = accepted = 0
    for _ in range(400):
        b = base.copy()
        for _ in range(int(rng.integers(1, 4))):
            # Header bytes are hit as often as the rest.
            i = int(rng.integers(0, 72)) if rng.random() < 0.5 else int(rng.integers(0, b.size))
            b[i] = rng.integers(0, 256)
        try:
            p = PackedWeight(b)
        except ValueError:
            rejected += 1
            continue
        accepted += 1
        p.validate()
        d = p.to_dense()
        assert np.isfinite(d).all()
        if p.shape[1] == KNOWN_K:
            y = sparsecpu.linear(x, p)
            assert y.shape == (3, p.shape[0]) and np.isfinite(y).all()
    assert rejected > 100 and accepted > 10


def test_header_struct_size():
    assert _util.HEADER.size == 80
    assert struct.calcsize("<8s6I5Q") == 72


def test_torch_load_default_weights_only_with_safe_globals(tmp_path):
    """torch.load's default (weights_only=True) refuses unknown classes; allowing PackedWeight suffices."""
    w, _ = _util.pruned_weight(np.random.default_rng(7), 12, 40, 0.5)
    packed = sparsecpu.pack(w, dtype="int8")
    path = tmp_path / "packed.pt"
    torch.save({"layer": packed}, path)
    with pytest.raises(Exception, match="(?i)weights_only|unsupported global|not an allowed global"):
        torch.load(path)
    with torch.serialization.safe_globals([sparsecpu.PackedWeight]):
        loaded = torch.load(path)["layer"]
    assert loaded == packed
    x = np.random.default_rng(8).standard_normal((5, 40)).astype(np.float32)
    np.testing.assert_array_equal(sparsecpu.linear(x, loaded), sparsecpu.linear(x, packed))


# ---------------------------------------------------------------------------------------------
# The panel format (16 output channels share their kept input columns, 64 at a time: AMX B tiles).

# N = 36: panel 0 keeps every other column (75 of K = 150: 2 steps, 53 padding columns), panel 1 keeps
# none (an empty panel), panel 2 (channels 32..35, 12 padding channels) keeps 3 columns (61 padding).
PANEL_N, PANEL_K = 36, 150
PANEL_COLS = {0: list(range(0, PANEL_K, 2)), 1: [], 2: [5, 77, 149]}


def panel_weight() -> np.ndarray:
    rng = np.random.default_rng(1616)
    w = np.zeros((PANEL_N, PANEL_K), np.float32)
    for p, cols in PANEL_COLS.items():
        rows = slice(16 * p, min(PANEL_N, 16 * p + 16))
        w[rows, cols] = rng.uniform(0.5, 1.5, (rows.stop - rows.start, len(cols))) * rng.choice([-1, 1], (rows.stop - rows.start, len(cols)))
    return w


def _panel_raw() -> bytes:
    return sparsecpu.pack(panel_weight(), dtype="int8", format="panel").to_bytes()


def _kept_4x1(w: np.ndarray) -> int:
    n, k = w.shape
    g = -(-n // 4)
    nz = np.zeros((4 * g, k), bool)
    nz[:n] = w != 0
    return int(nz.reshape(g, 4, k).any(axis=1).sum())


def test_panel_layout_byte_by_byte():
    w = panel_weight()
    p = sparsecpu.pack(w, dtype="int8", format="panel")
    assert (p.format, p.block, p.dtype, p.shape) == ("panel", (16, 1), "int8", (PANEL_N, PANEL_K))
    b = _util.Buffer.of(p.to_bytes())
    h = b.header
    assert (h["format"], h["block_n"], h["block_k"], h["index_bytes"], h["version"]) == (3, 16, 1, 2, 2)
    assert b.row_ptr.tolist() == [0, 128, 128, 192] and h["nnzb"] == 192 == p.stored_blocks
    assert h["kept_blocks"] == _kept_4x1(w) == p.kept_blocks
    assert h["total_bytes"] == len(p.to_bytes()) == b.offsets["total"]
    cols = b.col_idx.tolist()
    assert cols[:75] == PANEL_COLS[0] and cols[75:128] == [148] * 53
    assert cols[128:131] == PANEL_COLS[2] and cols[131:] == [149] * 61
    scale = np.ones(48, np.float32)
    amax = np.abs(w).max(axis=1)
    scale[:PANEL_N] = np.where(amax > 0, amax / 127, 1.0)  # an all-zero channel: 1, as padding channels
    np.testing.assert_allclose(b.w_scale, scale, rtol=1e-6)
    q = np.zeros((48, PANEL_K), np.int64)
    q[:PANEL_N] = np.clip(np.rint(w / scale[:PANEL_N, None]), -127, 127)
    vals = b.values
    for panel, (b0, b1) in enumerate([(0, 128), (128, 128), (128, 192)]):
        for pos in range(b0, b1):
            padding = pos > b0 and cols[pos] == cols[pos - 1]
            for c in range(16):
                want = 0 if padding else q[16 * panel + c, cols[pos]]
                assert vals[_util.panel_index(pos, c)] == want, (panel, pos, c)
    np.testing.assert_array_equal(b.w_sum, q.sum(axis=1))
    np.testing.assert_allclose(p.to_dense(), q[:PANEL_N] * scale[:PANEL_N, None], rtol=1e-6)


@pytest.mark.parametrize("n, k, density", [(1, 1, 1.0), (16, 64, 1.0), (17, 65, 0.3), (40, 200, 0.1), (5, 3, 0.0), (0, 7, 0.5), (9, 0, 0.5)])
def test_panel_packs_any_4x1_weight_as_its_union(n, k, density):
    """A 4x1-pruned weight packs as panels holding the union of their 4 groups' columns: the same
    dequantized weight, kept blocks and density as the bsr packing."""
    w, _ = _util.pruned_weight(np.random.default_rng([n, k]), n, k, density)
    p = sparsecpu.pack(w, dtype="int8", format="panel")
    q = sparsecpu.pack(w, dtype="int8", format="bsr")
    np.testing.assert_array_equal(p.to_dense(), q.to_dense())
    assert p.kept_blocks == q.kept_blocks and p.density == q.density
    b = _util.Buffer.of(p.to_bytes())
    for panel in range(-(-n // 16)):
        c0, c1 = b.row_ptr[panel], b.row_ptr[panel + 1]
        union = np.flatnonzero(w[16 * panel: 16 * panel + 16].any(axis=0)).tolist() if n else []
        assert b.col_idx[c0:c1].tolist()[: len(union)] == union
        assert c1 - c0 == -(-len(union) // 64) * 64


def test_panel_pack_arguments():
    w = panel_weight()
    assert sparsecpu.pack(w, block=(16, 1)) == sparsecpu.pack(w, format="panel")
    assert sparsecpu.pack(w, block=(16, 1), format="panel").format == "panel"
    with pytest.raises(ValueError, match="needs dtype='int8'"):
        sparsecpu.pack(w, dtype="fp32", format="panel")
    with pytest.raises(ValueError, match="block=\\(16, 1\\) is the panel format's block"):
        sparsecpu.pack(w, block=(16, 1), format="bsr")
    with pytest.raises(ValueError, match="block must be"):
        sparsecpu.pack(w, block=(8, 1))
    with pytest.raises(ValueError, match="K <= 65535"):
        sparsecpu.pack(np.zeros((2, 65536), np.float32), format="panel")
    with pytest.raises(ValueError, match="NaN or Inf"):
        sparsecpu.pack(np.full((2, 3), np.nan, np.float32), format="panel")


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_panel_round_trips(protocol, tmp_path):
    p = sparsecpu.pack(panel_weight(), format="panel", outlier_threshold=6.0)
    x = np.random.default_rng(3).standard_normal((5, PANEL_K)).astype(np.float32)
    for q in (pickle.loads(pickle.dumps(p, protocol=protocol)), PackedWeight.from_bytes(p.to_bytes()),
              PackedWeight(bytearray(p.to_bytes()))):
        assert q == p and q.format == "panel" and q.outlier_threshold == 6.0
        np.testing.assert_array_equal(q.to_dense(), p.to_dense())
        np.testing.assert_array_equal(sparsecpu.linear(x, q), sparsecpu.linear(x, p))
    torch.save({"w": p}, tmp_path / "p.pt")
    assert torch.load(tmp_path / "p.pt", weights_only=False)["w"] == p


PANEL_CORRUPTIONS = [
    ("truncated", ("raw", lambda r: r[:-64]), r"length is \d+ bytes"),
    ("version-1", _set("version", 1), r"unknown format code 3"),
    ("dtype-fp32", _set("dtype", 2), r"panel format with dtype fp32"),
    ("block-4x1", _set("block_n", 4), r"block 4x1 is not supported \(16x1\)"),
    ("as-bsr", _set("format", 1), r"block 16x1 is not supported \(4x1\)"),
    ("as-dense", _set("format", 2), r"block 16x1 is not supported \(1x1\)"),
    ("index-width", _set("index_bytes", 4), r"index width 4 of a panel weight"),
    ("nnzb-not-multiple-of-64", _set("nnzb", 100), r"column count 100 is not a multiple of 64"),
    ("nnzb-grown", _set("nnzb", 256), r"length is \d+ bytes"),
    ("nnzb-huge", _set("nnzb", 2**62), r"overflow|length is"),
    ("kept-exceeds", _set("kept_blocks", 9 * PANEL_K + 1), r"kept block count exceeds the number of blocks"),
    ("kept-header", lambda b: b.set_header("kept_blocks", b.header["kept_blocks"] - 1), r"header counts \d+ kept blocks, the data holds"),
    ("col-ptr-0", _arr("row_ptr", 0, 64), r"col_ptr\[0\] is 64"),
    ("col-ptr-end", _arr("row_ptr", 3, 128), r"col_ptr does not end at the column count"),
    ("col-ptr-decreasing", _arr("row_ptr", 2, 64), r"col_ptr of panel 1 is out of range or decreasing"),
    ("col-ptr-past-end", _arr("row_ptr", 3, 256), r"col_ptr of panel 2 is out of range"),
    ("col-ptr-not-multiple-of-64", _arr("row_ptr", 1, 100), r"panel 0 holds a column count that is not a multiple of 64"),
    ("col-out-of-range", _arr("col_idx", 0, PANEL_K), r"column index 150 out of range \(K = 150\)"),
    ("col-max-u16", _arr("col_idx", 130, 65535), r"column index 65535 out of range"),
    ("cols-unsorted", _arr("col_idx", 2, 1), r"column indices of panel 0 are not sorted"),
    ("cols-unsorted-panel-2", _arr("col_idx", 129, 4), r"column indices of panel 2 are not sorted"),
    ("padding-not-repeating", _arr("col_idx", 100, 3), r"padding column of panel 0 does not repeat its last column"),
    ("padding-64-columns", _arr("col_idx", slice(1, 128), 0), r"panel 0 holds 64 or more padding columns"),
    ("padding-column-value", _arr("values", _util.panel_index(100, 0), 1), r"nonzero padding value at channel 0, stored column 100"),
    ("padding-channel-value", _arr("values", _util.panel_index(128, 5), 1), r"nonzero padding value at channel 37"),
    ("w-sum", _arr("w_sum", 0, 12345), r"weight sum of channel 0 does not match"),
    ("w-sum-padding-channel", _arr("w_sum", 40, 1), r"weight sum of channel 40 does not match"),
    ("w-sum-via-value", lambda b: b.values.__setitem__(_util.panel_index(3, 7), b.values[_util.panel_index(3, 7)] // 2 + 1), r"weight sum of channel 7"),
    ("scale-nan", _arr("w_scale", 2, np.nan), r"channel 2 has a scale that is not finite and > 0"),
    ("scale-padding-channel", _arr("w_scale", 45, 0.0), r"channel 45 has a scale"),
]


@pytest.mark.parametrize("edit, match", [pytest.param(e, m, id=name) for name, e, m in PANEL_CORRUPTIONS])
def test_panel_corrupt_buffer_rejected(edit, match):
    raw = _panel_raw()
    if isinstance(edit, tuple):
        bad = edit[1](raw)
    else:
        b = _util.Buffer.of(raw)
        edit(b)
        bad = b.tobytes()
    with pytest.raises(ValueError, match=match) as info:
        PackedWeight.from_bytes(bad)
    assert str(info.value).startswith("invalid packed weight: ")


def test_panel_random_corruption_never_crashes():
    rng = np.random.default_rng(1617)
    base = np.frombuffer(_panel_raw(), np.uint8)
    x = rng.standard_normal((3, PANEL_K)).astype(np.float32)
    rejected = accepted = 0
    for _ in range(300):
        b = base.copy()
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(0, 80)) if rng.random() < 0.5 else int(rng.integers(0, b.size))
            b[i] = rng.integers(0, 256)
        try:
            p = PackedWeight(b)
        except ValueError:
            rejected += 1
            continue
        accepted += 1
        assert np.isfinite(p.to_dense()).all()
        if p.shape[1] == PANEL_K:
            y = sparsecpu.linear(x, p)
            assert y.shape == (3, p.shape[0]) and np.isfinite(y).all()
    # Most bytes are values (a changed one breaks its channel's sum) or checked header fields.
    assert rejected > 100 and accepted >= 5


# (format, dtype): the formats and their channel tiles, each with N of its parts (the last one may
# leave its tile part empty) and a K that is no multiple of 4 (dense pads its VNNI dwords).
STACKS = [
    ("bsr", "int8", [8, 4, 10], 37),
    ("bsr", "fp32", [12, 4], 37),
    ("dense", "int8", [16, 32, 7], 37),
    ("panel", "int8", [32, 16, 20], 70),
    ("bsr", "int8", [4], 40),  # one part: a copy
]


@pytest.mark.parametrize("fmt, dtype, ns, k", STACKS)
def test_stack_rows_is_pack_of_the_stacked_weight(fmt, dtype, ns, k):
    """_C.stack_rows (SparseBertLayer's Q, K, V in one weight) gives, byte for byte, the packed weight
    of the stacked float weights: the same kernel results channel for channel."""
    rng = np.random.default_rng(len(ns) * 1000 + k)
    parts = [_util.pruned_weight(rng, n, k, 0.3)[0] for n in ns]
    parts[0][:, 1] *= 1e6  # a channel scale far from the others'
    packed = [sparsecpu.pack(w, dtype=dtype, format=fmt) for w in parts]
    stacked = PackedWeight(sparsecpu._C.stack_rows([p.buffer for p in packed]))
    ref = sparsecpu.pack(np.concatenate(parts), dtype=dtype, format=fmt)
    assert stacked == ref
    assert stacked.kept_blocks == sum(p.kept_blocks for p in packed) > 0
    x = rng.standard_normal((5, k)).astype(np.float32)
    y = sparsecpu.linear(x, stacked)
    assert np.array_equal(y, np.concatenate([sparsecpu.linear(x, p) for p in packed], axis=1))


def test_stack_rows_outlier_threshold_and_wide_index():
    rng = np.random.default_rng(5)
    parts = [_util.pruned_weight(rng, 8, 70000, 0.001)[0] for _ in range(2)]
    packed = [sparsecpu.pack(w, dtype="fp32") for w in parts]
    assert PackedWeight(sparsecpu._C.stack_rows([p.buffer for p in packed])) == sparsecpu.pack(np.concatenate(parts), dtype="fp32")
    parts = [_util.pruned_weight(rng, 8, 40, 0.5)[0] for _ in range(2)]
    packed = [sparsecpu.pack(w, outlier_threshold=6.0) for w in parts]
    assert PackedWeight(sparsecpu._C.stack_rows([p.buffer for p in packed])) == sparsecpu.pack(np.concatenate(parts), outlier_threshold=6.0)


def test_stack_rows_rejects_what_it_cannot_stack():
    rng = np.random.default_rng(6)
    w = _util.pruned_weight(rng, 16, 40, 0.3)[0]
    bsr8, bsr32, dense = (sparsecpu.pack(w, dtype="int8"), sparsecpu.pack(w, dtype="fp32"),
                          sparsecpu.pack(w, format="dense"))
    other_k = sparsecpu.pack(_util.pruned_weight(rng, 16, 41, 0.3)[0])
    outliers = sparsecpu.pack(w, outlier_threshold=6.0)
    for parts in ([bsr8, bsr32], [bsr8, dense], [bsr8, other_k], [bsr8, outliers]):
        with pytest.raises(ValueError, match="share format, dtype, K and outlier threshold"):
            sparsecpu._C.stack_rows([p.buffer for p in parts])
    odd = sparsecpu.pack(w[:10])
    with pytest.raises(ValueError, match="multiple of 4 in the bsr format, got N = 10"):
        sparsecpu._C.stack_rows([odd.buffer, bsr8.buffer])
    with pytest.raises(ValueError, match="multiple of 16 in the dense format, got N = 10"):
        sparsecpu._C.stack_rows([sparsecpu.pack(w[:10], format="dense").buffer, dense.buffer])
    with pytest.raises(ValueError, match="at least one"):
        sparsecpu._C.stack_rows([])
    bad = bsr8.buffer.copy()
    bad[:8] = 0
    with pytest.raises(ValueError, match="bad magic"):
        sparsecpu._C.stack_rows([bsr8.buffer, bad])
