"""Public API around the kernels: info(), ISA selection (testing.isa, SPARSECPU_ISA), thread
count, the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import sparsecpu
from sparsecpu import _C, testing

LEVELS = testing.supported_isas()
ALL_LEVELS = ["reference", "avx2", "avx512", "avx512_vnni", "amx"]
EMULATED_LEVELS = ["avx512:emulated", "avx512_vnni:emulated", "amx:emulated"]
OPS = _C.kernel_ops()  # the op list of csrc/kernels/ops.inc


def test_exports():
    for name in ("PackedWeight", "pack", "linear", "info", "set_num_threads", "get_num_threads", "__version__"):
        assert hasattr(sparsecpu, name), name
        assert name in sparsecpu.__all__
    assert isinstance(sparsecpu.__version__, str) and sparsecpu.__version__


def test_info_keys_and_types():
    d = sparsecpu.info()
    assert set(d) >= {"vendor", "cpu", "features", "detected_isa", "amx", "isa", "emulated", "kernels", "threads", "version"}
    assert isinstance(d["vendor"], str) and d["vendor"]
    assert isinstance(d["cpu"], str)
    assert isinstance(d["features"], list) and all(isinstance(f, str) for f in d["features"])
    assert d["detected_isa"] in ALL_LEVELS and d["isa"] in ALL_LEVELS
    assert ALL_LEVELS.index(d["isa"]) <= ALL_LEVELS.index(d["detected_isa"])
    # "available" exactly when the amx level is detected; otherwise it says why not.
    assert (d["amx"] == "available") == (d["detected_isa"] == "amx")
    assert d["amx"] == "available" or (d["amx"].startswith("not used: ") and len(d["amx"]) > len("not used: "))
    assert d["emulated"] is False
    assert isinstance(d["kernels"], dict) and set(d["kernels"]) == set(OPS)
    assert all(isinstance(v, str) and v for v in d["kernels"].values())
    assert isinstance(d["threads"], int) and not isinstance(d["threads"], bool)
    assert d["threads"] == sparsecpu.get_num_threads() >= 1
    assert d["version"] == sparsecpu.__version__
    json.dumps(d)  # plain data


def test_supported_isas_match_info():
    d = sparsecpu.info()
    assert LEVELS == ALL_LEVELS[: len(LEVELS)], "levels are listed lowest first, without gaps"
    assert LEVELS[0] == "reference" and LEVELS[-1] == d["detected_isa"]
    if "SPARSECPU_ISA" not in os.environ:
        assert d["isa"] == d["detected_isa"]
    # The features behind each level are reported.
    if "avx2" in LEVELS:
        assert {"avx2", "fma"} <= set(d["features"])
    if "avx512" in LEVELS:
        assert {"avx512f", "avx512bw"} <= set(d["features"])
    if "avx512_vnni" in LEVELS:
        assert "avx512_vnni" in d["features"]
    if "amx" in LEVELS:
        assert {"amx_tile", "amx_int8", "amx_bf16"} <= set(d["features"])
    elif not {"amx_tile", "amx_int8", "amx_bf16"} <= set(d["features"]):
        assert d["amx"].startswith("not used: the CPU has no AMX")


def test_testing_isa_reference_switches_kernels():
    before = sparsecpu.info()
    with testing.isa("reference") as level:
        assert level == "reference"
        d = sparsecpu.info()
        assert d["isa"] == "reference"
        assert set(d["kernels"]) == set(OPS)
        for op, name in d["kernels"].items():
            assert name.endswith("__ref"), (op, name)
        assert d["detected_isa"] == before["detected_isa"]
    assert sparsecpu.info() == before


def test_levels_native_then_emulated():
    levels = testing.levels()
    assert levels[: len(LEVELS)] == LEVELS
    emulated = levels[len(LEVELS):]
    if "avx2" in LEVELS:
        # Every AVX-512 and AMX level runs here, emulated, whether or not the CPU also has it natively.
        assert emulated == EMULATED_LEVELS
    else:
        assert emulated == []


@pytest.mark.parametrize("level", testing.levels())
def test_testing_isa_each_level(level):
    with testing.isa(level) as got:
        assert got == level
        d = sparsecpu.info()
        kernels = d["kernels"]
        base, _, suffix = level.partition(":")
        assert d["isa"] == base and d["emulated"] == (suffix == "emulated")
        if level != "reference":
            # The panel format's op has AMX and reference kernels only: below amx it runs the reference.
            if base != "amx":
                assert kernels["spmm_panel_s8"] == "spmm_panel_s8__ref", kernels
                kernels = {op: name for op, name in kernels.items() if op != "spmm_panel_s8"}
            assert not any(name.endswith("__ref") for name in kernels.values()), kernels
            # AVX2 kernels say so; AVX-512 levels run AVX-512 kernels, all emulated at an emulated level;
            # the amx level runs its AMX kernels and, for the ops without an AMX kernel, the VNNI level's.
            for op, name in kernels.items():
                tag = "avx2" if level == "avx2" else "__amx" if base == "amx" and op in ("gemm_s8", "spmm_panel_s8", "attention_bf16") else "avx512"
                assert tag in name, (op, kernels)
            assert all(name.endswith(":emulated") == (suffix == "emulated") for name in kernels.values()), kernels
        if base in ("avx512_vnni", "amx"):
            assert "vnni" in kernels["spmm_s8"]
        if base == "amx":
            assert kernels["gemm_s8"].startswith("gemm_s8_32x32__amx")


def test_testing_isa_emulated_keyword():
    if "avx2" not in LEVELS:
        pytest.skip("the emulated levels need an AVX2 CPU")
    with testing.isa("avx512", emulated=True) as got:
        assert got == "avx512:emulated"
        assert sparsecpu.info()["emulated"] is True
    assert sparsecpu.info()["emulated"] is False


@pytest.mark.parametrize("bad", ["avx2:emulated", "reference:emulated"])
def test_testing_isa_no_emulated_build(bad):
    top = sparsecpu.info()["isa"]
    with pytest.raises(ValueError, match="only the avx512, avx512_vnni and amx levels have emulated builds"):
        with testing.isa(bad):
            pass
    assert sparsecpu.info()["isa"] == top


def test_testing_isa_nested_and_restored_on_error():
    top = sparsecpu.info()["isa"]
    with pytest.raises(RuntimeError):
        with testing.isa("reference"):
            with testing.isa(LEVELS[-1]) as inner:
                assert inner == LEVELS[-1]
            assert sparsecpu.info()["isa"] == "reference"
            raise RuntimeError("boom")
    assert sparsecpu.info()["isa"] == top


@pytest.mark.parametrize("level", ["avx512_vnni", "amx"])
def test_testing_isa_caps_at_the_cpu(level):
    with testing.isa(level) as got:
        assert got == LEVELS[min(len(LEVELS), ALL_LEVELS.index(level) + 1) - 1]


@pytest.mark.parametrize("bad", ["bogus", "AVX2", "", "avx512-vnni", "bogus:emulated", ":emulated"])
def test_testing_isa_unknown(bad):
    top = sparsecpu.info()["isa"]
    with pytest.raises(ValueError, match="reference, avx2, avx512, avx512_vnni, amx"):
        with testing.isa(bad):
            pass
    assert sparsecpu.info()["isa"] == top


def test_threads(num_threads):
    default = sparsecpu.get_num_threads()
    assert default >= 1
    num_threads(1)
    assert sparsecpu.info()["threads"] == 1
    num_threads(3)
    assert sparsecpu.info()["threads"] == 3
    y3 = sparsecpu.linear(np.ones((130, 8), np.float32), sparsecpu.pack(np.ones((40, 8), np.float32)))
    assert (y3 != 0).all()
    num_threads(default)


@pytest.mark.parametrize(
    "bad, exc",
    [(0, ValueError), (-1, ValueError), (1025, ValueError), ("2", TypeError), (2.0, TypeError),
     (True, TypeError), (None, TypeError)],
    ids=["zero", "negative", "too-many", "str", "float", "bool", "none"],
)
def test_set_num_threads_errors(bad, exc):
    before = sparsecpu.get_num_threads()
    with pytest.raises(exc):
        sparsecpu.set_num_threads(bad)
    assert sparsecpu.get_num_threads() == before


# ---------------------------------------------------------------------------------------------
# Subprocesses: the environment variable and the command line.


def _env(**overrides):
    env = {k: v for k, v in os.environ.items() if k not in ("SPARSECPU_ISA", "SPARSECPU_AMX_PERMISSION")}
    env.update(overrides)
    return env


def _python(code_or_args, tmp_path, **env):
    args = [sys.executable, "-c", code_or_args] if isinstance(code_or_args, str) else [sys.executable, *code_or_args]
    return subprocess.run(args, capture_output=True, text=True, env=_env(**env), cwd=tmp_path, timeout=120)


@pytest.mark.parametrize("level", LEVELS)
def test_env_var_caps_isa(level, tmp_path):
    r = _python("import json, sparsecpu; print(json.dumps(sparsecpu.info()))", tmp_path, SPARSECPU_ISA=level)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["isa"] == level
    assert d["detected_isa"] == LEVELS[-1]
    if level == "reference":
        assert all(name.endswith("__ref") for name in d["kernels"].values())


def test_env_var_avx2(tmp_path):
    if "avx2" not in LEVELS:
        pytest.skip("this CPU does not run AVX2")
    r = _python("import sparsecpu; print(sparsecpu.info()['isa'])", tmp_path, SPARSECPU_ISA="avx2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "avx2"


def test_env_var_above_cpu_caps_at_cpu(tmp_path):
    r = _python("import sparsecpu; print(sparsecpu.info()['isa'])", tmp_path, SPARSECPU_ISA="amx")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == LEVELS[-1]


def test_env_var_empty_means_unset(tmp_path):
    r = _python("import sparsecpu; print(sparsecpu.info()['isa'])", tmp_path, SPARSECPU_ISA="")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == LEVELS[-1]


@pytest.mark.parametrize("bad", ["bogus", "AVX512"])
def test_env_var_unknown_fails_import(bad, tmp_path):
    r = _python("import sparsecpu", tmp_path, SPARSECPU_ISA=bad)
    assert r.returncode != 0
    assert "Traceback" in r.stderr
    assert bad in r.stderr
    for level in ALL_LEVELS:
        assert level in r.stderr, r.stderr


_DENIED = """
import json, numpy as np, sparsecpu
from sparsecpu import testing
rng = np.random.default_rng(5)
w = rng.standard_normal((40, 130)).astype(np.float32)
x = rng.standard_normal((20, 130)).astype(np.float32)
p = sparsecpu.pack(w, format="dense")
runs = {}
for level in ("amx", "amx:emulated"):
    if level in testing.levels() or level == "amx":
        with testing.isa(level):
            runs[level] = {"isa": sparsecpu.info()["isa"], "kernel": testing.kernel_for(p, 20),
                           "s32": testing.spmm_s32(x, p).tolist()}
print(json.dumps({"info": sparsecpu.info(), "levels": testing.levels(), "runs": runs}))
"""


@pytest.mark.parametrize("isa_env", ["", "amx"], ids=["default", "SPARSECPU_ISA=amx"])
def test_amx_permission_refused_falls_back(isa_env, tmp_path):
    """SPARSECPU_AMX_PERMISSION=deny makes the tile-data permission count as refused (as Linux refuses
    it): dispatch never picks an AMX kernel natively, the level stops below amx, info() and `sparsecpu
    info` say why, and the emulated amx level (no tile instruction runs) still works and agrees."""
    r = _python(_DENIED, tmp_path, SPARSECPU_AMX_PERMISSION="deny", SPARSECPU_ISA=isa_env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    d = out["info"]
    assert d["amx"].startswith("not used: ")
    assert d["detected_isa"] != "amx" and d["isa"] == d["detected_isa"]
    assert "amx" not in out["levels"]
    assert not any("amx" in name for name in d["kernels"].values()), d["kernels"]
    native = out["runs"]["amx"]
    assert native["isa"] == d["detected_isa"] and "amx" not in native["kernel"]
    if "amx:emulated" in out["levels"]:
        emulated = out["runs"]["amx:emulated"]
        assert emulated["kernel"] == "gemm_s8_32x32__amx:emulated"
        assert emulated["s32"] == native["s32"]
    here = sparsecpu.info()
    if here["amx"] == "available":
        # This machine uses AMX without the variable: the refused permission is what stopped it.
        assert "SPARSECPU_AMX_PERMISSION=deny" in d["amx"], d["amx"]
        assert d["detected_isa"] == "avx512_vnni"
    else:
        assert d["amx"] == here["amx"], "the reason that already applies here comes first"
    cli = _python(["-m", "sparsecpu", "info"], tmp_path, SPARSECPU_AMX_PERMISSION="deny")
    assert cli.returncode == 0, cli.stderr
    assert f"amx:          {d['amx']}" in cli.stdout


def test_cli_module_info_json(tmp_path):
    r = _python(["-m", "sparsecpu", "info", "--json"], tmp_path)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    expected = sparsecpu.info()
    assert set(d) == set(expected)
    for key in ("vendor", "cpu", "features", "detected_isa", "kernels", "version"):
        assert d[key] == expected[key], key


def test_cli_module_info_text(tmp_path):
    r = _python(["-m", "sparsecpu", "info"], tmp_path, SPARSECPU_ISA="reference")
    assert r.returncode == 0, r.stderr
    assert "active isa:   reference" in r.stdout
    assert f"amx:          {sparsecpu.info()['amx']}" in r.stdout
    assert "spmm_4x1_s8__ref" in r.stdout and sparsecpu.__version__ in r.stdout


def test_cli_usage_errors(tmp_path):
    r = _python(["-m", "sparsecpu"], tmp_path)
    assert r.returncode == 2 and "usage" in r.stderr
    r = _python(["-m", "sparsecpu", "nope"], tmp_path)
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_console_script(tmp_path):
    script = Path(sys.executable).parent / "sparsecpu"
    if not script.exists():
        pytest.skip("the sparsecpu console script is not installed in this environment")
    r = subprocess.run([str(script), "info", "--json"], capture_output=True, text=True, env=_env(), cwd=tmp_path,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["version"] == sparsecpu.__version__
