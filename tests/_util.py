"""Helpers shared by the sparsecpu tests: case generation, data, numpy mirrors of the kernels, and
a reader/editor of the packed buffer layout.

Importable as ``import _util`` from the test modules: ``tests/`` has no ``__init__.py``, so pytest's
default (prepend) import mode puts ``tests/`` itself on ``sys.path``. Nothing here touches the source
tree; the package under test is whatever ``import sparsecpu`` finds.
"""

from __future__ import annotations

import itertools
import math
import random
import struct
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

F32 = np.float32
EPS32 = float(np.finfo(np.float32).eps)

# ---------------------------------------------------------------------------------------------
# Pairwise (2-way covering) case generation.
#
# The kernel tests cover every value of every parameter, and every *pair* of values of any two
# parameters, without the Cartesian product. ``pairwise`` is a small deterministic AETG-style greedy
# generator:
#
#   while some pair (param_a=value_a, param_b=value_b) is uncovered:
#       build `candidates` rows; each starts from one uncovered pair (the first in sorted order for
#       the first candidate, a seeded random one for the others), then fills the remaining
#       parameters in a seeded random order, each with the value that covers the most still
#       uncovered pairs together with the values already chosen (ties: seeded random), skipping
#       values for which `feasible` rejects the partial row;
#       keep the feasible candidate that covers the most uncovered pairs (ties: the first).
#
# `feasible(row)` gets a partial row (a dict of the parameters chosen so far) and must answer
# whether it can still be completed; it is how the tests keep the scalar reference kernel's work per
# case bounded and make sure every case has informative (mostly nonzero) expected outputs.
# Everything is driven by ``random.Random(seed)`` over sorted structures, so the list is identical
# on every run and machine. If some pair can never be covered the generator raises rather than
# silently dropping it; ``test_pairwise_cases_cover_every_pair`` re-checks the result.


def pairwise(
    params: Dict[str, Sequence],
    *,
    seed: int,
    feasible: Callable[[dict], bool] = lambda row: True,
    candidates: int = 24,
) -> List[dict]:
    names = list(params)
    values = {n: list(params[n]) for n in names}

    pos = {n: i for i, n in enumerate(names)}

    def key(a, va, b, vb):
        if pos[a] > pos[b]:
            a, va, b, vb = b, vb, a, va
        return (a, values[a].index(va), b, values[b].index(vb))

    def pairs_of(row: dict) -> set:
        keys = [n for n in names if n in row]
        return {key(a, row[a], b, row[b]) for a, b in itertools.combinations(keys, 2)}

    def gain(row: dict, n: str, v) -> int:
        return sum(key(m, row[m], n, v) in uncovered for m in row)

    uncovered = set()
    for a, b in itertools.combinations(names, 2):
        for i in range(len(values[a])):
            for j in range(len(values[b])):
                uncovered.add((a, i, b, j))
    # Pairs no completed row can hold would make the loop spin: reject them up front.
    for pair in sorted(uncovered):
        a, i, b, j = pair
        if not feasible({a: values[a][i], b: values[b][j]}):
            raise ValueError(f"pair {a}={values[a][i]!r}, {b}={values[b][j]!r} is infeasible")

    rng = random.Random(seed)
    rows: List[dict] = []
    while uncovered:
        ordered = sorted(uncovered)
        best, best_score = None, -1
        for c in range(candidates):
            a, i, b, j = ordered[0] if c == 0 else rng.choice(ordered)
            row = {a: values[a][i], b: values[b][j]}
            rest = [n for n in names if n not in row]
            rng.shuffle(rest)
            ok = True
            for n in rest:
                scored = [
                    (gain(row, n, v), rng.random(), v) for v in values[n] if feasible(dict(row, **{n: v}))
                ]
                if not scored:
                    ok = False
                    break
                scored.sort(key=lambda t: (-t[0], t[1]))
                row[n] = scored[0][2]
            if not ok or not feasible(row):
                continue
            score = len(pairs_of(row) & uncovered)
            if score > best_score:
                best, best_score = row, score
        if best is None or best_score <= 0:
            raise RuntimeError("pairwise generator could not cover the remaining pairs")
        rows.append({n: best[n] for n in names})
        uncovered -= pairs_of(best)
    return rows


def completable(params: Dict[str, Sequence], keys: Sequence[str], ok: Callable[[dict], bool]) -> Callable[[dict], bool]:
    """A ``feasible`` for ``pairwise``: a partial row is feasible if some assignment of the
    constrained ``keys`` it leaves open makes ``ok`` true (``ok`` only looks at ``keys``).
    Enumerates the (small) product of the constrained parameters once."""
    keys = list(keys)
    projections = set()
    for combo in itertools.product(*(params[k] for k in keys)):
        if ok(dict(zip(keys, combo))):
            for r in range(len(keys) + 1):
                for idx in itertools.combinations(range(len(keys)), r):
                    projections.add(tuple((keys[i], combo[i]) for i in idx))

    def feasible(partial: dict) -> bool:
        return tuple((k, partial[k]) for k in keys if k in partial) in projections

    return feasible


def uncovered_pairs(params: Dict[str, Sequence], rows: List[dict]) -> List[tuple]:
    """Pairs of parameter values that no row holds (empty for a correct covering list)."""
    missing = []
    for a, b in itertools.combinations(list(params), 2):
        seen = {(r[a], r[b]) for r in rows}
        for va in params[a]:
            for vb in params[b]:
                if (va, vb) not in seen:
                    missing.append((a, va, b, vb))
    return missing


# ---------------------------------------------------------------------------------------------
# Data: random normal weights pruned in 4x1 blocks.


def groups_of(n: int) -> int:
    return (n + 3) // 4


def forced_empty_groups(g: int) -> int:
    """How many whole groups (block rows) a pruned test weight leaves empty."""
    return max(1, g // 8) if g >= 2 else 0


def forced_unused_columns(k: int) -> int:
    """How many input columns a pruned test weight never uses."""
    return max(1, k // 8) if k >= 2 else 0


def block_mask(rng: np.random.Generator, n: int, k: int, density: float, *, holes: bool = True) -> np.ndarray:
    """A ``ceil(n/4) x k`` boolean block mask, each block kept with probability ``density``.

    With ``holes`` (and ``density < 1``) some whole groups are empty and some columns unused (see
    ``forced_empty_groups`` / ``forced_unused_columns``); a positive density keeps at least one block.
    """
    g = groups_of(n)
    mask = rng.random((g, k)) < density
    if density >= 1.0:
        return np.ones((g, k), dtype=bool)
    if density <= 0.0:
        return np.zeros((g, k), dtype=bool)
    empty = rng.choice(g, size=forced_empty_groups(g), replace=False) if holes else np.array([], int)
    unused = rng.choice(k, size=forced_unused_columns(k), replace=False) if holes else np.array([], int)
    mask[empty, :] = False
    mask[:, unused] = False
    if not mask.any() and g and k:
        gs = np.setdiff1d(np.arange(g), empty)
        ks = np.setdiff1d(np.arange(k), unused)
        mask[rng.choice(gs), rng.choice(ks)] = True
    return mask


def kept_blocks(w) -> np.ndarray:
    """Per 4x1 block (4 rows x 1 column) of an ``N x K`` weight (numpy or torch): whether any entry is
    nonzero; ``[ceil(N/4), K]`` bool."""
    w = np.asarray(w)
    n, k = w.shape
    pad = np.zeros((groups_of(n) * 4, k), w.dtype)
    pad[:n] = w
    return (pad.reshape(-1, 4, k) != 0).any(axis=1)


def expand_mask(mask: np.ndarray, n: int) -> np.ndarray:
    """Block mask (groups x K) -> element mask (N x K)."""
    return np.repeat(mask, 4, axis=0)[:n]


def pruned_weight(rng: np.random.Generator, n: int, k: int, density: float, *, holes: bool = True):
    """(weight N x K float32 pruned in 4x1 blocks, block mask). Kept blocks hold normal values."""
    mask = block_mask(rng, n, k, density, holes=holes)
    w = rng.standard_normal((n, k)).astype(F32)
    w *= expand_mask(mask, n)
    return w, mask


def nonzero_fraction_estimate(n: int, k: int, density: float) -> float:
    """Expected fraction of nonzero ``x @ W.T`` outputs for a ``pruned_weight`` with holes."""
    if density >= 1.0:
        return 1.0 if k else 0.0
    g = groups_of(n)
    live_groups = (g - forced_empty_groups(g)) / g
    live_k = k - forced_unused_columns(k)
    return live_groups * (1.0 - (1.0 - density) ** live_k)


# ---------------------------------------------------------------------------------------------
# numpy mirrors of the kernels.


def quantize_rows(x: np.ndarray):
    """Per-row asymmetric u8 quantization, exactly as the kernels do it (float32 arithmetic).

    Returns (q float32 [M, K] holding integers 0..255, scale float32 [M], zero point float32 [M]).
    """
    x = np.asarray(x, dtype=F32)
    mn = np.minimum(x.min(axis=1, initial=F32(0)), F32(0)).astype(F32)
    mx = np.maximum(x.max(axis=1, initial=F32(0)), F32(0)).astype(F32)
    scale = (mx / F32(255)).astype(F32) - (mn / F32(255)).astype(F32)
    scale = np.where(scale >= F32(1e-30), scale, F32(1)).astype(F32)
    inv = (F32(1) / scale).astype(F32)
    zp = np.clip(np.rint((-mn * inv).astype(F32)), 0, 255).astype(F32)
    q = np.clip(np.rint((x * inv[:, None]).astype(F32)) + zp[:, None], 0, 255).astype(F32)
    return q, scale, zp


def quantize_weight(w: np.ndarray):
    """Symmetric per-output-channel int8, as ``pack``: (wq float32 of integers, scale float32 [N])."""
    w = np.asarray(w, dtype=F32)
    amax = np.abs(w).max(axis=1, initial=F32(0)).astype(F32)
    scale = np.where(amax > 0, (amax / F32(127)).astype(F32), F32(1)).astype(F32)
    wq = np.clip(np.rint((w / scale[:, None]).astype(F32)), -127, 127).astype(F32)
    return wq, scale


def int_matmul(a: np.ndarray, b_t: np.ndarray) -> np.ndarray:
    """Exact integer ``a @ b_t.T`` as int64 (float64 BLAS is exact: every partial sum < 2**53)."""
    a64 = np.asarray(a, dtype=np.float64)
    b64 = np.asarray(b_t, dtype=np.float64)
    assert a64.shape[1] * 255.0 * 127.0 < 2.0**53
    return (a64 @ b64.T).astype(np.int64)


def activation_f64(v: np.ndarray, activation: Optional[str]) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    if activation is None:
        return v
    if activation == "relu":
        return np.maximum(v, 0.0)
    if activation == "gelu":
        erf = np.vectorize(math.erf, otypes=[np.float64])
        return 0.5 * v * (1.0 + erf(v / math.sqrt(2.0))) if v.size else v
    if activation == "gelu_tanh":
        return 0.5 * v * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v**3)))
    raise ValueError(activation)


@dataclass
class Int8Expected:
    q: np.ndarray          # float32 [M, K], integers 0..255
    x_scale: np.ndarray    # float32 [M]
    zp: np.ndarray         # float32 [M]
    wq: np.ndarray         # float32 [N, K], integers -127..127
    w_scale: np.ndarray    # float32 [N]
    acc: np.ndarray        # int64 [M, N]: sum_k q * wq, what spmm_s32 returns
    pre: np.ndarray        # float32 [M, N]: the reference epilogue before the activation
    y: np.ndarray          # float64 [M, N]: activation(pre)
    mag: np.ndarray        # float64 [M, N]: |(acc - zp * wsum) * sx * sw| + |bias|, the epilogue's size


def int8_expected(x: np.ndarray, w: np.ndarray, bias: Optional[np.ndarray], activation) -> Int8Expected:
    """What the int8 path must compute, from the pruned float weight ``w`` (numpy mirror)."""
    q, sx, zp = quantize_rows(x)
    wq, sw = quantize_weight(w)
    acc = int_matmul(q, wq)
    wsum = wq.astype(np.int64).sum(axis=1)
    centered = acc - zp.astype(np.int64)[:, None] * wsum[None, :]
    pre = centered.astype(F32) * (sx[:, None] * sw[None, :]).astype(F32)
    mag = np.abs(pre).astype(np.float64)
    if bias is not None:
        pre = (pre + np.asarray(bias, F32)[None, :]).astype(F32)
        mag = mag + np.abs(np.asarray(bias, np.float64))[None, :]
    return Int8Expected(q, sx, zp, wq, sw, acc, pre.astype(F32), activation_f64(pre, activation), mag)


def fp32_expected(x: np.ndarray, w_dense: np.ndarray, bias: Optional[np.ndarray], activation):
    """(pre-activation float64, output float64, |x| @ |W|.T float64) for the fp32 path."""
    x64 = np.asarray(x, np.float64)
    w64 = np.asarray(w_dense, np.float64)
    pre = x64 @ w64.T
    absprod = np.abs(x64) @ np.abs(w64).T
    if bias is not None:
        pre = pre + np.asarray(bias, np.float64)[None, :]
    return pre, activation_f64(pre, activation), absprod


# ---------------------------------------------------------------------------------------------
# Assertions.


def assert_within(actual, expected, tol, what: str) -> None:
    """Elementwise ``|actual - expected| <= tol`` (tol broadcastable); reports the worst element."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    if actual.size == 0:
        return
    assert np.all(np.isfinite(actual)), f"{what}: non-finite output"
    err = np.abs(actual - expected)
    tol = np.broadcast_to(np.asarray(tol, np.float64), err.shape)
    bad = err > tol
    if bad.any():
        i = np.unravel_index(np.argmax(err - tol), err.shape)
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {err.size} elements off; worst at {tuple(int(v) for v in i)}: "
            f"got {actual[i]!r}, expected {expected[i]!r}, |diff| {err[i]:.3g} > tol {tol[i]:.3g}"
        )


def assert_informative(pre: np.ndarray, y: np.ndarray, activation: Optional[str], what: str = "") -> None:
    """Guards the comparisons against vacuous data: a test whose expected output is mostly zeros
    would pass for a kernel that writes nothing. At least half of the pre-activation values and of
    the outputs must be nonzero (for relu, which zeroes the negative half: at least 20% positive)."""
    pre = np.asarray(pre)
    y = np.asarray(y)
    if pre.size == 0:
        return
    frac_pre = np.count_nonzero(pre) / pre.size
    assert frac_pre >= 0.5, f"{what}: only {frac_pre:.0%} of the expected pre-activation outputs are nonzero"
    if activation == "relu":
        frac = np.count_nonzero(y > 0) / y.size
        assert frac >= 0.2, f"{what}: only {frac:.0%} of the expected relu outputs are positive"
    else:
        frac = np.count_nonzero(y) / y.size
        assert frac >= 0.5, f"{what}: only {frac:.0%} of the expected outputs are nonzero"


# ---------------------------------------------------------------------------------------------
# The packed buffer (csrc/core/format.h), for checking the layout and building corruptions.

HEADER = struct.Struct("<8s6I5QfI")
assert HEADER.size == 80
HEADER_FIELDS = (
    "magic", "version", "format", "dtype", "block_n", "block_k", "index_bytes",
    "n", "k", "nnzb", "kept_blocks", "total_bytes", "outlier_threshold", "reserved",
)
# Byte offset of each header field.
HEADER_OFFSETS = {
    "magic": 0, "version": 8, "format": 12, "dtype": 16, "block_n": 20, "block_k": 24,
    "index_bytes": 28, "n": 32, "k": 40, "nnzb": 48, "kept_blocks": 56, "total_bytes": 64,
    "outlier_threshold": 72, "reserved": 76,
}
DTYPE_CODES = {"int8": 1, "fp32": 2}
FORMAT_CODES = {"bsr": 1, "dense": 2, "panel": 3}
PANEL_STEP = 64
DENSE_PANEL = 16
ALIGN = 64


def round_up(v: int, m: int) -> int:
    return (v + m - 1) // m * m


def layout(dtype_code: int, n: int, index_bytes: int, nnzb: int) -> Dict[str, int]:
    """Section offsets and total size, the way compute_layout() places them (64-byte aligned)."""
    g = groups_of(n)
    elem = 1 if dtype_code == 1 else 4
    cursor = HEADER.size
    out = {"groups": g}

    def place(name, nbytes):
        nonlocal cursor
        start = round_up(cursor, ALIGN)
        out[name] = start
        cursor = start + nbytes

    place("row_ptr", (g + 1) * 4)
    place("col_idx", nnzb * index_bytes)
    place("values", nnzb * 4 * elem)
    if dtype_code == 1:
        place("w_scale", g * 16)
        place("w_sum", g * 16)
    out["total"] = round_up(cursor, ALIGN)
    return out


def layout_dense(n: int, k: int) -> Dict[str, int]:
    """Sections of the dense int8 format: panels of 16 channels x ceil(K / 4) VNNI dwords."""
    panels, kq = -(-n // DENSE_PANEL), -(-k // 4)
    cursor = HEADER.size
    out = {"groups": groups_of(n), "panels": panels, "kq": kq}

    def place(name, nbytes):
        nonlocal cursor
        start = round_up(cursor, ALIGN)
        out[name] = start
        cursor = start + nbytes

    place("values", panels * kq * DENSE_PANEL * 4)
    place("w_scale", panels * DENSE_PANEL * 4)
    place("w_sum", panels * DENSE_PANEL * 4)
    out["total"] = round_up(cursor, ALIGN)
    return out


def layout_panel(n: int, nnzb: int) -> Dict[str, int]:
    """Sections of the panel format: col_ptr (in "row_ptr"), u16 columns, nnzb x 16 int8 values, scales, sums."""
    panels = -(-n // DENSE_PANEL)
    cursor = HEADER.size
    out = {"groups": groups_of(n), "panels": panels, "panel": True}

    def place(name, nbytes):
        nonlocal cursor
        start = round_up(cursor, ALIGN)
        out[name] = start
        cursor = start + nbytes

    place("row_ptr", (panels + 1) * 4)
    place("col_idx", nnzb * 2)
    place("values", nnzb * DENSE_PANEL)
    place("w_scale", panels * DENSE_PANEL * 4)
    place("w_sum", panels * DENSE_PANEL * 4)
    out["total"] = round_up(cursor, ALIGN)
    return out


def panel_index(b: int, c: int) -> int:
    """Offset of stored column ``b`` (position in col_idx), channel ``c % 16`` in the panel values."""
    return (b // 4) * 64 + (c % DENSE_PANEL) * 4 + b % 4


def dense_index(kq: int, c: int, k: int) -> int:
    """Offset of channel ``c``, input column ``k`` in the dense panels."""
    return ((c // DENSE_PANEL) * kq + k // 4) * DENSE_PANEL * 4 + (c % DENSE_PANEL) * 4 + k % 4


@dataclass
class Buffer:
    """A writable copy of a packed buffer with numpy views on every section."""

    data: bytearray
    header: dict = field(default_factory=dict)
    offsets: dict = field(default_factory=dict)

    @classmethod
    def of(cls, raw: bytes) -> "Buffer":
        b = cls(bytearray(raw))
        b.header = dict(zip(HEADER_FIELDS, HEADER.unpack_from(b.data, 0)))
        h = b.header
        if h["format"] == FORMAT_CODES["dense"]:
            b.offsets = layout_dense(h["n"], h["k"])
        elif h["format"] == FORMAT_CODES["panel"]:
            b.offsets = layout_panel(h["n"], h["nnzb"])
        else:
            b.offsets = layout(h["dtype"], h["n"], h["index_bytes"], h["nnzb"])
        return b

    @property
    def dense_values(self) -> np.ndarray:
        """Dense format: the panels as int8 ``[panels][kq][16][4]``."""
        o = self.offsets
        return self._view("values", np.int8, o["panels"] * o["kq"] * DENSE_PANEL * 4)

    @property
    def dense_channels(self) -> int:
        """Dense format: channels with a scale and a sum (N rounded up to 16)."""
        return self.offsets["panels"] * DENSE_PANEL

    @property
    def groups(self) -> int:
        return self.offsets["groups"]

    def _view(self, name, dtype, count):
        return np.frombuffer(self.data, dtype=dtype, count=count, offset=self.offsets[name])

    @property
    def row_ptr(self) -> np.ndarray:
        # Panel format: col_ptr, one entry per panel and one more.
        tiles = self.offsets["panels"] if "panel" in self.offsets else self.groups
        return self._view("row_ptr", np.uint32, tiles + 1)

    @property
    def col_idx(self) -> np.ndarray:
        dt = np.uint16 if self.header["index_bytes"] == 2 else np.uint32
        return self._view("col_idx", dt, self.header["nnzb"])

    @property
    def values(self) -> np.ndarray:
        dt = np.int8 if self.header["dtype"] == 1 else np.float32
        per = DENSE_PANEL if "panel" in self.offsets else 4
        return self._view("values", dt, self.header["nnzb"] * per)

    def _channels(self) -> int:
        return self.dense_channels if "panels" in self.offsets else 4 * self.groups

    @property
    def w_scale(self) -> np.ndarray:
        return self._view("w_scale", np.float32, self._channels())

    @property
    def w_sum(self) -> np.ndarray:
        return self._view("w_sum", np.int32, self._channels())

    def value(self, block: int, channel: int):
        """Value of channel ``channel`` (0..3) of stored block ``block`` (quads, channel-major)."""
        return self.values[value_index(block, channel)]

    def set_header(self, name: str, value) -> None:
        fmt = {"magic": "8s", "n": "Q", "k": "Q", "nnzb": "Q", "kept_blocks": "Q", "total_bytes": "Q",
               "outlier_threshold": "f"}.get(name, "I")
        struct.pack_into("<" + fmt, self.data, HEADER_OFFSETS[name], value)
        self.header[name] = value

    def tobytes(self) -> bytes:
        return bytes(self.data)


def header_edit(name: str, value):
    """An edit of a ``Buffer``: set header field ``name``."""
    return lambda b: b.set_header(name, value)


def array_edit(attr: str, index: int, value):
    """An edit of a ``Buffer``: set element ``index`` of its section ``attr``."""

    def f(b):
        getattr(b, attr)[index] = value

    return f


def value_index(block: int, channel: int) -> int:
    return (block // 4) * 16 + channel * 4 + block % 4


def expected_structure(mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray, int]:
    """(row_ptr, col_idx, kept) the format must hold for a block mask: each group's kept columns
    ascending, padded to a multiple of 4 by repeating the last column."""
    row_ptr = [0]
    cols: List[int] = []
    for g in range(mask.shape[0]):
        kept = [int(k) for k in np.flatnonzero(mask[g])]
        while len(kept) % 4:
            kept.append(kept[-1])
        cols.extend(kept)
        row_ptr.append(len(cols))
    return np.array(row_ptr, np.uint32), np.array(cols, np.int64), int(mask.sum())


# ---------------------------------------------------------------------------------------------
# Kernel test cases.

LAYOUTS = ("numpy", "numpy_strided", "numpy_3d", "torch", "torch_transposed")


@dataclass
class CaseData:
    x: np.ndarray                 # float32 [M, K], C-contiguous
    w: np.ndarray                 # float32 [N, K], pruned in 4x1 blocks
    mask: np.ndarray              # bool [ceil(N/4), K] block mask
    bias: Optional[np.ndarray]    # float32 [N] or None


def make_case_data(seed, m: int, n: int, k: int, density: float, bias: bool) -> CaseData:
    """Seeded random normal data; a positive-leaning bias (so relu keeps most bias-only outputs)."""
    rng = np.random.default_rng(seed)
    w, mask = pruned_weight(rng, n, k, density)
    x = rng.standard_normal((m, k)).astype(F32)
    b = (rng.standard_normal(n) + 0.5).astype(F32) if bias else None
    return CaseData(x, w, mask, b)


def in_layout(x: np.ndarray, layout: str):
    """``x`` [M, K] as the input kind/strides of ``layout`` (same values)."""
    m, k = x.shape
    if layout == "numpy":
        return x
    if layout == "numpy_strided":
        # Every other column of a wider array, rows padded too: neither dimension is contiguous.
        big = np.full((m, 2 * k + 3), np.nan, dtype=F32)
        view = big[:, 1 : 1 + 2 * k : 2]
        view[...] = x
        assert not view.flags.c_contiguous or m <= 1 or k <= 1
        return view
    if layout == "numpy_3d":
        return x.reshape(1, m, k)
    import torch

    if layout == "torch":
        return torch.from_numpy(x.copy())
    if layout == "torch_transposed":
        return torch.from_numpy(np.ascontiguousarray(x.T)).T
    raise ValueError(layout)


def bias_in_layout(b: Optional[np.ndarray], layout: str):
    if b is None or not layout.startswith("torch"):
        return b
    import torch

    return torch.from_numpy(b.copy())


def out_as_2d(y, layout: str, m: int, n: int, dtype=np.float32) -> np.ndarray:
    """Checks the output kind/shape/dtype for ``layout`` and returns it as a numpy [M, N] array."""
    if layout.startswith("torch"):
        import torch

        assert isinstance(y, torch.Tensor), type(y)
        assert y.device.type == "cpu" and not y.requires_grad
        y = y.numpy()
    else:
        assert isinstance(y, np.ndarray), type(y)
    assert y.dtype == dtype, (y.dtype, dtype)
    expect_shape = (1, m, n) if layout == "numpy_3d" else (m, n)
    assert y.shape == expect_shape, (y.shape, expect_shape)
    return y.reshape(m, n)


def sparsified_pair(pruned, dtype: str = "int8"):
    """(fused, unfused, report): two deep copies of a pruned Hugging Face model, sparsified with and
    without ``fuse_block``, and the fused one's report."""
    import copy

    import sparsecpu

    fused, plain = copy.deepcopy(pruned), copy.deepcopy(pruned)
    report = sparsecpu.sparsify(fused, dtype=dtype)
    sparsecpu.sparsify(plain, dtype=dtype, fuse_block=False)
    return fused, plain, report


def token_ids(shape, seed: int = 1, vocab: int = 300):
    """Seeded random token ids in [2, vocab) (0 and 1 are the test models' special tokens)."""
    import torch

    return torch.randint(2, vocab, shape, generator=torch.Generator().manual_seed(seed))
