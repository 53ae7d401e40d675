"""Hugging Face BERT's encoder layer in one forward: :class:`SparseBertLayer`.

A ``BertLayer`` is a dozen module calls (the layer, its attention, self-attention, the query, key and
value layers, the output blocks, the intermediate block) around sparsecpu's five kernels and its
attention, and it quantizes its input three times, once for each of Q, K and V.
:func:`sparsecpu.sparsify` turns a ``BertLayer`` whose layers it converted into a
:class:`SparseBertLayer` (a subclass: the same object, children, hooks and ``state_dict``), whose
forward computes Q, K and V in one kernel call and calls the rest straight from one function.

This module imports transformers: :mod:`sparsecpu.sparsify` loads it only for a model that has a
``BertLayer``.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn
from transformers.models.bert.modeling_bert import BertAttention, BertIntermediate, BertLayer, BertSelfAttention

from . import _C, _attention
from ._fused import hooked, unverified
from .formats import PackedWeight
from .nn import SparseLinear, SparseResidualLayerNorm, _plain_input

__all__ = ["SparseBertLayer", "fusable"]

# SHA-256 (first 16 hex digits) of the sources SparseBertLayer.forward reproduces: transformers 5.24
# and 5.25 (the ``cache`` argument). Another version's code may compute something else, so its layers
# are left as they are.
_VERIFIED = {
    BertLayer: {"3e5a9ede068d4d43"},
    BertLayer.feed_forward_chunk: {"96b88c38a24ae38c"},
    BertAttention: {"f3d2d382def4fff7"},
    BertSelfAttention: {"e444e7233b5a9365"},
    BertIntermediate: {"889c3eb8cb652e6c"},
}

# Keyword arguments BertModel passes to its layers besides the named ones: they reach the attention
# function, which ignores them (``output_attentions`` is not one: it asks for the weights).
_PASSED_ON = frozenset({"position_ids", "output_hidden_states"})

_QKV = "_sparsecpu_qkv"  # instance attribute: (the three layers' eager args, the stacked call or None)


def _stackable(layers) -> Optional[str]:
    """None when the query, key and value layers can run as one stacked weight, else why not."""
    weights = [layer.packed_weight for layer in layers]
    first = weights[0]
    if any((w.format, w.dtype, w.shape[1], w.outlier_threshold) != (first.format, first.dtype, first.shape[1],
                                                                      first.outlier_threshold) for w in weights):
        return "its query, key and value weights differ in format, dtype or outlier threshold"
    if len({w.shape[0] for w in weights}) > 1:
        return "its query, key and value layers differ in output size"
    tile = 4 if first.format == "bsr" else 16
    if first.shape[0] % tile:
        return f"its query, key and value outputs are not a multiple of {tile}"
    if any(layer.activation is not None for layer in layers) or len({layer.bias is None for layer in layers}) > 1:
        return "its query, key and value layers differ in bias or carry an activation"
    return None


def fusable(layer: nn.Module) -> Optional[str]:
    """None when :func:`sparsecpu.sparsify` can make ``layer`` (a ``BertLayer``) a
    :class:`SparseBertLayer`, else why not."""
    why = unverified(_VERIFIED, "5.24-5.25")
    if why is not None:
        return why
    if type(layer) is not BertLayer:
        return f"{type(layer).__name__} is a subclass of BertLayer"
    if hasattr(layer, "crossattention"):
        return "it has cross-attention"
    why = _submodules(layer)
    if why is not None:
        return why
    sa = layer.attention.self
    return _stackable((sa.query, sa.key, sa.value))


def _submodules(layer: nn.Module) -> Optional[str]:
    """None when the layer's submodules are what the fused forward runs (what ``sparsify`` left), else
    why not: checked by :func:`fusable` and again at every fused call."""
    if type(layer.attention) is not BertAttention:
        return "it has cross-attention"
    sa = layer.attention.self
    if type(sa) is not BertSelfAttention:
        return f"its self-attention is a {type(sa).__name__}"
    if not (type(sa.query) is SparseLinear and type(sa.key) is SparseLinear and type(sa.value) is SparseLinear):
        return "its query, key and value layers are not all converted"
    if not (type(layer.attention.output) is SparseResidualLayerNorm and type(layer.output) is SparseResidualLayerNorm):
        return "its output blocks are not both fused with their residual add and LayerNorm"
    inter = layer.intermediate
    if not (type(inter) is BertIntermediate and type(inter.dense) is SparseLinear
            and type(inter.intermediate_act_fn) is nn.Identity):
        return "its intermediate layer is not converted with the activation fused"
    if layer.chunk_size_feed_forward:
        return "it chunks its feed-forward"
    return None


class SparseBertLayer(BertLayer):
    """A Hugging Face ``BertLayer`` whose linear layers run sparsecpu's kernels (``query``, ``key``
    and ``value`` :class:`~sparsecpu.nn.SparseLinear`, both output blocks
    :class:`~sparsecpu.nn.SparseResidualLayerNorm`, the intermediate layer with its GELU fused) and
    whose attention is sparsecpu's, with one forward for the whole layer: Q, K and V in one kernel call
    over their stacked weights (one quantization of the input instead of three), attention, then the
    output block, the intermediate layer and the second output block, without the module calls and
    argument handling of the five ``forward`` methods it replaces. The result is bit-identical: each
    output channel is computed by the same kernel from the same values.

    The stacked Q, K, V weight is built at the first call (about the size of the three packed
    weights) and again whenever one of the three layers' weights or biases changes (``load_state_dict``
    or an in-place edit); it is not part of the ``state_dict``.

    :func:`sparsecpu.sparsify` makes a converted ``BertLayer`` one of these in place (its class
    changes; it stays a ``BertLayer``, so transformers' output capture and your hooks on the layer
    still work), for the transformers versions whose BERT code it was checked against; the report
    says so in the ``attention.self.query`` row.

    ``BertLayer.forward`` still runs, unchanged, whatever the fused path does not cover: training
    mode, a KV cache or cross-attention inputs (BERT as a decoder), an attention implementation other
    than sparsecpu's, inputs that are not plain float32 CPU tensors (or under ``torch.compile``),
    keyword arguments other than ``position_ids`` and ``output_hidden_states``, a submodule that is
    no longer what ``sparsify`` left, query, key and value weights that cannot be stacked, and forward
    hooks on the submodules the fused path does not call (transformers' own output capture aside: the
    attention weights it would record are None).
    """

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                cache=None, **kwargs):
        attention, inter, out = self.attention, self.intermediate, self.output
        sa, out1 = attention.self, attention.output
        layers = (sa.query, sa.key, sa.value)
        x = hidden_states
        precision = _attention.PRECISIONS.get(sa.config._attn_implementation)
        call = None
        if (
            precision is not None
            and encoder_hidden_states is None
            and cache is None
            and not self.training
            and _plain_input(x)
            and x.dim() == 3
            and kwargs.keys() <= _PASSED_ON
            and _submodules(self) is None
            and x.shape[-1] == sa.query.in_features
            and out1._norm_ready()
            and out._norm_ready()
            and not hooked(attention, sa, *layers, sa.dropout, out1, out1.dense, out1.dropout, out1.LayerNorm, inter,
                           inter.dense, inter.intermediate_act_fn, out, out.dense, out.dropout, out.LayerNorm)
        ):
            call = self._stacked_qkv(layers)
        if call is None:
            if cache is not None:  # else left out: BertLayer.forward renames a deprecated past_key_values
                kwargs["cache"] = cache
            return super().forward(hidden_states, attention_mask, encoder_hidden_states,
                                   encoder_attention_mask=encoder_attention_mask, **kwargs)
        b, t, e = x.shape
        x = x.contiguous()
        qkv = torch.from_numpy(call(x.numpy()))
        # BertSelfAttention: q, k, v of all_head_size features each, [b, t, heads, d] -> [b, heads, t, d].
        q, k, v = qkv.view(b, t, 3, sa.num_attention_heads, sa.attention_head_size).permute(2, 0, 3, 1, 4).unbind(0)
        a, _ = _attention.attention_forward(sa, q, k, v, attention_mask, dropout=0.0, scaling=sa.scaling,
                                            precision=precision, **kwargs)
        h = out1._apply(a.reshape(b, t, -1), x)
        i = torch.from_numpy(inter.dense._eager_args().call(h.numpy()))
        return out._apply(i, h)

    def _stacked_qkv(self, layers):
        """The bound call of the query, key and value weights stacked (one kernel call for the three),
        rebuilt when one of the layers' eager arguments changed; None if they cannot be stacked."""
        args = tuple(layer._eager_args() for layer in layers)
        cached = self.__dict__.get(_QKV)
        if cached is not None and all(a is c for a, c in zip(args, cached[0])):
            return cached[1]
        call = None
        if _stackable(layers) is None:
            weight = PackedWeight(_C.stack_rows([a.weight.buffer for a in args]))
            bias = None if args[0].bias is None else np.concatenate([a.bias for a in args])
            call = _C.BoundLinear(weight.buffer, bias, None)
        self.__dict__[_QKV] = (args, call)
        return call

    def __getstate__(self):
        state = super().__getstate__()
        state.pop(_QKV, None)  # refers to the layers' bound calls; rebuilt on the first call
        return state


SPARSE_BLOCK = SparseBertLayer
