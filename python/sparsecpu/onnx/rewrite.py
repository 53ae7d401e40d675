"""The graph rewriter behind ``sparsecpu onnx convert``.

Finds MatMul and Gemm nodes whose weight is a constant 2-D float initializer, together with the
bias Add and the activation (Relu, Gelu, or the Erf or Tanh form of GELU that exporters write out)
that follow, and a residual Add + LayerNormalization after those (BERT's output blocks), and replaces
each chain with one ``com.sparsecpu:SparseLinear`` node whose packed weight is a uint8 initializer.
Everything else in the graph is left as it was.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..formats import pack

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


@dataclass
class ConvertReport:
    """Per-node outcome of :func:`convert`; prints as a table."""

    nodes: List[NodeReport]
    dtype: str
    dst: str
    attention: List[str] = field(default_factory=list)
    """Names of the ``com.sparsecpu:Attention`` nodes that replaced attention subgraphs."""

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
            lines.append(f"{len(self.attention)} attention subgraphs -> {DOMAIN}:{ATTENTION_OP_TYPE}")
        return "\n".join(lines)


def _block_density(w: np.ndarray) -> float:
    """Fraction of 4x1 blocks (4 output channels x 1 input column) of ``w`` (N x K) holding a nonzero."""
    n, k = w.shape
    if n == 0 or k == 0:
        return 0.0
    g = (n + 3) // 4
    nz = np.zeros((g * 4, k), bool)
    nz[:n] = w != 0
    return float(nz.reshape(g, 4, k).any(axis=1).mean())


def _dims(value_info) -> Optional[tuple]:
    """A value's dims (ints, or names for symbolic ones), or None if its rank or a dim is unknown."""
    t = value_info.type
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    dims = []
    for d in t.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(d.dim_value)
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(d.dim_param)
        else:
            return None
    return tuple(dims)


class _Graph:
    """Indexes of one graph: producers, consumers, constants, known shapes."""

    def __init__(self, onnx, graph, model=None):
        self.onnx = onnx
        self.graph = graph
        self.model = model
        self._shapes = None
        self._inferred = False
        # One list of node objects for every index below and for the rewrite, so that nodes can be
        # told apart by identity.
        self.nodes = list(graph.node)
        self.inits = {t.name: t for t in graph.initializer}
        self.producer = {}
        self.consumers = defaultdict(list)
        for node in self.nodes:
            for o in node.output:
                self.producer[o] = node
            for i in node.input:
                self.consumers[i].append(node)
        self.outputs = {o.name for o in graph.output}
        self.subgraph_refs = set()
        for node in self.nodes:
            for a in node.attribute:
                for g in list(a.g.ListFields() and [a.g]) + list(a.graphs):
                    self.subgraph_refs |= _names_used(g)
        self._arrays = {}

    def const(self, name: str) -> Optional[np.ndarray]:
        """The value of a constant tensor (initializer, Constant node, or Identity of one), else None."""
        if name in self._arrays:
            return self._arrays[name]
        value = None
        nh = self.onnx.numpy_helper
        if name in self.inits:
            value = nh.to_array(self.inits[name])
        else:
            p = self.producer.get(name)
            if p is not None and p.op_type == "Identity" and p.domain in ("", "ai.onnx"):
                # The TorchScript exporter shares equal initializers through Identity nodes.
                value = self.const(p.input[0])
            elif p is not None and p.op_type == "Constant" and p.domain in ("", "ai.onnx"):
                for a in p.attribute:
                    if a.name == "value":
                        value = nh.to_array(a.t)
                    elif a.name == "value_float":
                        value = np.array(a.f, np.float32)
        self._arrays[name] = value
        return value

    def only_consumer(self, name: str):
        """The single node reading ``name`` if nothing else (graph output, subgraph) does."""
        c = self.consumers.get(name, [])
        if len(c) != 1 or name in self.outputs or name in self.subgraph_refs:
            return None
        return c[0]

    def shape(self, name: str) -> Optional[tuple]:
        """The dims of ``name`` as the model states them (graph inputs, outputs, value_info) or, for
        a value it says nothing about, as ONNX shape inference finds them; None when unknown."""
        if self._shapes is None:
            self._shapes = {}
            self._add_shapes([*self.graph.input, *self.graph.output, *self.graph.value_info])
        if self._shapes.get(name) is None and not self._inferred and self.model is not None:
            self._inferred = True
            try:
                self._add_shapes(self.onnx.shape_inference.infer_shapes(self.model).graph.value_info)
            except Exception:  # a help, not a requirement (a model over 2 GB cannot be inferred in memory)
                pass
        return self._shapes.get(name)

    def _add_shapes(self, infos) -> None:
        for v in infos:
            if self._shapes.get(v.name) is None:
                self._shapes[v.name] = _dims(v)

    def scalar(self, name: str) -> Optional[float]:
        v = self.const(name)
        if v is None or v.size != 1 or v.dtype.kind != "f":
            return None
        return float(v.reshape(()))


def _names_used(graph) -> set:
    used = set()
    for node in graph.node:
        used.update(node.input)
        for a in node.attribute:
            for g in list(a.g.ListFields() and [a.g]) + list(a.graphs):
                used |= _names_used(g)
    return used


def _close(v: Optional[float], target: float) -> bool:
    return v is not None and abs(v - target) <= 1e-3 * abs(target)


def _other(node, name: str) -> Optional[str]:
    """The other input of a two-input node one of whose inputs is ``name``."""
    if len(node.input) != 2:
        return None
    if node.input[0] == name:
        return node.input[1]
    if node.input[1] == name:
        return node.input[0]
    return None


def _follow(g: _Graph, name: str, op_type: str, const: Optional[float] = None, other: Optional[str] = None):
    """The only consumer of ``name`` if it is ``op_type`` whose other input is the scalar ``const``
    (or the tensor ``other``), else None."""
    node = g.only_consumer(name)
    if node is None or node.op_type != op_type or node.domain not in ("", "ai.onnx"):
        return None
    if const is not None and not _close(g.scalar(_other(node, name) or ""), const):
        return None
    if other is not None and _other(node, name) != other:
        return None
    return node


def _half_product(g: _Graph, y: str, a: str, user):
    """Nodes and output of ``0.5 * y * a`` where ``user`` is the node (besides the ones computing
    ``a``) that reads ``y``: Mul(Mul(y, a), 0.5), Mul(Mul(y, 0.5), a) or Mul(y, Mul(a, 0.5))."""
    if user.op_type != "Mul" or user.domain not in ("", "ai.onnx"):
        return None
    partner = _other(user, y)
    if partner == a and g.only_consumer(a) is user:
        last = _follow(g, user.output[0], "Mul", const=0.5)
        return ([user, last], last.output[0]) if last is not None else None
    if _close(g.scalar(partner or ""), 0.5):
        last = _follow(g, user.output[0], "Mul", other=a)
        return ([user, last], last.output[0]) if last is not None and g.only_consumer(a) is last else None
    half = _follow(g, a, "Mul", const=0.5)
    if half is not None and partner == half.output[0]:
        return [half, user], user.output[0]
    return None


def _users(g: _Graph, y: str) -> Optional[list]:
    """The nodes reading ``y``, or None if a graph output or a subgraph reads it too."""
    if y in g.outputs or y in g.subgraph_refs:
        return None
    return g.consumers.get(y, [])


def _match_erf_gelu(g: _Graph, y: str):
    """The nodes of ``0.5 * y * (1 + erf(y / sqrt(2)))`` as exporters write it, and its output:
    Div(y, sqrt 2) or Mul(y, 1/sqrt 2) -> Erf -> Add 1, times y and 0.5 (see _half_product)."""
    users = _users(g, y)
    if users is None or len(users) != 2:
        return None
    for scale in users:
        s = _other(scale, y)
        if s is None or not (
            (scale.op_type == "Div" and scale.input[0] == y and _close(g.scalar(s), math.sqrt(2)))
            or (scale.op_type == "Mul" and _close(g.scalar(s), 1 / math.sqrt(2)))
        ):
            continue
        erf = _follow(g, scale.output[0], "Erf")
        add = _follow(g, erf.output[0], "Add", const=1.0) if erf is not None else None
        if add is None:
            continue
        rest = [u for u in users if u is not scale]
        tail = _half_product(g, y, add.output[0], rest[0])
        if tail is not None:
            return [scale, erf, add] + tail[0], tail[1]
    return None


def _match_tanh_gelu(g: _Graph, y: str):
    """The nodes of ``0.5 * y * (1 + tanh(sqrt(2 / pi) * (y + 0.044715 * y**3)))`` (GPT-2's
    ``gelu_new`` as exporters write it), and its output."""
    users = _users(g, y)
    if users is None or len(users) != 3:
        return None
    for pow_ in users:
        if pow_.op_type != "Pow" or pow_.input[0] != y or not _close(g.scalar(pow_.input[1]), 3.0):
            continue
        chain = [pow_]
        for op_type, kw in (("Mul", {"const": 0.044715}), ("Add", {"other": y}),
                            ("Mul", {"const": math.sqrt(2 / math.pi)}), ("Tanh", {}), ("Add", {"const": 1.0})):
            node = _follow(g, chain[-1].output[0], op_type, **kw)
            if node is None:
                break
            chain.append(node)
        if len(chain) != 6:
            continue
        inner, add = chain[2], chain[5]
        rest = [u for u in users if u is not pow_ and u is not inner]
        if len(rest) != 1:
            continue
        tail = _half_product(g, y, add.output[0], rest[0])
        if tail is not None:
            return chain + tail[0], tail[1]
    return None


def _match_activation(g: _Graph, y: str):
    """(activation, nodes, output) of the activation applied to ``y`` alone (Relu, Gelu, FastGelu, or
    the Erf or Tanh form of GELU written out), or None."""
    node = g.only_consumer(y)
    if node is not None and len(node.input) >= 1 and node.input[0] == y:
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Relu" and node.domain in ("", "ai.onnx"):
            return "relu", [node], node.output[0]
        if node.op_type == "Gelu" and node.domain in ("", "ai.onnx", "com.microsoft") and len(node.input) == 1:
            approx = attrs["approximate"].s.decode() if "approximate" in attrs else "none"
            if approx in ("none", "tanh"):
                return ("gelu_tanh" if approx == "tanh" else "gelu"), [node], node.output[0]
        if node.op_type == "FastGelu" and node.domain == "com.microsoft" and len(node.input) == 1:
            return "gelu_tanh", [node], node.output[0]
    m = _match_erf_gelu(g, y)
    if m is not None:
        return "gelu", m[0], m[1]
    m = _match_tanh_gelu(g, y)
    if m is not None:
        return "gelu_tanh", m[0], m[1]
    return None


def _linear_of(g: _Graph, node) -> Tuple[Optional[np.ndarray], Optional[np.ndarray], str]:
    """(W as N x K float32, bias or None, reason) for a MatMul/Gemm; W is None when it cannot be converted."""
    if node.op_type == "MatMul":
        if len(node.input) != 2:
            return None, None, "malformed MatMul"
        b_name = node.input[1]
        if b_name not in g.inits:
            return None, None, "B is not a constant initializer"
        b = g.const(b_name)
        if b.ndim != 2:
            return None, None, f"B is {b.ndim}-D, not 2-D"
        if b.dtype != np.float32:
            return None, None, f"B is {b.dtype}, not float32"
        return np.ascontiguousarray(b.T), None, ""
    attrs = {a.name: a for a in node.attribute}
    alpha = attrs["alpha"].f if "alpha" in attrs else 1.0
    beta = attrs["beta"].f if "beta" in attrs else 1.0
    if "transA" in attrs and attrs["transA"].i:
        return None, None, "transA = 1"
    b_name = node.input[1]
    if b_name not in g.inits:
        return None, None, "B is not a constant initializer"
    b = g.const(b_name)
    if b.ndim != 2 or b.dtype != np.float32:
        return None, None, f"B is {b.ndim}-D {b.dtype}, not 2-D float32"
    w = b if ("transB" in attrs and attrs["transB"].i) else b.T
    w = np.ascontiguousarray(w * np.float32(alpha) if alpha != 1.0 else w, dtype=np.float32)
    bias = None
    if len(node.input) > 2 and node.input[2]:
        c = g.const(node.input[2])
        n = w.shape[0]
        if c is None or c.dtype != np.float32:
            return None, None, "C is not a constant float32 tensor"
        if c.size == n and (c.ndim == 1 or c.shape == (1, n)):
            bias = c.reshape(n).astype(np.float32) * np.float32(beta)
        elif c.size == 1:
            bias = np.full(n, float(c.reshape(())) * beta, np.float32)
        else:
            return None, None, f"C of shape {list(c.shape)} is not a per-column bias"
    return w, bias, ""


def _match_bias(g: _Graph, y: str, n: int, rank2: bool):
    """(bias, add node) for an Add of a constant [N] (or [1, N] after a Gemm) reading only ``y``."""
    add = g.only_consumer(y)
    if add is None or add.op_type != "Add" or add.domain not in ("", "ai.onnx"):
        return None
    other = _other(add, y)
    c = g.const(other) if other else None
    if c is None or c.dtype != np.float32 or c.size != n:
        return None
    if c.ndim == 1 or (rank2 and c.shape == (1, n)):
        return c.reshape(n), add
    return None


def _match_residual_norm(g: _Graph, y: str, n: int):
    """(residual, Scale, B or "", epsilon, [Add, LayerNormalization], output) for
    ``LayerNormalization(Add(y, R))`` over the last axis, where R is known to have y's shape (no
    broadcast) and nothing else reads the Add or uses the norm's Mean / InvStdDev; else None."""
    add = g.only_consumer(y)
    if add is None or add.op_type != "Add" or add.domain not in ("", "ai.onnx"):
        return None
    r = _other(add, y)
    shape = g.shape(y)
    if not r or r == y or shape is None or not shape or g.shape(r) != shape or shape[-1] != n:
        return None
    ln = g.only_consumer(add.output[0])
    if ln is None or ln.op_type != "LayerNormalization" or ln.domain not in ("", "ai.onnx") or ln.input[0] != add.output[0]:
        return None
    attrs = {a.name: a for a in ln.attribute}
    axis = attrs["axis"].i if "axis" in attrs else -1
    if axis not in (-1, len(shape) - 1) or ("stash_type" in attrs and attrs["stash_type"].i != 1):
        return None
    if any(o and (g.consumers.get(o) or o in g.outputs or o in g.subgraph_refs) for o in ln.output[1:]):
        return None
    params = [ln.input[i] if len(ln.input) > i else "" for i in (1, 2)]
    for p in params:
        c = g.const(p) if p else None
        if c is not None and (c.dtype != np.float32 or c.shape != (n,)):
            return None
    epsilon = attrs["epsilon"].f if "epsilon" in attrs else 1e-5
    return r, params[0], params[1], epsilon, [add, ln], ln.output[0]


def _scalar_factor(g: _Graph, node, x: str) -> Optional[Tuple[float, str]]:
    """(factor, other input) when ``node`` is ``x * c``, ``c * x`` or ``x / c`` with c a scalar
    constant: the factor x is scaled by, and the tensor scaled."""
    if node is None or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
        return None
    if node.op_type == "Mul":
        for a, b in ((0, 1), (1, 0)):
            c = g.scalar(node.input[b])
            if c is not None and node.input[a] != x:
                return c, node.input[a]
    if node.op_type == "Div":
        c = g.scalar(node.input[1])
        if c is not None and c != 0.0:
            return 1.0 / c, node.input[0]
    return None


def _may_match(a, b) -> bool:
    """Whether dims ``a`` may equal dims ``b``: same rank, and no two known sizes that differ (symbolic
    dims that shape inference could not relate are left to the node's run-time check)."""
    return a is not None and b is not None and len(a) == len(b) and all(
        x == y or isinstance(x, str) or isinstance(y, str) for x, y in zip(a, b))


def _match_attention(g: _Graph, softmax, opset: int):
    """(Q, K^T, V, mask or "", scale, nodes, output) for the attention subgraph around ``softmax``:
    ``MatMul(P, V)`` with ``P = Softmax(MatMul(Q c1, K^T c2) c3 + M)`` over the last axis (any of the
    scalar factors absent; exporters write them in several places), optionally with the NaN guard
    ``Where(IsNaN(P), 0, P)`` that turns rows without any key into zeros; Q, K^T, V and M 4-D, with
    no known sizes that would need a broadcast (but M's); every intermediate read by the subgraph
    alone. None otherwise. Sizes shape inference leaves symbolic are checked by the node at run time."""
    if softmax.domain not in ("", "ai.onnx"):
        return None
    attrs = {a.name: a for a in softmax.attribute}
    axis = attrs["axis"].i if "axis" in attrs else (-1 if opset >= 13 else 1)
    scores_shape = g.shape(softmax.input[0])
    if scores_shape is None or len(scores_shape) != 4 or axis not in (-1, 3):
        return None
    nodes = [softmax]
    x, mask, scale = softmax.input[0], "", 1.0
    add = g.producer.get(x)
    if add is not None and add.op_type == "Add" and add.domain in ("", "ai.onnx") and g.only_consumer(x) is softmax:
        for a, m in ((add.input[0], add.input[1]), (add.input[1], add.input[0])):
            p = g.producer.get(a)
            if p is not None and p.op_type in ("MatMul", "Mul", "Div") and g.only_consumer(a) is add:
                x, mask = a, m
                nodes.append(add)
                break
    user = softmax if not mask else nodes[-1]
    p = g.producer.get(x)
    f = _scalar_factor(g, p, x) if p is not None and g.only_consumer(x) is user else None
    if f is not None:
        scale *= f[0]
        nodes.append(p)
        user, x = p, f[1]
    mm1 = g.producer.get(x)
    if mm1 is None or mm1.op_type != "MatMul" or mm1.domain not in ("", "ai.onnx") or g.only_consumer(x) is not user:
        return None
    nodes.append(mm1)
    operands = []
    for name in mm1.input:
        p = g.producer.get(name)
        f = _scalar_factor(g, p, name) if p is not None and g.only_consumer(name) is mm1 else None
        if f is not None:
            scale *= f[0]
            nodes.append(p)
            name = f[1]
        operands.append(name)
    q, kt = operands
    # The output side, with or without the NaN guard.
    probs = softmax.output[0]
    users = _users(g, probs)
    if users is None:
        return None
    if len(users) == 2 and {u.op_type for u in users} == {"IsNaN", "Where"}:
        isnan = next(u for u in users if u.op_type == "IsNaN")
        where = next(u for u in users if u.op_type == "Where")
        if (g.only_consumer(isnan.output[0]) is not where or list(where.input[::2]) != [isnan.output[0], probs]
                or g.scalar(where.input[1]) != 0.0):
            return None
        nodes += [isnan, where]
        probs = where.output[0]
    mm2 = g.only_consumer(probs)
    if mm2 is None or mm2.op_type != "MatMul" or mm2.domain not in ("", "ai.onnx") or mm2.input[0] != probs:
        return None
    nodes.append(mm2)
    v = mm2.input[1]
    sq, skt, sv = g.shape(q), g.shape(kt), g.shape(v)
    if sq is None or len(sq) != 4 or skt is None or sv is None:
        return None
    b, h, n_q, d = sq
    if not (_may_match(skt, (b, h, d, skt[3])) and _may_match(sv, (b, h, skt[3], d))):
        return None
    if mask:
        sm = g.shape(mask)
        full = (b, h, n_q, skt[3])
        if sm is None or len(sm) != 4 or not all(m == 1 or _may_match((m,), (t,)) for m, t in zip(sm, full)):
            return None
    if not math.isfinite(scale):
        return None
    return q, kt, v, mask, scale, nodes, mm2.output[0]


_VIEW_OPS = ("Reshape", "Transpose")
_MAX_SIMULATED = 1 << 24  # elements of an index array the layout check may build


def _apply_view(g: _Graph, node, a: np.ndarray) -> Optional[np.ndarray]:
    """``a`` after the Reshape / Transpose ``node`` (whose target shape must be a constant), or None."""
    attrs = {x.name: x for x in node.attribute}
    if node.op_type == "Transpose":
        perm = list(attrs["perm"].ints) if "perm" in attrs else list(range(a.ndim))[::-1]
        return a.transpose(perm) if sorted(perm) == list(range(a.ndim)) else None
    shape = g.const(node.input[1]) if len(node.input) > 1 else None
    if shape is None or shape.dtype.kind != "i" or shape.ndim != 1:
        return None
    allowzero = "allowzero" in attrs and attrs["allowzero"].i
    dims = [int(a.shape[i]) if v == 0 and not allowzero and i < a.ndim else int(v) for i, v in enumerate(shape)]
    try:
        return a.reshape(dims)
    except ValueError:
        return None


def _fold_views(g: _Graph, name: str, user, expected_view) -> Optional[Tuple[str, list]]:
    """(source, nodes) when ``name`` is made from ``source`` by a chain of Reshape / Transpose nodes,
    each read only by the next (the last by ``user``), and that chain, run on the index array of
    ``source``'s static shape, gives ``expected_view(source's shape)``; else None."""
    chain, cur = [], name
    while True:
        p = g.producer.get(cur)
        if p is None or p.op_type not in _VIEW_OPS or p.domain not in ("", "ai.onnx") or g.only_consumer(cur) is not user:
            break
        chain.insert(0, p)
        user, cur = p, p.input[0]
    shape = g.shape(cur)
    if not chain or shape is None or not all(isinstance(d, int) for d in shape) or math.prod(shape) > _MAX_SIMULATED:
        return None
    expected = expected_view(shape)
    a = np.arange(math.prod(shape)).reshape(shape)
    for node in chain:
        a = _apply_view(g, node, a)
        if a is None:
            return None
    if expected is None or a.shape != expected.shape or not np.array_equal(a, expected):
        return None
    return cur, chain


def _fold_output_views(g: _Graph, name: str, shape: tuple) -> Optional[Tuple[str, list]]:
    """(output, nodes) when the [B, H, S, D] tensor ``name`` (static ``shape``) feeds a chain of
    Reshape / Transpose nodes, each read only by the next, that merges its heads into [B, S, H D]."""
    b, h, s, d = shape
    if math.prod(shape) > _MAX_SIMULATED:
        return None
    expected = np.arange(b * h * s * d).reshape(b, h, s, d).transpose(0, 2, 1, 3).reshape(b, s, h * d)
    a = np.arange(b * h * s * d).reshape(shape)
    chain, cur = [], name
    while True:
        node = g.only_consumer(cur)
        if node is None or node.op_type not in _VIEW_OPS or node.domain not in ("", "ai.onnx") or node.input[0] != cur:
            return None
        a = _apply_view(g, node, a)
        if a is None:
            return None
        chain.append(node)
        cur = node.output[0]
        if a.shape == expected.shape and np.array_equal(a, expected):
            return cur, chain


def _merged_heads(g: _Graph, match) -> Optional[Tuple[List[str], str, list, int]]:
    """For an attention match whose Q, K^T and V are views of [B, S, H D] tensors (heads split by
    Reshape / Transpose, as exporters write it) and whose output is merged back the same way:
    ([Q, K, V sources], merged output, the view nodes, H). The node then reads and writes the merged
    tensors directly and the views go. None otherwise."""
    q, kt, v, _, _, nodes, out = match
    shape = g.shape(q)
    if shape is None or not all(isinstance(x, int) for x in shape):
        return None
    b, h, _, d = shape

    def split(transposed):
        def view(src):
            if len(src) != 3 or src[2] != h * d or src[0] != b:
                return None
            a = np.arange(math.prod(src)).reshape(b, src[1], h, d)
            return a.transpose(0, 2, 3, 1) if transposed else a.transpose(0, 2, 1, 3)
        return view

    sources, views = [], []
    for name, transposed in ((q, False), (kt, True), (v, False)):
        user = next(n for n in nodes if name in n.input)
        folded = _fold_views(g, name, user, split(transposed))
        if folded is None:
            return None
        sources.append(folded[0])
        views += folded[1]
    folded = _fold_output_views(g, out, (b, h, shape[2], d))
    if folded is None:
        return None
    return sources, folded[0], views + folded[1], h


def convert(
    src,
    dst,
    dtype: str = "int8",
    min_sparsity: float = 0.5,
    format: str = "auto",
    *,
    fuse_norm: bool = True,
    fuse_attention: bool = True,
    external_data: Optional[bool] = None,
    verbose: bool = False,
) -> ConvertReport:
    """Rewrites the ONNX model ``src`` into ``dst`` with its sparse linear layers on sparsecpu kernels.

    Every MatMul whose B, and every Gemm (``transA = 0``) whose B, is a constant 2-D float32
    initializer becomes one ``com.sparsecpu:SparseLinear`` node, together with the bias ``Add`` of a
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
        min_sparsity: layers whose fraction of all-zero 4x1 blocks is below this stay as they are
            (dense kernels in ONNX Runtime beat a sparse kernel on dense weights).
        format: passed to :func:`sparsecpu.pack` for every converted layer: ``"auto"`` (int8
            weights at least ``sparsecpu.formats.AUTO_DENSE_DENSITY`` dense, which only a lowered
            ``min_sparsity`` lets through, run the dense int8 GEMM; the others are block-sparse),
            ``"bsr"`` (4x1 block-sparse) or ``"dense"`` (dense int8; int8 only).
        fuse_norm: fold the residual Add + LayerNormalization described above (default True).
        fuse_attention: replace the attention subgraphs described above (default True).
        external_data: write tensors to ``<dst>.data`` beside ``dst``; default: when ``src`` had
            external data or the model would exceed protobuf's 2 GB limit.
        verbose: print the report.

    Returns:
        A :class:`ConvertReport` (prints as a per-node table).

    ``dst`` runs in ONNX Runtime with the library registered: :func:`sparsecpu.onnx.session`.
    """
    onnx = _need_onnx()
    if dtype not in ("int8", "fp32"):
        raise ValueError(f"dtype must be 'int8' or 'fp32', got {dtype!r}")
    if format not in ("auto", "bsr", "dense"):
        raise ValueError(f"format must be 'auto', 'bsr' or 'dense', got {format!r}")
    if format == "dense" and dtype != "int8":
        raise ValueError("format='dense' needs dtype='int8' (the dense kernel is int8)")
    if isinstance(min_sparsity, bool) or not isinstance(min_sparsity, (int, float)) or not 0.0 <= min_sparsity <= 1.0:
        raise ValueError(f"min_sparsity must be a number in [0, 1], got {min_sparsity!r}")
    src, dst = os.fspath(src), os.fspath(dst)
    if os.path.abspath(src) == os.path.abspath(dst):
        raise ValueError("dst must differ from src (external data files would be overwritten while read)")
    had_external = _has_external_data(onnx, src)
    model = onnx.load(src, load_external_data=True)
    g = _Graph(onnx, model.graph, model)
    reports: List[NodeReport] = []
    remove = set()  # ids of nodes folded into SparseLinear nodes
    new_nodes = {}  # id of the first node of a chain -> its SparseLinear node
    new_inits = []
    packed_by_weight: Dict[str, Tuple[str, str]] = {}  # MatMul weight initializer -> (packed initializer, format)
    touched = set()  # constants the removed nodes read
    report_of = {}  # id of a MatMul/Gemm node left as it is -> its report row
    used_names = set(g.inits) | set(g.producer) | {i.name for i in model.graph.input}

    def fresh(base: str) -> str:
        name, i = base, 1
        while name in used_names:
            name, i = f"{base}_{i}", i + 1
        used_names.add(name)
        return name

    for node in g.nodes:
        if node.op_type not in ("MatMul", "Gemm") or node.domain not in ("", "ai.onnx"):
            continue
        name = node.name or f"{node.op_type}({node.output[0]})"
        w, bias, reason = _linear_of(g, node)
        if w is None:
            reports.append(NodeReport(name, node.op_type, False, reason))
            report_of[id(node)] = reports[-1]
            continue
        n, k = w.shape
        density = _block_density(w)
        rep = NodeReport(name, node.op_type, False, "", (n, k), density)
        reports.append(rep)
        if 1.0 - density < min_sparsity:
            rep.reason = f"sparsity {1 - density:.3f} < min_sparsity {min_sparsity:g}"
            continue
        if dtype == "int8" and k > 65535:
            rep.reason = f"K = {k} > 65535 (int8 accumulation would not be exact)"
            continue
        if not np.isfinite(w).all() or (bias is not None and not np.isfinite(bias).all()):
            rep.reason = "weight or bias holds NaN or Inf"
            continue
        chain = [node]
        y = node.output[0]
        if bias is None:
            m = _match_bias(g, y, n, node.op_type == "Gemm")
            if m is not None:
                bias, add = m
                chain.append(add)
                y = add.output[0]
        act = "none"
        m = _match_activation(g, y)
        if m is not None:
            act, nodes, y = m
            chain += nodes
        norm = _match_residual_norm(g, y, n) if fuse_norm else None
        if norm is not None:
            residual, scale, beta, epsilon, nodes, y = norm
            chain += nodes

        # MatMuls sharing a weight share its packed copy (a Gemm's alpha and transB make its own).
        shared = packed_by_weight.get(node.input[1]) if node.op_type == "MatMul" else None
        if shared is None:
            packed = pack(w, dtype=dtype, format=format)
            shared = (fresh(f"{node.input[1]}.sparsecpu_{dtype}"), packed.format)
            new_inits.append(onnx.numpy_helper.from_array(np.frombuffer(packed.to_bytes(), np.uint8), shared[0]))
            if node.op_type == "MatMul":
                packed_by_weight[node.input[1]] = shared
        packed_name, packed_format = shared
        inputs = [node.input[0], packed_name]
        if bias is not None:
            bias_name = fresh(f"{name}.sparsecpu_bias")
            new_inits.append(onnx.numpy_helper.from_array(np.ascontiguousarray(bias, np.float32), bias_name))
            inputs.append(bias_name)
        attrs = {}
        if norm is not None:
            inputs += [""] * (3 - len(inputs)) + [residual, scale, beta]  # X, W, bias or "", R, Scale, B
            while not inputs[-1]:
                inputs.pop()
            attrs = {"norm": 1, "epsilon": float(epsilon)}
        # In the place of the chain's last node: every input (the residual too) is computed by then.
        new_nodes[id(chain[-1])] = onnx.helper.make_node(
            OP_TYPE, inputs, [y], name=node.name or fresh(name), domain=DOMAIN,
            N=n, K=k, dtype=dtype, format=packed_format, activation=act, **attrs,
        )
        for c in chain:
            remove.add(id(c))
            touched.update(c.input)
        rep.converted = True
        rep.fused = [c.name for c in chain[1:]]
        extras = (["bias"] if bias is not None else []) + ([act] if act != "none" else [])
        extras += ["residual add + LayerNorm"] if norm is not None else []
        rep.reason = f"{packed_format} {dtype}" + (" + " + " + ".join(extras) if extras else "")

    attention = []
    if fuse_attention:
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        for node in g.nodes:
            if node.op_type != "Softmax" or id(node) in remove:
                continue
            m = _match_attention(g, node, opset)
            if m is None or any(id(n) in remove for n in m[5]):
                continue
            q, kt, v, mask, scale, chain, out = m
            name = fresh("sparsecpu_attention")
            merged = _merged_heads(g, m)
            if merged is not None and not any(id(n) in remove for n in merged[2]):
                sources, out, views, heads = merged
                inputs, attrs = sources, {"num_heads": heads}
                chain = chain + views
            else:
                inputs, attrs = [q, kt, v], {"k_transposed": 1}
            inputs += [mask] if mask else []
            # In the place of the chain's last node (the final MatMul, or the view merging its heads):
            # every input is computed by then.
            new_nodes[id(chain[-1])] = onnx.helper.make_node(
                ATTENTION_OP_TYPE, inputs, [out], name=name, domain=DOMAIN, scale=float(scale), **attrs)
            for c in chain:
                remove.add(id(c))
                touched.update(c.input)
            attention.append(name)
            for c in chain:
                rep = report_of.get(id(c))
                if rep is not None:
                    rep.reason = f"part of attention: in {DOMAIN}:{ATTENTION_OP_TYPE} node {name!r}"

    nodes = []
    for node in g.nodes:
        if id(node) in new_nodes:
            nodes.append(new_nodes[id(node)])
        elif id(node) not in remove:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(new_inits)
    if new_nodes:
        _drop_dead(model.graph, touched)
        if not any(o.domain == DOMAIN for o in model.opset_import):
            model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, 1))

    if external_data is None:
        external_data = had_external or model.ByteSize() > _PROTOBUF_LIMIT
    if external_data:
        location = os.path.basename(dst) + ".data"
        if os.path.exists(os.path.join(os.path.dirname(os.path.abspath(dst)), location)):
            os.remove(os.path.join(os.path.dirname(os.path.abspath(dst)), location))
        onnx.save_model(model, dst, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=location, size_threshold=1024)
    else:
        onnx.save_model(model, dst)
    report = ConvertReport(reports, dtype, dst, attention)
    if verbose:
        print(report)
    return report


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
        used = _names_used(graph) | {o.name for o in graph.output}
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
