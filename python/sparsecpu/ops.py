"""Functional API: ``sparsecpu.linear`` on torch tensors or numpy arrays."""

from __future__ import annotations

import math
import sys
from typing import Any, Optional

import numpy as np

from . import _C
from ._arrays import as_numpy_f32
from .formats import PackedWeight

__all__ = ["linear", "ACTIVATIONS"]

# The values an activation argument takes: None (no activation, as "none") and the names of the C++
# table, which checks them.
ACTIVATIONS = (None, *_C.activations())
# Outputs of at most this many elements are allocated with plain np.empty (see _run).
_SMALL_OUT = 8 * 4096


def _empty_aligned(shape, dtype, align: int = 64) -> np.ndarray:
    """An uninitialized C-contiguous array whose data starts on a cache line: the kernels write each
    output row in 64-byte pieces, and a misaligned start splits every one of them over two lines."""
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    raw = np.empty(nbytes + align, dtype=np.uint8)
    offset = -raw.__array_interface__["data"][0] % align
    return raw[offset : offset + nbytes].view(dtype).reshape(shape)


def _output(shape: tuple, torch: Any, raw_s32: bool = False):
    """``(numpy array, torch view of it or None)``: the uninitialized output of ``shape`` (``[..., N]``)."""
    out_dtype = np.int32 if raw_s32 else np.float32
    if math.prod(shape) <= _SMALL_OUT:
        # Decode-sized outputs: alignment does not matter, and these are the cheapest allocations
        # (a few microseconds count at M = 1).
        out = np.empty(shape, out_dtype)
        return out, torch.from_numpy(out) if torch is not None else None
    if torch is not None:
        # torch's CPU allocator already aligns to 64 bytes.
        out_t = torch.empty(shape, dtype=torch.int32 if raw_s32 else torch.float32)
        return out_t.numpy(), out_t
    return _empty_aligned(shape, out_dtype), None


def output_shape(x_shape: tuple, weight_shape: tuple) -> tuple:
    """``[..., N]``, the shape of the linear op's output for ``x [..., K]`` and an ``N x K`` weight.

    Raises ``ValueError`` for another last dim of x, with the text of the C++ check (``LinearRequest``):
    the output is allocated from this shape before C++ sees x.
    """
    n, k = weight_shape
    if len(x_shape) == 0 or x_shape[-1] != k:
        raise ValueError(f"x must be a float32 tensor of shape [..., {k}], got [{', '.join(map(str, x_shape))}]")
    return (*x_shape[:-1], n)


def _as_input(x: Any):
    """``(float32 numpy view of x, torch module or None)`` with the common case checked cheaply."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        if x.requires_grad:
            if torch.is_grad_enabled():
                raise ValueError(
                    "sparsecpu.linear is inference only: x requires grad; call it under torch.no_grad() "
                    "or torch.inference_mode(), or pass x.detach()"
                )
            x = x.detach()
        if x.dtype is torch.float32 and x.is_cpu and x.layout is torch.strided:
            return x.numpy(), torch
        return as_numpy_f32(x, "x"), torch  # raises the error that fits
    if isinstance(x, np.ndarray) and x.dtype == np.float32:
        return x, None
    return as_numpy_f32(x, "x"), None


def _run(x: Any, packed: PackedWeight, bias: Any, activation: Optional[str], raw_s32: bool):
    if not isinstance(packed, PackedWeight):
        raise TypeError(f"packed must be a sparsecpu.PackedWeight (see sparsecpu.pack), got {type(packed).__name__}")
    xn, torch = _as_input(x)
    shape = output_shape(xn.shape, packed.shape)
    x2 = xn if xn.flags.c_contiguous else np.ascontiguousarray(xn)
    b = None
    if bias is not None:
        tmod = sys.modules.get("torch")
        if tmod is not None and isinstance(bias, tmod.Tensor) and bias.requires_grad and tmod.is_grad_enabled():
            raise ValueError(
                "sparsecpu.linear is inference only: bias requires grad; call it under torch.no_grad() "
                "or torch.inference_mode(), or pass bias.detach()"
            )
        b = np.ascontiguousarray(as_numpy_f32(bias, "bias"))
    out, out_t = _output(shape, torch, raw_s32)
    _C.linear(x2, packed.buffer, b, activation, out.view(np.float32) if raw_s32 else out, raw_s32)
    return out_t if torch is not None else out


def linear(x: Any, packed: PackedWeight, bias: Any = None, activation: Optional[str] = None):
    """``y = activation(x @ W.T + bias)`` with ``W`` a :class:`PackedWeight`.

    Same semantics as ``torch.nn.functional.linear`` followed by the activation.

    Args:
        x: float32 ``[..., K]`` torch tensor (CPU) or numpy array; any leading dims, any strides.
        packed: the weight, from :func:`sparsecpu.pack`.
        bias: optional float32 ``[N]``.
        activation: ``None`` (or ``"none"``), ``"relu"``, ``"gelu"`` (erf form, like ``F.gelu``) or
            ``"gelu_tanh"`` (like ``F.gelu(approximate="tanh")``): :data:`ACTIVATIONS`.

    Returns:
        float32 ``[..., N]``, a torch tensor if ``x`` is one, else a numpy array.

    For int8 weights ``x`` is quantized to u8 per row inside the call (dynamic, asymmetric), so
    ``x`` must be finite: NaN or Inf raise ``ValueError`` (for fp32 weights too: a sparse product
    would hide them in some outputs and not in others).

    The kernel follows the weight and ``M`` (rows of ``x``): a dense int8 weight runs the dense GEMM;
    a block-sparse int8 weight runs, for ``M <= 8`` (token-by-token decoding), a kernel vectorized
    over output channels and otherwise the SpMM tile vectorized over rows (``sparsecpu.testing.
    kernel_for`` names it). A weight packed with ``outlier_threshold`` computes the input columns
    holding ``|x| >`` threshold in fp32 beside the int8 product (see :func:`sparsecpu.pack`).

    Example:
        >>> import numpy as np, sparsecpu
        >>> w = np.zeros((8, 16), np.float32); w[:4, 3] = 2.0
        >>> y = sparsecpu.linear(np.ones((2, 16), np.float32), sparsecpu.pack(w, dtype="fp32"))
        >>> y[0, :5].tolist()
        [2.0, 2.0, 2.0, 2.0, 0.0]
    """
    return _run(x, packed, bias, activation, raw_s32=False)
