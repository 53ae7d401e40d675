"""``sparsecpu.sparsify(model)``: swap the pruned linear layers of a torch model for sparsecpu layers
in place, and report per layer what was chosen and why."""

from __future__ import annotations

import fnmatch
import importlib
import sys
from dataclasses import dataclass, replace as _replace_fields
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from . import _C, _attention
from ._arrays import as_numpy_f32
from ._layout import DEFAULT_MIN_SPARSITY, Layout, attention_precision_for, choose_layout, min_sparsity_for
from .formats import block_density, pack
from .nn import SparseLinear, SparseMLP, SparseResidualLayerNorm

__all__ = ["sparsify", "SparsifyReport", "LayerReport", "DEFAULT_MIN_SPARSITY"]

_DTYPES = ("int8", "fp32")

# Hugging Face blocks whose forward is act(linear(x)), as (linear attribute, activation attribute):
# BERT-style intermediate layers and GPT-2's MLP. The activation is fused into the kernel's epilogue.
_ACT_AFTER = (("dense", "intermediate_act_fn"), ("c_fc", "act"))
_HF_ACTIVATIONS = {"GELUActivation": "gelu", "NewGELUActivation": "gelu_tanh", "GELUTanh": "gelu_tanh", "PytorchGELUTanh": "gelu_tanh"}


@dataclass(frozen=True)
class LayerReport:
    """One row of a :class:`SparsifyReport`."""

    name: str
    """Qualified module name, as in ``model.named_modules()``."""
    layer: str
    """Type of the original layer (``Linear`` or ``Conv1D``)."""
    shape: Tuple[int, int]
    """``(out_features, in_features)``."""
    sparsity: float
    """Fraction of zero weights."""
    block_sparsity: float
    """Fraction of 4x1 blocks (4 output channels x 1 input) that are all zero."""
    kernel: str
    """``"sparse int8"``, ``"sparse fp32"``, ``"dense int8"`` or ``"kept"`` (original layer left in place);
    with a forced ``format``, ``"<format> <dtype>"``."""
    reason: str
    """Why that kernel: the layout rule's reason, then what was fused."""
    layout: Optional[Layout] = None
    """What the layout rule (``sparsecpu._layout.choose_layout``) returned for this layer; None for a
    skipped one."""


class SparsifyReport:
    """What :func:`sparsify` did: one :class:`LayerReport` per linear layer, in module order.

    Iterable and indexable; ``print(report)`` shows a table; ``report.converted`` lists the rows
    whose layer was replaced; ``report.attention`` says whether the model's attention now runs
    sparsecpu's kernel, and ``report.attention_precision`` at which precision (``"fp32"``, ``"bf16"``, or None).
    """

    def __init__(self, rows: Sequence[LayerReport], attention_precision: Optional[str] = None):
        self.rows: List[LayerReport] = list(rows)
        self.attention_precision = attention_precision

    @property
    def attention(self) -> bool:
        """Whether the model's attention now runs sparsecpu's kernel."""
        return self.attention_precision is not None

    def __iter__(self) -> Iterator[LayerReport]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> LayerReport:
        return self.rows[i]

    @property
    def converted(self) -> List[LayerReport]:
        """Rows whose layer now runs a sparsecpu kernel."""
        return [r for r in self.rows if r.kernel != "kept"]

    def __str__(self) -> str:
        head = ("layer", "type", "shape", "sparsity", "block sparsity", "kernel", "reason")
        body = [
            (r.name, r.layer, f"{r.shape[0]}x{r.shape[1]}", f"{r.sparsity:.3f}", f"{r.block_sparsity:.3f}", r.kernel, r.reason)
            for r in self.rows
        ]
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head) - 1)]
        lines = []
        for row in [head, *body]:
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
        lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * len(head[-1]))
        lines.append(f"{len(self.converted)} of {len(self.rows)} linear layers converted")
        if self.attention:
            precision = self.attention_precision
            how = "fp32" if precision == "fp32" else "bf16 allowed: bf16 products where the CPU has AMX-BF16"
            lines.append(f"attention: sparsecpu's kernel {_C.attention_kernel(precision)} ({how}; "
                         f"attn_implementation {_attention.NAMES[precision]!r}, was 'sdpa')")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"SparsifyReport({len(self.converted)} of {len(self.rows)} layers converted)"


def _conv1d_type():
    """transformers' ``Conv1D`` if transformers is loaded (a model using it has imported it)."""
    return getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)


def _matches(name: str, patterns: Iterable[str]) -> Optional[str]:
    """The first pattern naming this module: the whole qualified name, its last part, or a glob."""
    last = name.rsplit(".", 1)[-1]
    for p in patterns:
        if name == p or last == p or fnmatch.fnmatchcase(name, p):
            return p
    return None


def _linear_layers(model: nn.Module) -> Iterator[Tuple[str, nn.Module, torch.Tensor]]:
    """``(name, module, weight as out x in)`` for every ``nn.Linear`` / ``Conv1D``."""
    conv1d = _conv1d_type()
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            yield name, m, m.weight.detach()
        elif conv1d is not None and isinstance(m, conv1d):
            yield name, m, m.weight.detach().t()


def _tied_to_embedding(model: nn.Module) -> dict:
    """``{layer name: embedding name}`` for the linear layers whose weight is an embedding's tensor."""
    embeddings = {m.weight.data_ptr(): name for name, m in model.named_modules() if isinstance(m, nn.Embedding)}
    return {name: embeddings[m.weight.data_ptr()] for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and m.weight.data_ptr() in embeddings}


def _activation_kind(act: nn.Module) -> Optional[str]:
    if isinstance(act, nn.GELU):
        return "gelu" if act.approximate == "none" else "gelu_tanh"
    if isinstance(act, nn.ReLU):
        return "relu"
    if type(act).__module__.startswith("transformers."):
        return _HF_ACTIVATIONS.get(type(act).__name__)
    return None


def _activation_after(model: nn.Module, name: str) -> Optional[Tuple[nn.Module, str, str]]:
    """``(parent, activation attribute, activation)`` when the layer ``name`` feeds a known activation."""
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    for lin_attr, act_attr in _ACT_AFTER:
        act = getattr(parent, act_attr, None)
        if attr == lin_attr and isinstance(act, nn.Module):
            kind = _activation_kind(act)
            if kind is not None:
                return parent, act_attr, kind
    return None


def _output_block_forward(self, hidden_states, input_tensor):
    hidden_states = self.dense(hidden_states)
    hidden_states = self.dropout(hidden_states)
    hidden_states = self.LayerNorm(hidden_states + input_tensor)
    return hidden_states


def _code_key(fn) -> Optional[tuple]:
    code = getattr(fn, "__code__", None)
    if code is None:
        return None
    return code.co_code, code.co_names, code.co_varnames, code.co_consts, code.co_argcount, code.co_kwonlyargcount


_OUTPUT_BLOCK_CODE = _code_key(_output_block_forward)


def _residual_norm_block(model: nn.Module, name: str, out_features: int) -> Tuple[Optional[nn.Module], Optional[str]]:
    """``(block, None)`` when the linear layer ``name`` is the ``dense`` of a BERT-style output block:
    its forward is ``LayerNorm(dropout(dense(h)) + input_tensor)`` (the same bytecode as
    ``_output_block_forward``: Hugging Face's ``BertSelfOutput`` / ``BertOutput`` and their copies in
    other models) and ``LayerNorm`` an ``nn.LayerNorm`` over the layer's outputs. ``(None, why)`` when
    the parent has that block's structure (``dense``, ``dropout``, ``LayerNorm``) but cannot be fused;
    ``(None, None)`` when it is no such block."""
    parent_name, _, attr = name.rpartition(".")
    if not parent_name or attr != "dense":
        return None, None
    parent = model.get_submodule(parent_name)
    if not all(isinstance(getattr(parent, a, None), nn.Module) for a in ("dropout", "LayerNorm")):
        return None, None
    norm = parent.LayerNorm
    if _code_key(getattr(type(parent), "forward", None)) != _OUTPUT_BLOCK_CODE:
        return None, f"{type(parent).__name__}.forward is not LayerNorm(dropout(dense(h)) + input_tensor)"
    if not isinstance(norm, nn.LayerNorm) or tuple(norm.normalized_shape) != (out_features,):
        return None, f"its LayerNorm is not an nn.LayerNorm over the {out_features} outputs"
    return parent, None


def _mlp_block_forward(self, hidden_states):
    hidden_states = self.c_fc(hidden_states)
    hidden_states = self.act(hidden_states)
    hidden_states = self.c_proj(hidden_states)
    hidden_states = self.dropout(hidden_states)
    return hidden_states


_MLP_BLOCK_CODE = _code_key(_mlp_block_forward)


def _mlp_block(model: nn.Module, name: str) -> Tuple[Optional[nn.Module], Optional[str]]:
    """``(block, None)`` when the converted layer ``name`` is the ``c_fc`` of a GPT-2-style MLP block:
    the block's forward is ``dropout(c_proj(act(c_fc(h))))`` (the same bytecode as
    ``_mlp_block_forward``: Hugging Face's ``GPT2MLP`` and its copies), ``c_proj`` is converted too
    and the activation was fused into ``c_fc`` (``act`` is ``nn.Identity``). ``(None, why)`` when the
    parent has that block's structure (``c_fc``, ``act``, ``c_proj``, ``dropout``) but cannot be
    chained; ``(None, None)`` when it is no such block."""
    parent_name, _, attr = name.rpartition(".")
    if not parent_name or attr != "c_fc":
        return None, None
    parent = model.get_submodule(parent_name)
    if not all(isinstance(getattr(parent, a, None), nn.Module) for a in ("act", "c_proj", "dropout")):
        return None, None
    if _code_key(getattr(type(parent), "forward", None)) != _MLP_BLOCK_CODE:
        return None, f"{type(parent).__name__}.forward is not dropout(c_proj(act(c_fc(h))))"
    if not isinstance(parent.c_proj, SparseLinear):
        return None, "c_proj is not converted"
    if not isinstance(parent.act, nn.Identity):
        return None, f"its activation {type(parent.act).__name__} is not fused into c_fc"
    if parent.c_proj.in_features != parent.c_fc.out_features:
        return None, "c_proj does not take c_fc's outputs"
    return parent, None


def _kernel(layout: Layout, dtype: str) -> str:
    """The report's name for what a layer runs on."""
    if layout.format is None:
        return "kept"
    return f"{'sparse' if layout.format == 'bsr' else layout.format} {dtype}"


def sparsify(
    model: nn.Module,
    dtype: str = "int8",
    min_sparsity: Optional[float] = None,
    format: str = "auto",
    skip: Sequence[str] = (),
    outlier_threshold: Optional[float] = None,
    fuse_norm: bool = True,
    attention: bool = True,
    fuse_mlp: bool = True,
    attention_precision: Optional[str] = None,
    rows: int = 128,
    fuse_block: bool = True,
) -> SparsifyReport:
    """Replaces, in place, the pruned ``nn.Linear`` and Hugging Face ``Conv1D`` layers of ``model``
    by :class:`sparsecpu.nn.SparseLinear`, and returns a :class:`SparsifyReport` (``print`` it).

    Per layer (with ``format="auto"``) the rule :func:`sparsecpu.onnx.convert` and
    ``pack(format="auto")`` follow too (``sparsecpu._layout.choose_layout``) decides. int8: the format
    predicted fastest for this weight at ``rows`` rows per call from costs measured on this machine
    (:mod:`sparsecpu.calibration`: block-sparse 4x1, dense int8, and the panel format on AMX; the
    first decision on a machine measures them, about a second, then they are cached); the report
    row says which and every candidate's predicted time. fp32, or int8 with an explicit
    ``min_sparsity``: at or above ``min_sparsity`` the layer runs the block-sparse kernel; below it
    an int8 layer runs the dense int8 GEMM and an fp32 layer stays the original torch layer. A layer
    whose weight the packed format cannot hold (int8 with more than 65535 inputs, NaN or Inf) stays
    too; the report says why.
    The GELU after a converted BERT intermediate or GPT-2 MLP input layer (``dense`` +
    ``intermediate_act_fn``, ``c_fc`` + ``act``) is fused into the kernel (the activation module
    becomes ``nn.Identity``). With ``fuse_norm``, a converted layer that is the ``dense`` of a
    BERT-style output block (``LayerNorm(dropout(dense(h)) + input_tensor)``: Hugging Face's
    ``BertSelfOutput``, ``BertOutput`` and their copies, recognized by their code) takes the residual
    add and the LayerNorm into its call: the block becomes a
    :class:`sparsecpu.nn.SparseResidualLayerNorm` (same children, same ``state_dict`` keys). With
    ``fuse_mlp``, a GPT-2-style MLP block (``dropout(c_proj(act(c_fc(h))))``: ``GPT2MLP`` and its
    copies, recognized by their code) whose two layers were converted, the activation fused, becomes
    a :class:`sparsecpu.nn.SparseMLP` that chains the two kernels without torch in between (same
    children, same keys). With ``fuse_block``, a Hugging Face ``GPT2Block`` whose four layers were
    converted, MLP chained and attention switched becomes a :class:`sparsecpu.nn.SparseGPT2Block` in place (a
    ``GPT2Block`` subclass with one forward for the whole block), and a ``BertLayer`` whose six layers
    were converted, output blocks fused and attention switched a :class:`sparsecpu.nn.SparseBertLayer`
    (one forward, Q, K and V in one kernel call); both for the transformers versions whose code
    sparsecpu was checked against, 5.24-5.25: others keep their blocks, the report says why.
    Prune first (:func:`sparsecpu.prune`); the result is for inference (``torch.no_grad()``).

    Args:
        model: any ``nn.Module``; changed in place.
        dtype: ``"int8"`` (dynamic u8 activations x per-channel s8 weights) or ``"fp32"``.
        min_sparsity: block sparsity from which a layer goes sparse instead of the measured choice;
            default None: the measured choice for int8, ``DEFAULT_MIN_SPARSITY["fp32"]`` (0.7: sparse
            vs torch fp32, measured on BERT-base shapes) for fp32.
        format: ``"auto"`` (choose per layer as above), or a storage format forced on every layer
            not skipped (nor kept as one the format cannot hold), passed to :func:`sparsecpu.pack`
            (``"bsr"``: block-sparse).
        skip: module names (qualified, last part, or glob) left untouched (default: none). A layer
            whose weight is tied to an embedding (GPT-2's ``lm_head`` and the token embedding) is
            converted like any other (an unpruned ``lm_head`` runs dense int8 on the int8 path: on
            GPT-2 decoding the largest single cost); the embedding keeps the fp32 weight, and the
            report row says so. ``skip=("lm_head",)`` keeps the fp32 head.
        outlier_threshold: passed to :func:`sparsecpu.pack` when given.
        fuse_norm: fuse the residual add + LayerNorm of BERT-style output blocks (default True).
        attention: switch a Hugging Face model that uses transformers' SDPA attention (the default)
            to sparsecpu's attention kernel (``model.set_attn_implementation("sparsecpu")``); the
            cases the kernel does not cover (causal prefill, dropout, grouped key/value heads, other
            dtypes) still run transformers' SDPA function (default True).
        fuse_mlp: chain the two layers of GPT-2-style MLP blocks in one call (default True).
        attention_precision: ``"fp32"`` or ``"bf16"``; default ``"bf16"`` for ``dtype="int8"`` and
            ``"fp32"`` for ``dtype="fp32"``. ``"bf16"`` computes attention's two products from bf16
            Q, K, V and softmax weights with fp32 sums on AMX-BF16 tiles, on CPUs that have them
            (Sapphire Rapids and later Xeons; BERT-base and GPT-2 outputs stay within cosine 0.9999
            of fp32); other CPUs run the fp32 kernel either way.
        rows: rows of x per call the measured choice is made for: tokens per forward (batch x
            sequence; default 128), or 1 for a model that will mostly decode.
        fuse_block: run each converted GPT-2 decoder block and BERT encoder layer in one forward
            (default True).

    Example:
        >>> sparsecpu.prune(model, sparsity=0.9)
        >>> print(sparsecpu.sparsify(model, dtype="int8"))
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be 'int8' or 'fp32', got {dtype!r}")
    if min_sparsity is not None:
        min_sparsity = min_sparsity_for(dtype, min_sparsity)
    attention_precision = attention_precision_for(dtype, attention_precision)
    if not isinstance(format, str):
        raise TypeError(f"format must be a string, got {type(format).__name__}")
    if isinstance(skip, str):
        skip = (skip,)
    layers = []
    replace = []
    tied = _tied_to_embedding(model)
    for name, module, weight in list(_linear_layers(model)):
        w = as_numpy_f32(weight, f"weight of {name!r}", allow_cast=True)
        hit = _matches(name, skip)
        if hit is not None:
            layout, kernel, reason = None, "kept", f"skipped ({hit!r} in skip)"
            block_sp = 1.0 - block_density(w)
        else:
            layout = choose_layout(w, dtype, format=format, min_sparsity=min_sparsity, rows=rows)
            kernel, reason, block_sp = _kernel(layout, dtype), layout.reason, layout.block_sparsity
        if kernel != "kept":
            if not name:
                raise ValueError("sparsify replaces layers inside a model; for a lone layer use SparseLinear.from_linear")
            fused = _activation_after(model, name)
            if fused is not None:
                reason += f"; {fused[2]} fused"
            block, why = _residual_norm_block(model, name, weight.shape[0]) if fuse_norm else (None, None)
            if block is not None:
                reason += "; residual add + LayerNorm fused"
            elif why is not None:
                reason += f"; residual add + LayerNorm NOT fused: {why}"
            if name in tied:
                reason += f"; weight tied to {tied[name]!r}, which keeps it in fp32"
            packed = pack(w, dtype=dtype, format=layout.format, outlier_threshold=outlier_threshold)
            replace.append((name, SparseLinear(packed, module.bias, fused[2] if fused else None), fused, block))
        sp = 1.0 - np.count_nonzero(w) / w.size if w.size else 1.0  # of values, for the report
        layers.append(LayerReport(name, type(module).__name__, tuple(w.shape), sp, block_sp, kernel, reason, layout))
    switched = attention and _attention.use_sparsecpu_attention(model, attention_precision)
    for name, new, fused, block in replace:
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, new)
        if fused is not None:
            setattr(fused[0], fused[1], nn.Identity())
        if block is not None:
            grand, _, block_attr = parent_name.rpartition(".")
            fused_block = SparseResidualLayerNorm(new, block.LayerNorm, block.dropout).train(block.training)
            setattr(model.get_submodule(grand), block_attr, fused_block)
    if fuse_mlp:
        for i, row in enumerate(layers):
            if row.kernel == "kept":
                continue
            mlp, why = _mlp_block(model, row.name)
            if why is not None:
                layers[i] = _replace_fields(row, reason=row.reason + f"; MLP block NOT chained: {why}")
            if mlp is not None:
                grand, _, block_attr = row.name.rpartition(".")[0].rpartition(".")
                fused_mlp = SparseMLP(mlp.c_fc, mlp.act, mlp.c_proj, mlp.dropout).train(mlp.training)
                setattr(model.get_submodule(grand), block_attr, fused_mlp)
                layers[i] = _replace_fields(row, reason=row.reason + "; MLP block chained with c_proj")
    if fuse_block:
        _fuse_blocks(model, layers, bool(switched))
    return SparsifyReport(layers, attention_precision if switched else None)


# The Hugging Face blocks sparsify runs in one forward: (module, class) -> the sparsecpu module that
# holds the fused class (SPARSE_BLOCK) and its fusable(), and the layer whose report row tells.
_FUSED_BLOCKS = {
    ("transformers.models.gpt2.modeling_gpt2", "GPT2Block"): ("_gpt2", "attn.c_attn"),
    ("transformers.models.bert.modeling_bert", "BertLayer"): ("_bert", "attention.self.query"),
}


def _fuse_blocks(model: nn.Module, layers: List[LayerReport], attention_switched: bool) -> None:
    """Makes each converted Hugging Face ``GPT2Block`` of ``model`` a ``SparseGPT2Block`` and each
    converted ``BertLayer`` a ``SparseBertLayer`` (in place), and notes in the row of its first layer
    that it did, or why not."""
    rows = {row.name: i for i, row in enumerate(layers)}
    loaded = {}
    for name, block in model.named_modules():
        cls = type(block)
        entry = _FUSED_BLOCKS.get((cls.__module__, cls.__name__))
        if entry is None:
            continue
        module_name, row_layer = entry
        i = rows.get(f"{name}.{row_layer}")
        if i is None or layers[i].kernel == "kept":
            continue
        if module_name not in loaded:
            try:  # imports transformers, which a model with such a block has loaded
                loaded[module_name] = (importlib.import_module(f".{module_name}", __package__), None)
            except ImportError as e:  # a transformers release without what the fused forward uses
                loaded[module_name] = (None, f"transformers lacks what it needs ({e})")
        fused, why = loaded[module_name]
        if not attention_switched:
            why = "its attention is not sparsecpu's"
        elif fused is not None:
            why = fused.fusable(block)
        if why is None:
            block.__class__ = fused.SPARSE_BLOCK
            note = f"; {cls.__name__} fused into one forward ({fused.SPARSE_BLOCK.__name__})"
        else:
            note = f"; {cls.__name__} NOT fused: {why}"
        layers[i] = _replace_fields(layers[i], reason=layers[i].reason + note)
