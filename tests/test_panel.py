"""The panel format's kernels (op spmm_panel_s8: the reference and the AMX tile kernel, emulated here
where the CPU has no AMX): bit-identical s32 at every level of testing.levels(), with the bsr packing of
the same weight on the same input as the oracle (and hand-computed cases), shapes around the tile edges
(N around 16, K around 64, M around 16 and 32), empty and full panels, 1 and 2 threads; and 16x1
pruning, which the panel format stores at exactly its density."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import _util
import sparsecpu
from sparsecpu import testing

LEVELS = testing.levels()
KERNELS = {"reference": "spmm_panel_s8__ref", "amx": "spmm_panel_s8_32x16__amx"}


def _expected_kernel(level: str) -> str:
    isa, _, emulated = level.partition(":")
    return KERNELS["amx"] + (":emulated" if emulated else "") if isa == "amx" else KERNELS["reference"]


def _oracle(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The s32 accumulators of the same weight packed bsr, at the reference level."""
    with testing.isa("reference"):
        return testing.spmm_s32(x, sparsecpu.pack(w, dtype="int8", format="bsr"))


def _check_every_level(x: np.ndarray, w: np.ndarray) -> None:
    want = _oracle(x, w)
    p = sparsecpu.pack(w, dtype="int8", format="panel")
    for level in LEVELS:
        with testing.isa(level):
            assert testing.kernel_for(p, x.shape[0]) == _expected_kernel(level)
            got = testing.spmm_s32(x, p)
        np.testing.assert_array_equal(got, want, err_msg=level)


def _weight(rng, n, k, density, block=(4, 1)):
    """N x K weight pruned in 4x1 (via _util) or 16x1 blocks, kept values normal."""
    if block == (4, 1):
        return _util.pruned_weight(rng, n, k, density)[0]
    keep = rng.random((-(-n // 16), k)) < density
    return (rng.standard_normal((n, k)) * np.repeat(keep, 16, axis=0)[:n]).astype(np.float32)


# Pairwise-ish seeded combinations of the tile edges: N around 16, K around 64, M around 16 / 32.
NS = [1, 15, 16, 17, 37]
KS = [1, 63, 64, 65, 150]
MS = [1, 15, 16, 17, 33]
DENSITIES = [0.0, 0.1, 0.5, 1.0]
_rng = np.random.default_rng(1616)
COMBOS = sorted({(n, k, m, float(_rng.choice(DENSITIES)), str(_rng.choice(["4x1", "16x1"])))
                 for n, k, m in zip(np.repeat(NS, 5), np.tile(KS, 5), _rng.permutation(np.tile(MS, 5)))})


@pytest.mark.parametrize("n, k, m, density, block", COMBOS)
def test_s32_bit_identical_at_every_level(n, k, m, density, block):
    rng = np.random.default_rng([n, k, m, int(100 * density)])
    w = _weight(rng, n, k, density, (4, 1) if block == "4x1" else (16, 1))
    x = rng.standard_normal((m, k)).astype(np.float32)
    _check_every_level(x, w)


@pytest.mark.parametrize("m", [1, 16, 17, 33, 70])
def test_hand_computed(m):
    """x of integers in [0, 255] with a 255 in every row and int8 weights with a 127 in every channel
    quantize exactly (scales 1, zero points 0): the accumulators are x @ w.T."""
    rng = np.random.default_rng(m)
    n, k = 19, 130
    w = np.zeros((n, k), np.float32)
    w[:16, rng.choice(k, 70, replace=False)] = rng.integers(-127, 128, (16, 70))  # panel 0: 2 steps
    w[16:, [0, 64, 129]] = rng.integers(-127, 128, (3, 3))  # panel 1: 1 step, 61 padding columns
    w[:, 7] = 127  # every channel's scale is 1
    x = rng.integers(0, 256, (m, k)).astype(np.float32)
    x[:, 3] = 255
    want = x.astype(np.int64) @ w.astype(np.int64).T
    p = sparsecpu.pack(w, format="panel")
    for level in LEVELS:
        with testing.isa(level):
            np.testing.assert_array_equal(testing.spmm_s32(x, p), want, err_msg=level)


@pytest.mark.parametrize("m", [1, 17, 33])
def test_empty_and_full_panels(m):
    """Panels keeping no column (their outputs are the bias), every column (K steps, K = 200 not a
    multiple of 64), and one column; N = 60 leaves 4 padding channels."""
    rng = np.random.default_rng(m)
    n, k = 60, 200
    w = np.zeros((n, k), np.float32)
    w[16:32] = rng.standard_normal((16, k))  # panel 1: all 200 columns
    w[32:48, 150] = 1.0  # panel 2: one column
    w[48:, ::3] = rng.standard_normal((12, len(range(0, k, 3))))
    p = sparsecpu.pack(w, format="panel")
    b = _util.Buffer.of(p.to_bytes())
    assert b.row_ptr.tolist() == [0, 0, 256, 320, 448]  # 200 -> 256, 1 -> 64, 67 -> 128
    x = rng.standard_normal((m, k)).astype(np.float32)
    _check_every_level(x, w)
    bias = rng.standard_normal(n).astype(np.float32)
    want = sparsecpu.linear(x, sparsecpu.pack(w, format="bsr"), bias)
    for level in LEVELS:
        with testing.isa(level):
            y = sparsecpu.linear(x, p, bias)
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5, err_msg=level)
        np.testing.assert_array_equal(y[:, :16], np.broadcast_to(bias[:16], (m, 16)))


@pytest.mark.parametrize("activation", [None, "relu", "gelu", "gelu_tanh"])
def test_epilogue_matches_bsr(activation):
    rng = np.random.default_rng(5)
    w = _weight(rng, 40, 100, 0.3)
    x = rng.standard_normal((35, 100)).astype(np.float32)
    bias = rng.standard_normal(40).astype(np.float32)
    want = sparsecpu.linear(x, sparsecpu.pack(w, format="bsr"), bias, activation=activation)
    p = sparsecpu.pack(w, format="panel")
    for level in LEVELS:
        with testing.isa(level):
            y = sparsecpu.linear(x, p, bias, activation=activation)
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5, err_msg=level)
        assert np.count_nonzero(y) > y.size // 2


def test_outlier_columns():
    rng = np.random.default_rng(6)
    w = _weight(rng, 33, 90, 0.4)
    x = rng.standard_normal((20, 90)).astype(np.float32)
    x[:, [4, 50]] *= 20.0
    want = sparsecpu.linear(x, sparsecpu.pack(w, format="bsr", outlier_threshold=6.0))
    p = sparsecpu.pack(w, format="panel", outlier_threshold=6.0)
    for level in LEVELS:
        with testing.isa(level):
            np.testing.assert_allclose(sparsecpu.linear(x, p), want, rtol=1e-5, atol=1e-4, err_msg=level)


@pytest.mark.parametrize("m", [5, 128, 130])
def test_one_and_two_threads_agree(m):
    """Two threads split the rows (M = 128: two 64-row units) or the panels (M = 5, 130), balanced by
    stored columns: the same bits as one thread."""
    rng = np.random.default_rng(m)
    w = _weight(rng, 100, 300, 0.2, (16, 1))
    x = rng.standard_normal((m, 300)).astype(np.float32)
    p = sparsecpu.pack(w, format="panel")
    before = sparsecpu.get_num_threads()
    try:
        for level in ("reference", LEVELS[-1]):
            with testing.isa(level):
                out = {}
                for t in (1, 2):
                    sparsecpu.set_num_threads(t)
                    out[t] = (testing.spmm_s32(x, p), sparsecpu.linear(x, p, activation="gelu"))
            np.testing.assert_array_equal(out[1][0], out[2][0], err_msg=level)
            np.testing.assert_array_equal(out[1][1], out[2][1], err_msg=level)
            np.testing.assert_array_equal(out[1][0], _oracle(x, w), err_msg=level)
    finally:
        sparsecpu.set_num_threads(before)


def test_both_kernels_ran():
    calls = testing.kernel_calls()
    rng = np.random.default_rng(8)
    w = _weight(rng, 20, 70, 0.5)
    x = rng.standard_normal((18, 70)).astype(np.float32)
    _check_every_level(x, w)
    after = testing.kernel_calls()
    for level in LEVELS:
        name = _expected_kernel(level)
        assert after[name] > calls[name], name


def test_16x1_pruning_keeps_exactly_its_density():
    """prune(block=(16, 1)) then pack(block=(16, 1)): every panel stores exactly its kept 16x1 blocks
    (plus padding to 64), where a 4x1-pruned weight at the same sparsity keeps the union of its groups'."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 48))
    masks = sparsecpu.prune(model, sparsity=0.9, block=(16, 1), scope="layer")
    for name, layer in (("0", model[0]), ("2", model[2])):
        w = layer.weight.detach().numpy()
        mask = masks[name].numpy()
        blocks = mask.reshape(-1, 16, mask.shape[1])
        assert (blocks.all(axis=1) == blocks.any(axis=1)).all()  # whole 16x1 blocks
        kept = blocks.any(axis=1)
        assert kept.sum() == round(0.1 * kept.size)
        p = sparsecpu.pack(w, block=(16, 1))
        b = _util.Buffer.of(p.to_bytes())
        for panel in range(kept.shape[0]):
            c0, c1 = b.row_ptr[panel], b.row_ptr[panel + 1]
            cols = np.flatnonzero(kept[panel]).tolist()
            assert b.col_idx[c0:c1].tolist()[: len(cols)] == cols and c1 - c0 == -(-len(cols) // 64) * 64
        assert p.density == kept.sum() / kept.size  # 4x1 density of whole 16x1 blocks: the same
        x = np.random.default_rng(1).standard_normal((20, w.shape[1])).astype(np.float32)
        _check_every_level(x, w)
    # 4x1 at the same sparsity: the union of 4 groups per panel keeps more columns than 10%.
    w4, _ = _util.pruned_weight(np.random.default_rng(2), 64, 256, 0.1, holes=False)
    b4 = _util.Buffer.of(sparsecpu.pack(w4, format="panel").to_bytes())
    union = sum(len(set(b4.col_idx[b4.row_ptr[i]:b4.row_ptr[i + 1]].tolist())) for i in range(4))
    assert union > 0.25 * 4 * 256
