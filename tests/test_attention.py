"""sparsecpu's attention: the kernel at every ISA level against float64 numpy (shapes around the
6-row and 16-column tiles, masks, strided layouts, threads), the sparsecpu::attention op, and the
"sparsecpu" attention implementation sparsify() gives Hugging Face models."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import _util
import sparsecpu
import sparsecpu.nn  # registers the torch ops
from sparsecpu import _C, testing

LEVELS = testing.levels()

PARAMS = {
    "b": [1, 2],
    "h": [1, 3, 12],
    "sq": [1, 5, 6, 7, 13, 128],
    "skv": [1, 7, 16, 17, 130],
    "d": [1, 8, 16, 24, 64, 72],
    # none; bool per (batch, query, key); bool per key only (padding); float per (head, query, key);
    # bool with the last query row masked everywhere
    "mask": ["none", "bool", "bool_keys", "float", "bool_empty_row"],
    # q/k/v as [B, S, H, D] memory viewed [B, H, S, D] (what BERT hands over), contiguous [B, H, S, D],
    # or k given as a contiguous K^T [B, H, D, Skv] (what an exported ONNX graph hands over)
    "layout": ["heads_interleaved", "contiguous", "k_transposed"],
    "threads": [1, 2],
}


def _cases():
    return _util.pairwise(PARAMS, seed=21)


def _qkv(rng, b, h, sq, skv, d, layout):
    def one(s):
        if layout == "heads_interleaved":
            return torch.from_numpy(rng.standard_normal((b, s, h, d)).astype(np.float32)).transpose(1, 2)
        return torch.from_numpy(rng.standard_normal((b, h, s, d)).astype(np.float32))

    k = one(skv)
    if layout == "k_transposed":
        k = k.transpose(2, 3).contiguous().transpose(2, 3)
    return one(sq), k, one(skv)


def _mask(rng, kind, b, h, sq, skv):
    if kind == "none":
        return None
    if kind == "float":
        return torch.from_numpy(rng.standard_normal((1, h, sq, skv)).astype(np.float32))
    if kind == "bool_keys":
        m = torch.ones(b, 1, 1, skv, dtype=torch.bool)
        m[..., skv // 2:] = torch.from_numpy(rng.random((b, 1, 1, skv - skv // 2)) < 0.5)
        m[..., 0] = True
        return m
    m = torch.from_numpy(rng.random((b, 1, sq, skv)) < 0.6)
    m[..., 0] = True
    if kind == "bool_empty_row":
        m[:, :, -1, :] = False
    return m


def _softmax_weights(s, mask):
    """float64 scores masked, then e = exp(s - row max) and each row's sum (0 for a row with no key)."""
    if mask is not None:
        m = mask.numpy()
        s = np.where(m, s, -np.inf) if m.dtype == bool else s + m.astype(np.float64)
    mx = s.max(-1, keepdims=True)
    e = np.where(np.isfinite(mx), np.exp(s - np.where(np.isfinite(mx), mx, 0)), 0.0)
    return e, e.sum(-1, keepdims=True)


def _expected(q, k, v, mask, scale):
    """float64 numpy: [B, Sq, H, D]; rows with no key to attend to are 0."""
    q, k, v = (t.double().numpy() for t in (q, k, v))
    e, total = _softmax_weights(np.einsum("bhqd,bhkd->bhqk", q, k) * scale, mask)
    p = np.divide(e, total, out=np.zeros_like(e), where=total > 0)
    return np.einsum("bhqk,bhkd->bqhd", p, v)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("case", _cases(), ids=lambda c: "-".join(str(v) for v in c.values()))
def test_attention_every_level(case, level):
    rng = np.random.default_rng(case["sq"] * 1000 + case["skv"] * 10 + case["d"])
    b, h, sq, skv, d = case["b"], case["h"], case["sq"], case["skv"], case["d"]
    q, k, v = _qkv(rng, b, h, sq, skv, d, case["layout"])
    mask = _mask(rng, case["mask"], b, h, sq, skv)
    scale = 0.7 / np.sqrt(d)
    sparsecpu.set_num_threads(case["threads"])
    try:
        with testing.isa(level):
            # The binding itself: the op would make a K^T layout contiguous first.
            got = torch.empty(b, sq, h, d)
            _C.attention(q.numpy(), k.numpy(), v.numpy(), got.transpose(1, 2).numpy(),
                         None if mask is None else mask.numpy(), scale)
            # Without out: a new [B, Sq, H, D] array (64-byte aligned), the same bits.
            new = _C.attention(q.numpy(), k.numpy(), v.numpy(), None, None if mask is None else mask.numpy(), scale)
    finally:
        sparsecpu.set_num_threads(2)
    assert new.shape == (b, sq, h, d) and new.flags.c_contiguous and new.ctypes.data % 64 == 0
    np.testing.assert_array_equal(new, got.numpy())
    want = _expected(q, k, v, mask, scale)
    assert got.shape == (b, sq, h, d)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=2e-6 * max(1.0, np.abs(want).max()))
    if case["mask"] == "bool_empty_row":
        assert (got[:, -1] == 0).all()
    elif sq * d >= 8:
        assert (np.abs(want) > 1e-3).mean() > 0.5, "expected output mostly zeros: the case proves nothing"


def test_pairwise_cases_cover_every_pair():
    assert _util.uncovered_pairs(PARAMS, _cases()) == []


@pytest.mark.parametrize("level", LEVELS)
def test_matches_torch_sdpa_at_bert_shape(level):
    torch.manual_seed(0)
    x = torch.randn(2, 128, 3, 12, 64)
    q, k, v = (x[:, :, i].transpose(1, 2) for i in range(3))
    mask = torch.ones(2, 1, 128, 128, dtype=torch.bool)
    mask[1, ..., 100:] = False
    with testing.isa(level):
        got = torch.ops.sparsecpu.attention(q, k, v, mask, 0.125)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_bad_input():
    q = torch.randn(1, 2, 5, 8)
    op = torch.ops.sparsecpu.attention
    with pytest.raises(TypeError, match="must be float32"):
        op(q.double(), q.double(), q.double(), None, 1.0)
    with pytest.raises(TypeError, match="mask must be bool or float32"):
        op(q, q, q, torch.ones(1, 1, 5, 5, dtype=torch.int64), 1.0)
    with pytest.raises(ValueError, match=r"mask \(M\) must be a float32 or bool tensor that broadcasts to the scores "
                                         r"\[B, H, Sq, Skv\] = \[1, 2, 5, 5\], got \[1, 1, 5, 4\] of bool"):
        op(q, q, q, torch.ones(1, 1, 5, 4, dtype=torch.bool), 1.0)
    with pytest.raises(ValueError, match=r"mask \(M\) must be .* got \[5, 5\] of bool"):
        op(q, q, q, torch.ones(5, 5, dtype=torch.bool), 1.0)
    with pytest.raises(ValueError, match=r"k must be a float32 tensor \[B, H, Skv, D\] = \[1, 2, 5, 8\] to match q and v, got \[1, 2, 5, 7\]"):
        op(q, torch.randn(1, 2, 5, 7), q, None, 1.0)
    with pytest.raises(ValueError, match=r"q must be a 4-D float32 tensor \[B, H, Sq, D\], got \[2, 5, 8\]"):
        op(q[0], q[0], q[0], None, 1.0)
    with pytest.raises(ValueError, match="scale must be finite"):
        op(q, q, q, None, float("inf"))
    out = np.empty((1, 5, 2, 8), np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writeable"):
        _C.attention(q.numpy(), q.numpy(), q.numpy(), out.transpose(0, 2, 1, 3), None, 1.0)
    for bad in (np.empty((1, 2, 5), np.float32), np.empty((1, 2, 5, 8), np.float64)):
        with pytest.raises(ValueError, match=r"out must be a float32 tensor of q's shape \[1, 2, 5, 8\], got \[1, 2, 5"):
            _C.attention(q.numpy(), q.numpy(), q.numpy(), bad, None, 1.0)
    with pytest.raises(ValueError, match=r"out must be a float32 tensor of q's shape \[1, 2, 5, 8\], got \[1, 2, 5, 7\]"):
        _C.attention(q.numpy(), q.numpy(), q.numpy(), np.empty((1, 2, 5, 7), np.float32), None, 1.0)


def test_opcheck():
    torch.manual_seed(1)
    q, k, v = torch.randn(2, 3, 7, 16), torch.randn(2, 3, 9, 16), torch.randn(2, 3, 9, 16)
    for mask in (None, torch.rand(2, 1, 7, 9) > 0.3, torch.randn(1, 3, 7, 9)):
        torch.library.opcheck(torch.ops.sparsecpu.attention.default, (q, k, v, mask, 0.25))


# Around the AVX-512 kernel's 8-row x 32-column tile: rows 8k + 1..4, keys and D just below, at and above
# 16 / 32 / 48, and masks broadcast along the keys (a zero key stride).
TILE_CASES = [
    # sq, skv, d, mask, layout
    (2, 31, 48, "float", "contiguous"),
    (3, 32, 33, "bool", "heads_interleaved"),
    (4, 33, 32, "bool_keys", "k_transposed"),
    (9, 48, 40, "float_per_query", "heads_interleaved"),
    (12, 64, 31, "bool_per_query", "contiguous"),
    (16, 47, 96, "none", "k_transposed"),
    (17, 65, 17, "bool", "contiguous"),
]


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("sq, skv, d, mask_kind, layout", TILE_CASES, ids=lambda v: str(v))
def test_attention_tile_edges(sq, skv, d, mask_kind, layout, level):
    rng = np.random.default_rng(sq * 10000 + skv * 100 + d)
    b, h = 2, 3
    q, k, v = _qkv(rng, b, h, sq, skv, d, layout)
    if mask_kind == "float_per_query":
        mask = torch.from_numpy(rng.standard_normal((b, 1, sq, 1)).astype(np.float32))
    elif mask_kind == "bool_per_query":
        mask = torch.from_numpy(rng.random((1, h, sq, 1)) < 0.7)
    else:
        mask = _mask(rng, mask_kind, b, h, sq, skv)
    scale = 0.7 / np.sqrt(d)
    with testing.isa(level):
        got = _C.attention(q.numpy(), k.numpy(), v.numpy(), None, None if mask is None else mask.numpy(), scale)
    want = _expected(q, k, v, mask, scale)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * max(1.0, np.abs(want).max()))
    if mask_kind == "bool_per_query":
        assert (~mask.numpy()).any() and (got.transpose(0, 2, 1, 3)[np.broadcast_to(~mask.numpy()[..., 0], (b, h, sq))] == 0).all()
    assert (np.abs(want) > 1e-3).mean() > 0.5, "expected output mostly zeros: the case proves nothing"


# ---------------------------------------------------------------------------------------------
# Hugging Face models

transformers = pytest.importorskip("transformers")


def _bert():
    torch.manual_seed(2)
    cfg = transformers.BertConfig(vocab_size=300, hidden_size=96, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=192, max_position_embeddings=64)
    model = transformers.BertModel(cfg).eval()
    sparsecpu.prune(model, sparsity=0.5)
    return model


def test_sparsify_switches_bert_attention_and_keeps_its_results():
    model = _bert()
    ours, theirs = copy.deepcopy(model), copy.deepcopy(model)
    report = sparsecpu.sparsify(ours, dtype="fp32", min_sparsity=0.0)
    assert report.attention and "attention: sparsecpu's kernel" in str(report)
    assert ours.config._attn_implementation == "sparsecpu"
    assert not sparsecpu.sparsify(theirs, dtype="fp32", min_sparsity=0.0, attention=False).attention
    assert theirs.config._attn_implementation == "sdpa"
    ids = torch.randint(2, 300, (2, 40), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, 25:] = 0
    calls = []
    run = sparsecpu._library.run_attention
    sparsecpu._library.run_attention = lambda *a: calls.append(a[3]) or run(*a)
    try:
        with torch.inference_mode():
            for m in (None, mask):
                torch.testing.assert_close(ours(input_ids=ids, attention_mask=m).last_hidden_state,
                                           theirs(input_ids=ids, attention_mask=m).last_hidden_state, rtol=1e-5, atol=1e-5)
    finally:
        sparsecpu._library.run_attention = run
    # Both calls ran the kernel: without a mask, and with SDPA's boolean padding mask.
    assert len(calls) == 4 and calls[0] is None and calls[2].dtype == torch.bool and calls[2].shape == (2, 1, 40, 40)


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compiled_bert_runs_the_op():
    model = _bert()
    sparsecpu.sparsify(model, dtype="fp32", min_sparsity=0.0)
    ids = torch.randint(2, 300, (1, 24), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        want = model(input_ids=ids).last_hidden_state
        got = torch.compile(model)(input_ids=ids).last_hidden_state
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_eager_attention_left_alone_and_gpt2_generate_unchanged():
    torch.manual_seed(5)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, attn_implementation="eager")
    eager = transformers.BertModel(cfg).eval()
    assert not sparsecpu.sparsify(eager, min_sparsity=0.0).attention
    assert eager.config._attn_implementation == "eager"
    # GPT-2: causal prefill falls back to SDPA, decode steps (one query row) run the kernel.
    gcfg = transformers.GPT2Config(vocab_size=200, n_embd=64, n_layer=2, n_head=4, n_positions=64, bos_token_id=0,
                                   eos_token_id=1, initializer_range=0.3)
    gpt = transformers.GPT2LMHeadModel(gcfg).eval()
    sparsecpu.prune(gpt, sparsity=0.5, scope="layer")
    ours, theirs = copy.deepcopy(gpt), copy.deepcopy(gpt)
    assert sparsecpu.sparsify(ours, dtype="fp32", min_sparsity=0.0).attention
    sparsecpu.sparsify(theirs, dtype="fp32", min_sparsity=0.0, attention=False)
    prompt = torch.randint(2, 200, (2, 9), generator=torch.Generator().manual_seed(6))
    attn = torch.ones_like(prompt)
    attn[0, :3] = 0  # left padding: a mask in prefill and in every decode step
    kw = dict(max_new_tokens=12, do_sample=False, pad_token_id=1, attention_mask=attn)
    with torch.inference_mode():
        a, b = ours.generate(prompt, **kw), theirs.generate(prompt, **kw)
    assert torch.equal(a, b) and len(set(a[1, 9:].tolist())) > 3


# ---------------------------------------------------------------------------------------------
# bf16 precision (op attention_bf16): AMX-BF16 tiles at the amx level (emulated on a CPU without AMX),
# the fp32 kernel at the levels below.

AMX_LEVELS = [level for level in LEVELS if level.startswith("amx")]


def _bf16(a: np.ndarray) -> np.ndarray:
    """Round to nearest even bf16 (finite normal inputs), as float64."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16
    return bits.astype(np.uint32).view(np.float32).astype(np.float64)


def _expected_bf16(q, k, v, mask, scale):
    """The bf16 specification in float64 numpy: bf16 q, k, v; fp32 scaled scores; weights exp(s - max)
    rounded to bf16; the output divided by the sum of the unrounded weights. [B, Sq, H, D]."""
    s = (np.einsum("bhqd,bhkd->bhqk", _bf16(q.numpy()), _bf16(k.numpy())).astype(np.float32) * np.float32(scale))
    e, total = _softmax_weights(s.astype(np.float64), mask)
    o = np.einsum("bhqk,bhkd->bhqd", _bf16(e), _bf16(v.numpy()))
    return np.divide(o, total, out=np.zeros_like(o), where=total > 0).transpose(0, 2, 1, 3)


def _cosines(a, b):
    a, b = a.reshape(-1, a.shape[-1]).astype(np.float64), b.reshape(-1, b.shape[-1]).astype(np.float64)
    keep = np.linalg.norm(b, axis=1) > 0
    a, b = a[keep], b[keep]
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _close_to_spec(got, want):
    """Within float rounding of the specification, but for the rare weight that rounds to the other bf16
    (the kernel sums in fp32 where the reference sums in float64): the median error is at float level, the
    largest one bf16 step of one weight."""
    err = np.abs(got - want)
    top = max(1.0, np.abs(want).max())
    assert np.median(err) <= 1e-6 * top and err.max() <= 2.0 ** -7 * top, (np.median(err), err.max())


@pytest.mark.parametrize("level", ["reference", *AMX_LEVELS])
@pytest.mark.parametrize("sq, skv, d, mask_kind, layout", TILE_CASES, ids=lambda v: str(v))
def test_bf16_attention_matches_its_specification(sq, skv, d, mask_kind, layout, level):
    rng = np.random.default_rng(sq * 10000 + skv * 100 + d + 1)
    b, h = 2, 3
    q, k, v = _qkv(rng, b, h, sq, skv, d, layout)
    mask = _mask(rng, mask_kind if mask_kind in PARAMS["mask"] else "float", b, h, sq, skv)
    scale = 0.7 / np.sqrt(d)
    m = None if mask is None else mask.numpy()
    before = testing.kernel_calls()
    with testing.isa(level):
        got = _C.attention(q.numpy(), k.numpy(), v.numpy(), None, m, scale, "bf16")
        name = _C.attention_kernel("bf16")
    assert name.startswith("attention_bf16_") and testing.kernel_calls()[name] > before[name]
    _close_to_spec(got, _expected_bf16(q, k, v, mask, scale))
    # bf16 is close to fp32 too, but not equal: the kernel did round.
    want = _expected(q, k, v, mask, scale)
    assert _cosines(got, want).min() >= 0.9999 and np.abs(got - want).max() > 1e-5
    assert (np.abs(want) > 1e-3).mean() > 0.5, "expected output mostly zeros: the case proves nothing"


@pytest.mark.parametrize("level", [level for level in LEVELS if level not in ("reference", *AMX_LEVELS)])
def test_bf16_request_runs_the_fp32_kernel_below_amx(level):
    rng = np.random.default_rng(8)
    q, k, v = _qkv(rng, 2, 3, 13, 17, 24, "heads_interleaved")
    with testing.isa(level):
        fp32 = _C.attention(q.numpy(), k.numpy(), v.numpy(), None, None, 0.2)
        bf16 = _C.attention(q.numpy(), k.numpy(), v.numpy(), None, None, 0.2, "bf16")
        assert _C.attention_kernel("bf16") == _C.attention_kernel() == sparsecpu.info()["kernels"]["attention_bf16"]
    np.testing.assert_array_equal(bf16, fp32)


def test_bf16_bad_precision():
    q = np.zeros((1, 1, 2, 4), np.float32)
    with pytest.raises(ValueError, match="precision must be 'fp32' or 'bf16'"):
        _C.attention(q, q, q, None, None, 1.0, "fp16")
    with pytest.raises(ValueError, match="attention_precision must be 'fp32' or 'bf16'"):
        sparsecpu.sparsify(_bert(), attention_precision="half")


def _layer_outputs(model, run):
    with torch.inference_mode():
        return run(model).numpy()


@pytest.mark.skipif(not AMX_LEVELS, reason="the amx level (native or emulated) needs AVX2")
def test_bf16_attention_keeps_bert_base_and_gpt2_within_cosine_0_9999():
    """The issue's bar: BERT-base and GPT-2 (124M) outputs within cosine 0.9999 of fp32 attention with bf16
    attention on the AMX level. Random weights, the layers left in fp32 (skip every linear layer): only
    attention differs."""
    ids = torch.randint(2, 30000, (2, 48), generator=torch.Generator().manual_seed(10))
    prompt = torch.randint(2, 50000, (2, 24), generator=torch.Generator().manual_seed(11))

    def bert_run(m):
        return m(input_ids=ids).last_hidden_state

    def gpt_run(m):
        # Prefill (causal, no padding: transformers' SDPA), then 8 decode steps through the kernel.
        out = m(input_ids=prompt[:, :16], use_cache=True)
        logits = []
        for t in range(16, 24):
            out = m(input_ids=prompt[:, t:t + 1], cache=out.cache, use_cache=True)
            logits.append(out.logits[:, -1])
        return torch.stack(logits, 1)

    # One model at a time (each is ~0.5 GB), switched from bf16 to fp32 attention in place.
    for make, run in ((lambda: transformers.BertModel(transformers.BertConfig()), bert_run),
                      (lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config()), gpt_run)):
        torch.manual_seed(9)
        model = make().eval()
        report = sparsecpu.sparsify(model, skip=("*",))  # dtype int8: bf16 attention by default
        with testing.isa(AMX_LEVELS[0]):
            assert report.attention_precision == "bf16" and "attention_bf16_16x64__amx" in str(report)
            before = testing.kernel_calls()
            got = _layer_outputs(model, run)
            assert testing.kernel_calls()[_C.attention_kernel("bf16")] > before[_C.attention_kernel("bf16")]
            model.set_attn_implementation(sparsecpu._attention.NAMES["fp32"])
            want = _layer_outputs(model, run)
        del model
        cos = _cosines(got, want)
        assert cos.min() >= 0.9999 and np.abs(got - want).max() > 0, (run.__name__, cos.min())
