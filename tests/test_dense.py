"""Dense int8 format and GEMM: layout, every ISA level vs numpy (s32 bit-exact), shapes around the
16-channel panel and 4-row tile edges, format="auto", corrupted dense buffers.

Cases are pairwise over the parameters below (``_util.pairwise``), each run on every supported level.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import _util
import sparsecpu
from sparsecpu import formats, testing
from sparsecpu._layout import DEFAULT_MIN_SPARSITY

LEVELS = testing.levels()
E = _util.EPS32
SEED = 20261123

PARAMS = {
    "M": [0, 1, 2, 3, 4, 5, 8, 9, 63, 64, 65, 129],
    "N": [1, 15, 16, 17, 33, 770],
    "K": [1, 3, 4, 5, 64, 100, 768],
    "density": [0.3, 1.0],
    "bias": [False, True],
    "activation": [None, "relu", "gelu", "gelu_tanh"],
    "layout": list(_util.LAYOUTS),
}


def _case_ok(c) -> bool:
    if c["M"] * c["N"] * c["K"] > 1.5e7:  # the scalar reference kernel's work
        return False
    return not (c["M"] and not c["bias"] and _util.nonzero_fraction_estimate(c["N"], c["K"], c["density"]) < 0.65)


CASES = _util.pairwise(PARAMS, seed=SEED, feasible=_util.completable(PARAMS, ["M", "N", "K", "density", "bias"], _case_ok))


def _id(c) -> str:
    return (f"M{c['M']}-N{c['N']}-K{c['K']}-d{c['density']:g}-{'bias' if c['bias'] else 'nobias'}-"
            f"{c['activation'] or 'noact'}-{c['layout']}")


def test_pairwise_cases_cover_every_pair():
    assert _util.uncovered_pairs(PARAMS, CASES) == []
    assert len(CASES) < 120


def check_levels(x, w, packed, bias, activation, kernel_prefix):
    """Every level vs the numpy int8 mirror: s32 exact, float output within tolerance; returns {level: y}."""
    ex = _util.int8_expected(x, w, bias, activation)
    tol = 8 * E * ex.mag + 1e-30
    out = {}
    for level in LEVELS:
        with testing.isa(level):
            assert testing.kernel_for(packed, x.shape[0]).startswith(kernel_prefix)
            y = sparsecpu.linear(x, packed, bias=bias, activation=activation)
            s32 = testing.spmm_s32(x, packed)
        np.testing.assert_array_equal(s32.astype(np.int64), ex.acc, err_msg=f"s32 at {level}")
        _util.assert_within(y, ex.y, tol, f"{level} vs numpy int8 mirror")
        out[level] = y
    _util.assert_informative(ex.pre, out["reference"], activation)
    return out


@pytest.mark.parametrize("index", range(len(CASES)), ids=[_id(c) for c in CASES])
def test_dense_every_level(index):
    c = CASES[index]
    data = _util.make_case_data([SEED, index], c["M"], c["N"], c["K"], c["density"], c["bias"])
    packed = sparsecpu.pack(data.w, dtype="int8", format="dense")
    assert packed.format == "dense" and packed.block == (1, 1)
    # Blocks whose int8 values all round to zero do not count, as in the BSR format.
    assert packed.kept_blocks == sparsecpu.pack(data.w, format="bsr").kept_blocks <= int(data.mask.sum())
    x = _util.in_layout(data.x, c["layout"])
    ex = _util.int8_expected(data.x, data.w, data.bias, c["activation"])
    for level in LEVELS:
        with testing.isa(level):
            y = sparsecpu.linear(x, packed, bias=_util.bias_in_layout(data.bias, c["layout"]), activation=c["activation"])
            s32 = testing.spmm_s32(x, packed)
        y = _util.out_as_2d(y, c["layout"], c["M"], c["N"])
        s32 = _util.out_as_2d(s32, c["layout"], c["M"], c["N"], np.int32)
        np.testing.assert_array_equal(s32.astype(np.int64), ex.acc, err_msg=f"s32 at {level}")
        _util.assert_within(y, ex.y, 8 * E * ex.mag + 1e-30, f"{level} vs numpy int8 mirror")
    # Pre-activation values mostly nonzero: the comparisons above are not vacuous. (Outputs after
    # the activation may legitimately be mostly zero: GELU of values near -30 at K = 768, one relu.)
    _util.assert_informative(ex.pre, ex.pre, None, _id(c))


def test_dense_layout():
    rng = np.random.default_rng([SEED, 1])
    n, k = 21, 10
    w = rng.standard_normal((n, k)).astype(np.float32)
    w[4:8, 3] = 0.0  # one zero 4x1 block
    p = sparsecpu.pack(w, dtype="int8", format="dense", outlier_threshold=6.0)
    b = _util.Buffer.of(p.to_bytes())
    h = b.header
    assert (h["version"], h["format"], h["dtype"]) == (2, 2, 1)
    assert (h["block_n"], h["block_k"], h["index_bytes"], h["nnzb"]) == (1, 1, 0, 0)
    assert h["kept_blocks"] == 6 * k - 1 == p.kept_blocks and p.density == (6 * k - 1) / (6 * k)
    assert h["outlier_threshold"] == 6.0 and p.outlier_threshold == 6.0
    assert h["total_bytes"] == p.nbytes == b.offsets["total"]
    wq, scale = _util.quantize_weight(w)
    vals = b.dense_values
    expected = np.zeros(vals.shape, np.int8)
    for c in range(n):
        for kk in range(k):
            expected[_util.dense_index(b.offsets["kq"], c, kk)] = wq[c, kk]
    np.testing.assert_array_equal(vals, expected)  # padding channels and columns are zero
    assert b.dense_channels == 32
    np.testing.assert_array_equal(b.w_scale[:n], scale)
    assert (b.w_scale[n:] == 1.0).all() and (b.w_sum[n:] == 0).all()
    np.testing.assert_array_equal(b.w_sum[:n], wq.astype(np.int64).sum(axis=1))
    np.testing.assert_array_equal(p.to_dense(), (wq * scale[:, None]).astype(np.float32))
    assert "format=dense" in repr(p) and "outlier_threshold=6" in repr(p)


def test_format_auto_picks_by_block_density():
    rng = np.random.default_rng([SEED, 2])
    crossover = 1.0 - DEFAULT_MIN_SPARSITY["int8"]  # block density
    sparse, _ = _util.pruned_weight(rng, 64, 64, crossover - 0.2, holes=False)
    dense, _ = _util.pruned_weight(rng, 64, 64, crossover + 0.2, holes=False)
    assert formats.block_density(sparse) < crossover < formats.block_density(dense)
    assert sparsecpu.pack(sparse).format == "bsr"
    assert sparsecpu.pack(dense).format == "dense"
    assert sparsecpu.pack(dense, format="bsr").format == "bsr"
    assert sparsecpu.pack(sparse, format="dense").format == "dense"
    assert sparsecpu.pack(dense, dtype="fp32").format == "bsr"  # no dense fp32 kernel
    assert formats.block_density(np.zeros((0, 5), np.float32)) == 0.0


@pytest.mark.parametrize("m", [1, 7, 70])
def test_dense_and_bsr_agree_bitwise_on_s32(m):
    """The same weight through both formats: identical s32 accumulators (same quantization)."""
    rng = np.random.default_rng([SEED, 3, m])
    w, _ = _util.pruned_weight(rng, 50, 77, 0.6)
    x = rng.standard_normal((m, 77)).astype(np.float32)
    d, s = sparsecpu.pack(w, format="dense"), sparsecpu.pack(w, format="bsr")
    for level in LEVELS:
        with testing.isa(level):
            np.testing.assert_array_equal(testing.spmm_s32(x, d), testing.spmm_s32(x, s), err_msg=level)
            np.testing.assert_allclose(sparsecpu.linear(x, d), sparsecpu.linear(x, s), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("m", [1, 2, 7])
def test_dense_weight_past_the_caches(m):
    """A dense weight of 16 MiB or more (an lm_head) is prefetched as it streams from memory: the first
    row tile of each panel runs another instance of the tile, checked bit-exact here like the rest."""
    rng = np.random.default_rng([SEED, 9, m])
    n, k = 2048, 8192
    w = rng.standard_normal((n, k), dtype=np.float32)
    x = rng.standard_normal((m, k), dtype=np.float32)
    bias = rng.standard_normal(n, dtype=np.float32)
    packed = sparsecpu.pack(w, dtype="int8", format="dense")
    assert packed.nbytes >= 16 << 20
    check_levels(x, w, packed, bias, "gelu", "gemm_s8")


@pytest.mark.parametrize("m", [1, 6, 7, 8, 9, 16, 17, 23, 65])
def test_dense_register_tile_edges(m, num_threads):
    """Around the AVX-512 register tiles (8 rows x 3 panels of 16 channels with VNNI, 8 x 2 without):
    edge tiles of 1..8 rows and 1..3 panels, K = 4 q + 1..3 with few and many steps (a short tile
    interleaves K over several accumulator sets), an all-zero panel; with 2 threads the panel chunks
    end inside a panel group. s32 bit-exact and outputs within tolerance at every level."""
    rng = np.random.default_rng([SEED, 10, m])
    for threads in (1, 2):
        num_threads(threads)
        for n, k in ((16, 3), (33, 7), (48, 1), (49, 45), (64, 70), (97, 131), (160, 23)):
            w = rng.standard_normal((n, k)).astype(np.float32)
            w[16:32] = 0.0
            x = rng.standard_normal((m, k)).astype(np.float32)
            bias = rng.standard_normal(n).astype(np.float32)
            check_levels(x, w, sparsecpu.pack(w, format="dense"), bias, "relu", "gemm_s8")


@pytest.mark.parametrize("m", [1, 15, 16, 17, 31, 32, 33, 47, 63, 64, 65, 97])
def test_dense_amx_tile_edges(m, num_threads):
    """Around the AMX tile (32 rows = 2 A tiles of 16, x 2 panels = 32 channels, K in steps of 64):
    partial tiles of 1..31 rows (one or two A tiles configured with fewer rows; a whole and a partial
    tile in one 64-row block, taken in alternating order by successive panel pairs), an odd panel at the
    end of a range, K below 64 and 64 q + 1..63 (the last step reads a zero-padded copy of the panel's
    remaining quads), N not a multiple of 32; with 2 threads the channel chunks end inside a panel pair
    and each thread configures its own tiles. s32 bit-exact and outputs within tolerance at every level."""
    rng = np.random.default_rng([SEED, 11, m])
    for threads in (1, 2):
        num_threads(threads)
        for n, k in ((16, 64), (32, 63), (33, 65), (80, 1), (96, 200), (130, 257), (336, 300)):
            w = rng.standard_normal((n, k)).astype(np.float32)
            w[32:48] = 0.0
            x = rng.standard_normal((m, k)).astype(np.float32)
            bias = rng.standard_normal(n).astype(np.float32)
            check_levels(x, w, sparsecpu.pack(w, format="dense"), bias, "gelu_tanh", "gemm_s8")


def test_dense_largest_k_s32_does_not_overflow():
    k = 65535
    rng = np.random.default_rng([SEED, 4])
    w = np.empty((17, k), np.float32)
    w[0] = 1.0
    w[1] = -0.5
    w[2:] = rng.standard_normal((15, k))
    x = np.empty((5, k), np.float32)
    x[0] = 1.5
    x[1] = -1.5
    x[2:] = rng.standard_normal((3, k))
    p = sparsecpu.pack(w, format="dense")
    ex = _util.int8_expected(x, w, None, None)
    full = 255 * 127 * k
    assert ex.acc[0, 0] == full and ex.acc[0, 1] == -full
    for level in LEVELS:
        with testing.isa(level):
            np.testing.assert_array_equal(testing.spmm_s32(x, p).astype(np.int64), ex.acc, err_msg=level)


def test_dense_edge_rows_quantization():
    """Constant, all-negative, all-positive, tiny and huge rows through the row-major quantization."""
    rng = np.random.default_rng([SEED, 5])
    k = 70
    w = rng.standard_normal((18, k)).astype(np.float32)
    x = rng.standard_normal((9, k)).astype(np.float32)
    x[0] = 0.0
    x[1] = -np.abs(x[1]) - 1
    x[2] = np.abs(x[2]) + 1
    x[3] = 3.0
    x[4] *= np.float32(1e-30)
    x[5] *= np.float32(1e30)
    x[6, ::7] = 0.0
    bias = (rng.standard_normal(18) + 0.5).astype(np.float32)
    check_levels(x, w, sparsecpu.pack(w, format="dense"), bias, None, "gemm_s8")


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_dense_pickle_round_trip(protocol):
    rng = np.random.default_rng([SEED, 6])
    w = rng.standard_normal((20, 33)).astype(np.float32)
    p = sparsecpu.pack(w, format="dense", outlier_threshold=4.5)
    q = pickle.loads(pickle.dumps(p, protocol=protocol))
    assert q == p and q.format == "dense" and q.outlier_threshold == 4.5
    x = rng.standard_normal((3, 33)).astype(np.float32)
    assert sparsecpu.linear(x, q).tobytes() == sparsecpu.linear(x, p).tobytes()


# ---------------------------------------------------------------------------------------------
# Corrupted dense buffers.


def _dense_buffer() -> _util.Buffer:
    rng = np.random.default_rng([SEED, 7])
    w = rng.standard_normal((21, 10)).astype(np.float32)
    return _util.Buffer.of(sparsecpu.pack(w, format="dense").to_bytes())


def _poke(name, index, value):
    def edit(b: _util.Buffer):
        arr = getattr(b, name)
        arr.flags.writeable = True
        arr[index] = value
    return edit


def _padding_value(b: _util.Buffer):
    arr = b.dense_values
    arr.flags.writeable = True
    arr[_util.dense_index(b.offsets["kq"], 25, 3)] = 1  # channel 25 >= N = 21


def _padding_column(b: _util.Buffer):
    arr = b.dense_values
    arr.flags.writeable = True
    arr[_util.dense_index(b.offsets["kq"], 2, 11)] = -3  # column 11 >= K = 10


def _value_changed(b: _util.Buffer):
    arr = b.dense_values
    arr.flags.writeable = True
    i = _util.dense_index(b.offsets["kq"], 5, 4)
    arr[i] = arr[i] + 1 if arr[i] < 100 else arr[i] - 1


DENSE_CORRUPTIONS = [
    ("padding-channel-value", _padding_value, r"nonzero padding value at channel 25"),
    ("padding-column-value", _padding_column, r"nonzero padding value at channel 2, column 11"),
    ("value-vs-sum", _value_changed, r"weight sum of channel 5"),
    ("sum", _poke("w_sum", 3, 12345), r"weight sum of channel 3"),
    ("padding-sum", _poke("w_sum", 30, 1), r"weight sum of channel 30"),
    ("scale-nan", _poke("w_scale", 0, np.nan), r"channel 0 has a scale"),
    ("scale-zero", _poke("w_scale", 7, 0.0), r"channel 7 has a scale"),
    ("padding-scale-negative", _poke("w_scale", 31, -1.0), r"channel 31 has a scale"),
    ("kept-blocks", lambda b: b.set_header("kept_blocks", 5), r"header counts 5 kept blocks"),
    ("kept-blocks-over", lambda b: b.set_header("kept_blocks", 10**6), r"kept block count exceeds"),
    ("index-bytes", lambda b: b.set_header("index_bytes", 2), r"dense format with a block index"),
    ("nnzb", lambda b: b.set_header("nnzb", 4), r"dense format with a block index"),
    ("block-4x1", lambda b: b.set_header("block_n", 4), r"block 4x1 is not supported \(1x1\)"),
    ("dtype-fp32", lambda b: b.set_header("dtype", 2), r"dense format with dtype fp32"),
    ("version-1", lambda b: b.set_header("version", 1), r"unknown format code 2"),
    ("n-grown", lambda b: b.set_header("n", 40), r"length is \d+ bytes"),
    ("k-grown", lambda b: b.set_header("k", 300), r"length is \d+ bytes"),
    ("k-over-limit", lambda b: b.set_header("k", 70000), r"K > 65535"),
    ("threshold-inf", lambda b: b.set_header("outlier_threshold", float("inf")), r"outlier threshold is not finite"),
    ("reserved", lambda b: b.set_header("reserved", 7), r"reserved header field"),
]


@pytest.mark.parametrize("edit, match", [(e, m) for _, e, m in DENSE_CORRUPTIONS], ids=[i for i, _, _ in DENSE_CORRUPTIONS])
def test_corrupt_dense_buffer_rejected(edit, match):
    b = _dense_buffer()
    edit(b)
    with pytest.raises(ValueError, match=match):
        sparsecpu.PackedWeight.from_bytes(b.tobytes())


def test_random_corruption_of_dense_never_crashes():
    """Byte flips anywhere in a dense buffer: rejected with ValueError or accepted and runnable."""
    raw = _dense_buffer().tobytes()
    rng = np.random.default_rng([SEED, 8])
    x = rng.standard_normal((3, 10)).astype(np.float32)
    rejected = accepted = 0
    for _ in range(400):
        data = bytearray(raw)
        for i in rng.integers(0, len(data), size=int(rng.integers(1, 4))):
            data[i] ^= int(rng.integers(1, 256))
        try:
            p = sparsecpu.PackedWeight.from_bytes(bytes(data))
        except ValueError:
            rejected += 1
            continue
        accepted += 1
        if p.shape[1] == 10:
            assert np.isfinite(sparsecpu.linear(x, p)).all()
    assert rejected > 100 and accepted > 10


def test_version_1_bsr_buffer_still_read():
    """Version 1 (72-byte header, no outlier threshold): the bytes after it are not read."""
    rng = np.random.default_rng([SEED, 9])
    w, _ = _util.pruned_weight(rng, 12, 40, 0.5)
    p = sparsecpu.pack(w, format="bsr")
    b = _util.Buffer.of(p.to_bytes())
    b.set_header("version", 1)
    b.set_header("outlier_threshold", float("nan"))  # padding in version 1: ignored
    b.set_header("reserved", 99)
    q = sparsecpu.PackedWeight.from_bytes(b.tobytes())
    assert q.outlier_threshold is None and q.format == "bsr"
    x = rng.standard_normal((5, 40)).astype(np.float32)
    assert sparsecpu.linear(x, q).tobytes() == sparsecpu.linear(x, p).tobytes()
