"""Where sparsecpu's parallel work runs: on the OpenMP runtime torch has loaded (the default once
torch is in the process) or on sparsecpu's own pool. Both give the same bits, leave torch's thread
settings and the environment alone, and serve several Python threads at once."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

import _util
import sparsecpu
from sparsecpu import _C


@pytest.fixture
def restore_threading():
    yield
    _C.set_host_openmp(os.environ.get("SPARSECPU_THREADING", "auto") == "auto")


def _calls(rng):
    w = _util.pruned_weight(rng, 300, 200, 0.3)[0]
    x = rng.standard_normal((200, 200)).astype(np.float32)
    q, k, v = (rng.standard_normal((2, 4, 70, 32)).astype(np.float32) for _ in range(3))
    bsr8, bsr32 = sparsecpu.pack(w, dtype="int8"), sparsecpu.pack(w, dtype="fp32")
    dense = sparsecpu.pack(w, dtype="int8", format="dense")
    return {
        "int8 rows": lambda: sparsecpu.linear(x, bsr8, activation="gelu"),
        "int8 skinny": lambda: sparsecpu.linear(x[:3], bsr8),
        "fp32 rows": lambda: sparsecpu.linear(x, bsr32),
        "fp32 skinny": lambda: sparsecpu.linear(x[:5], bsr32),
        "dense int8": lambda: sparsecpu.linear(x, dense),
        "dense int8 one row": lambda: sparsecpu.linear(x[:1], dense),
        "attention": lambda: _C.attention(q, k, v, None, None, 0.125),
    }


def test_torch_runtime_used_by_default():
    if os.environ.get("SPARSECPU_THREADING", "auto") != "auto":
        pytest.skip("SPARSECPU_THREADING is set")
    threading_ = sparsecpu.info()["threading"]
    assert threading_.startswith("host OpenMP (") and "omp" in threading_, threading_


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_host_openmp_and_pool_give_the_same_bits(threads, num_threads, restore_threading):
    num_threads(threads)
    calls = _calls(np.random.default_rng(3))
    _C.set_host_openmp(False)
    assert sparsecpu.info()["threading"] == "sparsecpu pool"
    on_pool = {name: call() for name, call in calls.items()}
    _C.set_host_openmp(True)
    assert sparsecpu.info()["threading"].startswith("host OpenMP")
    for name, call in calls.items():
        got = call()
        np.testing.assert_array_equal(got, on_pool[name], err_msg=name)
        assert np.count_nonzero(got) > got.size // 2, name


def test_threads_of_python_share_the_runtime(restore_threading):
    calls = _calls(np.random.default_rng(4))
    want = {name: call() for name, call in calls.items()}
    errors = []

    def worker():
        try:
            for _ in range(5):
                for name, call in calls.items():
                    np.testing.assert_array_equal(call(), want[name], err_msg=name)
        except Exception as e:  # noqa: BLE001 -- reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_sparsify_leaves_torch_settings_and_environment():
    from torch import nn

    before = (torch.get_num_threads(), torch.get_num_interop_threads(), dict(os.environ))
    model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64))
    sparsecpu.prune(model, sparsity=0.5)
    ref = model(torch.randn(9, 64))
    sparsecpu.sparsify(model, dtype="fp32")
    with torch.inference_mode():
        model(torch.randn(9, 64))
    assert (torch.get_num_threads(), torch.get_num_interop_threads(), dict(os.environ)) == before
    assert ref.shape == (9, 64)


def _info_threading(tmp_path, value):
    env = {k: v for k, v in os.environ.items() if k != "SPARSECPU_THREADING"}
    env["SPARSECPU_THREADING"] = value
    code = "import sparsecpu, torch; print(sparsecpu.info()['threading'])"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=120)


def test_env_auto_finds_torch_imported_after_sparsecpu(tmp_path):
    r = _info_threading(tmp_path, "auto")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith("host OpenMP (") and "gomp" in r.stdout, r.stdout


def test_env_pool_keeps_sparsecpus_pool(tmp_path):
    r = _info_threading(tmp_path, "pool")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "sparsecpu pool"


def test_env_unknown_value_fails_import(tmp_path):
    r = _info_threading(tmp_path, "openmp")
    assert r.returncode != 0
    assert "SPARSECPU_THREADING must be one of auto, pool, got 'openmp'" in r.stderr
