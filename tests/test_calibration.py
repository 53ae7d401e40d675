"""sparsecpu.calibration: the measured costs behind format="auto" (what each format stores, the fit and
its predictions, the choice, and the cache per machine). Decisions are tested on calibrations built here,
never on timings of this run."""

from __future__ import annotations

import json

import numpy as np
import pytest

import sparsecpu
from sparsecpu import calibration

pytestmark = pytest.mark.measured_calibration


def _fake(fits, isa="avx2"):
    key = {"cpu": "test cpu", "isa": isa, "threads": 2, "sparsecpu": sparsecpu.__version__, "version": calibration.VERSION}
    return calibration.Calibration(key, fits, [("dense", 128, 1.0, 1e-3)])


# Seconds per call of a 768 x 768 weight, a + b * density, at 1 and 128 rows (like an AVX2 machine's).
AVX2_LIKE = {"bsr": {1: (5e-6, 6e-5), 128: (7e-5, 1.8e-3)}, "dense": {1: (0.0, 2.5e-5), 128: (0.0, 1.5e-3)}}


def _pruned(rng, n, k, density, rows):
    keep = np.repeat(rng.random((n // rows, k)) < density, rows, axis=0)
    return (rng.standard_normal((n, k)).astype(np.float32) + 3.0) * keep


def test_format_densities():
    rng = np.random.default_rng(0)
    w16 = _pruned(rng, 64, 640, 0.1, 16)
    d = calibration.format_densities(w16)
    assert d["dense"] == 1.0 and d["bsr"] == pytest.approx(sparsecpu.pack(w16, dtype="int8", format="bsr").density)
    # 16x1 blocks: each panel keeps its own columns, rounded up to 64 per panel.
    kept = (w16.reshape(4, 16, 640) != 0).any(1).sum(1)
    assert d["panel"] == pytest.approx((np.ceil(kept / 64) * 64).sum() / (4 * 640))
    assert d["panel"] == pytest.approx(sparsecpu.pack(w16, dtype="int8", block=(16, 1)).density, abs=0.1)
    # 4x1 blocks at 10%: a panel keeps the union of its 4 groups' columns, about 1 - 0.9^4.
    w4 = _pruned(rng, 256, 4096, 0.1, 4)
    assert calibration.format_densities(w4)["panel"] == pytest.approx(1 - 0.9 ** 4, abs=0.03)
    # Ragged N (not a multiple of 16) and all-zero weights.
    assert calibration.format_densities(np.zeros((10, 70), np.float32)) == {"bsr": 0.0, "dense": 1.0, "panel": 0.0}


def test_predict_interpolates_rows_and_scales_with_size():
    c = _fake(AVX2_LIKE)
    assert c.predict("dense", (768, 768), 1.0, 128) == pytest.approx(1.5e-3)
    assert c.predict("dense", (3072, 768), 1.0, 128) == pytest.approx(4 * 1.5e-3)
    assert c.predict("bsr", (768, 768), 0.25, 1) == pytest.approx(5e-6 + 0.25 * 6e-5)
    mid = c.predict("dense", (768, 768), 1.0, 64)
    assert c.predict("dense", (768, 768), 1.0, 1) < mid < 1.5e-3
    assert c.predict("dense", (768, 768), 1.0, 256) == pytest.approx(2 * 1.5e-3)


@pytest.mark.parametrize("density, rows, want", [(0.1, 128, "bsr"), (0.7, 128, "bsr"), (0.9, 128, "dense"),
                                                 (0.1, 1, "bsr"), (0.6, 1, "dense")])
def test_choose_takes_the_fastest_prediction(density, rows, want):
    w = _pruned(np.random.default_rng(1), 768, 768, density, 4)
    choice = _fake(AVX2_LIKE).choose(w, rows)
    assert choice.format == want and choice.rows == rows
    assert set(choice.predicted) == {"bsr", "dense"} and choice.seconds == min(choice.predicted.values())
    assert f"{want} (predicted" in str(choice) and f"at M = {rows}" in str(choice)


def test_panel_and_dense_take_over_on_an_amx_like_machine():
    amx = dict(AVX2_LIKE, dense={1: (0.0, 1.5e-5), 128: (0.0, 1.6e-4)}, panel={1: (5e-6, 2e-5), 128: (1e-5, 3e-4)})
    c = _fake(amx, isa="amx")
    rng = np.random.default_rng(2)
    assert c.choose(_pruned(rng, 768, 768, 0.1, 16)).format == "panel"
    # 4x1 blocks: a panel keeps the union of 4 groups' columns: ~34% at 10% (panel 1.1e-4 s, dense 1.6e-4,
    # bsr 2.5e-4), ~76% at 30% (panel 2.4e-4, dense 1.6e-4).
    assert c.choose(_pruned(rng, 768, 768, 0.1, 4)).format == "panel"
    assert c.choose(_pruned(rng, 768, 768, 0.3, 4)).format == "dense"
    assert c.choose(_pruned(rng, 768, 768, 0.1, 16), formats=("bsr", "dense")).format == "dense"
    with pytest.raises(ValueError, match="calibrated"):
        _fake(AVX2_LIKE).choose(np.ones((8, 8), np.float32), formats=("panel",))


def test_load_measures_once_and_caches_per_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSECPU_CACHE_DIR", str(tmp_path))
    calls = []
    real = calibration._measure
    monkeypatch.setattr(calibration, "_measure", lambda key: calls.append(key) or real(key))
    monkeypatch.setattr(calibration, "_loaded", {})
    first = calibration.load()
    file = calibration.path()
    assert len(calls) == 1 and file.parent == tmp_path and file.exists()
    # Measured at this level: bsr and dense (panel only natively at amx), positive fits, every point recorded.
    assert set(first.fits) >= {"bsr", "dense"} and ("panel" in first.fits) == (first.key["isa"] == "amx")
    assert all(sec > 0 for _, _, _, sec in first.measured) and len(first.measured) == 2 * (1 + 3 * (len(first.fits) - 1))
    assert first.key["cpu"] == sparsecpu.info()["cpu"] and first.key["threads"] == sparsecpu.get_num_threads()
    assert "calibration of" in str(first)
    # Another process reads the file; the same process keeps it in memory.
    monkeypatch.setattr(calibration, "_loaded", {})
    again = calibration.load()
    assert len(calls) == 1 and again == first and calibration.load() is again
    # Another thread count is another machine; a corrupted or foreign file is measured again.
    sparsecpu.set_num_threads(1)
    try:
        assert calibration.path() != file
    finally:
        sparsecpu.set_num_threads(2)
    for text in ("{not json", json.dumps({"key": {}, "fits": {}, "measured": []})):
        file.write_text(text)
        monkeypatch.setattr(calibration, "_loaded", {})
        calibration.load()
    assert len(calls) == 3
    calibration.load(refresh=True)
    assert len(calls) == 4


def test_unwritable_cache_is_not_an_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("SPARSECPU_CACHE_DIR", str(blocker / "sub"))
    monkeypatch.setattr(calibration, "_loaded", {})
    monkeypatch.setattr(calibration, "_measure", lambda key: _fake(AVX2_LIKE))
    assert calibration.load().fits == AVX2_LIKE


def test_cli_calibrate(tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, SPARSECPU_CACHE_DIR=str(tmp_path))
    run = lambda *a: subprocess.run([sys.executable, "-m", "sparsecpu", "calibrate", *a], env=env, cwd=tmp_path,
                                    capture_output=True, text=True, check=True).stdout
    data = json.loads(run("--json"))
    assert {"bsr", "dense"} <= set(data["fits"]) and data["key"]["cpu"] == sparsecpu.info()["cpu"]
    (file,) = tmp_path.glob("calibration-*.json")
    stamp = file.stat().st_mtime_ns
    text = run()
    assert f"cached in {file}" in text and "format  rows  density" in text and file.stat().st_mtime_ns == stamp
    run("--refresh")
    assert file.stat().st_mtime_ns != stamp
