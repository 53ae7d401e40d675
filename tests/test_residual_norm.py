"""The residual add + LayerNorm fused after the product: the C++ pass at every ISA level and on
every path of the op (rows split, channels split, skinny, dense int8, outliers), the
sparsecpu::linear_residual_norm op, sparsecpu.nn.SparseResidualLayerNorm, and sparsify() fusing
BERT-style output blocks."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import _util
import sparsecpu
from sparsecpu import _C, testing
from sparsecpu.nn import SparseLinear, SparseResidualLayerNorm

LEVELS = testing.levels()

PARAMS = {
    "kind": ["bsr int8", "bsr fp32", "dense int8", "outliers int8"],
    # M: skinny (<= 8), one 64-row unit, split by rows (several units), a partial last unit
    "m": [1, 5, 64, 130, 200],
    # N around the 8-lane vector and the 4-vector step of the AVX2 pass
    "n": [1, 7, 8, 33, 64, 100],
    "affine": ["both", "none", "weight"],
    "residual": [True, False],
    "activation": ["none", "gelu"],
    "threads": [1, 2],
}


def _cases():
    return _util.pairwise(PARAMS, seed=12)


def _packed(kind: str, n: int, k: int, rng) -> sparsecpu.PackedWeight:
    w, _ = _util.pruned_weight(rng, n, k, 0.5)
    fmt, dtype = kind.split()
    if fmt == "dense":
        return sparsecpu.pack(w, dtype="int8", format="dense")
    return sparsecpu.pack(w, dtype=dtype, outlier_threshold=3.0 if fmt == "outliers" else None)


def _call(x, packed, bias, act, **post) -> np.ndarray:
    out = np.empty((*x.shape[:-1], packed.shape[0]), np.float32)
    _C.linear(x, packed.buffer, bias, act, out, False, **post)
    return out


def _layer_norm64(t, weight, bias, eps):
    t = t.astype(np.float64)
    y = (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, keepdims=True) + eps)
    return y * (1.0 if weight is None else weight) + (0.0 if bias is None else bias)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("case", _cases(), ids=lambda c: "-".join(str(v) for v in c.values()))
def test_residual_and_norm_after_the_product(case, level):
    """LayerNorm(act(x W^T + b) + r) against float64 numpy on the same level's product; the
    residual alone is an exact float32 add; one thread and two give the same bits."""
    rng = np.random.default_rng(case["m"] * 131 + case["n"])
    m, n, k = case["m"], case["n"], 40
    packed = _packed(case["kind"], n, k, rng)
    x = rng.standard_normal((m, k)).astype(np.float32)
    if case["kind"].startswith("outliers"):
        x[m // 2, 3] = 9.0  # one outlier column: the call takes the outlier path
    bias = rng.standard_normal(n).astype(np.float32)
    r = (3.0 * rng.standard_normal((m, n))).astype(np.float32) if case["residual"] else None
    weight = rng.uniform(0.5, 2.0, n).astype(np.float32) if case["affine"] != "none" else None
    beta = rng.standard_normal(n).astype(np.float32) if case["affine"] == "both" else None
    eps = 1e-5
    act = case["activation"]
    sparsecpu.set_num_threads(case["threads"])
    try:
        with testing.isa(level):
            y0 = _call(x, packed, bias, act)
            y = _call(x, packed, bias, act, residual=r, norm=True, norm_weight=weight, norm_bias=beta, norm_eps=eps)
            if r is not None:
                np.testing.assert_array_equal(_call(x, packed, bias, act, residual=r), y0 + r)
            sparsecpu.set_num_threads(3 - case["threads"])
            np.testing.assert_array_equal(
                _call(x, packed, bias, act, residual=r, norm=True, norm_weight=weight, norm_bias=beta, norm_eps=eps), y)
    finally:
        sparsecpu.set_num_threads(2)
    t = y0 + r if r is not None else y0
    expected = _layer_norm64(t, weight, beta, eps)
    if n > 1:
        assert (np.abs(expected) > 1e-2).mean() > 0.5, "expected output mostly zeros: the case proves nothing"
    np.testing.assert_allclose(y, expected, rtol=0, atol=2e-5 * max(1.0, np.abs(expected).max()))


@pytest.mark.parametrize("level", LEVELS)
def test_norm_of_rows_with_a_large_mean(level):
    """Rows far from zero with a small spread (a residual stream's typical shape): the two-pass
    variance keeps them accurate where E[t^2] - E[t]^2 would cancel."""
    rng = np.random.default_rng(3)
    packed = sparsecpu.pack(_util.pruned_weight(rng, 768, 64, 0.3)[0], dtype="fp32")
    x = rng.standard_normal((70, 64)).astype(np.float32)
    r = (1000.0 + rng.standard_normal((70, 768))).astype(np.float32)
    with testing.isa(level):
        y0 = _call(x, packed, None, "none")
        y = _call(x, packed, None, "none", residual=r, norm=True, norm_eps=1e-12)
    np.testing.assert_allclose(y, _layer_norm64(y0 + r, None, None, 1e-12), rtol=0, atol=2e-3)


def test_bad_post_arguments_raise_value_error():
    rng = np.random.default_rng(4)
    packed = sparsecpu.pack(_util.pruned_weight(rng, 16, 24, 0.5)[0], dtype="int8")
    x = rng.standard_normal((3, 24)).astype(np.float32)
    out = np.empty((3, 16), np.float32)
    with pytest.raises(ValueError, match=r"residual \(R\) must be a float32 tensor of the output's shape \[3, 16\], got \[3, 15\]"):
        _C.linear(x, packed.buffer, None, "none", out, False, np.zeros((3, 15), np.float32))
    with pytest.raises(ValueError, match=r"residual \(R\) must be a float32 tensor of the output's shape \[3, 16\], got \[48\]"):
        _C.linear(x, packed.buffer, None, "none", out, False, np.zeros((48,), np.float32))
    with pytest.raises(ValueError, match=r"norm_weight \(Scale\) must be a float32 tensor of shape \[16\], got \[15\]"):
        _C.linear(x, packed.buffer, None, "none", out, False, None, True, np.ones(15, np.float32))
    with pytest.raises(ValueError, match=r"norm_bias \(B\) must be a float32 tensor of shape \[16\], got \[1, 16\]"):
        _C.linear(x, packed.buffer, None, "none", out, False, None, True, None, np.ones((1, 16), np.float32))
    with pytest.raises(ValueError, match=r"norm_weight \(Scale\) is given but norm is off"):
        _C.linear(x, packed.buffer, None, "none", out, False, None, False, np.ones(16, np.float32))
    for eps in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"norm_eps \(epsilon\) must be finite and >= 0"):
            _C.linear(x, packed.buffer, None, "none", out, False, None, True, None, None, eps)
    with pytest.raises(ValueError, match="raw_s32"):
        _C.linear(x, packed.buffer, None, "none", out, True, np.zeros((3, 16), np.float32))


# ---------------------------------------------------------------------------------------------
# The torch op and the module.


class OutputBlock(nn.Module):
    """BERT's output block (BertSelfOutput / BertOutput), written out as transformers writes it."""

    def __init__(self, k: int, n: int, p: float = 0.0):
        super().__init__()
        self.dense = nn.Linear(k, n)
        self.LayerNorm = nn.LayerNorm(n, eps=1e-12)
        self.dropout = nn.Dropout(p)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        hidden_states = self.dense(hidden_states)
        hidden_states = self.dropout(hidden_states)
        hidden_states = self.LayerNorm(hidden_states + input_tensor)
        return hidden_states


class NormBeforeAdd(OutputBlock):
    """Same children, another computation: sparsify must not fuse it."""

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        hidden_states = self.dense(hidden_states)
        hidden_states = self.dropout(hidden_states)
        hidden_states = self.LayerNorm(hidden_states) + input_tensor
        return hidden_states


class Net(nn.Module):
    def __init__(self, block=OutputBlock, k: int = 48, n: int = 32, p: float = 0.0):
        super().__init__()
        self.inp = nn.Linear(n, k)
        self.out = block(k, n, p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.inp(x), x)


def _pruned(module: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    for p in module.parameters():
        with torch.no_grad():
            p.normal_()
    sparsecpu.prune(module, sparsity=0.5)
    return module.eval()


def _block(seed: int, dtype: str = "fp32"):
    block = _pruned(OutputBlock(48, 32), seed)
    fused = SparseResidualLayerNorm(SparseLinear.from_linear(block.dense, dtype=dtype), block.LayerNorm, block.dropout)
    return block, fused.eval()


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
@pytest.mark.parametrize("lead", [(5,), (2, 70), (1,), (0,)])
def test_module_matches_the_block_it_replaces(dtype, lead):
    block, fused = _block(1, dtype)
    h, r = torch.randn(*lead, 48), torch.randn(*lead, 32)
    with torch.no_grad():
        want = block.LayerNorm(fused.dense(h) + r)
        got = fused(h, r)
        op = torch.ops.sparsecpu.linear_residual_norm(h, fused.dense.packed, fused.dense.bias, 32, "none", r,
                                                      block.LayerNorm.weight, block.LayerNorm.bias, 1e-12)
    assert got.shape == (*lead, 32)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(got, op)
    if h.numel():
        assert (want.abs() > 1e-2).float().mean() > 0.5
        if dtype == "fp32":
            torch.testing.assert_close(got, block(h, r), rtol=1e-4, atol=1e-4)


def test_module_falls_back_to_the_unfused_steps():
    """Training with an active dropout, a residual that only broadcasts, and a LayerNorm without
    affine parameters: the same results as the three steps one by one."""
    block, fused = _block(2)
    h = torch.randn(6, 48)
    with torch.no_grad():
        r = torch.randn(1, 32)
        torch.testing.assert_close(fused(h, r), block.LayerNorm(fused.dense(h) + r), rtol=1e-6, atol=1e-6)
        fused.dropout.p = 0.5
        fused.train()
        torch.manual_seed(0)
        got = fused(h, r.expand(6, 32))
        torch.manual_seed(0)
        want = block.LayerNorm(F.dropout(fused.dense(h), 0.5, True) + r)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        plain = SparseResidualLayerNorm(fused.dense, nn.LayerNorm(32, elementwise_affine=False)).eval()
        r = torch.randn(6, 32)
        torch.testing.assert_close(plain(h, r), F.layer_norm(fused.dense(h) + r, (32,)), rtol=1e-5, atol=1e-5)


def test_module_and_op_bad_input():
    block, fused = _block(3)
    h, r = torch.randn(4, 48), torch.randn(4, 32)
    with pytest.raises(TypeError, match="dense must be a SparseLinear"):
        SparseResidualLayerNorm(block.dense, block.LayerNorm)
    with pytest.raises(TypeError, match="nn.LayerNorm over"):
        SparseResidualLayerNorm(fused.dense, nn.LayerNorm(31))
    with pytest.raises(ValueError, match="inference only"):
        fused(h.requires_grad_(), r)
    with pytest.raises(ValueError, match="inference only: the residual requires grad"):
        fused(h.detach(), r.requires_grad_())
    with pytest.raises(ValueError, match=r"SparseLinear\(in_features=48, out_features=32\): x must be a float32 tensor "
                                         r"of shape \[\.\.\., 48\], got \[4, 47\]"):
        fused(torch.randn(4, 47), torch.randn(4, 32))
    op = torch.ops.sparsecpu.linear_residual_norm
    packed, bias = fused.dense.packed, fused.dense.bias
    with pytest.raises(ValueError, match=r"residual \(R\) must be a float32 tensor of the output's shape \[4, 32\]"):
        op(h.detach(), packed, bias, 32, "none", torch.randn(4, 31), None, None, 1e-5)
    with pytest.raises(ValueError, match=r"norm_weight \(Scale\) must be a float32 tensor of shape \[32\], got \[31\]"):
        op(h.detach(), packed, bias, 32, "none", r.detach(), torch.ones(31), None, 1e-5)
    with pytest.raises(TypeError, match="float32 CPU tensors"):
        op(h.detach(), packed, bias, 32, "none", r.detach().double(), None, None, 1e-5)
    with pytest.raises(ValueError, match=r"norm_eps \(epsilon\) must be finite and >= 0, got -1"):
        op(h.detach(), packed, bias, 32, "none", r.detach(), None, None, -1.0)
    with pytest.raises(ValueError, match="output features"):
        op(h.detach(), packed, bias, 33, "none", torch.randn(4, 33), None, None, 1e-5)


def test_opcheck():
    _, fused = _block(4)
    dense, norm = fused.dense, fused.LayerNorm
    for lead, bias, weight in [((5,), dense.bias, norm.weight.detach()), ((2, 3), None, None)]:
        args = (torch.randn(*lead, 48), dense.packed, bias, 32, "gelu", torch.randn(*lead, 32), weight, None, 1e-5)
        torch.library.opcheck(torch.ops.sparsecpu.linear_residual_norm.default, args)


# ---------------------------------------------------------------------------------------------
# sparsify


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_sparsify_fuses_output_blocks_only(dtype):
    net = _pruned(Net(), 5)
    fused, plain = copy.deepcopy(net), copy.deepcopy(net)
    report = sparsecpu.sparsify(fused, dtype=dtype, min_sparsity=0.0)
    sparsecpu.sparsify(plain, dtype=dtype, min_sparsity=0.0, fuse_norm=False)
    assert isinstance(fused.out, SparseResidualLayerNorm) and not fused.out.training
    assert type(plain.out) is OutputBlock
    assert {r.name: r.reason.endswith("; residual add + LayerNorm fused") for r in report} == {"inp": False, "out.dense": True}
    assert list(fused.state_dict()) == list(plain.state_dict())
    x = torch.randn(7, 32)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), plain(x), rtol=1e-5, atol=1e-5)
        if dtype == "fp32":
            torch.testing.assert_close(fused(x), net(x), rtol=1e-4, atol=1e-4)
    lookalike = _pruned(Net(NormBeforeAdd), 6)
    report = sparsecpu.sparsify(lookalike, dtype=dtype, min_sparsity=0.0)
    assert type(lookalike.out) is NormBeforeAdd and isinstance(lookalike.out.dense, SparseLinear)
    assert {r.name: r.reason for r in report}["out.dense"].endswith(
        "; residual add + LayerNorm NOT fused: NormBeforeAdd.forward is not LayerNorm(dropout(dense(h)) + input_tensor)")
    kept = _pruned(Net(), 7)
    sparsecpu.sparsify(kept, dtype=dtype, skip=("out.dense",))
    assert type(kept.out) is OutputBlock


def test_sparsified_model_state_dict_round_trip_and_training_mode():
    a, b = _pruned(Net(), 8), _pruned(Net(), 9)
    sparsecpu.sparsify(a, dtype="int8")
    b.train()
    sparsecpu.sparsify(b, dtype="int8")
    assert b.out.training
    b.load_state_dict(a.state_dict())
    b.eval()
    x = torch.randn(9, 32)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


# Inductor itself uses a deprecated torch.jit API when it loads.
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_torch_export_and_compile_keep_one_node_per_block():
    net = _pruned(Net(), 10)
    sparsecpu.sparsify(net, dtype="int8", min_sparsity=0.0)
    x = torch.randn(6, 32)
    with torch.no_grad():
        ep = torch.export.export(net, (x,))
        targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
        assert targets.count(torch.ops.sparsecpu.linear_residual_norm.default) == 1
        assert torch.equal(ep.module()(x), net(x))
        compiled = torch.compile(net, fullgraph=True)
        for rows in (6, 11):
            x = torch.randn(rows, 32)
            torch.testing.assert_close(compiled(x), net(x), rtol=1e-6, atol=1e-6)
