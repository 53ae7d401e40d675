"""The one dense / sparse / keep rule (sparsecpu._layout.choose_layout): the rule itself at and around
its thresholds, and the torch door (sparsify), the ONNX door (onnx.convert) and pack(format="auto")
deciding alike for the same weights."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest

import sparsecpu
from sparsecpu._layout import DEFAULT_MIN_SPARSITY, Layout, choose_layout

F32 = np.float32
N, K = 16, 20  # 4 x 20 = 80 blocks of 4x1: kept 60 is block sparsity 0.25, kept 24 is 0.7
# Kept blocks per layer: at each default threshold and one block either side, and the ends.
KEPT = (0, 20, 23, 24, 25, 59, 60, 61, 80)


def _weight(kept_blocks: int, seed: int) -> np.ndarray:
    """An N x K weight with exactly ``kept_blocks`` 4x1 blocks holding nonzeros."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(N // 4 * K, bool)
    mask[rng.permutation(mask.size)[:kept_blocks]] = True
    w = rng.standard_normal((N, K)).astype(F32) + 3.0  # no zero inside a kept block
    return w * np.repeat(mask.reshape(N // 4, K), 4, axis=0)


WEIGHTS = [_weight(kept, seed) for seed, kept in enumerate(KEPT)]


def test_thresholds_sit_on_block_counts():
    assert DEFAULT_MIN_SPARSITY == {"int8": 0.25, "fp32": 0.7}
    assert [choose_layout(w, "int8").block_sparsity for w in WEIGHTS] == pytest.approx(
        [1 - kept / 80 for kept in KEPT])


@pytest.mark.parametrize("dtype", ["int8", "fp32"])
def test_rule_at_and_around_the_thresholds(dtype):
    threshold = DEFAULT_MIN_SPARSITY[dtype]
    for w in WEIGHTS:
        layout = choose_layout(w, dtype)
        sparsity = 1.0 - sparsecpu.formats.block_density(w)
        if dtype == "int8":
            # The measured choice: the suite's calibration (conftest.py) crosses where the threshold does.
            assert layout.choice is not None and layout.format == layout.choice.format
            assert layout.reason.startswith(f"measured choice: {layout.format} (predicted ")
            assert layout.format == ("bsr" if sparsity >= threshold else "dense"), (sparsity, layout)
            assert choose_layout(w, dtype, min_sparsity=threshold).format == layout.format
        elif sparsity >= threshold:  # at the threshold itself: block-sparse
            assert layout.format == "bsr" and ">= min_sparsity" in layout.reason and layout.choice is None
        else:
            assert layout.format is None and "slower than dense" in layout.reason
        # pack cannot keep a layer: fp32 below the threshold is packed block-sparse all the same.
        packed = choose_layout(w, dtype, can_keep=False)
        assert packed.format == (layout.format or "bsr")
        assert sparsecpu.pack(w, dtype=dtype).format == packed.format


def test_measured_choice_depends_on_rows():
    w = WEIGHTS[KEPT.index(60)]  # block density 0.75
    half = w * (np.arange(w.shape[1]) % 2 == 0)  # block density 0.375
    # The suite's calibration: at 128 rows block-sparse wins up to density 0.75, at 1 row up to 0.33.
    assert choose_layout(half, "int8").format == "bsr" and choose_layout(half, "int8", rows=1).format == "dense"
    choice = choose_layout(half, "int8", rows=1).choice
    assert choice.rows == 1 and set(choice.predicted) == {"bsr", "dense"} and "at M = 1" in str(choice)
    for bad in (0, -3, 2.5, True, None):
        with pytest.raises(ValueError, match="rows must be a positive int"):
            choose_layout(w, "int8", rows=bad)


def test_rule_options_and_unpackable_weights():
    w = WEIGHTS[KEPT.index(60)]  # block sparsity 0.25
    assert choose_layout(w, "int8", min_sparsity=0.3).format == "dense"
    assert choose_layout(w, "fp32", min_sparsity=0.0).format == "bsr"
    assert choose_layout(w, "int8", format="bsr") == Layout("bsr", "format='bsr' requested", 0.75)
    with pytest.raises(ValueError, match="min_sparsity"):
        choose_layout(w, "int8", min_sparsity=1.5)
    wide = np.zeros((4, 65536), F32)  # the format's int8 limit is its own (csrc/core/format.h)
    assert choose_layout(wide, "int8").format is None and "K <= 65535" in choose_layout(wide, "int8").reason
    assert choose_layout(wide[:, :65535], "int8").format == "bsr"
    assert choose_layout(wide, "fp32").format == "bsr"
    assert choose_layout(wide, "int8", format="dense").format is None  # a forced format cannot help
    bad = w.copy()
    bad[0, 0] = np.nan
    assert choose_layout(bad, "fp32") == Layout(None, "weight holds NaN or Inf", sparsecpu.formats.block_density(bad))


# --- both front doors -------------------------------------------------------------------------------

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")


class Layers(torch.nn.Module):
    """One nn.Linear per test weight, all reading ``x``, and one too wide for int8 reading ``wide``."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(K, N) for _ in WEIGHTS)
        self.nan = torch.nn.Linear(K, N)
        self.wide = torch.nn.Linear(65536, 4)
        with torch.no_grad():
            for layer, w in zip(self.layers, WEIGHTS):
                layer.weight.copy_(torch.from_numpy(w))
            self.nan.weight.copy_(torch.from_numpy(WEIGHTS[0]))
            self.nan.weight[5, 5] = float("nan")
            self.wide.weight.zero_()

    def forward(self, x, wide):
        return tuple(layer(x) for layer in self.layers) + (self.nan(x), self.wide(wide))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = Layers().eval()
    path = str(tmp_path_factory.mktemp("layout") / "layers.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(3, K), torch.randn(3, 65536)), path, input_names=["x", "wide"],
                          dynamo=False, opset_version=17, do_constant_folding=False)
    return model, path


OPTIONS = [{}, {"min_sparsity": 0.5}, {"min_sparsity": 0.0}, {"format": "bsr"}]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults")
@pytest.mark.parametrize("dtype", ["int8", "fp32"])
def test_sparsify_and_onnx_convert_decide_alike(exported, dtype, options, tmp_path):
    model, src = exported
    torch_rows = list(sparsecpu.sparsify(copy.deepcopy(model), dtype=dtype, **options))
    onnx_rows = sparsecpu.onnx.convert(src, str(tmp_path / "out.onnx"), dtype=dtype, **options).nodes
    assert len(torch_rows) == len(onnx_rows) == len(WEIGHTS) + 2
    for t, o in zip(torch_rows, onnx_rows):
        assert t.shape == o.shape
        assert t.layout == o.layout, (t.name, o.node)  # format, reason and density alike
        assert t.layout.reason in t.reason and o.layout.reason in o.reason
        assert (t.kernel != "kept") == o.converted == (t.layout.format is not None)
    kinds = {t.layout.format for t in torch_rows}
    if not options:  # the defaults reach every outcome: sparse, dense int8 or kept, and kept unpackable
        assert kinds == ({"bsr", "dense", None} if dtype == "int8" else {"bsr", None})
    assert torch_rows[-2].layout.format is None and torch_rows[-2].reason == "weight holds NaN or Inf"
    assert (torch_rows[-1].layout.format is None) == (dtype == "int8")
