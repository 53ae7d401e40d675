"""sparsecpu.sparsify: which layers are replaced, the per-layer choice and its report, outputs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import sparsecpu
from sparsecpu.formats import block_density
from sparsecpu.sparsify import DEFAULT_MIN_SPARSITY
from sparsecpu.nn import SparseLinear


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(32, 64)
        self.down = nn.Linear(64, 32)
        self.gate = nn.Linear(32, 32, bias=False)
        self.norm = nn.LayerNorm(32)

    def forward(self, x):
        return self.norm(x + self.down(torch.relu(self.up(x))) * torch.sigmoid(self.gate(x)))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([Block(), Block()])
        self.lm_head = nn.Linear(32, 50)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.lm_head(x)


def _net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    net = Net().eval()
    sparsecpu.prune(net, sparsity=0.9, scope="layer")
    with torch.no_grad():
        net.blocks[1].gate.weight.normal_()  # one dense layer
    return net


def test_report_rows_choices_and_reasons():
    net = _net()
    ref = copy.deepcopy(net)
    report = sparsecpu.sparsify(net, dtype="fp32")
    names = [r.name for r in report]
    assert names == [n for n, m in ref.named_modules() if isinstance(m, nn.Linear)]
    rows = {r.name: r for r in report}
    for name in ("blocks.0.up", "blocks.0.down", "blocks.0.gate", "blocks.1.up", "blocks.1.down"):
        r = rows[name]
        assert r.kernel == "sparse fp32" and r.block_sparsity == pytest.approx(0.9, abs=0.02)
        assert "min_sparsity 0.7" in r.reason
        assert isinstance(net.get_submodule(name), SparseLinear)
    dense = rows["blocks.1.gate"]
    assert dense.kernel == "kept" and dense.block_sparsity == 0.0 and "slower than dense" in dense.reason
    assert type(net.blocks[1].gate) is nn.Linear
    head = rows["lm_head"]  # not pruned: dense, which an fp32 layer leaves to torch
    assert head.kernel == "kept" and "slower than dense" in head.reason and type(net.lm_head) is nn.Linear
    assert rows["blocks.0.up"].shape == (64, 32) and rows["blocks.0.down"].layer == "Linear"
    assert [r.name for r in report.converted] == ["blocks.0.up", "blocks.0.down", "blocks.0.gate", "blocks.1.up", "blocks.1.down"]
    x = torch.randn(3, 7, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref(x), rtol=1e-4, atol=1e-5)


def test_report_prints_as_a_table():
    report = sparsecpu.sparsify(_net(), dtype="int8")
    text = str(report)
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["layer", "type", "shape", "sparsity"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert len(lines) == len(report) + 3
    assert "blocks.0.up" in text and "sparse int8" in text and "dense int8" in text and "64x32" in text
    assert lines[-1] == f"7 of {len(report)} linear layers converted"
    assert repr(report) == f"SparsifyReport(7 of {len(report)} layers converted)"
    # Columns line up: every row has the kernel column at the same offset.
    col = lines[0].index("kernel")
    assert all(line[col:].startswith(("sparse int8", "dense int8", "kept", "-")) for line in lines[1:-1])
    # int8 layers show the measured choice: the format taken, its predicted time, the other candidates'.
    for r in report.converted:
        choice = r.layout.choice
        assert choice.format == {"sparse int8": "bsr", "dense int8": "dense"}[r.kernel]
        other = next(f for f in choice.predicted if f != choice.format)
        assert (f"measured choice: {choice.format} (predicted {choice.seconds * 1e6:.0f} us at M = 128); "
                f"{other} {choice.predicted[other] * 1e6:.0f} us") in text


def test_min_sparsity_skip_and_forced_format():
    net = _net()
    report = sparsecpu.sparsify(net, dtype="int8", min_sparsity=0.95)
    assert all(r.kernel == "dense int8" for r in report)
    assert "slower than dense" in report[0].reason and net.blocks[0].up.packed_weight.format == "dense"
    net = _net()
    report = sparsecpu.sparsify(net, dtype="int8", format="bsr", skip=("blocks.0.*", "lm_head"))
    kernels = {r.name: r.kernel for r in report}
    assert kernels["blocks.0.up"] == "kept" and kernels["blocks.1.gate"] == "sparse int8"
    assert "format='bsr'" in report[-2].reason
    assert isinstance(net.blocks[1].gate, SparseLinear) and net.blocks[1].gate.packed_weight.density == 1.0
    report = sparsecpu.sparsify(_net(), dtype="int8", skip=("lm_head",))
    assert {r.name: r.kernel for r in report}["lm_head"] == "kept"
    assert "skipped ('lm_head' in skip)" in report[-1].reason


def test_default_thresholds():
    assert DEFAULT_MIN_SPARSITY == {"int8": 0.25, "fp32": 0.7}
    for dtype, keep_p in (("int8", 0.74), ("fp32", 0.3)):  # block sparsity about 0.26 / 0.70: at the threshold
        net = _net()
        with torch.no_grad():
            w = net.blocks[0].up.weight
            keep = torch.rand(16, 32) < keep_p
            w.copy_(torch.randn_like(w) * keep.repeat_interleave(4, 0))
        bs = 1.0 - block_density(net.blocks[0].up.weight.detach().numpy())
        row = {r.name: r for r in sparsecpu.sparsify(net, dtype=dtype)}["blocks.0.up"]
        below = "dense int8" if dtype == "int8" else "kept"
        assert row.block_sparsity == bs and row.layout.density == 1.0 - bs
        assert row.kernel == (f"sparse {dtype}" if bs >= DEFAULT_MIN_SPARSITY[dtype] else below)


def test_report_counts_values_and_4x1_blocks():
    net = nn.Sequential(nn.Linear(3, 6))
    with torch.no_grad():
        w = net[0].weight
        w.zero_()  # two groups of 4 channels, the second padded
        w[0, 0] = 1.0
        w[5, 2] = 2.0
    (row,) = sparsecpu.sparsify(net, dtype="fp32")
    assert row.sparsity == pytest.approx(16 / 18) and row.block_sparsity == pytest.approx(4 / 6)


def test_unpackable_weights_are_kept_with_the_formats_reason():
    """An int8 weight wider than the format's K limit and a weight holding NaN stay torch layers."""
    net = nn.Sequential(nn.Linear(70000, 4, bias=False), nn.Linear(8, 8))
    with torch.no_grad():
        net[0].weight.zero_()
        net[1].weight[3, 3] = float("nan")
    report = sparsecpu.sparsify(net, dtype="int8")
    assert [r.kernel for r in report] == ["kept", "kept"] and [type(m) for m in net] == [nn.Linear, nn.Linear]
    assert "K <= 65535" in report[0].reason and report[1].reason == "weight holds NaN or Inf"
    assert report[0].layout.format is None and report[0].layout.density == 0.0
    assert sparsecpu.sparsify(net[:1], dtype="fp32")[0].kernel == "sparse fp32"


def test_gpt2_conv1d_layers_are_converted():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(1)
    model = nn.Sequential(Conv1D(48, 16), nn.GELU(), Conv1D(16, 48))
    sparsecpu.prune(model, sparsity=0.8, scope="layer")
    ref = copy.deepcopy(model)
    report = sparsecpu.sparsify(model, dtype="fp32")
    assert [(r.layer, r.shape, r.kernel) for r in report] == [("Conv1D", (48, 16), "sparse fp32"), ("Conv1D", (16, 48), "sparse fp32")]
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="dtype"):
        sparsecpu.sparsify(_net(), dtype="int4")
    with pytest.raises(ValueError, match="min_sparsity"):
        sparsecpu.sparsify(_net(), min_sparsity=1.5)
    with pytest.raises(ValueError, match="format"):
        sparsecpu.sparsify(_net(), format="csr")  # pack rejects it
    with pytest.raises(ValueError, match="lone layer"):
        sparsecpu.sparsify(nn.Linear(8, 8), min_sparsity=0.0)
