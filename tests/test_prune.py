"""sparsecpu.prune: block magnitude pruning (global / per layer), masks, keep_masks while fine-tuning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsecpu


def _blocks_of(w: torch.Tensor, bn: int = 4) -> torch.Tensor:
    """Per-block sum of squares of an out x in weight (4x1 blocks, padded)."""
    n, k = w.shape
    w = nn.functional.pad(w, (0, 0, 0, -n % bn))
    return w.square().view(-1, bn, k).sum(1)


def _model(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(24, 30), nn.ReLU(), nn.Linear(30, 12), nn.ReLU(), nn.Linear(12, 5))
    with torch.no_grad():
        m[2].weight.mul_(3.0)  # a layer with larger weights: global scope prunes it less
    return m


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 1.0])
def test_layer_scope_exact_block_counts(sparsity):
    m = _model(0)
    before = {name: mod.weight.detach().clone() for name, mod in m.named_modules() if isinstance(mod, nn.Linear)}
    masks = sparsecpu.prune(m, sparsity=sparsity, scope="layer", skip=())
    assert set(masks) == set(before)
    for name, mask in masks.items():
        w = m.get_submodule(name).weight.detach()
        assert mask.dtype == torch.bool and mask.shape == w.shape
        assert torch.equal(w, before[name] * mask)
        scores = _blocks_of(before[name])
        kept = _blocks_of(mask.float()) > 0
        assert (kept.numel() - kept.sum()).item() == round(sparsity * kept.numel())
        # Whole blocks: a block's 4 channels are kept or zeroed together (last group: its real channels).
        padded = nn.functional.pad(mask.float(), (0, 0, 0, -mask.shape[0] % 4)).view(-1, 4, mask.shape[1])
        assert torch.equal(padded[:-1].amin(1) > 0, kept[:-1])
        if 0 < kept.sum() < kept.numel():
            assert scores[kept].min() >= scores[~kept].max()


def test_global_scope_ranks_all_layers_together():
    m = _model(1)
    before = {name: mod.weight.detach().clone() for name, mod in m.named_modules() if isinstance(mod, nn.Linear)}
    masks = sparsecpu.prune(m, sparsity=0.8, skip=())  # scope="global" by default
    kept_scores, pruned_scores, total, pruned = [], [], 0, 0
    for name, mask in masks.items():
        scores = _blocks_of(before[name])
        kept = _blocks_of(mask.float()) > 0
        kept_scores.append(scores[kept])
        pruned_scores.append(scores[~kept])
        total += kept.numel()
        pruned += (~kept).sum().item()
    assert pruned == round(0.8 * total)
    assert torch.cat(kept_scores).min() >= torch.cat(pruned_scores).max()
    density = {name: mask.float().mean().item() for name, mask in masks.items()}
    assert density["2"] > 0.5 > density["0"], density  # the 3x larger layer keeps more


def test_conv1d_blocks_run_along_output_columns():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(2)
    m = nn.Sequential(Conv1D(12, 8), Conv1D(8, 8))  # stored in x out: 8x12 and a square 8x8
    masks = sparsecpu.prune(m, sparsity=0.5, scope="layer")
    for name, mask in masks.items():
        w = m.get_submodule(name).weight.detach()
        assert mask.shape == w.shape
        groups = mask.t().reshape(-1, 4, mask.shape[0])  # out x in, groups of 4 output channels
        assert torch.equal(groups.all(1), groups.any(1)), "a 4x1 block is kept or pruned whole"
        assert mask.float().mean().item() == 0.5
        assert torch.equal(w != 0, mask)


def test_skip_and_unstructured_block():
    m = nn.Sequential()
    m.add_module("body", nn.Linear(16, 16))
    m.add_module("lm_head", nn.Linear(16, 16))
    masks = sparsecpu.prune(m, sparsity=0.75, block=(1, 1))
    assert list(masks) == ["body"]
    assert (m.lm_head.weight != 0).all()
    assert (m.body.weight == 0).sum().item() == 192


def test_keep_masks_holds_sparsity_while_fine_tuning():
    torch.manual_seed(3)
    m = _model(3)
    masks = sparsecpu.prune(m, sparsity=0.7, skip=())
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    x, target = torch.randn(64, 24), torch.randn(64, 5)
    start = {name: m.get_submodule(name).weight.detach().clone() for name in masks}
    losses = []
    for _ in range(5):
        loss = nn.functional.mse_loss(m(x), target)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sparsecpu.prune.keep_masks(m, masks)
        for name, mask in masks.items():
            w = m.get_submodule(name).weight.detach()
            assert torch.equal(w != 0, mask), "pruned weights must stay exactly zero, kept ones nonzero"
    assert losses[-1] < losses[0]
    for name in masks:
        assert not torch.equal(m.get_submodule(name).weight.detach(), start[name]), "kept weights must train"


def test_bad_arguments():
    m = _model(4)
    with pytest.raises(ValueError, match="sparsity"):
        sparsecpu.prune(m, sparsity=1.2)
    with pytest.raises(ValueError, match="block"):
        sparsecpu.prune(m, block=(4, 0))
    with pytest.raises(ValueError, match="scope"):
        sparsecpu.prune(m, scope="model")
    masks = sparsecpu.prune(m, sparsity=0.5, skip=())
    with pytest.raises(ValueError, match="not a layer"):
        sparsecpu.prune.keep_masks(m, {"9": masks["0"]})
    with pytest.raises(ValueError, match="bool tensor of shape"):
        sparsecpu.prune.keep_masks(m, {"0": masks["2"]})
    with pytest.raises(TypeError, match="dict"):
        sparsecpu.prune.keep_masks(m, list(masks.values()))


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_16x1_blocks_pack_as_panels_at_their_density(scope):
    """block=(16, 1), the panel format's block: whole 16-channel blocks (N = 30 and 12: the last one
    partial) with exact counts, and pack(block=(16, 1)) stores exactly the kept blocks' columns."""
    m = _model(2)
    masks = sparsecpu.prune(m, sparsity=0.75, block=(16, 1), scope=scope, skip=())
    total = pruned = 0
    for name, mask in masks.items():
        kept = _blocks_of(mask.float(), 16) > 0
        padded = nn.functional.pad(mask.float(), (0, 0, 0, -mask.shape[0] % 16)).view(-1, 16, mask.shape[1])
        assert torch.equal(padded[:-1].amin(1) > 0, kept[:-1])
        assert torch.equal(padded[-1, : mask.shape[0] - 16 * (kept.shape[0] - 1)].amin(0) > 0, kept[-1])
        total += kept.numel()
        pruned += (~kept).sum().item()
        if scope == "layer":
            assert (~kept).sum().item() == round(0.75 * kept.numel())
        p = sparsecpu.pack(m.get_submodule(name).weight.detach(), block=(16, 1))
        assert p.format == "panel" and p.block == (16, 1)
        assert p.stored_blocks == sum(-(-int(r.sum()) // 64) * 64 for r in kept)
        assert p.kept_blocks == int(_blocks_of(mask.float(), 4).gt(0).sum())
    if scope == "global":
        assert pruned == round(0.75 * total)
