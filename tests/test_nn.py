"""sparsecpu.nn.SparseLinear: nn.Linear / Conv1D contract, state_dict and checkpoints, bad input,
the torch.library op (opcheck), torch.compile and torch.export."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import sparsecpu
from sparsecpu.nn import SparseLinear

from _util import pruned_weight


def _pruned_linear(seed: int, n: int, k: int, density: float, bias: bool = True) -> nn.Linear:
    rng = np.random.default_rng(seed)
    lin = nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(pruned_weight(rng, n, k, density, holes=False)[0]))
        if bias:
            lin.bias.copy_(torch.from_numpy(rng.standard_normal(n).astype(np.float32)))
    return lin


def _assert_close_informative(y: torch.Tensor, ref: torch.Tensor, k: int) -> None:
    assert y.shape == ref.shape and y.dtype == torch.float32
    assert (ref.abs() > 1e-3).float().mean() > 0.5, "reference is mostly zeros: the case proves nothing"
    tol = 1e-5 * max(k, 16) * ref.abs().max().item()
    assert (y - ref).abs().max().item() <= tol


# (N, K, leading dims of x, bias, density): N and K off the 4-channel group and the 8-lane vector,
# 1-D, 2-D and 3-D inputs, an empty batch.
CASES = [
    (64, 48, (5,), True, 0.3),
    (30, 17, (2, 3), False, 0.5),
    (7, 33, (), True, 0.9),
    (96, 128, (4, 1, 9), True, 0.1),
    (12, 8, (0,), True, 0.5),
]


@pytest.mark.parametrize("n,k,lead,bias,density", CASES)
def test_from_linear_fp32_matches_linear(n, k, lead, bias, density):
    lin = _pruned_linear(n * k, n, k, density, bias)
    layer = SparseLinear.from_linear(lin, dtype="fp32")
    x = torch.randn(*lead, k, generator=torch.Generator().manual_seed(n))
    with torch.no_grad():
        y, ref = layer(x), lin(x)
    if x.numel():
        _assert_close_informative(y, ref, k)
    assert y.shape == (*lead, n)


@pytest.mark.parametrize("n,k,lead,bias,density", CASES[:4])
def test_from_linear_int8_is_the_int8_kernel(n, k, lead, bias, density):
    """The module is the functional int8 op, bit for bit, and close to the fp32 layer."""
    lin = _pruned_linear(n + k, n, k, density, bias)
    layer = SparseLinear.from_linear(lin)  # int8 by default
    x = torch.randn(*lead, k, generator=torch.Generator().manual_seed(k))
    with torch.no_grad():
        y = layer(x)
        ref = lin(x)
    packed = sparsecpu.pack(lin.weight.detach(), dtype="int8")
    assert torch.equal(y, sparsecpu.linear(x, packed, lin.bias.detach() if bias else None))
    cos = nn.functional.cosine_similarity(y.flatten(), ref.flatten(), dim=0).item()
    assert cos > 0.99


def test_noncontiguous_input_and_fused_activation():
    lin = _pruned_linear(3, 40, 24, 0.4)
    layer = SparseLinear.from_linear(lin, dtype="fp32", activation="gelu")
    x = torch.randn(24, 6).t()  # 6 x 24, column-major
    assert not x.is_contiguous()
    with torch.no_grad():
        _assert_close_informative(layer(x), nn.functional.gelu(lin(x)), 24)


def test_from_conv1d_matches_gpt2_conv1d():
    from transformers.pytorch_utils import Conv1D

    rng = np.random.default_rng(5)
    for nf, nx in [(36, 20), (20, 20)]:  # non-square and square: orientation must come from the type
        conv = Conv1D(nf, nx)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(pruned_weight(rng, nf, nx, 0.4, holes=False)[0].T.copy()))
            conv.bias.copy_(torch.randn(nf))
        layer = SparseLinear.from_conv1d(conv, dtype="fp32")
        assert (layer.out_features, layer.in_features) == (nf, nx)
        x = torch.randn(2, 3, nx)
        with torch.no_grad():
            _assert_close_informative(layer(x), conv(x), nx)


def test_extra_repr_shows_shape_dtype_format_density():
    layer = SparseLinear.from_linear(_pruned_linear(1, 64, 32, 0.25), dtype="int8")
    text = repr(layer)
    assert "in_features=32" in text and "out_features=64" in text
    assert "dtype=int8" in text and "format=bsr" in text
    assert f"density={layer.packed_weight.density:.3f}" in text
    assert 0.1 < layer.packed_weight.density < 0.4


def test_inference_only():
    layer = SparseLinear.from_linear(_pruned_linear(2, 8, 8, 0.5))
    x = torch.randn(3, 8, requires_grad=True)
    with pytest.raises(ValueError, match="inference only"):
        layer(x)
    with torch.no_grad():
        assert layer(x).shape == (3, 8)
    with torch.inference_mode():
        assert layer(x).shape == (3, 8)


def test_bad_input_names_the_layer():
    layer = SparseLinear.from_linear(_pruned_linear(2, 8, 12, 0.5))
    with torch.no_grad():
        with pytest.raises(TypeError, match=r"SparseLinear\(in_features=12, out_features=8\).*float32"):
            layer(torch.randn(2, 12, dtype=torch.float64))
        with pytest.raises(ValueError, match=r"\[\.\.\., 12\]"):
            layer(torch.randn(2, 11))
        with pytest.raises(TypeError, match="torch.Tensor"):
            layer(np.zeros((2, 12), np.float32))
        with pytest.raises(ValueError, match="NaN|finite|Inf"):
            layer(torch.full((2, 12), float("nan")))
    with pytest.raises(TypeError, match="nn.Linear"):
        SparseLinear.from_linear(nn.Conv1d(2, 2, 1))
    with pytest.raises(TypeError, match="Conv1D"):
        SparseLinear.from_conv1d(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="activation"):
        SparseLinear.from_linear(nn.Linear(4, 4), activation="tanh")
    with pytest.raises(ValueError, match="format"):
        SparseLinear.from_linear(nn.Linear(4, 4), format="csr")


def _model(seed: int, density: float) -> nn.Sequential:
    torch.manual_seed(seed)
    m = nn.Sequential(_pruned_linear(seed, 48, 32, density), nn.ReLU(), _pruned_linear(seed + 1, 16, 48, density, bias=False))
    sparsecpu.sparsify(m, dtype="int8", min_sparsity=0.0)
    return m


def test_state_dict_round_trip_through_torch_save():
    src, dst = _model(0, 0.3), _model(1, 0.7)  # other weights, other packed sizes
    assert src[0].packed.shape != dst[0].packed.shape
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    dst.load_state_dict(torch.load(buf))  # weights_only=True: plain tensors only
    x = torch.randn(5, 32)
    with torch.no_grad():
        y = src(x)
        assert (y.abs() > 1e-3).float().mean() > 0.3
        assert torch.equal(dst(x), y)
    assert repr(dst) == repr(src)


def test_whole_model_pickles_and_deep_copies():
    m = _model(2, 0.5)
    x = torch.randn(3, 32)
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    with torch.no_grad():
        assert torch.equal(loaded(x), m(x))
        assert torch.equal(copy.deepcopy(m)(x), m(x))


def test_corrupted_or_mismatched_state_dict_raises_value_error():
    m = _model(3, 0.5)
    sd = m.state_dict()
    bad = dict(sd)
    flipped = sd["0.packed"].clone()
    flipped[len(flipped) // 2 :] = 255
    bad["0.packed"] = flipped
    with pytest.raises(ValueError, match=r"^0\.packed: invalid packed weight"):
        m.load_state_dict(bad)
    bad["0.packed"] = sd["0.packed"][:20]
    with pytest.raises(ValueError):
        m.load_state_dict(bad)
    bad["0.packed"] = sd["0.packed"].float()
    with pytest.raises(ValueError, match="uint8"):
        m.load_state_dict(bad)
    bad["0.packed"] = sd["2.packed"]  # a valid weight of another shape
    with pytest.raises(ValueError, match=r"\(16, 48\).*\(48, 32\)"):
        m.load_state_dict(bad)
    x = torch.randn(2, 32)
    with torch.no_grad():
        assert torch.equal(m(x), _model(3, 0.5)(x)), "a rejected load must leave the model as it was"


def test_pickled_model_with_corrupted_buffer_is_rejected():
    m = _model(4, 0.5)
    with torch.no_grad():
        m[0].packed[-64:] = 0xAB  # behind torch's back of the validated copy: caught on unpickling
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    with pytest.raises(ValueError):
        torch.load(buf, weights_only=False)


def test_in_place_write_to_the_buffer_is_revalidated():
    m = _model(5, 0.5)
    x = torch.randn(2, 32)
    with torch.no_grad():
        m(x)  # the eager path remembers the validated weight; the write below must be noticed
        m[0].packed.fill_(7)
        with pytest.raises(ValueError):
            m(x)


def test_built_under_inference_mode():
    lin = _pruned_linear(6, 20, 12, 0.5)
    with torch.inference_mode():
        layer = SparseLinear.from_linear(lin, dtype="fp32")
        x = torch.randn(3, 12)
        _assert_close_informative(layer(x), lin(x), 12)
    assert not layer.packed.is_inference()


def test_opcheck():
    lin = _pruned_linear(7, 24, 20, 0.4)
    layer = SparseLinear.from_linear(lin)
    for x, bias, act in [(torch.randn(5, 20), layer.bias, "gelu"), (torch.randn(2, 3, 20), None, "none")]:
        torch.library.opcheck(torch.ops.sparsecpu.linear.default, (x, layer.packed, bias, 24, act))


@pytest.mark.parametrize("lead", [(), (0,), (1, 1), (3,), (2, 5), (4, 1, 2)])
@pytest.mark.parametrize("dtype", ["int8", "fp32"])
def test_eager_fast_path_equals_the_op(lead, dtype):
    """Eager calls on plain tensors skip the dispatcher: same bits as torch.ops.sparsecpu.linear,
    also for a non-contiguous input."""
    lin = _pruned_linear(11, 40, 24, 0.4)
    layer = SparseLinear.from_linear(lin, dtype=dtype, activation="gelu")
    x = torch.randn(*lead, 48)[..., ::2]
    with torch.no_grad():
        y = layer(x)
        ref = torch.ops.sparsecpu.linear(x.contiguous(), layer.packed, layer.bias, 40, "gelu")
    assert y.shape == (*lead, 40)
    assert torch.equal(y, ref)


def test_bound_call_rejects_what_it_cannot_take():
    """The eager path's bound weight (``_C.BoundLinear``) checks its own arguments."""
    from sparsecpu import _C

    layer = SparseLinear.from_linear(_pruned_linear(12, 40, 24, 0.4))
    weight = layer.packed_weight
    with pytest.raises(ValueError, match=r"bias must be a float32 tensor of shape \[40\], got \[39\]"):
        _C.BoundLinear(weight.buffer, np.zeros(39, np.float32), None)
    with pytest.raises(ValueError, match="activation must be one of none, relu, gelu, gelu_tanh, got '7'"):
        _C.BoundLinear(weight.buffer, None, 7)
    bound = _C.BoundLinear(weight.buffer, None, "none")
    for x in (np.zeros((2, 23), np.float32), np.zeros((), np.float32)):
        with pytest.raises(ValueError, match=r"x must be a float32 tensor of shape \[\.\.\., 24\], got \["):
            bound(x)
    with pytest.raises(TypeError):
        bound(np.zeros((2, 24), np.int32))
    with pytest.raises(ValueError, match=r"residual \(R\) must be a float32 tensor of the output's shape \[2, 40\]"):
        bound(np.zeros((2, 24), np.float32), np.zeros((2, 39), np.float32))


def test_bound_call_adds_the_residual_as_torch_does():
    """``BoundLinear(x, residual)``, the fused GPT-2 block's residual add: bit for bit the layer's
    output plus the residual, at decode and prefill row counts."""
    from sparsecpu import _C

    for dtype in ("int8", "fp32"):
        layer = SparseLinear.from_linear(_pruned_linear(13, 40, 24, 0.4), dtype=dtype, activation="gelu")
        bound = layer._eager_args().call
        for rows in (1, 7, 70):
            x, r = np.random.randn(rows, 24).astype(np.float32), np.random.randn(rows, 40).astype(np.float32)
            y = torch.from_numpy(bound(x, r))
            assert torch.equal(y, torch.from_numpy(bound(x)) + torch.from_numpy(r))
            assert (y - torch.from_numpy(r)).abs().max() > 0.1


def test_eager_path_follows_every_change_of_the_layer():
    """The eager path keeps the weight, bias and activation code between calls: loading a state
    dict, writing the bias in place, replacing a buffer and changing the activation must all show
    in the next call, and copies must not share what it keeps."""
    x = torch.randn(6, 24)
    a, b = _pruned_linear(21, 40, 24, 0.3), _pruned_linear(22, 40, 24, 0.8)
    layer = SparseLinear.from_linear(a, dtype="fp32")
    other = SparseLinear.from_linear(b, dtype="fp32")
    with torch.no_grad():
        _assert_close_informative(layer(x), a(x), 24)
        layer.load_state_dict(other.state_dict())  # another packed size
        _assert_close_informative(layer(x), b(x), 24)
        layer.load_state_dict(SparseLinear.from_linear(a, dtype="fp32").state_dict())
        _assert_close_informative(layer(x), a(x), 24)
        layer.bias.add_(3.0)
        _assert_close_informative(layer(x), a(x) + 3.0, 24)
        layer.bias = torch.zeros(40)
        _assert_close_informative(layer(x), a(x) - a.bias, 24)
        layer.activation = "gelu"
        _assert_close_informative(layer(x), F.gelu(a(x) - a.bias), 24)
        twin = copy.deepcopy(layer)
        twin.bias.fill_(-1.0)
        _assert_close_informative(layer(x), F.gelu(a(x) - a.bias), 24)
        _assert_close_informative(twin(x), F.gelu(a(x) - a.bias - 1.0), 24)


def test_torch_export_keeps_one_node_per_layer():
    m = _model(8, 0.4)
    x = torch.randn(4, 32)
    with torch.no_grad():
        ep = torch.export.export(m, (x,))
        nodes = [n.target for n in ep.graph.nodes if n.op == "call_function"]
        assert nodes.count(torch.ops.sparsecpu.linear.default) == 2
        assert torch.equal(ep.module()(x), m(x))
        x2 = torch.randn(4, 32)
        assert torch.equal(ep.module()(x2), m(x2))


# Inductor itself uses a deprecated torch.jit API when it loads.
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_torch_compile_fullgraph_matches_eager():
    m = _model(9, 0.4)
    compiled = torch.compile(m, fullgraph=True)  # fullgraph: a graph break inside our layer fails
    with torch.no_grad():
        for rows in (6, 6, 11):
            x = torch.randn(rows, 32)
            torch.testing.assert_close(compiled(x), m(x), rtol=1e-6, atol=1e-6)


def test_torch_api_loads_lazily():
    """``import sparsecpu`` does not import torch (an optional dependency); the torch names resolve on use."""
    import subprocess
    import sys

    code = (
        "import sys, sparsecpu; assert 'torch' not in sys.modules; "
        "assert callable(sparsecpu.sparsify) and callable(sparsecpu.prune) and callable(sparsecpu.prune.keep_masks); "
        "assert sparsecpu.nn.SparseLinear.__module__ == 'sparsecpu.nn'; assert 'torch' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
