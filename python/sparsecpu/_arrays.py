"""Conversion of user tensors (torch or numpy) to the float32 numpy arrays the C++ core takes."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np


def is_torch_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def as_numpy_f32(x: Any, name: str, *, allow_cast: bool = False) -> np.ndarray:
    """A float32 numpy view of ``x`` (no copy when it already is float32 on the CPU).

    Raises ``TypeError`` for other dtypes (unless ``allow_cast`` permits a floating-point cast) and
    ``ValueError`` for tensors that are not on the CPU.
    """
    if is_torch_tensor(x):
        torch = sys.modules["torch"]
        if x.device.type != "cpu":
            raise ValueError(f"{name} must be a CPU tensor, got a tensor on {x.device}")
        if x.layout != torch.strided:
            raise TypeError(f"{name} must be a dense (strided) tensor, got layout {x.layout}")
        if x.dtype != torch.float32:
            if not (allow_cast and x.is_floating_point()):
                raise TypeError(f"{name} must be float32, got {x.dtype}")
            x = x.float()
        return x.detach().numpy()
    if isinstance(x, np.ndarray):
        if x.dtype != np.float32:
            if not (allow_cast and np.issubdtype(x.dtype, np.floating)):
                raise TypeError(f"{name} must be float32, got {x.dtype}")
            x = x.astype(np.float32)
        return x
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
