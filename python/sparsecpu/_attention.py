"""sparsecpu's attention kernel as a Hugging Face attention implementation (``"sparsecpu"``).

transformers looks attention functions up by the name in ``config._attn_implementation``; this
module registers two (with SDPA's boolean masks), ``"sparsecpu"`` (fp32) and ``"sparsecpu_bf16"``
(bf16 products where the CPU has AMX-BF16, see :func:`sparsecpu._library.attention`), and switches a
model to one.
The function runs the cases the kernel covers (no causal flag, no dropout, one key/value head per
query head, float32 CPU tensors without grad) and hands everything else to transformers' own SDPA
function, so a switched model computes what it computed before.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch

from . import _library
from ._layout import attention_precision_for

NAME = "sparsecpu"
NAMES = {"fp32": NAME, "bf16": "sparsecpu_bf16"}  # implementation name by precision
PRECISIONS = {name: precision for precision, name in NAMES.items()}


def _plain(t) -> bool:
    return type(t) is torch.Tensor and t.is_cpu and t.layout is torch.strided and not t.requires_grad


def kernel_ready(t) -> bool:
    """A 4-D float32 CPU tensor without grad whose rows (last dim) are contiguous: what the kernel reads."""
    return _plain(t) and t.dtype is torch.float32 and t.dim() == 4 and (t.stride(-1) == 1 or t.shape[-1] <= 1)


def attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: Optional[float] = None,
                      is_causal: Optional[bool] = None, precision: str = "fp32", **kwargs):
    """The ``"sparsecpu"`` attention function (``"sparsecpu_bf16"`` with ``precision="bf16"``):
    transformers' SDPA signature and results.

    Decode steps call it once per layer and token, so the checks are ordered cheapest first; the
    head counts' equality also rules out grouped key/value heads."""
    mask = attention_mask
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    covered = (
        kernel_ready(query)
        and kernel_ready(key)
        and kernel_ready(value)
        and key.shape[1] == query.shape[1]
        and not (mask is None and causal and query.shape[2] > 1)
        and (dropout == 0.0 or not module.training)
        and (
            not kwargs
            or (
                kwargs.get("softcap") is None
                and kwargs.get("position_bias") is None
                and kwargs.get("cache") is None
                and not kwargs.get("output_attentions", False)
            )
        )
        and (mask is None or (_plain(mask) and mask.dim() == 4 and mask.dtype in (torch.bool, torch.float32)))
    )
    if not covered:
        return _sdpa()(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal,
                       **kwargs)
    scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
    if torch.compiler.is_compiling():
        return torch.ops.sparsecpu.attention(query, key, value, mask, scale, precision), None
    return _library.run_attention(query, key, value, mask, scale, precision), None


def _sdpa():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward


def _register() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    for precision, name in NAMES.items():
        AttentionInterface.register(name, functools.partial(attention_forward, precision=precision))
        AttentionMaskInterface.register(name, sdpa_mask)


def use_sparsecpu_attention(model, precision: str = "fp32") -> Optional[str]:
    """Switches a Hugging Face model from transformers' ``"sdpa"`` attention (its default) to
    sparsecpu's at ``precision`` (``"fp32"`` or ``"bf16"``) and returns the implementation's name;
    None, and nothing changed, for any other model or implementation (an explicitly chosen
    ``"eager"`` is left alone: it is how one gets attention weights back)."""
    name = NAMES[attention_precision_for("fp32", precision)]
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa" or not hasattr(model, "set_attn_implementation"):
        return None
    _register()
    model.set_attn_implementation(name)
    return name
