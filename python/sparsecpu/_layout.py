"""The one rule that decides how a linear layer's weight is run: packed block-sparse (``"bsr"``),
packed dense int8 (``"dense"``), or left as it is (the original torch layer, or ONNX Runtime's own
MatMul/Gemm). :func:`sparsecpu.pack` with ``format="auto"``, :func:`sparsecpu.sparsify` and
:func:`sparsecpu.onnx.convert` all ask :func:`choose_layout`, so the torch and ONNX front doors make
the same choice for the same weight and options, and their reports show what it returned.

The rule:

- a weight the packed format cannot hold (an int8 weight wider than the format's K limit, or one
  holding NaN or Inf) is left as it is, where the caller can leave it;
- a format the caller forces (``format="bsr"``, ``"dense"``, ``"panel"``) is used as asked;
- int8 without a ``min_sparsity``: the measured choice. :mod:`sparsecpu.calibration` predicts each
  int8 format's time for this weight at ``rows`` rows per call from costs measured on this machine
  (block-sparse 4x1 and dense int8 everywhere, the panel format on AMX) and the fastest is taken; the
  layout carries the prediction (``Layout.choice``) for the reports;
- otherwise a threshold on the weight's 4x1 block sparsity ``s`` (the fraction of its blocks of 4
  output channels x 1 input channel that are all zero):
- ``s >= min_sparsity``: block-sparse, in the caller's dtype;
- ``s < min_sparsity``: int8 runs the dense int8 GEMM; fp32 is left to the original layer, since
  sparsecpu has no dense fp32 kernel (``pack``, which must return a packed weight, packs it
  block-sparse).

``DEFAULT_MIN_SPARSITY`` is where the block-sparse kernel stops beating the dense alternative:

- int8, 0.25 (block density 0.75): the block-sparse int8 kernel against the dense int8 GEMM,
  measured on the reference machine (AMD EPYC Zen 3, AVX2) on the BERT-base shapes (768x768,
  3072x768, 768x3072) at M = 128 (``bench/dense_skinny.py --density-sweep``; the table is in the
  README). They cross between block densities 0.55 and 0.8 depending on the shape and the run (a
  shared, noisy machine); 0.75 is where they cross on 768x768 and 3072x768.
- fp32, 0.7: block-sparse fp32 against torch's dense ``nn.Linear``, which it beats from about 0.7
  block sparsity up (AVX2, 2 threads, M = 128, BERT-base shapes). ONNX Runtime's fp32
  MatMul is taken to cross at the same point: it was not measured on its own.

The int8 constant is what a caller's explicit ``min_sparsity=`` replaces the measured choice with
(and what ``DEFAULT_MIN_SPARSITY`` documents); the fp32 one is still the rule, as its alternative (torch's
or ONNX Runtime's fp32 layer) is not sparsecpu's to calibrate.

The attention that goes with the layers follows the dtype too (:func:`attention_precision_for`): an int8
model allows bf16 products in attention, an fp32 one keeps fp32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np

from . import _C, calibration
from .calibration import Choice
from .formats import block_density

__all__ = ["Layout", "attention_precision_for", "choose_layout", "min_sparsity_for", "DEFAULT_MIN_SPARSITY"]

DEFAULT_MIN_SPARSITY: Dict[str, float] = {"int8": 0.25, "fp32": 0.7}
DEFAULT_ATTENTION_PRECISION: Dict[str, str] = {"int8": "bf16", "fp32": "fp32"}


@dataclass(frozen=True)
class Layout:
    """What :func:`choose_layout` decided for one weight."""

    format: Optional[str]
    """The format to pack the weight in (``"bsr"``, ``"dense"``, or a format the caller forced), or
    None: leave the layer as it is."""
    reason: str
    """Why, in words, for a report."""
    density: float
    """The weight's 4x1 block density (kept blocks / all blocks)."""
    choice: Optional[Choice] = None
    """The measured choice behind ``format`` (every candidate's predicted time), or None where a forced
    format or a threshold decided."""

    @property
    def block_sparsity(self) -> float:
        """Fraction of the weight's 4x1 blocks that are all zero."""
        return 1.0 - self.density


def min_sparsity_for(dtype: str, min_sparsity: Optional[float] = None) -> float:
    """``min_sparsity`` checked (a number in [0, 1]), or ``dtype``'s default when it is None."""
    if min_sparsity is None:
        return DEFAULT_MIN_SPARSITY[dtype]
    if isinstance(min_sparsity, bool) or not isinstance(min_sparsity, (int, float)) or not 0.0 <= min_sparsity <= 1.0:
        raise ValueError(f"min_sparsity must be a number in [0, 1], got {min_sparsity!r}")
    return float(min_sparsity)


def attention_precision_for(dtype: str, precision: Optional[str] = None) -> str:
    """``precision`` checked (``"fp32"`` or ``"bf16"``), or ``dtype``'s default when it is None."""
    if precision is None:
        return DEFAULT_ATTENTION_PRECISION[dtype]
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"attention_precision must be 'fp32' or 'bf16', got {precision!r}")
    return precision


def _unpackable(weight: np.ndarray, dtype: str) -> Optional[str]:
    """Why the packed format cannot hold ``weight`` as ``dtype``, or None. Its limits are the C++
    format's (``csrc/core/format.h``): this asks it by packing an empty weight as wide."""
    if not np.isfinite(weight).all():
        return "weight holds NaN or Inf"
    try:
        _C.pack(np.zeros((0, weight.shape[1]), np.float32), dtype, "bsr", 0.0)
    except ValueError as e:
        return str(e)
    return None


def choose_layout(
    weight: np.ndarray,
    dtype: str,
    *,
    format: str = "auto",
    min_sparsity: Optional[float] = None,
    can_keep: bool = True,
    rows: int = 128,
) -> Layout:
    """How to run the ``N x K`` float32 ``weight`` of a linear layer in ``dtype`` (``"int8"`` or
    ``"fp32"``), by the rule in this module's docstring.

    Args:
        weight: the weight, ``N x K`` (``nn.Linear.weight``'s orientation), a float32 numpy array.
        dtype: the dtype the caller packs in.
        format: ``"auto"`` (the rule decides), or a format forced on every weight.
        min_sparsity: block sparsity from which a weight goes block-sparse; None: the measured choice
            for int8, ``DEFAULT_MIN_SPARSITY["fp32"]`` for fp32.
        can_keep: whether the caller can leave the layer as it is (the front doors can; ``pack``
            cannot, and leaves a weight the format cannot hold to the format's own error).
        rows: rows of x per call (tokens per forward; 1 when decoding) the measured choice is made for.
    """
    measured = dtype == "int8" and min_sparsity is None
    min_sparsity = min_sparsity_for(dtype, min_sparsity)
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise ValueError(f"rows must be a positive int, got {rows!r}")
    density = block_density(weight)
    if can_keep:
        why = _unpackable(weight, dtype)
        if why is not None:
            return Layout(None, why, density)
    if format != "auto":
        return Layout(format, f"format={format!r} requested", density)
    if measured:
        choice = calibration.load().choose(weight, rows)
        others = ", ".join(f"{f} {t * 1e6:.0f} us" for f, t in choice.predicted.items() if f != choice.format)
        return Layout(choice.format, f"measured choice: {choice}; {others}", density, choice)
    sparsity = 1.0 - density
    if sparsity >= min_sparsity:
        return Layout("bsr", f"block sparsity {sparsity:.3f} >= min_sparsity {min_sparsity:g}", density)
    why = f"block sparsity {sparsity:.3f} < min_sparsity {min_sparsity:g}: sparse would be slower than dense"
    if dtype == "int8":
        return Layout("dense", why, density)
    if can_keep:
        return Layout(None, why, density)
    return Layout("bsr", why + ", but fp32 has no dense format", density)
