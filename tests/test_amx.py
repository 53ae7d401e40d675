"""sparsecpu's AMX tile machine (kernels/amx/tilemachine.h), which the emulated amx level runs on, against
plain references of the SDM's pseudo-code; and the per-thread tile configuration of the AMX kernel.

Tile programs run through the test hook ``_C._amx_tile_program(program, memory)``: every address is an
offset into a numpy buffer, which no load or store may leave. The int8 reference is numpy; the bf16
one is exact integer arithmetic (values scaled by 2^300), rounded to nearest even with the
exponent unbounded, denormal inputs read as zero and tiny results flushed to zero, as the SDM says.
"""

from __future__ import annotations

import struct
import threading

import numpy as np
import pytest

import sparsecpu
from sparsecpu import _C, testing

pytestmark = pytest.mark.skipif("amx:emulated" not in testing.levels(), reason="the tile machine needs AVX2")

SEED = 20261201
ROW = 64  # bytes per tile row


def config(tiles, palette=1, start_row=0):
    """The 64-byte ldtilecfg image: tiles = {t: (rows, colsb)}."""
    b = bytearray(64)
    b[0], b[1] = palette, start_row
    for t, (rows, colsb) in tiles.items():
        struct.pack_into("<H", b, 16 + 2 * t, colsb)
        b[48 + t] = rows
    return bytes(b)


def run(program, mem):
    _C._amx_tile_program(program, mem)


def tile_bytes(t) -> np.ndarray:
    return np.frombuffer(_C._amx_tile_data(t), np.uint8).reshape(16, ROW)


class Memory:
    """A byte buffer with a bump allocator: put() places data (rows at a stride) and returns its offset."""

    def __init__(self, size=1 << 16, fill=0):
        self.buf = np.full(size, fill, np.uint8)
        self.top = 64

    def alloc(self, nbytes, align=64):
        off = (self.top + align - 1) // align * align
        self.top = off + nbytes
        assert self.top <= self.buf.size
        return off

    def put(self, data: bytes, at=None):
        off = self.alloc(len(data)) if at is None else at
        self.buf[off:off + len(data)] = np.frombuffer(data, np.uint8)
        return off

    def rows(self, off, nrows, stride, width) -> np.ndarray:
        return np.stack([self.buf[off + r * stride: off + r * stride + width] for r in range(nrows)])


# ---------------------------------------------------------------------------------------------
# Loads, stores, zeroing, the configuration.


def test_tileloadd_zeroes_past_colsb_and_rows_and_tilestored_writes_only_them():
    mem = Memory(fill=0xEE)
    src = np.arange(16 * 80, dtype=np.uint32).astype(np.uint8)
    a = mem.put(src.tobytes())
    out = mem.alloc(16 * 80)
    mem.put(config({3: (5, 12)}), at=0)
    run([("ldtilecfg", 0), ("tileloadd", 3, a, 80), ("tilestored", 3, out, 80)], mem.buf)
    t = tile_bytes(3)
    expect = np.zeros((16, ROW), np.uint8)
    for r in range(5):
        expect[r, :12] = src[80 * r: 80 * r + 12]
    np.testing.assert_array_equal(t, expect)
    stored = mem.rows(out, 16, 80, 80)
    for r in range(16):
        want = np.full(80, 0xEE, np.uint8)
        if r < 5:
            want[:12] = expect[r, :12]
        np.testing.assert_array_equal(stored[r], want, err_msg=f"row {r}: only rows < 5, bytes < 12 are stored")


def test_tileloadd_negative_stride_and_tilezero_clears_the_whole_tile():
    mem = Memory()
    src = np.random.default_rng(SEED).integers(1, 256, 16 * 64, dtype=np.uint8)
    a = mem.put(src.tobytes())
    mem.put(config({0: (16, 64), 1: (4, 8)}), at=0)
    last = a + 15 * 64
    run([("ldtilecfg", 0), ("tileloadd", 0, last, -64)], mem.buf)
    np.testing.assert_array_equal(tile_bytes(0), src.reshape(16, 64)[::-1])
    run([("tilezero", 1)], mem.buf)  # tmm1 is 4 x 8: tilezero clears all 16 x 64 bytes of it anyway
    assert not tile_bytes(1).any()
    # ldtilecfg zeroes every tile, configured or not.
    run([("ldtilecfg", 0)], mem.buf)
    assert not tile_bytes(0).any()


def test_sttilecfg_round_trip_start_row_and_release():
    mem = Memory()
    cfg = config({0: (16, 64), 2: (3, 4), 7: (1, 64)}, start_row=2)
    mem.put(cfg, at=0)
    src = mem.put(bytes(range(1, 129)) * 8)
    out = mem.alloc(64)
    run([("ldtilecfg", 0), ("sttilecfg", out)], mem.buf)
    assert bytes(mem.buf[out:out + 64]) == cfg
    # A load restarts at start_row (an interrupted one continues there): rows below it are kept.
    run([("tileloadd", 0, src, 64), ("sttilecfg", out)], mem.buf)
    t = tile_bytes(0)
    assert not t[:2].any() and (t[2:] == mem.rows(src, 16, 64, 64)[2:]).all()
    assert bytes(mem.buf[out:out + 64]) == config({0: (16, 64), 2: (3, 4), 7: (1, 64)})  # start_row back to 0
    run([("tilerelease",), ("sttilecfg", out)], mem.buf)
    assert not mem.buf[out:out + 64].any(), "the INIT state stores 64 zero bytes"
    with pytest.raises(RuntimeError, match="#UD: tileloadd with the tiles not configured"):
        run([("tileloadd", 0, src, 64)], mem.buf)
    run([("ldtilecfg", mem.put(bytes(64)))], mem.buf)  # palette 0: INIT too
    with pytest.raises(RuntimeError, match="#UD: tilezero with the tiles not configured"):
        run([("tilezero", 0)], mem.buf)


BAD_CONFIGS = [
    ("palette-2", config({0: (1, 4)}, palette=2), "palette 2"),
    ("reserved-byte", bytes(config({0: (1, 4)})[:5]) + b"\x01" + bytes(config({0: (1, 4)})[6:]), "reserved bytes 2-15"),
    ("colsb-65", config({0: (1, 65)}), "tmm0.colsb > 64"),
    ("rows-17", config({4: (17, 4)}), "tmm4.rows > 16"),
    ("rows-without-colsb", config({3: (2, 0)}), "one of tmm3.rows and .colsb is 0"),
    ("colsb-without-rows", config({3: (0, 8)}), "one of tmm3.rows and .colsb is 0"),
    ("tile-8-colsb", bytes(config({0: (1, 4)})[:32]) + b"\x04" + bytes(config({0: (1, 4)})[33:]), "colsb of a tile beyond tmm7"),
    ("tile-8-rows", bytes(config({0: (1, 4)})[:56]) + b"\x01" + bytes(config({0: (1, 4)})[57:]), "rows of a tile beyond tmm7"),
]


@pytest.mark.parametrize("image, match", [(c, m) for _, c, m in BAD_CONFIGS], ids=[i for i, _, _ in BAD_CONFIGS])
def test_ldtilecfg_rejects_bad_images(image, match):
    mem = Memory()
    good = mem.put(config({0: (2, 8)}))
    bad = mem.put(image)
    out = mem.alloc(64)
    with pytest.raises(RuntimeError, match="#GP: ldtilecfg: " + match):
        run([("ldtilecfg", good), ("ldtilecfg", bad)], mem.buf)
    run([("sttilecfg", out)], mem.buf)
    assert bytes(mem.buf[out:out + 64]) == config({0: (2, 8)}), "a faulting ldtilecfg changes nothing"


UD_CASES = [
    ("unconfigured-tile", [("tileloadd", 5, 1024, 64)], "tmm5 is not configured"),
    ("colsb-not-dwords", [("tileloadd", 6, 1024, 64)], "tmm6.colsb is not a multiple of 4"),
    ("same-tiles", [("tdpbusd", 0, 0, 1)], "the three tiles must differ"),
    ("rows-mismatch", [("tdpbusd", 0, 3, 2)], "tmm0.rows != tmm3.rows"),
    ("colsb-mismatch", [("tdpbf16ps", 0, 1, 4)], "tmm0.colsb != tmm4.colsb"),
    ("k-mismatch", [("tdpbusd", 0, 1, 2)], "tmm1.colsb / 4 != tmm2.rows"),
    ("no-tile-8", [("tilezero", 8)], "no tile 8"),
    ("outside-memory", [("tileloadd", 0, 60000, 4096)], "#PF"),
]


@pytest.mark.parametrize("program, match", [(p, m) for _, p, m in UD_CASES], ids=[i for i, _, _ in UD_CASES])
def test_faults(program, match):
    # C = 4 x 16 dwords, A = 4 x 8 dwords, B = 3 x 16 (k mismatch: A has 8 dwords, B 3 rows), and odd ones.
    tiles = {0: (4, 64), 1: (4, 32), 2: (3, 64), 3: (2, 32), 4: (8, 32), 6: (2, 6)}
    mem = Memory()
    mem.put(config(tiles), at=0)
    with pytest.raises(RuntimeError, match=match):
        run([("ldtilecfg", 0)] + program, mem.buf)


def test_state_is_per_thread():
    """Each thread has its own configuration and tiles (as the hardware's XSAVE state is per thread)."""
    mem = Memory()
    mine = mem.put(config({0: (16, 64), 1: (2, 8)}))
    src = mem.put(bytes([7]) * 1024)
    run([("ldtilecfg", mine), ("tileloadd", 0, src, 64)], mem.buf)
    seen = {}

    def other():
        tmem = Memory()
        out = tmem.alloc(64)
        run([("sttilecfg", out)], tmem.buf)
        seen["fresh"] = bytes(tmem.buf[out:out + 64])
        seen["tile0"] = tile_bytes(0).copy()
        tmem.put(config({5: (1, 4)}), at=0)
        run([("ldtilecfg", 0), ("tilezero", 5)], tmem.buf)

    th = threading.Thread(target=other)
    th.start()
    th.join()
    assert seen["fresh"] == bytes(64), "a new thread starts in the INIT state"
    assert not seen["tile0"].any()
    out = mem.alloc(64)
    run([("sttilecfg", out)], mem.buf)
    assert bytes(mem.buf[out:out + 64]) == config({0: (16, 64), 1: (2, 8)})
    assert (tile_bytes(0) == 7).all()


# ---------------------------------------------------------------------------------------------
# tdpbusd: u8 x s8 -> s32, 4-byte groups, wrapping.


def _tdpbusd_case(rng, M, K, N, c_init=None, a=None, b=None):
    """A program C(tile 2) += A(tile 0) . B(tile 5) on M x K dwords by K x N dwords; returns (mem, expected, out)."""
    mem = Memory(size=1 << 15, fill=0xCD)
    a = rng.integers(0, 256, (M, 4 * K), dtype=np.uint8) if a is None else a
    b = rng.integers(-128, 128, (K, 4 * N), dtype=np.int8) if b is None else b
    c = rng.integers(-2**31, 2**31, (M, N), dtype=np.int64).astype(np.int32) if c_init is None else c_init
    sa, sb, sc = 4 * K + 20, 4 * N + 4, 4 * N + 64  # strides wider than a row: the gaps must stay untouched
    oa = mem.alloc(M * sa)
    ob = mem.alloc(K * sb)
    oc = mem.alloc(M * sc)
    out = mem.alloc(M * sc)
    for r in range(M):
        mem.buf[oa + r * sa: oa + r * sa + 4 * K] = a[r]
        mem.buf[oc + r * sc: oc + r * sc + 4 * N] = c[r].view(np.uint8)
    for r in range(K):
        mem.buf[ob + r * sb: ob + r * sb + 4 * N] = b[r].view(np.uint8)
    mem.put(config({2: (M, 4 * N), 0: (M, 4 * K), 5: (K, 4 * N)}), at=0)
    prods = a.reshape(M, K, 4).astype(np.int64)[:, :, None, :] * b.reshape(K, N, 4).astype(np.int64)[None, :, :, :]
    acc = c.astype(np.int64) + prods.sum(axis=(1, 3))
    expected = ((acc + 2**31) % 2**32 - 2**31).astype(np.int32)
    program = [("ldtilecfg", 0), ("tileloadd", 2, oc, sc), ("tileloadd", 0, oa, sa), ("tileloadd", 5, ob, sb),
               ("tdpbusd", 2, 0, 5), ("tilestored", 2, out, sc)]
    return mem, program, expected, out, sc


@pytest.mark.parametrize("case", range(24))
def test_tdpbusd_matches_numpy(case):
    rng = np.random.default_rng([SEED, 1, case])
    M, K, N = (16, 16, 16) if case == 0 else (1, 1, 1) if case == 1 else tuple(rng.integers(1, 17, 3))
    mem, program, expected, out, sc = _tdpbusd_case(rng, M, K, N)
    run(program, mem.buf)
    got = mem.rows(out, M, sc, sc)
    np.testing.assert_array_equal(got[:, :4 * N].copy().view(np.int32), expected)
    assert (got[:, 4 * N:] == 0xCD).all(), "tilestored wrote past colsb"
    t = tile_bytes(2)
    assert not t[:M, 4 * N:].any() and not t[M:].any(), "C past its rows / colsb is zeroed"


def test_tdpbusd_wraps_like_int32():
    rng = np.random.default_rng([SEED, 2])
    M, K, N = 3, 16, 5
    a = np.full((M, 4 * K), 255, np.uint8)
    b = np.full((K, 4 * N), 127, np.int8)
    b[:, 4 * 2: 4 * 3] = -128  # column 2 goes negative
    c = np.array([[2**31 - 1, -2**31, -2**31, 0, 2**31 - 100]] * M, np.int32)
    mem, program, expected, out, sc = _tdpbusd_case(rng, M, K, N, c_init=c, a=a, b=b)
    assert expected[0, 0] < 0 and expected[0, 2] > 0  # wrapped both ways
    run(program, mem.buf)
    np.testing.assert_array_equal(mem.rows(out, M, sc, 4 * N).copy().view(np.int32), expected)


# ---------------------------------------------------------------------------------------------
# tdpbf16ps: exact reference of the SDM pseudo-code.

S = 300  # every bf16 / fp32 value and every product of two bf16 is an integer multiple of 2^-300
F32_MIN_EXP = -126


def _decode(bits, width):
    """(scaled integer value, negative) of a finite bf16 (width 16) or fp32 (32) pattern, denormals read as zero."""
    if width == 16:
        bits <<= 16
    sign = bits >> 31
    e = (bits >> 23) & 0xFF
    f = bits & 0x7FFFFF
    assert e != 0xFF, "finite values only"
    if e == 0:
        return 0, bool(sign)  # DAZ
    v = (f | 1 << 23) << (e - 127 - 23 + S)
    return (-v if sign else v), bool(sign)


def _round(v, negative_zero):
    """fp32 bits of the scaled integer v: nearest even, exponent unbounded; tiny -> signed zero (FTZ)."""
    if v == 0:
        return 0x80000000 if negative_zero else 0
    sign = v < 0
    a = -v if sign else v
    e = a.bit_length() - 1 - S  # 2^e <= |value| < 2^(e + 1)
    shift = e - 23 + S
    if shift > 0:
        q, r = a >> shift, a & ((1 << shift) - 1)
        half = 1 << (shift - 1)
        if r > half or (r == half and q & 1):
            q += 1
    else:
        q = a << -shift
    if q == 1 << 24:
        q >>= 1
        e += 1
    if e < F32_MIN_EXP:
        return 0x80000000 if sign else 0
    assert e <= 127, "no overflow in these cases"
    return (sign << 31) | ((e + 127) << 23) | (q - (1 << 23))


def _fma(acc_bits, a16, b16):
    c, c_neg = _decode(acc_bits, 32)
    x, x_neg = _decode(a16, 16)
    y, y_neg = _decode(b16, 16)
    p = (x * y) >> S
    assert ((x * y) & ((1 << S) - 1)) == 0
    total = p + c
    if total == 0:
        # An exact zero: -0 only when both addends are zeros of negative sign (round to nearest).
        p_neg = x_neg != y_neg
        return _round(0, p == 0 and c == 0 and p_neg and c_neg)
    return _round(total, False)


def _add(u, w):
    a, a_neg = _decode(u, 32)
    b, b_neg = _decode(w, 32)
    total = a + b
    if total == 0:
        return _round(0, a == 0 and b == 0 and a_neg and b_neg)
    return _round(total, False)


def tdpbf16ps_reference(c_bits, a16, b16):
    """c_bits: M x N uint32, a16: M x 2K uint16, b16: K x 2N uint16 -> M x N uint32 (the SDM's loops)."""
    M, N = c_bits.shape
    K = a16.shape[1] // 2
    out = np.empty_like(c_bits)
    for m in range(M):
        temp = [0] * (2 * N)
        for k in range(K):
            for n in range(N):
                temp[2 * n] = _fma(temp[2 * n], int(a16[m, 2 * k]), int(b16[k, 2 * n]))
                temp[2 * n + 1] = _fma(temp[2 * n + 1], int(a16[m, 2 * k + 1]), int(b16[k, 2 * n + 1]))
        for n in range(N):
            out[m, n] = _add(int(c_bits[m, n]), _add(temp[2 * n], temp[2 * n + 1]))
    return out


def _bf16(value) -> int:
    bits = struct.unpack("<I", struct.pack("<f", value))[0]
    assert bits & 0xFFFF == 0, f"{value} is not a bf16"
    return bits >> 16


def _random_bf16(rng, shape):
    """Finite bf16 patterns: mostly moderate normals, some zeros of both signs, denormals, tiny normals."""
    sign = rng.integers(0, 2, shape)
    exp = rng.integers(127 - 12, 127 + 12, shape)
    kind = rng.random(shape)
    exp = np.where(kind < 0.06, 0, exp)                                          # zero or denormal
    exp = np.where((kind >= 0.06) & (kind < 0.12), rng.integers(1, 40, shape), exp)  # products underflow
    mant = rng.integers(0, 128, shape)
    mant = np.where(kind < 0.03, 0, mant)
    return ((sign << 15) | (exp << 7) | mant).astype(np.uint16)


def _run_tdpbf16ps(c_bits, a16, b16):
    M, N = c_bits.shape
    K = a16.shape[1] // 2
    mem = Memory(size=1 << 15)
    oc = mem.put(np.ascontiguousarray(c_bits).tobytes())
    oa = mem.put(np.ascontiguousarray(a16).tobytes())
    ob = mem.put(np.ascontiguousarray(b16).tobytes())
    out = mem.alloc(M * 4 * N)
    mem.put(config({1: (M, 4 * N), 3: (M, 4 * K), 6: (K, 4 * N)}), at=0)
    run([("ldtilecfg", 0), ("tileloadd", 1, oc, 4 * N), ("tileloadd", 3, oa, 4 * K), ("tileloadd", 6, ob, 4 * N),
         ("tdpbf16ps", 1, 3, 6), ("tilestored", 1, out, 4 * N)], mem.buf)
    got = mem.buf[out:out + M * 4 * N].copy().view(np.uint32).reshape(M, N)
    t = tile_bytes(1)
    assert not t[:M, 4 * N:].any() and not t[M:].any(), "C past its rows / colsb is zeroed"
    return got


@pytest.mark.parametrize("case", range(6))
def test_tdpbf16ps_matches_the_pseudo_code_bitwise(case):
    rng = np.random.default_rng([SEED, 3, case])
    M, K, N = (16, 16, 16) if case == 0 else tuple(rng.integers(1, 12, 3))
    a16 = _random_bf16(rng, (M, 2 * K))
    b16 = _random_bf16(rng, (K, 2 * N))
    c = rng.standard_normal((M, N)).astype(np.float32)
    c[0, 0] = np.float32(1e-40)  # a denormal accumulator reads as zero
    c_bits = c.view(np.uint32)
    want = tdpbf16ps_reference(c_bits, a16, b16)
    got = _run_tdpbf16ps(c_bits, a16, b16)
    np.testing.assert_array_equal(got, want)
    assert np.count_nonzero(got) > got.size // 2


def _pairs(even, odd):
    """One row of K bf16 pairs from lists of (even, odd) floats."""
    return np.array([[_bf16(v) for pair in zip(even, odd) for v in pair]], np.uint16)


@pytest.mark.parametrize("name, a_even, b_even, a_odd, b_odd, c, want", [
    # DAZ: a denormal bf16 input (2^-130) reads as zero, although its product with 2^100 is a normal 2^-30.
    ("daz-input", [2.0 ** -130], [2.0 ** 100], [0.0], [0.0], 0.0, 0.0),
    # A product below fp32's range contributes a flushed zero, not a denormal.
    ("tiny-product", [2.0 ** -80], [2.0 ** -80], [0.0], [0.0], 1.0, 1.0),
    # Tininess after rounding: 2^-126 + 2^-149 - 1.5 * 2^-149 = 2^-126 - 2^-150 is exact with an unbounded
    # exponent and below 2^-126: flushed to 0 (rounded into the denormal range it would have been 2^-126).
    ("ftz-after-rounding", [1.0, 2.0 ** -75, 1.5 * 2.0 ** -75], [2.0 ** -126, 2.0 ** -74, -(2.0 ** -74)],
     [0.0] * 3, [0.0] * 3, 0.0, 0.0),
    # Even and odd products accumulate apart, then meet: (2^24 + 1 rounds to 2^24) + (-2^24) = 0, not 1.
    ("even-odd-sums", [2.0 ** 12, 1.0], [2.0 ** 12, 1.0], [-(2.0 ** 12), 0.0], [2.0 ** 12, 0.0], 0.0, 0.0),
    # The accumulator comes last: 1 + 2^-24 rounds to 1 (a tie, to even) before C's 2^-24 is added, which
    # is lost again; adding C to the odd sum first would have kept 1 + 2^-23.
    ("accumulate-last", [1.0], [1.0], [2.0 ** -12], [2.0 ** -12], 2.0 ** -24, 1.0),
    # A flushed tiny result keeps its sign: two products of -2^-160 become -0 and -0, and -0 + (-0 + -0) = -0.
    ("flushed-negative-zero", [2.0 ** -80], [-(2.0 ** -80)], [2.0 ** -80], [-(2.0 ** -80)], -0.0, -0.0),
    # Zeros sum to +0 unless both are -0: the partial sums start at +0.
    ("zero-products", [-0.0], [1.0], [0.0], [-1.0], -0.0, 0.0),
])
def test_tdpbf16ps_rounding_edges(name, a_even, b_even, a_odd, b_odd, c, want):
    a16 = _pairs(a_even, a_odd)
    b16 = np.array([[_bf16(be), _bf16(bo)] for be, bo in zip(b_even, b_odd)], np.uint16)
    c_bits = np.array([[struct.unpack("<I", struct.pack("<f", c))[0]]], np.uint32)
    got = _run_tdpbf16ps(c_bits, a16, b16)
    assert got.tolist() == tdpbf16ps_reference(c_bits, a16, b16).tolist()
    assert got[0, 0] == struct.unpack("<I", struct.pack("<f", want))[0], (name, hex(int(got[0, 0])))


# ---------------------------------------------------------------------------------------------
# The AMX GEMM's tile configuration on the calling thread.


def test_gemm_reloads_a_foreign_or_released_configuration(num_threads):
    """The kernel never trusts a thread's tile state: another library's configuration (or released tiles)
    on the calling thread is read back and replaced, and the results stay bit-exact."""
    num_threads(1)  # the call runs on this thread, whose tile machine the test controls
    rng = np.random.default_rng([SEED, 4])
    w = rng.standard_normal((70, 200)).astype(np.float32)
    x = rng.standard_normal((40, 200)).astype(np.float32)  # a whole 32-row tile and a partial one
    p = sparsecpu.pack(w, format="dense")
    with testing.isa("reference"):
        want = testing.spmm_s32(x, p)
    mem = Memory()
    foreign = mem.put(config({t: (2, 8) for t in range(8)}))
    out = mem.alloc(64)
    for setup in ([("ldtilecfg", foreign)], [("tilerelease",)], []):
        run(setup, mem.buf)
        with testing.isa("amx:emulated"):
            assert testing.kernel_for(p, 40) == "gemm_s8_32x32__amx:emulated"
            np.testing.assert_array_equal(testing.spmm_s32(x, p), want, err_msg=str(setup))
        run([("sttilecfg", out)], mem.buf)
        cfg = bytes(mem.buf[out:out + 64])
        assert cfg[0] == 1 and cfg != config({t: (2, 8) for t in range(8)}), "the kernel loaded its own"
        assert struct.unpack_from("<H", cfg, 16 + 2 * 6)[0] == 64 and cfg[48 + 6] == 16, "B tiles: 16 x 64"


def test_gemm_from_a_new_thread():
    """A thread that has never configured tiles (INIT state) runs the AMX GEMM like any other."""
    rng = np.random.default_rng([SEED, 5])
    w = rng.standard_normal((33, 130)).astype(np.float32)
    x = rng.standard_normal((17, 130)).astype(np.float32)
    p = sparsecpu.pack(w, format="dense")
    with testing.isa("reference"):
        want = testing.spmm_s32(x, p)
    got = {}

    def worker():
        got["s32"] = testing.spmm_s32(x, p)

    with testing.isa("amx:emulated"):
        th = threading.Thread(target=worker)
        th.start()
        th.join()
    np.testing.assert_array_equal(got["s32"], want)
