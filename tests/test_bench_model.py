"""The model benchmark (sparsecpu.bench.model) on tiny transformers configs: loading, 4x1 pruning,
the torch int8 baseline for GPT-2's Conv1D, forward and generate() records, ONNX Runtime rows, one
worker process per row."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

import _util

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import sparsecpu  # noqa: E402
from sparsecpu.bench import _ort  # noqa: E402
from sparsecpu.bench import model as model_bench  # noqa: E402
from sparsecpu.bench import workers  # noqa: E402

HAVE_ORT = _ort.missing() is None


def _blocks(w: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(_util.kept_blocks(w))


def _tiny(kind: str, path):
    if kind == "bert":
        cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=64, vocab_size=97, max_position_embeddings=64)
    else:
        cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=97, n_positions=64,
                                      bos_token_id=0, eos_token_id=0)
    cfg.save_pretrained(str(path))
    return str(path)


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_prune_4x1_prunes_linear_layers_in_blocks(kind, tmp_path):
    from transformers.pytorch_utils import Conv1D

    m, _, causal = model_bench.load_model(_tiny(kind, tmp_path))
    assert causal == (kind == "gpt2")
    n_layers = model_bench.prune_4x1_(m, 0.75)
    assert n_layers == (13 if kind == "bert" else 8)
    for name, mod in m.named_modules():
        if isinstance(mod, (torch.nn.Linear, Conv1D)):
            w = mod.weight.detach().t() if isinstance(mod, Conv1D) else mod.weight.detach()
            kept = _blocks(w)
            if name == "lm_head":  # tied to the token embedding: stays dense
                assert bool(kept.all())
            else:
                assert int((~kept).sum()) == round(0.75 * kept.numel()), name


def test_conv1d_as_linear_keeps_the_output(tmp_path):
    m, _, _ = model_bench.load_model(_tiny("gpt2", tmp_path))
    ids = torch.randint(0, 97, (2, 7))
    with torch.inference_mode():
        before = m(input_ids=ids).logits
        model_bench._conv1d_as_linear_(m)
        after = m(input_ids=ids).logits
    assert not any(type(mod).__name__ == "Conv1D" for mod in m.modules())
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_load_model_rejects_unknown_names(tmp_path):
    with pytest.raises(ValueError, match="bert-base"):
        model_bench.load_model("bert-huge")
    with pytest.raises(ValueError, match="config.json"):
        model_bench.load_model(str(tmp_path))


def _check_model_record(r):
    for key in ("op", "model", "impl", "dtype", "format", "M", "N", "K", "sparsity", "threads", "median_s",
                "p10_s", "p90_s", "repeat", "tokens_per_s", "speedup", "error", *workers.FACT_KEYS):
        assert key in r, key
    if r["error"] is None:
        assert 0 < r["p10_s"] <= r["median_s"] <= r["p90_s"] and r["tokens_per_s"] > 0
    else:
        assert r["median_s"] is None


def _check_workers(recs, threads):
    """Each row ran in a worker of its own at the threads asked, with this process's environment."""
    pids = {}
    for r in recs:
        pids.setdefault(r["impl"], set()).add(r["pid"])
        assert r["env"] == workers.relevant_env()
        assert ("OMP_WAIT_POLICY" in r["env"]) == ("OMP_WAIT_POLICY" in os.environ)
        if "ort" in r["impl"]:  # ONNX Runtime rows: the session's threads; no torch in that process
            assert r["ort_intra_op_threads"] == threads and r["torch_threads"] is None
        else:
            assert r["torch_threads"] == threads and r["ort_intra_op_threads"] is None
            assert isinstance(r["torch_interop_threads"], int)
        if r["impl"].startswith("sparsecpu_torch_"):
            assert r["sparsecpu_threads"] == threads and r["sparsecpu_threading"] == sparsecpu.info()["threading"]
    assert all(len(p) == 1 for p in pids.values()), pids  # forward and generate(): the same worker
    assert len({p for ps in pids.values() for p in ps} | {os.getpid()}) == len(pids) + 1


def _fp32_sparsify_fails():
    """A worker initializer: ``sparsecpu.sparsify(..., dtype="fp32")`` raises."""
    real = sparsecpu.sparsify

    def sparsify(model, dtype="int8", **kw):
        if dtype == "fp32":
            raise RuntimeError("injected failure")
        return real(model, dtype=dtype, **kw)

    sparsecpu.sparsify = sparsify


def test_model_bench_gpt2_forward_and_generate(tmp_path):
    wanted = ["torch_fp32", "torch_dynamic_int8", "sparsecpu_torch_fp32", "sparsecpu_torch_int8"]
    lines = []
    recs = model_bench.run_model_bench(_tiny("gpt2", tmp_path), sparsity=0.5, seq=6, batch=2, threads=1, repeat=2,
                                       prompt=3, new_tokens=4, impls=wanted, progress=lines.append,
                                       initializer=_fp32_sparsify_fails)
    assert [(r["op"], r["impl"]) for r in recs] == [("model", n) for n in wanted] + [("generate", n) for n in wanted]
    for r in recs:
        _check_model_record(r)
    _check_workers(recs, threads=1)
    # A row that fails says why; the others run.
    for r in recs:
        assert (r["error"] is None) == (r["impl"] != "sparsecpu_torch_fp32"), r
    assert [r["error"] for r in recs if r["impl"] == "sparsecpu_torch_fp32"] == ["RuntimeError: injected failure"] * 2
    assert any("sparsecpu torch fp32 not run: RuntimeError: injected failure" in line for line in lines)
    fwd = {r["impl"]: r for r in recs if r["op"] == "model"}
    gen = {r["impl"]: r for r in recs if r["op"] == "generate"}
    assert fwd["torch_fp32"]["M"] == 12 and fwd["torch_fp32"]["speedup"] == 1.0
    assert fwd["torch_fp32"]["cosine"] == pytest.approx(1.0)
    assert fwd["torch_dynamic_int8"]["cosine"] > 0.98  # its Conv1D layers really are quantized and still right
    assert fwd["torch_fp32"]["tokens_per_s"] == pytest.approx(12 / fwd["torch_fp32"]["median_s"])
    assert gen["torch_fp32"]["new_tokens"] == 4 and gen["torch_fp32"]["prompt_tokens"] == 3
    assert gen["torch_fp32"]["tokens_per_s"] == pytest.approx(4 / gen["torch_fp32"]["median_s"])
    assert fwd["sparsecpu_torch_int8"]["error"] is None and fwd["sparsecpu_torch_int8"]["cosine"] > 0.98
    assert gen["sparsecpu_torch_int8"]["tokens_per_s"] > 0
    table = model_bench.model_table(recs)
    assert "forward pass" in table and "generate()" in table and "torch qdynamic int8" in table
    assert "not run: sparsecpu torch fp32: RuntimeError: injected failure" in table
    assert any("pruned" in line for line in lines)
    with pytest.raises(ValueError, match="unknown model implementations"):
        model_bench.run_model_bench(_tiny("gpt2", tmp_path), impls=["onnx"])


@pytest.mark.skipif(not HAVE_ORT, reason="onnx / onnxruntime not installed")
def test_model_bench_bert_in_onnx_runtime(tmp_path):
    wanted = ["torch_fp32", "ort_fp32", "ort_dynamic_int8", "sparsecpu_ort_int8"]
    recs = model_bench.run_model_bench(_tiny("bert", tmp_path), sparsity=0.5, seq=8, threads=1, repeat=2, impls=wanted)
    assert [r["impl"] for r in recs] == wanted and all(r["op"] == "model" for r in recs)
    by = {r["impl"]: r for r in recs}
    for r in recs:
        _check_model_record(r)
        assert r["error"] is None, r["error"]
    _check_workers(recs, threads=1)
    # The exported graph computes what the torch model does; ORT's int8 form stays close.
    assert by["ort_fp32"]["cosine"] > 0.9999
    assert by["ort_dynamic_int8"]["cosine"] > 0.95
    assert by["sparsecpu_ort_int8"]["cosine"] > 0.98
    assert not math.isnan(by["ort_fp32"]["speedup"])
    md = model_bench.model_table(recs, markdown=True)
    assert "| ORT fp32" in md and np.isfinite(by["ort_fp32"]["sequences_per_s"])
