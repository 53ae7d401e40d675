"""The torch.library custom ops behind :mod:`sparsecpu.nn`: ``sparsecpu::linear``
(:class:`~sparsecpu.nn.SparseLinear`), ``sparsecpu::linear_residual_norm``
(:class:`~sparsecpu.nn.SparseResidualLayerNorm`) and ``sparsecpu::attention`` (the attention
:func:`sparsecpu.sparsify` gives Hugging Face models).

Registered as one opaque op with a fake (meta) implementation, so ``torch.compile`` and
``torch.export`` keep a converted layer in the graph as a single node instead of breaking the graph.

The op takes the packed weight as the module's uint8 buffer (the ``to_bytes()`` of a
:class:`PackedWeight`): a tensor is what a graph, a ``state_dict`` and a checkpoint can carry. The
kernels trust the buffer they are given, so bytes are validated before their first use, and again
whenever torch reports an in-place write to them (the tensor's version counter). The validated
:class:`PackedWeight` is remembered per buffer, tied to the lifetime of that tensor object.
"""

from __future__ import annotations

import weakref
from typing import Optional

import numpy as np
import torch
from torch.utils.weak import WeakIdKeyDictionary

from . import _C, ops
from .formats import PackedWeight

__all__ = ["attention", "linear", "linear_residual_norm", "packed_weight", "remember", "run", "run_attention"]


class _Validated:
    """A buffer's validated :class:`PackedWeight` and the version of the buffer it was read at."""

    __slots__ = ("tensor", "version", "weight", "__weakref__")

    def __init__(self, tensor: torch.Tensor, weight: PackedWeight):
        self.tensor = weakref.ref(tensor)
        self.version = tensor._version
        self.weight = weight


# data_ptr -> _Validated. Each entry is owned by the buffer tensor it describes (``_owner``), so it
# lives exactly as long as that tensor object: while it lives, its storage does, so no other buffer
# can have the same address. Lookups go by address because torch.compile / torch.export may hand the
# op another tensor object over the same storage.
_validated: "weakref.WeakValueDictionary[int, _Validated]" = weakref.WeakValueDictionary()
_owner = WeakIdKeyDictionary()


def _check_buffer(buf: torch.Tensor) -> None:
    if not isinstance(buf, torch.Tensor):
        raise TypeError(f"packed must be a uint8 tensor, got {type(buf).__name__}")
    if buf.dtype != torch.uint8 or buf.dim() != 1 or buf.device.type != "cpu" or not buf.is_contiguous():
        raise ValueError(
            f"packed must be a contiguous 1-D uint8 CPU tensor (PackedWeight.to_bytes()), got "
            f"{buf.dtype} of shape {tuple(buf.shape)} on {buf.device}"
        )


def remember(buf: torch.Tensor, weight: PackedWeight) -> None:
    """Records that ``buf`` holds the bytes of the already validated ``weight``.

    Inference tensors carry no version counter, so writes to them could not be noticed: they are
    not remembered (and are validated on every call).
    """
    if buf.is_inference():
        return
    entry = _Validated(buf, weight)
    _owner[buf] = entry
    _validated[buf.data_ptr()] = entry


def packed_weight(buf: torch.Tensor) -> PackedWeight:
    """The validated :class:`PackedWeight` held in ``buf``; raises ``ValueError`` for corrupted bytes."""
    if isinstance(buf, torch.Tensor):
        # The remembered weight, if these bytes are the ones validated: same storage, size and version.
        entry = _validated.get(buf.data_ptr())
        if entry is not None:
            owner = entry.tensor()
            if owner is not None and owner.numel() == buf.numel() and owner._version == entry.version:
                return entry.weight
    _check_buffer(buf)
    weight = PackedWeight(buf.numpy())
    remember(buf, weight)
    return weight


def _plain(t: torch.Tensor) -> bool:
    """A float32 strided CPU tensor without grad: what :func:`run` takes as it is."""
    return t.dtype == torch.float32 and t.device.type == "cpu" and t.layout == torch.strided and not t.requires_grad


def _contiguous(t: torch.Tensor) -> np.ndarray:
    a = t.numpy()
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def _vector(t: Optional[torch.Tensor]) -> Optional[np.ndarray]:
    return None if t is None else t.detach().contiguous().numpy()


def run(
    x: torch.Tensor,
    weight: PackedWeight,
    bias: Optional[np.ndarray],
    activation: Optional[str],
    residual: Optional[torch.Tensor] = None,
    norm: Optional[tuple] = None,
) -> torch.Tensor:
    """The ops' computation on a float32 CPU tensor ``x [..., K]`` with no grad to keep: the kernel
    straight on the tensors' memory, without :func:`sparsecpu.linear`'s conversions of arbitrary
    inputs (a decode step calls it about 50 times per token, so microseconds count). ``bias`` is a
    float32 ``[N]`` array or None, ``activation`` one of :data:`sparsecpu.ops.ACTIVATIONS`.
    ``residual``, a float32 CPU tensor of the output's shape, is added after the activation, and
    ``norm = (weight [N] array or None, bias [N] array or None, eps)`` then normalizes each row.
    The arguments are checked in C++."""
    xn = _contiguous(x)
    out, out_t = ops._output(ops.output_shape(xn.shape, weight.shape), torch)
    if residual is None and norm is None:
        _C.linear(xn, weight.buffer, bias, activation, out, False)
    else:
        nw, nb, eps = norm if norm is not None else (None, None, 0.0)
        _C.linear(xn, weight.buffer, bias, activation, out, False, None if residual is None else _contiguous(residual),
                  norm is not None, nw, nb, eps)
    return out_t


def _op_weight(packed: torch.Tensor, out_features: int) -> PackedWeight:
    """The validated weight of a linear op call, checked against its out_features."""
    weight = packed_weight(packed)
    if weight.shape[0] != out_features:
        raise ValueError(f"packed weight has {weight.shape[0]} output features, the op was asked for {out_features}")
    return weight


@torch.library.custom_op("sparsecpu::linear", mutates_args=())
def linear(x: torch.Tensor, packed: torch.Tensor, bias: Optional[torch.Tensor], out_features: int, activation: str) -> torch.Tensor:
    """``activation(x @ W.T + bias)`` with ``W`` the packed weight held in the uint8 tensor ``packed``.

    ``x`` is float32 ``[..., K]``; the result is float32 ``[..., out_features]``. ``activation`` is
    ``"none"``, ``"relu"``, ``"gelu"`` or ``"gelu_tanh"``.
    """
    weight = _op_weight(packed, out_features)
    if not (_plain(x) and (bias is None or _plain(bias))):
        # Other dtypes, devices or layouts and grad-carrying inputs: sparsecpu.linear raises the error that fits.
        return ops.linear(x, weight, bias, activation)
    return run(x, weight, None if bias is None else bias.contiguous().numpy(), activation)


@linear.register_fake
def _(x, packed, bias, out_features, activation):
    torch._check(x.dtype == torch.float32, lambda: f"x must be float32, got {x.dtype}")
    torch._check(packed.dtype == torch.uint8 and packed.dim() == 1, lambda: "packed must be a 1-D uint8 tensor")
    return x.new_empty((*x.shape[:-1], out_features))


@torch.library.custom_op("sparsecpu::linear_residual_norm", mutates_args=())
def linear_residual_norm(
    x: torch.Tensor,
    packed: torch.Tensor,
    bias: Optional[torch.Tensor],
    out_features: int,
    activation: str,
    residual: torch.Tensor,
    norm_weight: Optional[torch.Tensor],
    norm_bias: Optional[torch.Tensor],
    eps: float,
) -> torch.Tensor:
    """``layer_norm(activation(x @ W.T + bias) + residual)`` over the last dim, with ``W`` the
    packed weight held in ``packed``: :func:`linear`, then the residual add and the LayerNorm
    (``norm_weight`` / ``norm_bias`` ``[out_features]`` or None, ``eps`` as ``nn.LayerNorm``'s) in
    the same call, on rows still in the cache. ``residual`` is float32 ``[..., out_features]``,
    the shape of the result."""
    weight = _op_weight(packed, out_features)
    tensors = (x, residual, bias, norm_weight, norm_bias)
    if not all(t is None or (t.dtype == torch.float32 and t.device.type == "cpu" and t.layout == torch.strided) for t in tensors):
        raise TypeError("x, residual, bias, norm_weight and norm_bias must be float32 CPU tensors")
    norm = (_vector(norm_weight), _vector(norm_bias), eps)
    return run(x.detach(), weight, _vector(bias), activation, residual.detach(), norm)


@linear_residual_norm.register_fake
def _(x, packed, bias, out_features, activation, residual, norm_weight, norm_bias, eps):
    torch._check(x.dtype == torch.float32, lambda: f"x must be float32, got {x.dtype}")
    torch._check(packed.dtype == torch.uint8 and packed.dim() == 1, lambda: "packed must be a 1-D uint8 tensor")
    torch._check(residual.shape == (*x.shape[:-1], out_features), lambda: "residual must have the output's shape")
    return x.new_empty((*x.shape[:-1], out_features))


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    return t if t.dim() == 0 or t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous()


def run_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor], scale: float,
                  precision: str = "fp32") -> torch.Tensor:
    """:func:`attention`'s computation on plain float32 CPU tensors without grad (the last dims of
    q, k, v contiguous; any other strides): returns ``[B, Sq, H, D]``."""
    m = None if mask is None else mask.numpy()
    return torch.from_numpy(_C.attention(q.numpy(), k.numpy(), v.numpy(), None, m, scale, precision))


@torch.library.custom_op("sparsecpu::attention", mutates_args=())
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor], scale: float,
              precision: str = "fp32") -> torch.Tensor:
    """``softmax(scale * q @ k^T + mask) @ v`` per (batch, head), returned as ``[B, Sq, H, D]`` (the
    layout the heads are merged from).

    ``q`` is float32 ``[B, H, Sq, D]``, ``k`` and ``v`` ``[B, H, Skv, D]``; ``mask`` is None, a bool
    tensor (True = attend) or a float32 one (added to the scores), 4-D and broadcastable to
    ``[B, H, Sq, Skv]``. A query row that may attend to no key gets zeros. ``precision``: ``"fp32"``,
    or ``"bf16"`` to allow bf16 products (Q, K, V and the softmax weights rounded to bf16, sums in
    fp32), which run on AMX-BF16 tiles where the CPU has them and as fp32 elsewhere.
    """
    tensors = [q, k, v] + ([mask] if mask is not None else [])
    if not all(t.device.type == "cpu" and t.layout == torch.strided for t in tensors):
        raise TypeError("q, k, v and mask must be strided CPU tensors")
    if not all(t.dtype == torch.float32 for t in (q, k, v)):
        raise TypeError(f"q, k and v must be float32, got {q.dtype}, {k.dtype}, {v.dtype}")
    if mask is not None and mask.dtype not in (torch.bool, torch.float32):
        raise TypeError(f"mask must be bool or float32, got {mask.dtype}")
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    return run_attention(q, k, v, None if mask is None else mask.detach(), float(scale), precision)


@attention.register_fake
def _(q, k, v, mask, scale, precision="fp32"):
    torch._check(q.dim() == 4 and k.dim() == 4 and v.dim() == 4, lambda: "q, k and v must be 4-D [B, H, S, D]")
    b, h, sq, d = q.shape
    return q.new_empty((b, sq, h, d))
