"""``sparsecpu.prune(model)``: magnitude pruning of whole blocks, and ``sparsecpu.prune.keep_masks``
to hold the pruned blocks at zero while fine-tuning."""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

from .sparsify import _linear_layers, _matches

__all__ = ["prune", "keep_masks"]


def _block_scores(w: torch.Tensor, bn: int, bk: int) -> torch.Tensor:
    """Sum of squares of each ``bn x bk`` block of an ``out x in`` weight (edges padded with zeros)."""
    n, k = w.shape
    sq = w.detach().float().square()
    sq = nn.functional.pad(sq, (0, -k % bk, 0, -n % bn))
    return sq.view(sq.shape[0] // bn, bn, sq.shape[1] // bk, bk).sum(dim=(1, 3))


def _expand(keep: torch.Tensor, bn: int, bk: int, n: int, k: int) -> torch.Tensor:
    return keep.repeat_interleave(bn, dim=0).repeat_interleave(bk, dim=1)[:n, :k]


def _keep_top(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean mask keeping all but the ``round(sparsity * numel)`` smallest scores (ties: lower index pruned)."""
    flat = scores.reshape(-1)
    n_prune = round(sparsity * flat.numel())
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[torch.argsort(flat, stable=True)[:n_prune]] = False
    return keep.view(scores.shape)


def prune(
    model: nn.Module,
    sparsity: float = 0.9,
    block: Tuple[int, int] = (4, 1),
    scope: str = "global",
    skip: Sequence[str] = ("lm_head",),
) -> Dict[str, torch.Tensor]:
    """Zeroes, in place, the ``sparsity`` fraction of weight blocks with the smallest L2 norm in the
    ``nn.Linear`` and Hugging Face ``Conv1D`` layers of ``model``; returns the masks.

    Blocks are ``block = (out, in)`` in ``nn.Linear`` orientation: the default ``(4, 1)`` is the
    block sparsecpu's kernels skip (4 output channels x 1 input channel); a ``Conv1D`` weight,
    stored ``in x out``, is blocked the same way on its transpose.

    Args:
        model: changed in place.
        sparsity: fraction of blocks to zero, in ``[0, 1]``.
        block: block shape ``(out, in)``; ``(1, 1)`` is unstructured pruning, ``(16, 1)`` the block of the
            ``"panel"`` format (``pack(..., block=(16, 1))``, the AMX kernel): a weight pruned so keeps
            exactly its density there, where a 4x1-pruned one keeps the union of its groups' columns.
        scope: ``"global"`` ranks the blocks of all layers together (layers that matter less lose
            more); ``"layer"`` prunes each layer to ``sparsity``.
        skip: module names (qualified, last part, or glob) left dense; by default ``lm_head``,
            whose weight GPT-2 shares with the token embedding.

    Returns:
        ``{module name: bool mask}``, each mask shaped like that module's ``weight`` (True = kept).
        Pass it to :func:`sparsecpu.prune.keep_masks` after every optimizer step when fine-tuning.

    Example:
        >>> masks = sparsecpu.prune(model, sparsity=0.9)
        >>> for batch in data:
        ...     loss = model(**batch).loss; loss.backward(); opt.step(); opt.zero_grad()
        ...     sparsecpu.prune.keep_masks(model, masks)
    """
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be a number in [0, 1], got {sparsity!r}")
    if not (isinstance(block, (tuple, list)) and len(block) == 2 and all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in block)):
        raise ValueError(f"block must be a pair of positive ints (out, in), got {block!r}")
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    if isinstance(skip, str):
        skip = (skip,)
    bn, bk = block
    layers = [(name, m, w) for name, m, w in _linear_layers(model) if _matches(name, skip) is None]
    scores = [_block_scores(w, bn, bk) for _, _, w in layers]
    if scope == "global" and scores:
        keep_all = _keep_top(torch.cat([s.reshape(-1) for s in scores]), sparsity)
        keeps: List[torch.Tensor] = list(keep_all.split([s.numel() for s in scores]))
        keeps = [kp.view(s.shape) for kp, s in zip(keeps, scores)]
    else:
        keeps = [_keep_top(s, sparsity) for s in scores]
    masks = {}
    for (name, module, w), keep in zip(layers, keeps):
        mask = _expand(keep, bn, bk, *w.shape)
        if not isinstance(module, nn.Linear):
            mask = mask.t()  # Conv1D stores its weight in x out
        masks[name] = mask.contiguous()
    keep_masks(model, masks)
    return masks


def keep_masks(model: nn.Module, masks: Dict[str, torch.Tensor]) -> None:
    """Re-applies masks from :func:`sparsecpu.prune`: zeroes the pruned weights of ``model`` in place.

    Call it after every optimizer step while fine-tuning a pruned model, so the pruned blocks stay
    zero (the optimizer's update, momentum and weight decay move them otherwise).
    """
    if not isinstance(masks, dict):
        raise TypeError(f"masks must be the dict returned by sparsecpu.prune, got {type(masks).__name__}")
    with torch.no_grad():
        for name, mask in masks.items():
            try:
                weight = model.get_submodule(name).weight
            except AttributeError:
                raise ValueError(f"masks name {name!r}, which is not a layer with a weight in this model") from None
            if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != weight.shape:
                raise ValueError(
                    f"mask for {name!r} must be a bool tensor of shape {tuple(weight.shape)}, got "
                    f"{getattr(mask, 'dtype', type(mask).__name__)} {tuple(getattr(mask, 'shape', ()))}"
                )
            weight.mul_(mask.to(weight.device))


prune.keep_masks = keep_masks
