"""Hugging Face GPT-2's decoder block in one forward: :class:`SparseGPT2Block`.

A decode step of GPT-2 runs 12 ``GPT2Block`` forwards per token, each about ten module calls and
a dozen small torch ops around sparsecpu's four kernels; at one token per call that Python costs
more than the kernels. :func:`sparsecpu.sparsify` turns a ``GPT2Block`` whose layers it converted
into a :class:`SparseGPT2Block` (a subclass: the same object, children, hooks and ``state_dict``),
whose forward calls the kernels straight from one function.

This module imports transformers: :mod:`sparsecpu.sparsify` loads it only for a model that has a
``GPT2Block``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from transformers.cache_utils import EncoderDecoderCache
from transformers.models.gpt2.modeling_gpt2 import GPT2Attention, GPT2Block

from . import _C, _attention
from ._fused import hooked, unverified
from .nn import SparseLinear, SparseMLP, _plain_input

__all__ = ["SparseGPT2Block", "fusable"]

# SHA-256 (first 16 hex digits) of the source of GPT2Block.forward and GPT2Attention.forward that
# SparseGPT2Block.forward reproduces: transformers 5.24 and 5.25 (the ``cache`` argument). Another
# version's forward may compute something else, so its blocks are left as they are.
_VERIFIED = {GPT2Block: {"f64f1ea064fe0b6b"}, GPT2Attention: {"dfa1b3f064774965"}}

# Keyword arguments GPT2Model passes to its blocks besides the named ones: they reach the attention
# function and the cache, which ignore them.
_PASSED_ON = frozenset({"position_ids"})


def fusable(block: nn.Module) -> Optional[str]:
    """None when :func:`sparsecpu.sparsify` can make ``block`` (a ``GPT2Block``) a
    :class:`SparseGPT2Block`, else why not."""
    why = unverified(_VERIFIED, "5.24-5.25")
    if why is not None:
        return why
    if type(block) is not GPT2Block:
        return f"{type(block).__name__} is a subclass of GPT2Block"
    attn = block.attn
    if type(attn) is not GPT2Attention or attn.is_cross_attention or hasattr(block, "crossattention"):
        return "it has cross-attention"
    if not (isinstance(attn.c_attn, SparseLinear) and isinstance(attn.c_proj, SparseLinear)):
        return "its attention layers are not both converted"
    if not isinstance(block.mlp, SparseMLP):
        return "its MLP block is not chained"
    if not (type(block.ln_1) is nn.LayerNorm and type(block.ln_2) is nn.LayerNorm):
        return "ln_1 or ln_2 is not an nn.LayerNorm"
    return None


class SparseGPT2Block(GPT2Block):
    """A Hugging Face ``GPT2Block`` whose four linear layers run sparsecpu's kernels (``attn.c_attn``
    and ``attn.c_proj`` :class:`~sparsecpu.nn.SparseLinear`, ``mlp`` a :class:`~sparsecpu.nn.SparseMLP`)
    and whose attention is sparsecpu's, with one forward for the whole block: ``ln_1``, ``c_attn``,
    the KV cache's ``update``, attention, ``c_proj`` with the residual add, ``ln_2``, the MLP with
    the second residual add, without the per-module calls and argument handling of
    ``GPT2Block.forward`` and ``GPT2Attention.forward``. The result is bit-identical: the same
    kernels and torch ops on the same values (the residual adds happen in the kernels' epilogues,
    the same float additions).

    :func:`sparsecpu.sparsify` makes a converted ``GPT2Block`` one of these in place (its class
    changes; it stays a ``GPT2Block``, so transformers' output capture and your hooks on the block
    still work), for the transformers versions whose GPT-2 code it was checked against; the report
    says so in the ``c_attn`` row.

    ``GPT2Block.forward`` still runs, unchanged, whatever the fused path does not cover: training
    mode, cross-attention inputs, an ``EncoderDecoderCache``, an attention implementation other than
    sparsecpu's, inputs that are not plain float32 CPU tensors (or under ``torch.compile``), keyword
    arguments other than ``position_ids``, a submodule that is no longer what ``sparsify`` left, and
    forward hooks on the submodules the fused path does not call (transformers' own output capture
    aside: the attention weights it would record are None).
    """

    def forward(self, hidden_states, cache=None, attention_mask=None, encoder_hidden_states=None,
                encoder_attention_mask=None, use_cache=False, **kwargs):
        attn, mlp, ln_1, ln_2 = self.attn, self.mlp, self.ln_1, self.ln_2
        c_attn, c_proj = attn.c_attn, attn.c_proj
        x = hidden_states
        precision = _attention.PRECISIONS.get(attn.config._attn_implementation)
        if not (
            precision is not None
            and encoder_hidden_states is None
            and not self.training
            and _plain_input(x)
            and x.dim() == 3
            and x.shape[-1] == c_attn.in_features
            and kwargs.keys() <= _PASSED_ON
            and not isinstance(cache, EncoderDecoderCache)
            and type(c_attn) is SparseLinear
            and type(c_proj) is SparseLinear
            and type(mlp) is SparseMLP
            and mlp._chainable()
            and type(ln_1) is nn.LayerNorm
            and type(ln_2) is nn.LayerNorm
            and not hooked(ln_1, attn, c_attn, c_proj, attn.attn_dropout, attn.resid_dropout, ln_2, mlp, mlp.c_fc,
                           mlp.act, mlp.c_proj, mlp.dropout)
        ):
            if cache is not None:  # else left out: GPT2Block.forward renames a deprecated past_key_values
                kwargs["cache"] = cache
            return super().forward(hidden_states, attention_mask=attention_mask,
                                   encoder_hidden_states=encoder_hidden_states,
                                   encoder_attention_mask=encoder_attention_mask, use_cache=use_cache, **kwargs)
        b, t, e = x.shape
        x = x.contiguous()
        h = torch.layer_norm(x, ln_1.normalized_shape, ln_1.weight, ln_1.bias, ln_1.eps)
        qkv = torch.from_numpy(c_attn._eager_args().call(h.numpy()))
        # GPT2Attention: split into q, k, v of e features each, then [b, t, heads, d] -> [b, heads, t, d].
        q, k, v = qkv.view(b, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        passed = dict(use_cache=use_cache, **kwargs)
        if cache is not None:
            k, v = cache.update(k, v, attn.layer_idx, kwargs=passed)
        if attention_mask is None and t == 1 and _attention.kernel_ready(k) and _attention.kernel_ready(v):
            # A decode step: one query row per head, no mask; what attention_forward would run, less its checks.
            a = _C.attention(q.numpy(), k.numpy(), v.numpy(), None, None, attn.scaling, precision).reshape(b, t, e)
        else:
            a, _ = _attention.attention_forward(attn, q, k, v, attention_mask, dropout=0.0, scaling=attn.scaling,
                                                precision=precision, **passed)
            a = a.reshape(b, t, e).contiguous().numpy()
        # GPT2Block: x = c_proj(a) + x, then x = x + mlp(ln_2(x)): the adds in the kernels' epilogues.
        x = c_proj._eager_args().call(a, x.numpy())
        h = torch.layer_norm(torch.from_numpy(x), ln_2.normalized_shape, ln_2.weight, ln_2.bias, ln_2.eps)
        return torch.from_numpy(mlp._chain(h.numpy(), x))


SPARSE_BLOCK = SparseGPT2Block
