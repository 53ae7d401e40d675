"""The ONNX graph patterns ``sparsecpu.onnx.convert`` rewrites, and the index of a graph they are
matched on.

Each ``match_*`` function looks at the nodes around one value and returns what it found (the nodes
and the values the replacement node needs) or None; none of them changes the graph. ``linear_of``
reads a MatMul/Gemm's weight and bias; ``match_bias``, ``match_activation`` and
``match_residual_norm`` the chain a ``SparseLinear`` node can take in after it (bias Add; Relu, Gelu or
GELU written out as Erf or Tanh; residual Add + LayerNormalization); ``match_attention`` the
``MatMul(Softmax(MatMul(Q, K^T) * scale + M), V)`` subgraph, and ``merged_heads`` the Reshape /
Transpose views around it that the ``Attention`` node can fold.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import List, Optional, Tuple

import numpy as np

__all__ = ["Graph", "names_used", "linear_of", "match_bias", "match_activation", "match_residual_norm",
           "match_attention", "merged_heads"]


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


class Graph:
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
                    self.subgraph_refs |= names_used(g)
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


def names_used(graph) -> set:
    used = set()
    for node in graph.node:
        used.update(node.input)
        for a in node.attribute:
            for g in list(a.g.ListFields() and [a.g]) + list(a.graphs):
                used |= names_used(g)
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


def _follow(g: Graph, name: str, op_type: str, const: Optional[float] = None, other: Optional[str] = None):
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


def _half_product(g: Graph, y: str, a: str, user):
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


def _users(g: Graph, y: str) -> Optional[list]:
    """The nodes reading ``y``, or None if a graph output or a subgraph reads it too."""
    if y in g.outputs or y in g.subgraph_refs:
        return None
    return g.consumers.get(y, [])


def _match_erf_gelu(g: Graph, y: str):
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


def _match_tanh_gelu(g: Graph, y: str):
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


def match_activation(g: Graph, y: str):
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


def linear_of(g: Graph, node) -> Tuple[Optional[np.ndarray], Optional[np.ndarray], str]:
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


def match_bias(g: Graph, y: str, n: int, rank2: bool):
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


def match_residual_norm(g: Graph, y: str, n: int):
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


def _scalar_factor(g: Graph, node, x: str) -> Optional[Tuple[float, str]]:
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


def match_attention(g: Graph, softmax, opset: int):
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


def _apply_view(g: Graph, node, a: np.ndarray) -> Optional[np.ndarray]:
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


def _fold_views(g: Graph, name: str, user, expected_view) -> Optional[Tuple[str, list]]:
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


def _fold_output_views(g: Graph, name: str, shape: tuple) -> Optional[Tuple[str, list]]:
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


def merged_heads(g: Graph, match) -> Optional[Tuple[List[str], str, list, int]]:
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
