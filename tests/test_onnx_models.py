"""Whole models: small-config BERT and GPT-2 from ``transformers``, pruned in 4x1 blocks, exported
with ``torch.onnx.export``, converted, run in ONNX Runtime and compared with the original graph."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest

import sparsecpu
import sparsecpu.onnx
from _onnx_util import op_types

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SEQ = 16
VOCAB = 96


def prune_model_(model, sparsity: float) -> int:
    """Prunes every nn.Linear (N x K) and GPT-2 Conv1D (K x N: pruned on its transpose) except the
    tied LM head and BERT's pooler (not part of the exported output); gives every bias random values (fresh models have zero biases, which would leave
    the bias path untested). Returns how many weights were pruned."""
    masks = sparsecpu.prune(model, sparsity=sparsity, scope="layer", skip=("lm_head", "*pooler*"))
    with torch.no_grad():
        for name in masks:
            bias = model.get_submodule(name).bias
            if bias is not None:
                bias.normal_(0.0, 0.5)
    return len(masks)


class _Logits(torch.nn.Module):
    """The first output of a Hugging Face model called with ``input_ids`` only, without a KV cache."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids=input_ids, use_cache=False, return_dict=False)[0]


def export(model, path, dynamo: bool) -> str:
    wrapped = _Logits(model).eval()
    ids = torch.randint(0, VOCAB, (1, SEQ))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(wrapped, (ids,), str(path), input_names=["input_ids"], dynamo=True, verbose=False)
        else:
            torch.onnx.export(wrapped, (ids,), str(path), input_names=["input_ids"], dynamo=False, opset_version=17,
                              dynamic_axes={"input_ids": {0: "batch", 1: "seq"}})
    return str(path)


def bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, max_position_embeddings=64, hidden_act="gelu")
    return transformers.BertModel(cfg).eval()


def gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64)
    return transformers.GPT2LMHeadModel(cfg).eval()


CASES = {
    # name: (model factory, dynamo exporter?, linear layers converted, of which with fused GELU)
    # Every case's 2 attention subgraphs become com.sparsecpu:Attention nodes.
    "bert-torchscript": (bert, False, 12, 2),
    "bert-dynamo": (bert, True, 12, 2),
    "gpt2-dynamo": (gpt2, True, 8, 0),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def exported(request, tmp_path_factory):
    factory, dynamo, n_converted, n_gelu = CASES[request.param]
    model = factory()
    assert prune_model_(model, 0.9) == n_converted
    path = export(model, tmp_path_factory.mktemp(request.param) / "model.onnx", dynamo)
    ids = np.random.default_rng(0).integers(0, VOCAB, (1, SEQ)).astype(np.int64)
    with torch.no_grad():
        torch_out = model(input_ids=torch.from_numpy(ids), use_cache=False, return_dict=False)[0].numpy()
    return request.param, path, ids, torch_out, n_converted, n_gelu


def _cosine(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_pruned_model_converted_and_compared(exported, dtype, tmp_path):
    name, src, ids, torch_out, n_converted, n_gelu = exported
    dst = str(tmp_path / "sparse.onnx")
    report = sparsecpu.onnx.convert(src, dst, dtype=dtype)
    converted = report.converted
    sparse = [r for r in converted if r.layout.format == "bsr"]
    assert len(sparse) == n_converted and all(r.density <= 0.11 for r in sparse), str(report)
    # An unpruned weight (GPT-2's tied LM head) runs dense int8, as sparsify runs it, or stays fp32.
    unpruned = [r for r in report.nodes if r.shape and r not in sparse]
    assert all(r.density > 0.9 and r.converted == (dtype == "int8") for r in unpruned), str(report)
    assert sum(r.reason.split("; ")[0].endswith("gelu") for r in converted) == n_gelu, str(report)
    assert op_types(dst).count("SparseLinear") == len(converted)
    assert len(report.attention) == op_types(dst).count("Attention") == 2 and "Softmax" not in op_types(dst)
    # The original dense weights are gone from the converted model.
    src_bytes = sum(t.ByteSize() for t in onnx.load(src).graph.initializer)
    dst_bytes = sum(t.ByteSize() for t in onnx.load(dst).graph.initializer)
    assert dst_bytes < src_bytes

    ref = sparsecpu.onnx.session(src, threads=2).run(None, {"input_ids": ids})[0]
    np.testing.assert_allclose(ref, torch_out, rtol=1e-4, atol=1e-4)
    out = sparsecpu.onnx.session(dst, threads=2).run(None, {"input_ids": ids})[0]
    assert out.shape == ref.shape
    if dtype == "fp32":
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    else:
        assert _cosine(out, ref) > 0.995
        assert np.abs(out - ref).max() < 0.1 * np.abs(ref).max()
    res = sparsecpu.onnx.verify(src, dst, feeds={"input_ids": ids})
    (r,) = res.values()
    assert r["cosine"] > (0.99999 if dtype == "fp32" else 0.995)
