"""sparsify() running each converted Hugging Face GPT2Block in one forward (SparseGPT2Block)."""

from __future__ import annotations

import copy
import io

import pytest
import torch

import sparsecpu
from _util import sparsified_pair, token_ids

transformers = pytest.importorskip("transformers")
from transformers.models.gpt2.modeling_gpt2 import GPT2Attention, GPT2Block  # noqa: E402

from sparsecpu import _gpt2  # noqa: E402  (imports transformers)
from sparsecpu.nn import SparseGPT2Block  # noqa: E402


def _model(seed: int, layers: int = 2, **config):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=300, n_embd=64, n_layer=layers, n_head=4, n_positions=64, bos_token_id=0,
                     eos_token_id=1, initializer_range=0.3, **config)
    model = GPT2LMHeadModel(cfg).eval()
    sparsecpu.prune(model, sparsity=0.8, scope="layer")
    return model


def _pair(seed: int = 0, dtype: str = "int8", **kwargs):
    return sparsified_pair(_model(seed, **kwargs), dtype)


def _fused_path_only(monkeypatch) -> None:
    """Makes GPT2Attention.forward raise: a block that runs it has left the fused path."""
    def refuse(*args, **kwargs):
        raise AssertionError("GPT2Attention.forward ran")

    monkeypatch.setattr(GPT2Attention, "forward", refuse)


@pytest.mark.parametrize("dtype", ["int8", "fp32"])
def test_sparsify_fuses_blocks_and_results_stay_bit_identical(dtype, monkeypatch):
    """Every block becomes a SparseGPT2Block (still a GPT2Block, same keys), and the model computes
    exactly what it computes without the fusion: a padded batch's forward, hidden states, and
    generate() with its KV cache (dynamic, and static), token for token and logit for logit, none of
    it through GPT2Attention.forward."""
    fused, plain, report = _pair(dtype=dtype)
    for block in fused.transformer.h:
        assert type(block) is SparseGPT2Block and isinstance(block, GPT2Block) and not block.training
    assert all(type(b) is GPT2Block for b in plain.transformer.h)
    rows = {r.name: r.reason for r in report}
    assert rows["transformer.h.1.attn.c_attn"].endswith("; GPT2Block fused into one forward (SparseGPT2Block)")
    assert list(fused.state_dict()) == list(plain.state_dict())
    ids = token_ids((2, 9))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding: a mask reaches the attention
    gen = dict(max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=1, output_scores=True,
               return_dict_in_generate=True)
    with torch.inference_mode():
        ref = plain(ids, attention_mask=mask, output_hidden_states=True)
        calls = [dict(input_ids=ids[:1]), dict(input_ids=ids, attention_mask=mask),
                 dict(input_ids=ids, attention_mask=mask, cache_implementation="static")]
        ref_gen = [plain.generate(**call, **gen) for call in calls]
        _fused_path_only(monkeypatch)
        out = fused(ids, attention_mask=mask, output_hidden_states=True)
        out_gen = [fused.generate(**call, **gen) for call in calls]
    assert torch.equal(out.logits, ref.logits)
    assert (ref.logits.abs() > 1e-3).float().mean() > 0.5
    assert len(out.hidden_states) == len(ref.hidden_states) == 3
    assert all(torch.equal(a, b) for a, b in zip(out.hidden_states, ref.hidden_states))
    for a, b in zip(out_gen, ref_gen):
        assert torch.equal(a.sequences, b.sequences)
        assert all(torch.equal(x, y) for x, y in zip(a.scores, b.scores))


def test_block_call_matches_gpt2block_forward():
    """The fused forward against GPT2Block.forward on the same block, for a prefill with a float
    mask and a decode step on the cache it left; a strided input too."""
    from transformers import DynamicCache

    fused, _, _ = _pair(seed=2)
    block = fused.transformer.h[0]
    x = torch.randn(2, 6, 64)
    mask = torch.zeros(2, 1, 6, 6)
    mask[:, :, torch.triu(torch.ones(6, 6, dtype=torch.bool), 1)] = float("-inf")
    caches = [DynamicCache(), DynamicCache()]
    step = torch.randn(6, 2, 64).transpose(0, 1)[:, :1]  # not contiguous
    with torch.inference_mode():
        a = block(x, caches[0], mask, use_cache=True)
        b = GPT2Block.forward(block, x, caches[1], mask, use_cache=True)
        assert torch.equal(a, b)
        a = block(step, caches[0], None, use_cache=True)
        b = GPT2Block.forward(block, step, caches[1], None, use_cache=True)
    assert torch.equal(a, b)
    assert caches[0].get_seq_length() == caches[1].get_seq_length() == 7


def test_falls_back_to_gpt2block_forward():
    """What the fused path does not cover runs GPT2Block.forward, with its results and errors:
    a hook on a submodule it skips (the hook sees its call), eager attention set after
    sparsify, the deprecated past_key_values argument, an input that requires grad."""
    fused, plain, _ = _pair(seed=3)
    ids = token_ids((1, 7))
    seen = []
    hook = fused.transformer.h[1].attn.register_forward_hook(lambda *a: seen.append(1))
    with torch.inference_mode():
        ref = plain(ids).logits
        assert torch.equal(fused(ids).logits, ref)
        assert seen == [1]
        hook.remove()
        fused.set_attn_implementation("eager")
        plain.set_attn_implementation("eager")
        assert torch.equal(fused(ids).logits, plain(ids).logits)
        x = torch.randn(1, 3, 64)
        block = fused.transformer.h[0]
        with pytest.warns(FutureWarning):
            assert torch.equal(block(x, past_key_values=None), GPT2Block.forward(block, x))
    with pytest.raises(ValueError, match="inference only"):
        block(torch.randn(1, 3, 64, requires_grad=True))


def test_not_fused_and_why():
    """A block sparsify cannot fuse keeps its class, and its c_attn row says why."""
    def reason(model, **kwargs):
        report = sparsecpu.sparsify(model, dtype="int8", **kwargs)
        return {r.name: r.reason for r in report}["transformer.h.0.attn.c_attn"]

    cases = [
        (dict(attention=False), "its attention is not sparsecpu's"),
        (dict(fuse_mlp=False), "its MLP block is not chained"),
        (dict(skip=("transformer.h.0.attn.c_proj",)), "its attention layers are not both converted"),
    ]
    for kwargs, why in cases:
        model = _model(4)
        assert reason(model, **kwargs).endswith(f"; GPT2Block NOT fused: {why}")
        assert type(model.transformer.h[0]) is GPT2Block
    model = _model(4)
    report = sparsecpu.sparsify(model, dtype="int8", fuse_block=False)
    assert "GPT2Block" not in str(report) and type(model.transformer.h[0]) is GPT2Block


def test_another_transformers_version_is_left_alone(monkeypatch):
    """GPT-2 code other than the one checked (a transformers release that rewrites it) keeps its
    blocks, and the report names the version."""
    monkeypatch.setitem(_gpt2._VERIFIED, GPT2Block, set())
    model = _model(5)
    report = sparsecpu.sparsify(model, dtype="int8")
    reason = {r.name: r.reason for r in report}["transformer.h.0.attn.c_attn"]
    assert reason.endswith(f"; GPT2Block NOT fused: GPT2Block.forward of transformers {transformers.__version__} "
                           "is not the code sparsecpu verified (transformers 5.24-5.25)")
    assert type(model.transformer.h[0]) is GPT2Block


def test_installed_transformers_is_a_verified_version():
    """The transformers the tests install is one whose GPT-2 code the fused forward reproduces (a
    new release that changes it fails here, not silently in the speed)."""
    assert _gpt2.fusable(_pair(seed=6)[1].transformer.h[0]) is None


def test_save_load_and_deepcopy_keep_the_fused_blocks():
    fused, plain, _ = _pair(seed=7)
    buf = io.BytesIO()
    torch.save(fused, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    ids = token_ids((1, 5))
    with torch.inference_mode():
        ref = plain(ids).logits
        for model in (loaded, copy.deepcopy(fused)):
            assert type(model.transformer.h[0]) is SparseGPT2Block
            assert torch.equal(model(ids).logits, ref)


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_torch_compile_runs_gpt2block_forward():
    """Under torch.compile the fused blocks trace GPT2Block.forward, with sparsecpu's ops as nodes."""
    fused, plain, _ = _pair(seed=8)
    ids = token_ids((1, 9))
    with torch.inference_mode():
        ref = plain(ids).logits
        y = torch.compile(fused)(ids).logits
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
