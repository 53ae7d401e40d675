"""The graph rewriter behind ``sparsecpu onnx convert``.

Finds MatMul and Gemm nodes whose weight is a constant 2-D float initializer, together with the
bias Add and the activation (Relu, Gelu, or the Erf or Tanh form of GELU that exporters write out)
that follow, and a residual Add + LayerNormalization after those (BERT's output blocks), and replaces
each chain with one ``com.sparsecpu:SparseLinear`` node whose packed weight is a uint8 initializer;
each attention subgraph becomes one ``com.sparsecpu:Attention`` node. Everything else in the graph is
left as it was. The patterns are matched by :mod:`sparsecpu.onnx.patterns`; this module decides per
node, builds the new nodes and initializers, and saves the model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np

from .._layout import Layout, attention_precision_for, choose_layout, min_sparsity_for
from ..formats import pack
from .patterns import (Graph, linear_of, match_activation, match_attention, match_bias, match_residual_norm,
                       merged_heads, names_used)

DOMAIN = "com.sparsecpu"
OP_TYPE = "SparseLinear"
ATTENTION_OP_TYPE = "Attention"
_PROTOBUF_LIMIT = 2**31 - 2**26  # stay clear of protobuf's 2 GiB message limit


def _need_onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("sparsecpu.onnx.convert needs onnx: pip install sparsecpu[onnx]") from None
    return onnx


@dataclass
class NodeReport:
    """What happened to one MatMul/Gemm node."""

    node: str
    op_type: str
    converted: bool
    reason: str
    shape: Optional[Tuple[int, int]] = None  # (N, K)
    density: Optional[float] = None  # kept 4x1 blocks / all blocks
    fused: List[str] = field(default_factory=list)  # node names folded into the SparseLinear node
    layout: Optional[Layout] = None  # what the layout rule (sparsecpu._layout.choose_layout) returned


@dataclass
class ConvertReport:
    """Per-node outcome of :func:`convert`; prints as a table."""

    nodes: List[NodeReport]
    dtype: str
    dst: str
    attention: List[str] = field(default_factory=list)
    """Names of the ``com.sparsecpu:Attention`` nodes that replaced attention subgraphs."""
    attention_precision: str = "fp32"
    """Their precision attribute (``"bf16"``: bf16 products where the CPU has AMX-BF16)."""

    @property
    def converted(self) -> List[NodeReport]:
        """The nodes that became ``SparseLinear``."""
        return [n for n in self.nodes if n.converted]

    def __str__(self) -> str:
        rows = [("node", "op", "N x K", "density", "result")]
        for n in self.nodes:
            rows.append((
                n.node,
                n.op_type,
                f"{n.shape[0]}x{n.shape[1]}" if n.shape else "-",
                f"{n.density:.3f}" if n.density is not None else "-",
                ("converted: " if n.converted else "kept: ") + n.reason,
            ))
        w = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(r[:4])) + "  " + r[4] for r in rows]
        lines.append(f"{len(self.converted)} of {len(self.nodes)} MatMul/Gemm nodes converted ({self.dtype}) -> {self.dst}")
        if self.attention:
            lines.append(f"{len(self.attention)} attention subgraphs -> {DOMAIN}:{ATTENTION_OP_TYPE} "
                         f"(precision {self.attention_precision})")
        return "\n".join(lines)


def convert(
    src,
    dst,
    dtype: str = "int8",
    min_sparsity: Optional[float] = None,
    format: str = "auto",
    *,
    fuse_norm: bool = True,
    fuse_attention: bool = True,
    external_data: Optional[bool] = None,
    verbose: bool = False,
    rows: int = 128,
    attention_precision: Optional[str] = None,
) -> ConvertReport:
    """Rewrites the ONNX model ``src`` into ``dst`` with its sparse linear layers on sparsecpu kernels.

    Every MatMul whose B, and every Gemm (``transA = 0``) whose B, is a constant 2-D float32
    initializer is run as :func:`sparsecpu.sparsify` would run a layer with that weight (the same
    rule, ``sparsecpu._layout.choose_layout``): int8 in the format measured fastest on this machine
    (block-sparse or dense int8; see ``sparsify``); fp32 (or int8 with an explicit ``min_sparsity``)
    block-sparse from ``min_sparsity`` zero 4x1 blocks up, below it dense int8 for ``dtype="int8"`` and
    left to ONNX Runtime for ``"fp32"``; left too
    when the packed format cannot hold the weight (int8 with K over 65535, NaN or Inf). A converted
    node becomes one ``com.sparsecpu:SparseLinear`` node, together with the bias ``Add`` of a
    constant ``[N]`` vector and the activation (Relu, Gelu, or the Erf or Tanh form of GELU) that read
    only its output. The packed weight is stored as a uint8 initializer; initializers nothing reads
    any more are dropped; every other node is kept untouched.

    With ``fuse_norm``, a residual ``Add`` of a tensor of the same shape followed by a
    ``LayerNormalization`` over the last axis (a BERT output block) joins the chain too: the node adds
    the residual and normalizes each row in the same call, on rows still in its core's cache.

    With ``fuse_attention``, each attention subgraph ``MatMul(Softmax(MatMul(Q, K^T) * scale + M), V)``
    (the scale as scalar ``Mul``/``Div`` anywhere on the score side, the additive mask ``M`` optional,
    with or without exporters' ``Where(IsNaN(P), 0, P)`` guard) of known 4-D shapes becomes one
    ``com.sparsecpu:Attention`` node. When Q, K and V are Reshape / Transpose views of [B, S, H D]
    tensors and the output is merged back the same way (static shapes), the node reads and writes
    those directly and the views are removed too. A query row whose mask leaves no key (all ``-inf``)
    gets zeros, as the guard makes it; without the guard ONNX Runtime would give NaN there.

    Args:
        src: the model (path). Tensors stored as external data are read from beside it.
        dst: where to write the converted model (path).
        dtype: ``"int8"`` (weights quantized per output channel, activations per row at run time)
            or ``"fp32"``.
        min_sparsity: fraction of all-zero 4x1 blocks from which a weight runs block-sparse instead
            of the measured choice; default, as for ``sparsify``: the measured choice for int8
            (:mod:`sparsecpu.calibration`), 0.7 for fp32 (below it ONNX Runtime's own MatMul is).
        format: ``"auto"`` (the rule above), or a format forced on every weight the packed format
            can hold: ``"bsr"`` (4x1 block-sparse) or ``"dense"`` (dense int8; int8 only).
        fuse_norm: fold the residual Add + LayerNormalization described above (default True).
        fuse_attention: replace the attention subgraphs described above (default True).
        external_data: write tensors to ``<dst>.data`` beside ``dst``; default: when ``src`` had
            external data or the model would exceed protobuf's 2 GB limit.
        verbose: print the report.
        rows: rows of x per call the measured choice is made for (default 128; 1 for decoding).
        attention_precision: of the ``Attention`` nodes, as in ``sparsify``: ``"bf16"`` (the default
            with ``dtype="int8"``) allows bf16 products on AMX-BF16 tiles where the CPU has them (the fp32
            kernel elsewhere); ``"fp32"`` (the default with ``dtype="fp32"``).

    Returns:
        A :class:`ConvertReport` (prints as a per-node table).

    ``dst`` runs in ONNX Runtime with the library registered: :func:`sparsecpu.onnx.session`.
    """
    onnx = _need_onnx()
    _check_options(dtype, format)
    attention_precision = attention_precision_for(dtype, attention_precision)
    if min_sparsity is not None:
        min_sparsity = min_sparsity_for(dtype, min_sparsity)
    src, dst = os.fspath(src), os.fspath(dst)
    if os.path.abspath(src) == os.path.abspath(dst):
        raise ValueError("dst must differ from src (external data files would be overwritten while read)")
    had_external = _has_external_data(onnx, src)
    model = onnx.load(src, load_external_data=True)
    rewrite = _Rewrite(onnx, model)
    nodes = [rewrite.linear(node, dtype, min_sparsity, format, fuse_norm, rows) for node in rewrite.g.nodes
             if node.op_type in ("MatMul", "Gemm") and node.domain in ("", "ai.onnx")]
    attention = rewrite.attention(attention_precision) if fuse_attention else []
    rewrite.apply()
    if external_data is None:
        external_data = had_external or model.ByteSize() > _PROTOBUF_LIMIT
    _save(onnx, model, dst, external_data)
    report = ConvertReport(nodes, dtype, dst, attention, attention_precision)
    if verbose:
        print(report)
    return report


def _check_options(dtype: str, format: str) -> None:
    if dtype not in ("int8", "fp32"):
        raise ValueError(f"dtype must be 'int8' or 'fp32', got {dtype!r}")
    if format not in ("auto", "bsr", "dense", "panel"):
        raise ValueError(f"format must be 'auto', 'bsr', 'dense' or 'panel', got {format!r}")
    if format in ("dense", "panel") and dtype != "int8":
        raise ValueError(f"format={format!r} needs dtype='int8' (its kernels are int8)")


class _Chain(NamedTuple):
    """The nodes one ``SparseLinear`` node replaces: a MatMul/Gemm and what it takes in after it."""

    nodes: list
    output: str
    bias: Optional[np.ndarray]
    activation: str
    norm: Optional[tuple]  # match_residual_norm's match


class _Rewrite:
    """The changes to one graph. They are collected while the patterns are matched, on the graph as it
    was, and applied at the end (:meth:`apply`)."""

    def __init__(self, onnx, model):
        self.onnx = onnx
        self.model = model
        self.g = Graph(onnx, model.graph, model)
        self.remove = set()  # ids of nodes folded into new nodes
        self.new_nodes = {}  # id of the node a new node takes the place of -> the new node
        self.new_inits = []
        self.touched = set()  # values the removed nodes read: the constants that may now be dead
        self.packed_by_weight: Dict[str, Tuple[str, str]] = {}  # MatMul weight -> (packed initializer, format)
        self.report_of: Dict[int, NodeReport] = {}  # id of a MatMul/Gemm node left as it is -> its report row
        self._used_names = set(self.g.inits) | set(self.g.producer) | {i.name for i in model.graph.input}

    def fresh(self, base: str) -> str:
        """A value or node name not used in the graph yet, ``base`` if it is free."""
        name, i = base, 1
        while name in self._used_names:
            name, i = f"{base}_{i}", i + 1
        self._used_names.add(name)
        return name

    def replace(self, chain: list, node) -> None:
        """Puts ``node`` in the place of the chain's last node, where every input it reads (a residual
        too) is computed, and removes the chain."""
        self.new_nodes[id(chain[-1])] = node
        for c in chain:
            self.remove.add(id(c))
            self.touched.update(c.input)

    def linear(self, node, dtype: str, min_sparsity: Optional[float], format: str, fuse_norm: bool,
               rows: int) -> NodeReport:
        """Replaces the MatMul/Gemm ``node`` and the chain after it by one ``SparseLinear`` node, or
        leaves it; says which and why."""
        name = node.name or f"{node.op_type}({node.output[0]})"
        w, bias, reason = linear_of(self.g, node)
        if w is None:
            rep = self.report_of[id(node)] = NodeReport(name, node.op_type, False, reason)
            return rep
        n, k = w.shape
        layout = choose_layout(w, dtype, format=format, min_sparsity=min_sparsity, rows=rows)
        rep = NodeReport(name, node.op_type, False, layout.reason, (n, k), layout.density, layout=layout)
        if layout.format is None:
            return rep
        if bias is not None and not np.isfinite(bias).all():
            rep.reason = "bias holds NaN or Inf"
            return rep
        chain = self._chain(node, n, bias, fuse_norm)
        packed_name, packed_format = self._packed_weight(node, w, dtype, layout.format)
        inputs = [node.input[0], packed_name]
        if chain.bias is not None:
            bias_name = self.fresh(f"{name}.sparsecpu_bias")
            self.new_inits.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(chain.bias, np.float32), bias_name))
            inputs.append(bias_name)
        attrs = {}
        if chain.norm is not None:
            residual, scale, beta, epsilon = chain.norm[:4]
            inputs += [""] * (3 - len(inputs)) + [residual, scale, beta]  # X, W, bias or "", R, Scale, B
            while not inputs[-1]:
                inputs.pop()
            attrs = {"norm": 1, "epsilon": float(epsilon)}
        self.replace(chain.nodes, self.onnx.helper.make_node(
            OP_TYPE, inputs, [chain.output], name=node.name or self.fresh(name), domain=DOMAIN,
            N=n, K=k, dtype=dtype, format=packed_format, activation=chain.activation, **attrs,
        ))
        rep.converted = True
        rep.fused = [c.name for c in chain.nodes[1:]]
        extras = (["bias"] if chain.bias is not None else []) + ([chain.activation] if chain.activation != "none" else [])
        extras += ["residual add + LayerNorm"] if chain.norm is not None else []
        rep.reason = f"{packed_format} {dtype}" + (" + " + " + ".join(extras) if extras else "") + f"; {layout.reason}"
        return rep

    def _chain(self, node, n: int, bias: Optional[np.ndarray], fuse_norm: bool) -> _Chain:
        """``node`` and the bias Add (unless ``bias`` is the Gemm's own), activation and residual Add +
        LayerNormalization (with ``fuse_norm``) that read only its output, in that order."""
        nodes, y = [node], node.output[0]
        if bias is None:
            m = match_bias(self.g, y, n, node.op_type == "Gemm")
            if m is not None:
                bias, add = m
                nodes.append(add)
                y = add.output[0]
        act = "none"
        m = match_activation(self.g, y)
        if m is not None:
            act, act_nodes, y = m
            nodes += act_nodes
        norm = match_residual_norm(self.g, y, n) if fuse_norm else None
        if norm is not None:
            nodes += norm[4]
            y = norm[5]
        return _Chain(nodes, y, bias, act, norm)

    def _packed_weight(self, node, w: np.ndarray, dtype: str, format: str) -> Tuple[str, str]:
        """(initializer, format) of ``w`` packed; MatMuls sharing a weight share its packed copy (a
        Gemm's alpha and transB make its own)."""
        key = node.input[1] if node.op_type == "MatMul" else None
        shared = self.packed_by_weight.get(key)
        if shared is None:
            packed = pack(w, dtype=dtype, format=format)
            shared = (self.fresh(f"{node.input[1]}.sparsecpu_{dtype}"), packed.format)
            self.new_inits.append(self.onnx.numpy_helper.from_array(np.frombuffer(packed.to_bytes(), np.uint8), shared[0]))
            if key is not None:
                self.packed_by_weight[key] = shared
        return shared

    def attention(self, precision: str) -> List[str]:
        """Replaces each attention subgraph not yet folded into another node by one ``Attention`` node
        at ``precision`` (``"fp32"`` or ``"bf16"``); returns the new nodes' names."""
        g = self.g
        opset = next((o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), 0)
        names = []
        for node in g.nodes:
            if node.op_type != "Softmax" or id(node) in self.remove:
                continue
            m = match_attention(g, node, opset)
            if m is None or any(id(n) in self.remove for n in m[5]):
                continue
            q, kt, v, mask, scale, chain, out = m
            name = self.fresh("sparsecpu_attention")
            merged = merged_heads(g, m)
            if merged is not None and not any(id(n) in self.remove for n in merged[2]):
                sources, out, views, heads = merged
                inputs, attrs = sources, {"num_heads": heads}
                chain = chain + views
            else:
                inputs, attrs = [q, kt, v], {"k_transposed": 1}
            inputs += [mask] if mask else []
            if precision != "fp32":
                attrs["precision"] = precision
            self.replace(chain, self.onnx.helper.make_node(
                ATTENTION_OP_TYPE, inputs, [out], name=name, domain=DOMAIN, scale=float(scale), **attrs))
            names.append(name)
            for c in chain:
                rep = self.report_of.get(id(c))
                if rep is not None:
                    rep.reason = f"part of attention: in {DOMAIN}:{ATTENTION_OP_TYPE} node {name!r}"
        return names

    def apply(self) -> None:
        """Writes the collected changes into the model: new nodes in the places of the chains they
        replace, new initializers, dead constants dropped, sparsecpu's opset declared."""
        graph = self.model.graph
        nodes = []
        for node in self.g.nodes:
            if id(node) in self.new_nodes:
                nodes.append(self.new_nodes[id(node)])
            elif id(node) not in self.remove:
                nodes.append(node)
        del graph.node[:]
        graph.node.extend(nodes)
        graph.initializer.extend(self.new_inits)
        if self.new_nodes:
            _drop_dead(graph, self.touched)
            if not any(o.domain == DOMAIN for o in self.model.opset_import):
                self.model.opset_import.append(self.onnx.helper.make_opsetid(DOMAIN, 1))


def _save(onnx, model, dst: str, external_data: bool) -> None:
    """Writes ``model`` to ``dst``, with its tensors in ``<dst>.data`` beside it when ``external_data``."""
    if not external_data:
        onnx.save_model(model, dst)
        return
    location = os.path.basename(dst) + ".data"
    path = os.path.join(os.path.dirname(os.path.abspath(dst)), location)
    if os.path.exists(path):
        os.remove(path)
    onnx.save_model(model, dst, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=1024)


def _has_external_data(onnx, path: str) -> bool:
    """Whether the model at ``path`` keeps tensors outside the .onnx file; ValueError if it is not a model."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such model file: {path}")
    try:
        m = onnx.load(path, load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends: the file is not a model
        raise ValueError(f"cannot read {path} as an ONNX model: {e}") from None
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer)


def _drop_dead(graph, candidates: set) -> None:
    """Removes the initializers, and the Constant and Identity nodes, among ``candidates`` that
    nothing reads any more."""
    candidates = set(candidates)
    while True:
        used = names_used(graph) | {o.name for o in graph.output}
        dead_nodes = [
            n for n in graph.node
            if n.op_type in ("Constant", "Identity") and n.domain in ("", "ai.onnx")
            and n.output[0] in candidates and n.output[0] not in used
        ]
        for n in dead_nodes:
            graph.node.remove(n)
            candidates.update(n.input)
        if not dead_nodes:
            break
    dead = {t.name for t in graph.initializer if t.name in candidates and t.name not in used}
    if not dead:
        return
    keep = [t for t in graph.initializer if t.name not in dead]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    inputs = [i for i in graph.input if i.name not in dead]
    del graph.input[:]
    graph.input.extend(inputs)
    vi = [v for v in graph.value_info if v.name not in dead]
    del graph.value_info[:]
    graph.value_info.extend(vi)
