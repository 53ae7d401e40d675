"""Packed weights: the 4x1 block-sparse format, the dense int8 format and the int8 panel format (16x1
blocks, for AMX tiles) behind sparsecpu's kernels."""

from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import numpy as np

from . import _C
from ._arrays import as_numpy_f32

__all__ = ["PackedWeight", "pack"]

_DTYPES = ("int8", "fp32")
_FORMATS = ("auto", "bsr", "dense", "panel")
_BLOCKS = ((4, 1), (16, 1))


def block_density(weight: np.ndarray) -> float:
    """Fraction of the 4x1 blocks (4 output channels x 1 input column) of an ``N x K`` weight that hold
    a nonzero value; 0.0 for an empty weight."""
    w = np.asarray(weight)
    n, k = w.shape
    if n == 0 or k == 0:
        return 0.0
    g = (n + 3) // 4
    nz = np.zeros((g * 4, k), dtype=bool)
    nz[:n] = w != 0
    return float(nz.reshape(g, 4, k).any(axis=1).mean())


class PackedWeight:
    """An ``N x K`` weight packed for sparsecpu: block-sparse in 4x1 blocks (4 output channels x 1
    input channel, ``format == "bsr"``), dense int8 (``format == "dense"``) or int8 panels of 16 output
    channels sharing their kept input columns (``format == "panel"``, 16x1 blocks, for AMX tiles).

    The whole weight lives in one self-describing byte buffer (versioned header, block row
    pointers, column indices, values, per-channel int8 scales) that is validated whenever a
    ``PackedWeight`` is built from bytes, so a corrupted or hostile buffer is rejected with a
    ``ValueError`` before any kernel reads it.

    Create one with :func:`sparsecpu.pack`; rebuild one from :meth:`to_bytes` output with
    :meth:`from_bytes`. It pickles, so ``torch.save``/``torch.load`` round-trip it: with torch's default
    ``weights_only=True`` after ``torch.serialization.add_safe_globals([sparsecpu.PackedWeight])``,
    or with ``weights_only=False``.
    """

    __slots__ = ("_buf", "_meta")

    def __init__(self, buf: Any):
        """Wraps (and fully validates) a packed buffer: ``bytes``, ``bytearray`` or a 1-D uint8 array."""
        if isinstance(buf, (bytes, bytearray, memoryview)):
            arr = np.frombuffer(buf, dtype=np.uint8)
        elif isinstance(buf, np.ndarray):
            if buf.dtype != np.uint8 or buf.ndim != 1:
                raise TypeError(f"packed buffer must be a 1-D uint8 array, got {buf.dtype} with {buf.ndim} dims")
            arr = buf
        else:
            raise TypeError(f"packed buffer must be bytes or a uint8 numpy array, got {type(buf).__name__}")
        # Own an aligned, read-only copy: the kernels trust a buffer once validated.
        own = np.empty(arr.size, dtype=np.uint8)
        own[:] = arr
        own.flags.writeable = False
        self._meta = _C.validate(own)
        self._buf = own

    @classmethod
    def from_bytes(cls, data: Any) -> "PackedWeight":
        """Rebuilds a packed weight from :meth:`to_bytes` output (validated)."""
        return cls(data)

    def to_bytes(self) -> bytes:
        """The packed buffer as bytes (what pickling and ONNX initializers store)."""
        return self._buf.tobytes()

    @property
    def buffer(self) -> np.ndarray:
        """The uint8 buffer the kernels consume, as a read-only view (a view of a read-only array
        cannot be made writable again: the kernels trust this buffer)."""
        return self._buf.view()

    @property
    def shape(self) -> Tuple[int, int]:
        """``(N, K)``: output and input features."""
        return (self._meta["n"], self._meta["k"])

    @property
    def dtype(self) -> str:
        """``"int8"`` (symmetric per-channel scales) or ``"fp32"``."""
        return self._meta["dtype"]

    @property
    def format(self) -> str:
        """Storage format: ``"bsr"`` (block-sparse rows over groups of 4 output channels), ``"dense"``
        (int8 panels of 16 channels in VNNI order, every value stored) or ``"panel"`` (int8 panels of 16
        channels storing only the input columns any of them keeps, 64 at a time: AMX B tiles)."""
        return self._meta["format"]

    @property
    def block(self) -> Tuple[int, int]:
        """Block shape: ``(4, 1)`` (4 output channels x 1 input channel) for ``"bsr"``, ``(1, 1)`` for
        ``"dense"``, ``(16, 1)`` for ``"panel"``."""
        return tuple(self._meta["block"])

    @property
    def outlier_threshold(self) -> Optional[float]:
        """int8: input columns holding ``|x| >`` this in some row are computed in fp32 (``None``: off)."""
        t = self._meta["outlier_threshold"]
        return float(t) if t > 0 else None

    @property
    def kept_blocks(self) -> int:
        """4x1 blocks with at least one nonzero value (for ``"dense"`` and ``"panel"`` too: it is what
        density counts)."""
        return self._meta["kept_blocks"]

    @property
    def density(self) -> float:
        """Kept blocks / all blocks (``ceil(N / 4) * K``); 0.0 for an empty weight."""
        n, k = self.shape
        total = ((n + 3) // 4) * k
        return self.kept_blocks / total if total else 0.0

    @property
    def stored_blocks(self) -> int:
        """Blocks the buffer stores, padding included: 4x1 blocks (``"bsr"``) or input columns of a
        16-channel panel (``"panel"``, a multiple of 64 per panel); 0 for ``"dense"``."""
        return self._meta["stored_blocks"]

    @property
    def nbytes(self) -> int:
        """Size of the packed buffer in bytes."""
        return int(self._buf.nbytes)

    def validate(self) -> None:
        """Re-checks the whole buffer; raises ``ValueError`` naming the first problem."""
        _C.validate(self._buf)

    def to_dense(self) -> np.ndarray:
        """The ``N x K`` float32 weight the kernels compute with (dequantized for int8)."""
        return _C.unpack(self._buf)

    def __reduce__(self):
        # The class itself rebuilds (and validates) it from bytes, so that torch.load's default
        # weights_only unpickler accepts it once allowed:
        # torch.serialization.add_safe_globals([sparsecpu.PackedWeight]).
        return (PackedWeight, (self.to_bytes(),))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PackedWeight) and np.array_equal(self._buf, other._buf)

    __hash__ = None  # mutable-looking container semantics, like numpy arrays

    def __repr__(self) -> str:
        n, k = self.shape
        outliers = "" if self.outlier_threshold is None else f", outlier_threshold={self.outlier_threshold:g}"
        return (
            f"PackedWeight(shape=({n}, {k}), dtype={self.dtype}, format={self.format}, block={self.block}, "
            f"density={self.density:.4f}, nbytes={self.nbytes}{outliers})"
        )


def pack(
    weight: Any,
    *,
    dtype: str = "int8",
    block: Tuple[int, int] = (4, 1),
    format: str = "auto",
    outlier_threshold: Optional[float] = None,
) -> PackedWeight:
    """Packs a pruned ``N x K`` float weight (torch tensor or numpy array) for :func:`sparsecpu.linear`.

    The weight should already be pruned in 4x1 blocks (4 output channels x 1 input column), or in 16x1
    blocks for ``format="panel"``; any nonzero inside a block keeps the whole block. ``N`` need not be a
    multiple of 4 (or 16).

    Args:
        weight: ``N x K`` float32 (or float16/float64, converted) weight, as ``nn.Linear.weight`` stores it.
        dtype: ``"int8"`` (symmetric per-output-channel scales, u8 x s8 kernels) or ``"fp32"``.
        block: ``(4, 1)`` (the ``"bsr"`` block) or ``(16, 1)``, which means ``format="panel"`` (with
            ``format="auto"`` or ``"panel"``; another format raises ``ValueError``).
        format: ``"bsr"`` (block-sparse; int8 or fp32), ``"dense"`` (dense int8 GEMM; ``dtype="fp32"``
            raises ``ValueError``: a dense fp32 layer is best left to ``torch.nn.functional.linear``),
            ``"panel"`` (int8 only: 16 output channels share the sorted list of input columns any of
            them keeps, 64 at a time, for the AMX kernel; a 4x1-pruned weight keeps the union of its 4
            groups' columns, a 16x1-pruned one exactly its blocks; below the ``amx`` level it runs the
            reference kernel, slowly)
            or ``"auto"``: the rule :func:`sparsecpu.sparsify` and :func:`sparsecpu.onnx.convert` follow too
            (``sparsecpu._layout.choose_layout``): int8 weights in the format predicted fastest at 128
            rows from costs measured on this machine (:mod:`sparsecpu.calibration`; the first call on a
            machine measures them); fp32 is always ``"bsr"``.
        outlier_threshold: int8 only, ``None`` (off) or a positive float such as 6.0: at run time the
            input columns holding a value of magnitude above it (in any row of ``x``) are computed in
            fp32, with the dequantized int8 weight, beside the int8 product of the other columns, and
            do not enter the activation quantization (the LLM.int8() decomposition). When no value
            exceeds it the cost is one comparison per row.

    Returns:
        A validated :class:`PackedWeight`.

    Example:
        >>> import numpy as np, sparsecpu
        >>> w = np.zeros((8, 16), np.float32); w[0:4, 3] = 1.0
        >>> sparsecpu.pack(w, dtype="fp32").density
        0.03125
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    if not isinstance(block, (tuple, list)) or tuple(block) not in _BLOCKS:
        raise ValueError(f"block must be (4, 1) or (16, 1) (output channels x input channels), got {block!r}")
    if format not in _FORMATS:
        raise ValueError(f"format must be one of {_FORMATS}, got {format!r}")
    if tuple(block) == (16, 1):
        if format not in ("auto", "panel"):
            raise ValueError(f"block=(16, 1) is the panel format's block: format must be 'panel' or 'auto', got {format!r}")
        format = "panel"
    if format == "dense" and dtype != "int8":
        raise ValueError("format='dense' needs dtype='int8' (dense fp32 layers are best left to torch F.linear)")
    if format == "panel" and dtype != "int8":
        raise ValueError("format='panel' needs dtype='int8' (its kernels are int8 AMX tiles)")
    threshold = 0.0
    if outlier_threshold is not None:
        if isinstance(outlier_threshold, bool) or not isinstance(outlier_threshold, (int, float, np.floating)):
            raise TypeError(f"outlier_threshold must be a float or None, got {type(outlier_threshold).__name__}")
        threshold = float(outlier_threshold)
        if not (math.isfinite(threshold) and threshold > 0):
            raise ValueError(f"outlier_threshold must be a finite number > 0 or None, got {outlier_threshold!r}")
        if dtype != "int8":
            raise ValueError("outlier_threshold applies to int8 weights only")
    w = as_numpy_f32(weight, "weight", allow_cast=True)
    if w.ndim != 2:
        raise ValueError(f"weight must be 2-D (N x K), got shape {tuple(w.shape)}")
    if format == "auto":
        from ._layout import choose_layout  # which counts blocks with this module's block_density

        format = choose_layout(w, dtype, can_keep=False).format
    return PackedWeight(_C.pack(np.ascontiguousarray(w), dtype, format, threshold))
