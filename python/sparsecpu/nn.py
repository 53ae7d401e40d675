"""torch modules: :class:`SparseLinear`, a drop-in replacement for ``nn.Linear`` (and for the
``Conv1D`` layers of Hugging Face GPT-2) that runs sparsecpu's kernels, and
:class:`SparseResidualLayerNorm`, a BERT output block (``LayerNorm(dense(h) + residual)``) in one call,
:class:`SparseMLP`, a GPT-2 MLP block's two layers chained, ``SparseGPT2Block``, a Hugging Face
``GPT2Block`` in one forward, and ``SparseBertLayer``, a ``BertLayer`` in one forward (both loaded
with transformers on first use).

>>> layer = sparsecpu.nn.SparseLinear.from_linear(linear, dtype="int8")
>>> y = layer(x)          # like linear(x), inference only
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import nn

from . import _C, _library, ops
from .formats import PackedWeight, pack

__all__ = ["SparseLinear", "SparseMLP", "SparseResidualLayerNorm"]  # and SparseGPT2Block, SparseBertLayer: below


def __getattr__(name: str):
    # SparseGPT2Block and SparseBertLayer subclass transformers' blocks: transformers is imported on first use.
    if name == "SparseGPT2Block":
        from ._gpt2 import SparseGPT2Block

        return SparseGPT2Block
    if name == "SparseBertLayer":
        from ._bert import SparseBertLayer

        return SparseBertLayer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Eager(NamedTuple):
    """What a :class:`SparseLinear` keeps for its eager calls."""

    weight: PackedWeight
    bias: Optional[object]  # float32 [N] numpy array
    activation: Optional[str]
    call: object  # _C.BoundLinear: the three bound, numpy x [..., K] -> new [..., N]


def _bytes_tensor(weight: PackedWeight) -> torch.Tensor:
    # A normal tensor even when built under torch.inference_mode(): inference tensors have no
    # version counter, and the op relies on it to notice writes to the buffer.
    with torch.inference_mode(False):
        return torch.from_numpy(weight.buffer.copy())


def _plain_input(t) -> bool:
    """A plain float32 CPU tensor without grad, outside compilation: what the eager paths take."""
    return (
        type(t) is torch.Tensor
        and t.dtype is torch.float32
        and t.is_cpu
        and not t.requires_grad
        and not torch.compiler.is_compiling()
    )


class SparseLinear(nn.Module):
    """``y = x @ W.T + bias`` (optionally followed by an activation) with ``W`` packed by sparsecpu.

    Same forward contract as ``nn.Linear``: float32 ``[..., in_features]`` CPU input, float32
    ``[..., out_features]`` output. It is inference only: call it under ``torch.no_grad()`` or
    ``torch.inference_mode()``; an input that requires grad raises ``ValueError``.

    The packed weight is the uint8 buffer ``packed`` (the bytes of a :class:`PackedWeight`) and the
    bias the float32 buffer ``bias``, so ``state_dict()`` / ``load_state_dict()`` / ``torch.save``
    round-trip a converted model; loaded bytes are validated (corrupted data raises ``ValueError``).
    Under ``torch.compile`` and ``torch.export`` (and for tensor subclasses) the forward pass is one
    ``torch.ops.sparsecpu.linear`` call, kept as a single node; eager calls on plain tensors run
    the same computation without the dispatcher's per-call cost.

    Build one with :meth:`from_linear` / :meth:`from_conv1d`, or from a :class:`PackedWeight`.

    Args:
        packed: the ``out_features x in_features`` weight, from :func:`sparsecpu.pack`.
        bias: optional ``[out_features]`` bias (copied to float32).
        activation: ``None`` (or ``"none"``), ``"relu"``, ``"gelu"`` or ``"gelu_tanh"``, fused after the bias.
    """

    def __init__(self, packed: PackedWeight, bias: Optional[torch.Tensor] = None, activation: Optional[str] = None):
        super().__init__()
        if not isinstance(packed, PackedWeight):
            raise TypeError(f"packed must be a sparsecpu.PackedWeight, got {type(packed).__name__}")
        # Checked now, not at the first call: the C++ table of names, through ops.ACTIVATIONS.
        if activation not in ops.ACTIVATIONS:
            raise ValueError(f"activation must be one of {ops.ACTIVATIONS}, got {activation!r}")
        self.out_features, self.in_features = packed.shape
        self.activation = None if activation == "none" else activation
        buf = _bytes_tensor(packed)
        _library.remember(buf, packed)
        self.register_buffer("packed", buf)
        if bias is not None:
            if not isinstance(bias, torch.Tensor) or bias.shape != (self.out_features,):
                raise ValueError(f"bias must be a tensor of shape ({self.out_features},), got {getattr(bias, 'shape', bias)!r}")
            if not bias.is_floating_point() or bias.device.type != "cpu":
                raise TypeError(f"bias must be a floating-point CPU tensor, got {bias.dtype} on {bias.device}")
            with torch.inference_mode(False):
                bias = bias.detach().to(torch.float32, copy=True)
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        dtype: str = "int8",
        format: str = "auto",
        outlier_threshold: Optional[float] = None,
        activation: Optional[str] = None,
    ) -> "SparseLinear":
        """Packs a (pruned) ``nn.Linear``; its weight is ``out x in``, pruned in 4x1 blocks.

        Args:
            linear: the layer to replace (left unchanged).
            dtype: ``"int8"`` (dynamic u8 activations x symmetric per-channel s8 weights) or ``"fp32"``.
            format: storage passed to :func:`sparsecpu.pack` (``"auto"``: dense int8 or block-sparse by density).
            outlier_threshold: passed to :func:`sparsecpu.pack` (None: off).
            activation: optional activation fused after the bias.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"from_linear needs an nn.Linear, got {type(linear).__name__}")
        packed = pack(linear.weight.detach(), dtype=dtype, format=format, outlier_threshold=outlier_threshold)
        return cls(packed, linear.bias, activation)

    @classmethod
    def from_conv1d(
        cls,
        conv1d: nn.Module,
        dtype: str = "int8",
        format: str = "auto",
        outlier_threshold: Optional[float] = None,
        activation: Optional[str] = None,
    ) -> "SparseLinear":
        """Packs a Hugging Face ``Conv1D`` (GPT-2's linear layers), whose weight is stored ``in x out``.

        Blocks are 4x1 in ``nn.Linear`` orientation: 4 consecutive output columns of one input row
        of the ``Conv1D`` weight. Arguments as in :meth:`from_linear`.
        """
        weight = getattr(conv1d, "weight", None)
        if not (isinstance(weight, torch.Tensor) and weight.dim() == 2 and getattr(conv1d, "nf", None) == weight.shape[1]):
            raise TypeError(f"from_conv1d needs a transformers Conv1D (weight in x out, nf = out), got {type(conv1d).__name__}")
        packed = pack(weight.detach().t(), dtype=dtype, format=format, outlier_threshold=outlier_threshold)
        return cls(packed, conv1d.bias, activation)

    @property
    def packed_weight(self) -> PackedWeight:
        """The validated :class:`PackedWeight` in the ``packed`` buffer (shape, dtype, format, density)."""
        return _library.packed_weight(self.packed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _plain_input(x) and x.dim() > 0 and x.shape[-1] == self.in_features:
            # Eager, plain tensor: the op's computation without a trip through the dispatcher (which
            # costs tens of microseconds per call in Python, as much as a decode step's kernel).
            return torch.from_numpy(self._eager_args().call(x.numpy()))
        self._check_input(x)
        if type(x) is torch.Tensor and not torch.compiler.is_compiling():
            return torch.from_numpy(self._eager_args().call(x.detach().numpy()))
        return torch.ops.sparsecpu.linear(x, self.packed, self.bias, self.out_features, self.activation or "none")

    def _check_input(self, x) -> None:
        """Raises the error that fits an input the forward pass cannot take."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{self._name()}: input must be a torch.Tensor, got {type(x).__name__}")
        if x.requires_grad and torch.is_grad_enabled():
            raise ValueError(
                f"{self._name()} is inference only: its input requires grad; run the model under "
                "torch.no_grad() or torch.inference_mode()"
            )
        if x.dtype != torch.float32 or x.device.type != "cpu":
            raise TypeError(f"{self._name()}: input must be a float32 CPU tensor, got {x.dtype} on {x.device}")
        try:
            ops.output_shape(tuple(x.shape), (self.out_features, self.in_features))
        except ValueError as e:
            raise ValueError(f"{self._name()}: {e}") from None

    def _eager_args(self):
        """The :class:`_Eager` arguments of :func:`_library.run` and their bound call, kept between
        calls (a decode step makes ~50 of them per token) until a buffer is replaced or written to:
        ``load_state_dict``, ``.to()`` and in-place edits all change what is checked."""
        packed, bias = self._buffers["packed"], self._buffers["bias"]
        key = self.__dict__.get("_eager_key")
        if (
            key is None
            or key[0] is not packed
            or key[1] != packed._version
            or key[2] is not bias
            or (bias is not None and key[3] != bias._version)
            or key[4] != self.activation
        ):
            weight = _library.packed_weight(packed)
            bias_array = None if bias is None else bias.detach().contiguous().numpy()
            args = _Eager(weight, bias_array, self.activation, _C.BoundLinear(weight.buffer, bias_array, self.activation))
            cacheable = not packed.is_inference() and (bias is None or not bias.is_inference())
            if not cacheable:
                return args  # inference tensors have no version counter: nothing tells of a write
            key = (packed, packed._version, bias, None if bias is None else bias._version, self.activation, args)
            self.__dict__["_eager_key"] = key
        return key[5]

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_eager_key", None)  # refers to the buffers; rebuilt on the first call
        return state

    def _name(self) -> str:
        return f"SparseLinear(in_features={self.in_features}, out_features={self.out_features})"

    def extra_repr(self) -> str:
        w = self.packed_weight
        act = f", activation={self.activation}" if self.activation else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, dtype={w.dtype}, "
            f"format={w.format}, density={w.density:.3f}, bias={self.bias is not None}{act}"
        )

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        key = prefix + "packed"
        loaded = state_dict.get(key)
        weight = None
        if loaded is not None:
            if not isinstance(loaded, torch.Tensor) or loaded.dtype != torch.uint8 or loaded.dim() != 1:
                raise ValueError(f"{key}: a packed weight must be a 1-D uint8 tensor, got {getattr(loaded, 'dtype', type(loaded))}")
            try:
                weight = PackedWeight(loaded.detach().cpu().contiguous().numpy())
            except ValueError as e:
                raise ValueError(f"{key}: {e}") from None
            if weight.shape != (self.out_features, self.in_features):
                raise ValueError(
                    f"{key}: packed weight has shape {weight.shape}, this layer is "
                    f"({self.out_features}, {self.in_features})"
                )
            if loaded.shape != self.packed.shape:
                # Another density packs to another size: make room, then the default copy fills it.
                with torch.inference_mode(False):
                    self._buffers["packed"] = torch.empty_like(loaded, device="cpu")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        if weight is not None:
            _library.remember(self.packed, weight)

    def __setstate__(self, state):
        # Unpickling (torch.load of a whole model, copy.deepcopy) builds new buffer tensors: their
        # bytes come from outside, so they are validated here, once.
        super().__setstate__(state)
        buf = self._buffers.get("packed")
        if buf is not None and buf.device.type == "cpu":
            _library.packed_weight(buf)


def _dropout_inactive(block: nn.Module, dropout: nn.Module) -> bool:
    """Whether ``dropout`` in ``block`` is the identity: the block is in eval mode, or the dropout
    drops nothing."""
    return not block.training or isinstance(dropout, nn.Identity) or (isinstance(dropout, nn.Dropout) and dropout.p == 0)


class SparseResidualLayerNorm(nn.Module):
    """``LayerNorm(dropout(dense(hidden_states)) + input_tensor)``, the output block of BERT-style
    Hugging Face models (``BertSelfOutput``, ``BertOutput`` and their copies), in one sparsecpu call:
    each thread adds the residual and normalizes the rows it has just computed, while they are in
    its cache, instead of two more passes of torch ops over the whole output.

    :func:`sparsecpu.sparsify` puts one in place of every module whose ``forward`` is exactly that
    computation (it compares the code), so you rarely build one yourself. Call it as the block it
    replaces: ``block(hidden_states, input_tensor)``. The children keep the replaced block's names
    (``dense``, ``dropout``, ``LayerNorm``), so its ``state_dict`` keys do not change.

    In training mode with an active dropout, and for inputs the fused op does not take (another
    dtype, a residual that only broadcasts to the output, tensor subclasses), it runs the three
    steps one by one, with the same result. Inference only, like :class:`SparseLinear`.

    Args:
        dense: the block's linear layer, converted.
        layer_norm: ``nn.LayerNorm`` over the last dim (``normalized_shape == (dense.out_features,)``).
        dropout: the block's dropout (identity at inference), or None.
    """

    def __init__(self, dense: SparseLinear, layer_norm: nn.LayerNorm, dropout: Optional[nn.Module] = None):
        super().__init__()
        if not isinstance(dense, SparseLinear):
            raise TypeError(f"dense must be a SparseLinear, got {type(dense).__name__}")
        if not isinstance(layer_norm, nn.LayerNorm) or tuple(layer_norm.normalized_shape) != (dense.out_features,):
            raise TypeError(f"layer_norm must be an nn.LayerNorm over ({dense.out_features},), got {layer_norm!r}")
        self.dense = dense
        self.dropout = dropout if dropout is not None else nn.Identity()
        self.LayerNorm = layer_norm

    def _norm_ready(self) -> bool:
        """Whether the block is what the fused call computes: dropout inactive, the LayerNorm's
        parameters float32 on the CPU."""
        norm = self.LayerNorm
        return _dropout_inactive(self, self.dropout) and all(
            p is None or (p.dtype is torch.float32 and p.is_cpu) for p in (norm.weight, norm.bias)
        )

    def _fusable(self, hidden_states, input_tensor) -> bool:
        return (
            isinstance(hidden_states, torch.Tensor)
            and isinstance(input_tensor, torch.Tensor)
            and input_tensor.dtype is torch.float32
            and input_tensor.is_cpu
            and tuple(input_tensor.shape) == (*hidden_states.shape[:-1], self.dense.out_features)
            and self._norm_ready()
        )

    def _apply(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        """The fused call on plain float32 tensors (``_plain_input``) of the block's shapes, the
        block ``_norm_ready``."""
        norm = self.LayerNorm
        eager = self.dense._eager_args()
        params = tuple(None if p is None else p.detach().numpy() for p in (norm.weight, norm.bias))
        return _library.run(hidden_states, eager.weight, eager.bias, eager.activation, input_tensor, (*params, norm.eps))

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        if not self._fusable(hidden_states, input_tensor):
            return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)
        dense, norm = self.dense, self.LayerNorm
        if (
            _plain_input(hidden_states)
            and _plain_input(input_tensor)
            and hidden_states.dim() > 0
            and hidden_states.shape[-1] == dense.in_features
        ):
            return self._apply(hidden_states, input_tensor)
        dense._check_input(hidden_states)
        if input_tensor.requires_grad and torch.is_grad_enabled():
            raise ValueError(
                f"{dense._name()} is inference only: the residual requires grad; run the model under "
                "torch.no_grad() or torch.inference_mode()"
            )
        return torch.ops.sparsecpu.linear_residual_norm(
            hidden_states, dense.packed, dense.bias, dense.out_features, dense.activation or "none", input_tensor,
            norm.weight, norm.bias, float(norm.eps),
        )


class SparseMLP(nn.Module):
    """``dropout(c_proj(act(c_fc(hidden_states))))``, the MLP block of GPT-2-style Hugging Face
    models (``GPT2MLP`` and its copies), with both layers converted and the activation fused into
    ``c_fc``: the two kernels run back to back, on numpy arrays, without a torch tensor or a
    module call in between. A decode step runs ~12 such blocks per token, each a few microseconds
    of Python on top of its kernels, so this shortens every token.

    :func:`sparsecpu.sparsify` puts one in place of every module whose ``forward`` is exactly that
    computation (it compares the code) once both layers are converted, so you rarely build one
    yourself. The children keep the replaced block's names (``c_fc``, ``act``, ``c_proj``,
    ``dropout``), so its ``state_dict`` keys do not change.

    It runs the four steps one by one, with the same result, when ``act`` is not ``nn.Identity``
    (the activation not fused), in training mode with an active dropout, and for inputs the fused
    path does not take (another dtype, tensor subclasses, under ``torch.compile``). Inference only,
    like :class:`SparseLinear`.

    Args:
        c_fc: the first layer, converted (its activation fused: ``act`` is then ``nn.Identity``).
        act: the activation between the layers.
        c_proj: the second layer, converted; ``c_proj.in_features == c_fc.out_features``.
        dropout: the block's dropout (identity at inference), or None.
    """

    def __init__(self, c_fc: SparseLinear, act: nn.Module, c_proj: SparseLinear, dropout: Optional[nn.Module] = None):
        super().__init__()
        if not (isinstance(c_fc, SparseLinear) and isinstance(c_proj, SparseLinear)):
            raise TypeError(f"c_fc and c_proj must be SparseLinear, got {type(c_fc).__name__} and {type(c_proj).__name__}")
        if c_proj.in_features != c_fc.out_features:
            raise ValueError(f"c_proj takes {c_proj.in_features} features, c_fc gives {c_fc.out_features}")
        if not isinstance(act, nn.Module):
            raise TypeError(f"act must be an nn.Module, got {type(act).__name__}")
        self.c_fc = c_fc
        self.act = act
        self.c_proj = c_proj
        self.dropout = dropout if dropout is not None else nn.Identity()

    def _chainable(self) -> bool:
        """Whether the block is still what the chained path computes: both layers SparseLinear, the
        activation fused (``act`` the identity), dropout inactive."""
        return (
            type(self.act) is nn.Identity
            and type(self.c_fc) is SparseLinear
            and type(self.c_proj) is SparseLinear
            and _dropout_inactive(self, self.dropout)
        )

    def _chain(self, h, residual=None):
        """The two kernels back to back on a float32 numpy array ``h [..., in]``; ``residual``
        (numpy, the output's shape) is added in the second one's epilogue. Returns numpy."""
        return self.c_proj._eager_args().call(self.c_fc._eager_args().call(h), residual)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if (
            _plain_input(hidden_states)
            and hidden_states.dim() > 0
            and hidden_states.shape[-1] == self.c_fc.in_features
            and self._chainable()
        ):
            return torch.from_numpy(self._chain(hidden_states.numpy()))
        return self.dropout(self.c_proj(self.act(self.c_fc(hidden_states))))
