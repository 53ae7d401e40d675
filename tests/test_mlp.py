"""sparsecpu.nn.SparseMLP, and sparsify() chaining the two layers of GPT-2-style MLP blocks."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import sparsecpu
from sparsecpu.nn import SparseLinear, SparseMLP

transformers = pytest.importorskip("transformers")


def _gpt2(seed: int, layers: int = 2):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=300, n_embd=64, n_layer=layers, n_head=4, n_positions=64, bos_token_id=0,
                     eos_token_id=1, initializer_range=0.3)
    model = GPT2LMHeadModel(cfg).eval()
    sparsecpu.prune(model, sparsity=0.8, scope="layer")
    return model


def _mlp(seed: int, act: str = "gelu_tanh", dropout: float = 0.0) -> SparseMLP:
    torch.manual_seed(seed)
    c_fc = SparseLinear.from_linear(nn.Linear(24, 40), dtype="int8", activation=act)
    c_proj = SparseLinear.from_linear(nn.Linear(40, 24), dtype="int8")
    return SparseMLP(c_fc, nn.Identity(), c_proj, nn.Dropout(dropout)).eval()


@pytest.mark.parametrize("dtype", ["int8", "fp32"])
def test_sparsify_chains_gpt2_mlp_blocks(dtype):
    """Every MLP block becomes a SparseMLP with the block's children and keys, and the model
    computes exactly what it computes without the chaining: forward and generate()."""
    pruned = _gpt2(0)
    chained, plain = copy.deepcopy(pruned), copy.deepcopy(pruned)
    report = sparsecpu.sparsify(chained, dtype=dtype)
    sparsecpu.sparsify(plain, dtype=dtype, fuse_mlp=False)
    for block_c, block_p in zip(chained.transformer.h, plain.transformer.h):
        assert isinstance(block_c.mlp, SparseMLP) and not block_c.mlp.training
        assert type(block_p.mlp).__name__ == "GPT2MLP"
    rows = {r.name: r.reason for r in report}
    assert rows["transformer.h.1.mlp.c_fc"].endswith("gelu_tanh fused; MLP block chained with c_proj")
    assert "chained" not in rows["transformer.h.1.mlp.c_proj"]
    assert list(chained.state_dict()) == list(plain.state_dict())
    ids = torch.randint(2, 300, (2, 9), generator=torch.Generator().manual_seed(1))
    kw = dict(max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=1)
    with torch.inference_mode():
        y, ref = chained(ids).logits, plain(ids).logits
        assert torch.equal(y, ref)
        assert (ref.abs() > 1e-3).float().mean() > 0.5
        assert torch.equal(chained.generate(ids[:1], **kw), plain.generate(ids[:1], **kw))


def test_sparsify_leaves_blocks_it_cannot_chain():
    """No chaining when a layer stays torch's (skipped), or with fuse_mlp=False."""
    model = _gpt2(1)
    report = sparsecpu.sparsify(model, dtype="int8", skip=("transformer.h.0.mlp.c_proj",))
    assert type(model.transformer.h[0].mlp).__name__ == "GPT2MLP"
    assert isinstance(model.transformer.h[1].mlp, SparseMLP)
    assert {r.name: r.reason for r in report}["transformer.h.0.mlp.c_fc"].endswith(
        "; MLP block NOT chained: c_proj is not converted")


def test_sparsify_says_why_a_changed_block_is_not_chained():
    """A GPT-2 MLP block whose forward differs from the known one (as after a transformers release
    that rewrites it) keeps running as it is, and the report says so."""
    from transformers.models.gpt2.modeling_gpt2 import GPT2MLP

    class ScaledMLP(GPT2MLP):
        def forward(self, hidden_states):
            return 0.5 * self.dropout(self.c_proj(self.act(self.c_fc(hidden_states))))

    model = _gpt2(3)
    old = model.transformer.h[1].mlp
    new = ScaledMLP(old.c_fc.nf, model.config).eval()
    new.load_state_dict(old.state_dict())
    model.transformer.h[1].mlp = new
    ids = torch.randint(2, 300, (1, 9))
    with torch.inference_mode():
        ref = model(ids).logits
    report = sparsecpu.sparsify(model, dtype="fp32", min_sparsity=0.0)
    reasons = {r.name: r.reason for r in report}
    assert reasons["transformer.h.1.mlp.c_fc"].endswith(
        "; MLP block NOT chained: ScaledMLP.forward is not dropout(c_proj(act(c_fc(h))))")
    assert reasons["transformer.h.0.mlp.c_fc"].endswith("; MLP block chained with c_proj")
    assert type(model.transformer.h[1].mlp) is ScaledMLP and isinstance(model.transformer.h[0].mlp, SparseMLP)
    with torch.inference_mode():
        torch.testing.assert_close(model(ids).logits, ref, rtol=1e-4, atol=1e-4)


def test_module_is_the_two_layers_in_a_row():
    mlp = _mlp(2)
    for x in (torch.randn(24), torch.randn(1, 1, 24), torch.randn(3, 5, 24), torch.randn(48, 7).t()[..., :24]):
        with torch.no_grad():
            assert torch.equal(mlp(x), mlp.c_proj(mlp.c_fc(x)))


def test_module_falls_back_to_the_steps_one_by_one():
    """An activation module that is not the identity, an active dropout in training mode and
    a float64 input each take the unchained path, with its result."""
    mlp = _mlp(3, act=None)
    mlp.act = nn.ReLU()
    x = torch.randn(4, 24)
    with torch.no_grad():
        assert torch.equal(mlp(x), mlp.c_proj(torch.relu(mlp.c_fc(x))))
        dropping = _mlp(4, dropout=0.5).train()
        torch.manual_seed(5)
        y = dropping(x)
        torch.manual_seed(5)
        assert torch.equal(y, dropping.dropout(dropping.c_proj(dropping.c_fc(x))))
        assert (y == 0).any()
    with pytest.raises(TypeError, match="float32"):
        mlp(x.double())


def test_module_bad_input_and_construction():
    mlp = _mlp(6)
    with torch.no_grad(), pytest.raises(ValueError, match=r"shape \[\.\.\., 24\]"):
        mlp(torch.randn(3, 23))
    with pytest.raises(ValueError, match="inference only"):
        mlp(torch.randn(3, 24, requires_grad=True))
    with pytest.raises(TypeError, match="SparseLinear"):
        SparseMLP(nn.Linear(24, 40), nn.Identity(), mlp.c_proj)
    with pytest.raises(ValueError, match="c_proj takes 40 features, c_fc gives 24"):
        SparseMLP(mlp.c_proj, nn.Identity(), mlp.c_proj)


# Inductor itself uses a deprecated torch.jit API when it loads.
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_torch_compile_runs_the_two_ops():
    mlp = _mlp(7)
    x = torch.randn(5, 24)
    with torch.no_grad():
        ep = torch.export.export(mlp, (x,))
        targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
        assert targets.count(torch.ops.sparsecpu.linear.default) == 2
        compiled = torch.compile(mlp, fullgraph=True)
        assert torch.equal(compiled(x), mlp(x))
