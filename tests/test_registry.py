"""Every registered kernel this machine can run is run, at its own level, and checked against the
reference: the registry is the list of what must be tested, so a kernel added to kernels.inc cannot
go untested. Native entries run where the CPU has their level; each AVX-512 and AMX entry also has an
emulated build (for AVX2: SIMDe, and the tile machine for AMX) that runs on any AVX2 CPU, and on a CPU
with the level natively the two builds are checked against each other here too."""

from __future__ import annotations

import re

import numpy as np
import pytest

import _util
import sparsecpu
from sparsecpu import _C, testing

NATIVE = testing.supported_isas()
RUNNABLE = set(testing.levels())


def _target(entry: dict) -> str:
    return f"{entry['isa']}:emulated" if entry["emulated"] else entry["isa"]


ENTRIES = _C.kernel_registry()
RUN_HERE = [e for e in ENTRIES if _target(e) in RUNNABLE]


def test_registry_is_ordered_and_complete():
    ops = {}
    for e in ENTRIES:
        ops.setdefault(e["op"], []).append(e)
    assert sorted(ops) == sorted(_C.kernel_ops()), "every op of csrc/kernels/ops.inc has kernels, and no other"
    assert set(ops) == set(sparsecpu.info()["kernels"])
    order = ["reference", "avx2", "avx512", "avx512_vnni", "amx"]
    for op, entries in ops.items():
        natives = [e for e in entries if not e["emulated"]]
        # Best first, the reference last, one native kernel per level (a second would never be picked).
        ranks = [order.index(e["isa"]) for e in natives]
        assert ranks == sorted(ranks, reverse=True) and len(set(ranks)) == len(ranks), (op, natives)
        assert natives[-1]["isa"] == "reference" and natives[-1]["name"].endswith("__ref")
        # Each AVX-512 / AMX kernel has its emulated build right after it, and nothing else is emulated.
        for i, e in enumerate(entries):
            if e["emulated"]:
                prev = entries[i - 1]
                assert not prev["emulated"] and prev["isa"] == e["isa"] and e["name"] == prev["name"] + ":emulated"
            elif e["isa"] in ("avx512", "avx512_vnni", "amx"):
                assert entries[i + 1]["name"] == e["name"] + ":emulated"


# The SpMM ops: their kernels read K-major activations a tile of `rows` at a time, in the slab order of their
# vector lanes.
SPMM_OPS = {"spmm_s8", "spmm_f32"}


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["name"] for e in ENTRIES])
def test_name_spells_the_registered_tile(entry):
    """<what>_<rows>x<channels>__<isa>: the tile in a kernel's name is the one it registers, rows first."""
    tile = re.search(r"_(\d+)x(\d+)__", entry["name"])
    if tile:
        assert (entry["rows"], entry["channels"]) == (int(tile[1]), int(tile[2])), entry
    elif entry["op"] in SPMM_OPS:
        # The reference SpMM kernels stand in for a 16-row tile (a call's rows) with 4-lane "vectors".
        assert (entry["rows"], entry["channels"], entry["lanes"]) == (16, 4, 4), entry
    else:
        assert (entry["rows"], entry["channels"]) == (0, 0), entry
    if entry["op"] in SPMM_OPS:
        assert entry["channels"] == 4 and entry["lanes"] > 0 and entry["rows"] % entry["lanes"] == 0, entry
    else:
        assert entry["lanes"] == 0, entry


# Ops with AMX kernels only. The panel format's runs its reference below the amx level (the format is
# packed for the AMX tiles; a machine without them uses bsr or dense); a bf16 attention request runs the
# fp32 attention kernel there.
AMX_ONLY_OPS = {"spmm_panel_s8", "attention_bf16"}


def test_every_level_has_its_own_kernels():
    """At an AVX-512 level (native or emulated) every op runs an AVX-512 kernel, not an AVX2 one."""
    for op in sparsecpu.info()["kernels"]:
        levels = {e["isa"] for e in ENTRIES if e["op"] == op and not e["emulated"]}
        if op in AMX_ONLY_OPS:
            assert levels == {"reference", "amx"}, (op, levels)
            continue
        assert {"reference", "avx2", "avx512"} <= levels, (op, levels)


# ---------------------------------------------------------------------------------------------
# One representative call per op, at the entry's level; the reference level's result is the answer.


def _pruned(rng, n, k, density=0.4):
    w, _ = _util.pruned_weight(rng, n, k, 1.0 - density)
    return w


def _int8_bsr(rng, m):
    p = sparsecpu.pack(_pruned(rng, 37, 70), dtype="int8", format="bsr")
    x = rng.standard_normal((m, 70)).astype(np.float32)
    return lambda: testing.spmm_s32(x, p)


def _fp32_bsr(rng, m):
    p = sparsecpu.pack(_pruned(rng, 37, 70), dtype="fp32")
    x = rng.standard_normal((m, 70)).astype(np.float32)
    return lambda: sparsecpu.linear(x, p, activation="gelu")


def _int8_dense(rng):
    p = sparsecpu.pack(rng.standard_normal((37, 70)).astype(np.float32), dtype="int8", format="dense")
    x = rng.standard_normal((13, 70)).astype(np.float32)
    return lambda: testing.spmm_s32(x, p)


def _int8_panel(rng):
    p = sparsecpu.pack(_pruned(rng, 37, 150), dtype="int8", format="panel")
    x = rng.standard_normal((21, 150)).astype(np.float32)
    return lambda: testing.spmm_s32(x, p)


def _outliers(rng):
    p = sparsecpu.pack(_pruned(rng, 37, 70), dtype="int8", format="bsr", outlier_threshold=3.0)
    x = rng.standard_normal((70, 70)).astype(np.float32)
    x[:, [3, 40]] *= 8.0
    return lambda: sparsecpu.linear(x, p, activation="gelu")


def _residual_norm(rng):
    p = sparsecpu.pack(_pruned(rng, 37, 70), dtype="fp32")
    x = rng.standard_normal((70, 70)).astype(np.float32)
    r = rng.standard_normal((70, 37)).astype(np.float32)
    gamma = rng.standard_normal(37).astype(np.float32)

    def call():
        out = np.empty((70, 37), np.float32)
        _C.linear(x, p.buffer, None, None, out, False, residual=r, norm=True, norm_weight=gamma)
        return out

    return call


def _attention(rng, precision="fp32"):
    q, k, v = (rng.standard_normal((2, 3, 21, 40)).astype(np.float32) for _ in range(3))
    mask = np.where(rng.random((2, 1, 21, 21)) < 0.2, -1e4, 0.0).astype(np.float32)
    return lambda: _C.attention(q, k, v, None, mask, 40 ** -0.5, precision)


CALLS = {
    "spmm_s8": lambda rng: _int8_bsr(rng, 70),
    "quant_u8": lambda rng: _int8_bsr(rng, 70),
    "spmm_s8_skinny": lambda rng: _int8_bsr(rng, 3),
    "quant_u8_rows": lambda rng: _int8_bsr(rng, 5),
    "gemm_s8": _int8_dense,
    "spmm_f32": lambda rng: _fp32_bsr(rng, 70),
    "transpose_f32": lambda rng: _fp32_bsr(rng, 70),
    "spmm_f32_skinny": lambda rng: _fp32_bsr(rng, 6),
    "add_act_f32": _outliers,
    "add_norm_f32": _residual_norm,
    "attention_f32": _attention,
    "spmm_panel_s8": _int8_panel,
    "attention_bf16": lambda rng: _attention(rng, "bf16"),
}
EXACT = {"spmm_s8", "quant_u8", "spmm_s8_skinny", "quant_u8_rows", "gemm_s8", "spmm_panel_s8"}


def test_every_op_has_a_call():
    assert set(CALLS) == set(_C.kernel_ops())


@pytest.mark.parametrize("entry", RUN_HERE, ids=[e["name"] for e in RUN_HERE])
def test_registered_kernel_runs_and_matches_reference(entry):
    call = CALLS[entry["op"]](np.random.default_rng(7))
    with testing.isa("reference"):
        want = call()
    others = {e["name"] for e in ENTRIES if e["op"] == entry["op"] and e["name"] != entry["name"]}
    before = testing.kernel_calls()
    with testing.isa(_target(entry)):
        got = call()
    after = testing.kernel_calls()
    assert after[entry["name"]] > before[entry["name"]], f"{entry['name']} did not run at {_target(entry)}"
    assert all(after[n] == before[n] for n in others), "another kernel of the op ran"
    if entry["op"] in EXACT:
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)
    assert np.count_nonzero(got) > got.size // 2, "mostly zeros: the check proves nothing"


@pytest.mark.parametrize("level", ["avx512", "avx512_vnni", "amx"])
def test_native_and_emulated_builds_agree(level):
    """On a CPU with the level natively: the native and the emulated build of the same source give
    the same integers, and floats within a few ulps (SIMDe's rcp14 and exp may differ in the last bits)."""
    if level not in NATIVE:
        pytest.skip(f"this CPU has no native {level}: only the emulated build runs here")
    for op, make in sorted(CALLS.items()):
        call = make(np.random.default_rng(11))
        with testing.isa(level):
            native = call()
        with testing.isa(level, emulated=True):
            emulated = call()
        if op in EXACT:
            np.testing.assert_array_equal(native, emulated, err_msg=op)
        else:
            np.testing.assert_allclose(native, emulated, rtol=1e-5, atol=1e-5, err_msg=op)
