"""sparsify() running each converted Hugging Face BertLayer in one forward (SparseBertLayer), with
Q, K and V in one kernel call."""

from __future__ import annotations

import copy
import io
import sys

import pytest
import torch

import sparsecpu
from _util import sparsified_pair, token_ids

transformers = pytest.importorskip("transformers")
from transformers.models.bert.modeling_bert import (  # noqa: E402
    BertAttention, BertIntermediate, BertLayer, BertSelfAttention)

from sparsecpu import _bert  # noqa: E402  (imports transformers)
from sparsecpu.nn import SparseBertLayer, SparseLinear, SparseResidualLayerNorm  # noqa: E402


def _model(seed: int, layers: int = 2, mlm: bool = False):
    from transformers import BertConfig, BertForMaskedLM, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=300, hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=64, initializer_range=0.3)
    model = (BertForMaskedLM if mlm else BertModel)(cfg).eval()
    sparsecpu.prune(model, sparsity=0.8, scope="layer")
    return model


def _pair(seed: int = 0, dtype: str = "int8", **kwargs):
    return sparsified_pair(_model(seed, **kwargs), dtype)


def _fused_path_only(monkeypatch) -> None:
    """Makes the forwards the fused path replaces raise (the query, key and value layers' are not
    among them: the MLM head runs a converted layer): a layer that runs one has left it."""
    def refuse(*args, **kwargs):
        raise AssertionError("a replaced forward ran")

    for cls in (BertAttention, BertSelfAttention, BertIntermediate, SparseResidualLayerNorm):
        monkeypatch.setattr(cls, "forward", refuse)


@pytest.mark.parametrize("dtype", ["int8", "fp32"])
def test_sparsify_fuses_layers_and_results_stay_bit_identical(dtype, monkeypatch):
    """Every layer becomes a SparseBertLayer (still a BertLayer, same keys), and the model computes
    exactly what it computes without the fusion: a padded batch (bool mask), an unpadded one (no
    mask), hidden states and the MLM head's logits, none of it through the replaced forwards."""
    fused, plain, report = _pair(dtype=dtype, mlm=True)
    for layer in fused.bert.encoder.layer:
        assert type(layer) is SparseBertLayer and isinstance(layer, BertLayer) and not layer.training
    assert all(type(layer) is BertLayer for layer in plain.bert.encoder.layer)
    rows = {r.name: r.reason for r in report}
    assert rows["bert.encoder.layer.1.attention.self.query"].endswith(
        "; BertLayer fused into one forward (SparseBertLayer)")
    assert list(fused.state_dict()) == list(plain.state_dict())
    ids = token_ids((2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.inference_mode():
        refs = [plain(ids, attention_mask=mask, output_hidden_states=True), plain(ids[:1], output_hidden_states=True)]
        _fused_path_only(monkeypatch)
        outs = [fused(ids, attention_mask=mask, output_hidden_states=True), fused(ids[:1], output_hidden_states=True)]
    for out, ref in zip(outs, refs):
        assert torch.equal(out.logits, ref.logits)
        assert (ref.logits.abs() > 1e-3).float().mean() > 0.5
        assert len(out.hidden_states) == len(ref.hidden_states) == 3
        assert all(torch.equal(a, b) for a, b in zip(out.hidden_states, ref.hidden_states))


def test_layer_call_matches_bertlayer_forward():
    """The fused forward against BertLayer.forward on the same layer: a float mask, a bool mask,
    none, and a strided input."""
    fused, _, _ = _pair(seed=2)
    layer = fused.encoder.layer[0]
    x = torch.randn(6, 2, 64).transpose(0, 1)  # not contiguous
    float_mask = torch.zeros(2, 1, 6, 6)
    float_mask[1, :, :, 4:] = float("-inf")
    bool_mask = torch.ones(2, 1, 6, 6, dtype=torch.bool)
    bool_mask[0, :, :, 5:] = False
    with torch.inference_mode():
        for mask in (float_mask, bool_mask, None):
            a = layer(x, mask)
            b = BertLayer.forward(layer, x, mask)
            assert torch.equal(a, b)
            assert (b.abs() > 1e-3).float().mean() > 0.5


def test_stacked_qkv_follows_the_layers_weights():
    """The stacked Q, K, V weight is rebuilt when a layer's weights change: load_state_dict of
    another model's weights, and an in-place edit of a bias."""
    fused, plain, _ = _pair(seed=3)
    other, other_plain, _ = _pair(seed=4)
    ids = token_ids((1, 7))
    with torch.inference_mode():
        assert torch.equal(fused(ids).last_hidden_state, plain(ids).last_hidden_state)
        fused.load_state_dict(other.state_dict())
        plain.load_state_dict(other.state_dict())
        ref = other_plain(ids).last_hidden_state
        assert torch.equal(fused(ids).last_hidden_state, ref)
        assert torch.equal(plain(ids).last_hidden_state, ref)
    with torch.no_grad():
        for model in (fused, plain):
            model.encoder.layer[1].attention.self.value.bias += 0.5
        assert torch.equal(fused(ids).last_hidden_state, plain(ids).last_hidden_state)
        assert not torch.equal(fused(ids).last_hidden_state, ref)


def test_falls_back_to_bertlayer_forward(monkeypatch):
    """What the fused path does not cover runs BertLayer.forward, with its results and errors: a
    hook on a submodule it skips (the hook sees its call), the deprecated past_key_values argument,
    eager attention set after sparsify, training mode, an input that requires grad."""
    fused, plain, _ = _pair(seed=5)
    ids = token_ids((1, 7))
    seen = []
    hook = fused.encoder.layer[1].attention.self.key.register_forward_hook(lambda *a: seen.append(1))
    with torch.inference_mode():
        ref = plain(ids).last_hidden_state
        assert torch.equal(fused(ids).last_hidden_state, ref)
        assert seen == [1]
        hook.remove()
        layer = fused.encoder.layer[0]
        x = torch.randn(1, 3, 64)
        with pytest.warns(FutureWarning):
            assert torch.equal(layer(x, past_key_values=None), BertLayer.forward(layer, x))
        fused.set_attn_implementation("eager")
        plain.set_attn_implementation("eager")
        assert torch.equal(fused(ids).last_hidden_state, plain(ids).last_hidden_state)
        fused.set_attn_implementation("sparsecpu")
    with pytest.raises(ValueError, match="inference only"):
        layer(torch.randn(1, 3, 64, requires_grad=True))
    ran = []
    forward = BertSelfAttention.forward
    monkeypatch.setattr(BertSelfAttention, "forward", lambda *a, **k: ran.append(1) or forward(*a, **k))
    with torch.no_grad():
        layer(x)
        assert ran == []
        layer.train()
        layer(x)
    assert ran == [1]


def test_not_fused_and_why():
    """A layer sparsify cannot fuse keeps its class, and its query row says why."""
    def reason(model, **kwargs):
        report = sparsecpu.sparsify(model, dtype="int8", **kwargs)
        return {r.name: r.reason for r in report}["encoder.layer.0.attention.self.query"]

    cases = [
        (dict(attention=False), "its attention is not sparsecpu's"),
        (dict(fuse_norm=False), "its output blocks are not both fused with their residual add and LayerNorm"),
        (dict(skip=("encoder.layer.0.attention.self.value",)), "its query, key and value layers are not all converted"),
    ]
    for kwargs, why in cases:
        model = _model(6)
        assert reason(model, **kwargs).endswith(f"; BertLayer NOT fused: {why}")
        assert type(model.encoder.layer[0]) is BertLayer
    model = _model(6)
    report = sparsecpu.sparsify(model, dtype="int8", fuse_block=False)
    assert "BertLayer" not in str(report) and type(model.encoder.layer[0]) is BertLayer


def test_query_key_value_in_different_formats_are_not_stacked():
    """Query, key and value layers whose weights cannot be stacked (here one dense, two block-sparse)
    leave the layer unfused, and the report says why."""
    model = _model(7)
    sa = model.encoder.layer[0].attention.self
    sa.key.weight.data = torch.randn_like(sa.key.weight)  # dense: the measured choice packs it dense int8
    report = sparsecpu.sparsify(model, dtype="int8", min_sparsity=0.5)
    formats = [layer.packed_weight.format for layer in (sa.query, sa.key, sa.value)]
    assert formats == ["bsr", "dense", "bsr"]
    reason = {r.name: r.reason for r in report}["encoder.layer.0.attention.self.query"]
    assert reason.endswith("; BertLayer NOT fused: its query, key and value weights differ in format, dtype or "
                           "outlier threshold")
    assert type(model.encoder.layer[0]) is BertLayer and type(model.encoder.layer[1]) is SparseBertLayer


def test_what_cannot_be_stacked_says_why():
    """The stacking check itself: layers of another output size, bias or activation, and outputs
    that do not fill the format's channel tiles."""
    def layer(n, bias=True, activation=None):
        linear = torch.nn.Linear(64, n, bias=bias)
        return SparseLinear.from_linear(linear, dtype="int8", format="bsr", activation=activation)

    assert _bert._stackable((layer(8), layer(8), layer(8))) is None
    assert _bert._stackable((layer(8), layer(12), layer(8))) == "its query, key and value layers differ in output size"
    assert _bert._stackable((layer(6), layer(6), layer(6))) == "its query, key and value outputs are not a multiple of 4"
    why = "its query, key and value layers differ in bias or carry an activation"
    assert _bert._stackable((layer(8), layer(8, bias=False), layer(8))) == why
    assert _bert._stackable((layer(8), layer(8), layer(8, activation="relu"))) == why


def test_another_transformers_version_is_left_alone(monkeypatch):
    """BERT code other than the one checked (a transformers release that rewrites it) keeps its
    layers, and the report names the version."""
    monkeypatch.setitem(_bert._VERIFIED, BertSelfAttention, set())
    model = _model(8)
    report = sparsecpu.sparsify(model, dtype="int8")
    reason = {r.name: r.reason for r in report}["encoder.layer.0.attention.self.query"]
    assert reason.endswith(f"; BertLayer NOT fused: BertSelfAttention.forward of transformers "
                           f"{transformers.__version__} is not the code sparsecpu verified (transformers 5.24-5.25)")
    assert type(model.encoder.layer[0]) is BertLayer


def test_a_transformers_without_what_the_fused_layer_imports_is_left_alone(monkeypatch):
    """If the fused layer's module cannot be imported (a transformers release without the names it
    imports), sparsify keeps the layers and says why instead of failing."""
    monkeypatch.setitem(sys.modules, "sparsecpu._bert", None)
    model = _model(12)
    report = sparsecpu.sparsify(model, dtype="int8")
    reason = {r.name: r.reason for r in report}["encoder.layer.0.attention.self.query"]
    assert "; BertLayer NOT fused: transformers lacks what it needs (" in reason
    assert type(model.encoder.layer[0]) is BertLayer


def test_installed_transformers_is_a_verified_version():
    """The transformers the tests install is one whose BERT code the fused forward reproduces (a new
    release that changes it fails here, not silently in the speed)."""
    assert _bert.fusable(_pair(seed=9)[1].encoder.layer[0]) is None


def test_save_load_and_deepcopy_keep_the_fused_layers():
    fused, plain, _ = _pair(seed=10)
    ids = token_ids((1, 5))
    with torch.inference_mode():
        ref = plain(ids).last_hidden_state
        assert torch.equal(fused(ids).last_hidden_state, ref)  # builds the stacked weight first
    buf = io.BytesIO()
    torch.save(fused, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    with torch.inference_mode():
        for model in (loaded, copy.deepcopy(fused)):
            assert type(model.encoder.layer[0]) is SparseBertLayer
            assert torch.equal(model(ids).last_hidden_state, ref)


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_torch_compile_runs_bertlayer_forward():
    """Under torch.compile the fused layers trace BertLayer.forward, with sparsecpu's ops as nodes."""
    fused, plain, _ = _pair(seed=11)
    ids = token_ids((1, 9))
    with torch.inference_mode():
        ref = plain(ids).last_hidden_state
        y = torch.compile(fused)(ids).last_hidden_state
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
