"""The benchmark harness (sparsecpu.bench) on tiny cases: pruning, implementation set-up and checks,
interleaved timing, one worker process per implementation, record schema, tables, plot. No test
asserts a timing."""

from __future__ import annotations

import math
import os
import signal

import pytest

import _util

torch = pytest.importorskip("torch")

import sparsecpu  # noqa: E402
from sparsecpu import bench  # noqa: E402
from sparsecpu.bench import _ort, kernels  # noqa: E402
from sparsecpu.bench import peak as peak_mod  # noqa: E402
from sparsecpu.bench import workers as workers_mod  # noqa: E402

KERNEL_KEYS = {"op": str, "impl": str, "dtype": str, "format": str, "M": int, "N": int, "K": int,
               "sparsity": float, "threads": int, "repeat": int}
TIMING_KEYS = ("median_s", "p10_s", "p90_s", "gops_effective", "gops_dense")
HAVE_ORT = _ort.missing() is None


def _blocks(w: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(_util.kept_blocks(w))


@pytest.mark.parametrize("n,k,sparsity", [(8, 16, 0.5), (7, 9, 0.9), (12, 5, 0.0), (4, 3, 1.0)])
def test_pruned_weight_zeroes_whole_blocks(n, k, sparsity):
    w = bench.pruned_weight(n, k, sparsity, seed=3)
    kept = _blocks(w)
    assert int((~kept).sum()) == round(sparsity * kept.numel())
    # Inside a kept block every entry is a (nonzero) normal sample; a dropped block is all zero.
    expanded = kept.repeat_interleave(4, dim=0)[:n]
    assert bool((w[expanded] != 0).all()) and bool((w[~expanded] == 0).all())
    assert torch.equal(w, bench.pruned_weight(n, k, sparsity, seed=3))


def test_pruned_weight_rejects_bad_sparsity():
    with pytest.raises(ValueError, match="sparsity"):
        bench.pruned_weight(4, 4, 1.5)


def test_build_impls_sets_up_and_checks_every_implementation():
    impls = bench.build_impls(12, 16, 5, 0.5, baselines=bench.BASELINES, threads=1)
    names = [im.name for im in impls]
    assert names == [i.name for i in bench.IMPLS]  # table / round-robin order, all of them
    by = {im.name: im for im in impls}
    for name in ("sparsecpu_int8", "sparsecpu_fp32", "torch_linear", "torch_dynamic_int8", "torch_csr"):
        assert by[name].fn is not None and by[name].error is None, (name, by[name].error)
    if HAVE_ORT:
        assert by["ort_fp32"].fn is not None and by["ort_int8"].fn is not None
    assert by["sparsecpu_int8"].format == "bsr_4x1" and by["torch_csr"].format == "csr"
    # Work counted: dense 2*M*N*K; sparse only what is stored (kept 4x1 blocks, nonzeros for CSR).
    w = bench.pruned_weight(12, 16, 0.5)
    assert by["torch_linear"].ops == 2 * 5 * 12 * 16
    assert by["sparsecpu_fp32"].ops == 2 * 5 * 4 * int(_blocks(w).sum())
    assert by["torch_csr"].ops == 2 * 5 * int((w != 0).sum())
    # dtype and baseline filters.
    only = bench.build_impls(12, 16, 5, 0.5, dtypes=["fp32"], baselines=["torch_linear"])
    assert [im.name for im in only] == ["sparsecpu_fp32", "torch_linear"]
    with pytest.raises(ValueError, match="baselines"):
        bench.build_impls(4, 4, 1, 0.5, baselines=["nope"])
    with pytest.raises(ValueError, match="dtypes"):
        bench.build_impls(4, 4, 1, 0.5, dtypes=["bf16"])


def test_build_impls_refuses_a_wrong_sparsecpu_kernel(monkeypatch):
    monkeypatch.setattr(sparsecpu, "linear", lambda x, p: torch.zeros(x.shape[0], p.shape[0]))
    with pytest.raises(RuntimeError, match="sparsecpu_int8 output differs from F.linear"):
        bench.build_impls(8, 8, 4, 0.5, baselines=[])


def _csr_off_by_2x():
    """Patches ``kernels._setup`` (here, or in a worker as its initializer): torch_csr's output 2x off."""
    real_setup = kernels._setup

    def setup(name, w, x, threads):
        fn, fmt, ops, to_output = real_setup(name, w, x, threads)
        return fn, fmt, ops, (lambda y: 2 * to_output(y)) if name == "torch_csr" else to_output

    kernels._setup = setup


def _faults():
    """A worker initializer. 8-row weight: torch_csr's output 2x off, torch_linear's worker killed while
    it sets up. 12-row weight: torch_linear raising while it sets up, torch_csr's worker exiting at its
    first call after the output check (while timed)."""
    real_setup = kernels._setup

    def setup(name, w, x, threads):
        n = w.shape[0]
        if name == "torch_linear":
            if n == 8:
                os.kill(os.getpid(), signal.SIGKILL)
            raise ValueError("injected set-up failure")
        fn, fmt, ops, to_output = real_setup(name, w, x, threads)
        if name == "torch_csr" and n == 8:
            return fn, fmt, ops, lambda y: 2 * to_output(y)
        if name == "torch_csr":
            calls = []

            def dying():
                calls.append(1)
                if len(calls) > 1:
                    os._exit(3)
                return fn()

            return dying, fmt, ops, to_output
        return fn, fmt, ops, to_output

    kernels._setup = setup


def test_wrong_or_unavailable_baselines_are_reported_not_timed(monkeypatch):
    monkeypatch.setattr(_ort, "missing", lambda: "onnxruntime is not installed (pip install onnxruntime)")
    monkeypatch.setattr(kernels, "_setup", kernels._setup)
    _csr_off_by_2x()
    impls = {im.name: im for im in bench.build_impls(8, 8, 4, 0.5, dtypes=["fp32"],
                                                      baselines=["ort_fp32", "torch_csr", "torch_linear"])}
    assert impls["ort_fp32"].fn is None and "onnxruntime is not installed" in impls["ort_fp32"].error
    assert impls["torch_csr"].fn is None and "output differs from F.linear" in impls["torch_csr"].error
    assert impls["torch_linear"].fn is not None and impls["sparsecpu_fp32"].fn is not None


def test_failing_workers_are_reported_and_the_others_go_on(monkeypatch):
    # Each implementation runs in its own worker: the faults are injected there (the initializer), and
    # a missing package is found here, before any worker starts.
    monkeypatch.setattr(_ort, "missing", lambda: "onnxruntime is not installed (pip install onnxruntime)")
    monkeypatch.setenv("SPARSECPU_BENCH_TEST_MARKER", "1")  # the parent's environment reaches every worker
    records = bench.run_kernel_cases([(8, 8), (12, 8)], [4], [0.5], ["fp32"], [1], repeat=2,
                                     baselines=["ort_fp32", "torch_csr", "torch_linear"], initializer=_faults)
    by = {(r["N"], r["impl"]): r for r in records}
    assert [r["impl"] for r in records] == ["sparsecpu_fp32", "torch_linear", "torch_csr", "ort_fp32"] * 2
    for n in (8, 12):
        assert by[n, "sparsecpu_fp32"]["error"] is None and by[n, "sparsecpu_fp32"]["median_s"] > 0
        assert "onnxruntime is not installed" in by[n, "ort_fp32"]["error"]
        assert by[n, "ort_fp32"]["pid"] is None  # no worker was started for it
    assert "output differs from F.linear" in by[8, "torch_csr"]["error"]
    assert by[12, "torch_csr"]["error"].startswith("failed while timed: worker process")
    assert by[12, "torch_csr"]["error"].endswith("(torch_csr) exited with status 3")
    assert by[8, "torch_linear"]["error"].endswith("(torch_linear) was killed by SIGKILL")
    # The next case gets a fresh worker, which answers.
    assert by[12, "torch_linear"]["error"] == "ValueError: injected set-up failure"
    assert by[12, "torch_linear"]["pid"] != by[8, "torch_linear"]["pid"]
    for r in records:
        assert (r["median_s"] is None) == (r["error"] is not None), r
        if r["torch_threads"] is not None:  # the worker could answer
            assert r["env"]["SPARSECPU_BENCH_TEST_MARKER"] == "1" and r["torch_threads"] == 1
    table = bench.kernel_table(records)
    assert "not timed: ORT MatMul fp32: onnxruntime is not installed" in table
    assert "not timed: torch CSR: output differs" in table


def test_time_interleaved_round_robin():
    order = []
    fns = {name: (lambda name=name: order.append(name)) for name in "abc"}
    t = bench.time_interleaved(fns, repeat=3, min_time=0.0, settle=0.0)
    assert set(t) == set("abc")
    for timing in t.values():
        assert 0 < timing.p10_s <= timing.median_s <= timing.p90_s and timing.calls_per_repeat == 1
    # Warm-up of each callable in turn (2 settle calls + 1 calibration call), then each repeat visits
    # a, b, c in turn, each batch (1 call) after its 2 settle calls.
    assert "".join(order) == "aaabbbccc" * 4
    order.clear()
    rounds = []
    bench.time_interleaved(fns, repeat=2, min_time=0.0, settle=0.0, settle_by_calls=False, progress=rounds.append)
    assert "".join(order) == "aaabbbccc" + "abc" * 2 and rounds == [1, 2]
    with pytest.raises(ValueError, match="repeat"):
        bench.time_interleaved(fns, repeat=0)


@pytest.fixture(scope="module")
def records():
    return bench.run_kernel_cases([(8, 16), (12, 20)], [3], [0.5, 0.75], threads=[1], repeat=2,
                                  baselines=bench.BASELINES)


def test_kernel_records_schema(records):
    impls = [i.name for i in bench.IMPLS]
    assert len(records) == 2 * 2 * len(impls)
    for r in records:
        for key, typ in KERNEL_KEYS.items():
            assert isinstance(r[key], typ), (key, r[key])
        assert set(workers_mod.FACT_KEYS) <= set(r)
        assert r["op"] == "linear" and r["impl"] in impls and r["threads"] == 1 and r["repeat"] == 2
        if r["error"] is None:
            assert 0 < r["p10_s"] <= r["median_s"] <= r["p90_s"]
            assert r["gops_dense"] == pytest.approx(2 * r["M"] * r["N"] * r["K"] / r["median_s"] / 1e9)
            assert 0 < r["gops_effective"] <= r["gops_dense"] * (1 + 1e-9)
            # % peak: the work performed over the per-core peak of the dtype's kind x threads.
            per_core = bench.machine_peak()["int8" if r["dtype"] == "int8" else "fp32_fma"]
            per_core = per_core.get("gops", per_core.get("gflops"))
            if per_core is not None:
                assert math.isfinite(r["pct_peak"]) and r["pct_peak"] > 0
                assert r["pct_peak"] == pytest.approx(100 * r["gops_effective"] / (per_core * r["threads"]))
        else:
            assert all(r[k] is None for k in TIMING_KEYS), r
            assert r["pct_peak"] is None
    # speedup: a baseline's median / sparsecpu's of the same dtype, from the same case.
    for r in records:
        ours = next(o for o in records if o["impl"] == f"sparsecpu_{r['dtype']}"
                    and (o["N"], o["K"], o["sparsity"]) == (r["N"], r["K"], r["sparsity"]))
        if r["impl"].startswith("sparsecpu") or r["median_s"] is None:
            assert r["speedup"] is None
        else:
            assert r["speedup"] == pytest.approx(r["median_s"] / ours["median_s"])


def test_each_implementation_runs_in_its_own_worker_at_its_defaults(records):
    # One worker per implementation (one pid each, kept for every case), none of them this process.
    pids = {}
    for r in records:
        if r["pid"] is not None:
            pids.setdefault(r["impl"], set()).add(r["pid"])
    assert set(pids) == {i.name for i in bench.IMPLS if not (i.name.startswith("ort_") and not HAVE_ORT)}
    assert all(len(p) == 1 for p in pids.values()), pids
    assert len({p for ps in pids.values() for p in ps} | {os.getpid()}) == len(pids) + 1
    parent_env = workers_mod.relevant_env()
    for r in records:
        if r["pid"] is None:  # onnxruntime missing: no worker
            assert r["impl"].startswith("ort_") and not HAVE_ORT
            continue
        # The threads asked (1) in torch; nothing else set: the worker's environment is this one's.
        assert r["torch_threads"] == 1 and isinstance(r["torch_interop_threads"], int)
        assert r["env"] == parent_env
        assert ("OMP_WAIT_POLICY" in r["env"]) == ("OMP_WAIT_POLICY" in os.environ)
        assert isinstance(r["sparsecpu_threads"], int) and isinstance(r["sparsecpu_threading"], str)
        if r["impl"].startswith("sparsecpu_"):
            # torch is loaded there as here: sparsecpu runs where it runs in this process.
            assert r["sparsecpu_threads"] == 1 and r["sparsecpu_threading"] == sparsecpu.info()["threading"]
        if r["impl"].startswith("ort_"):
            assert r["ort_intra_op_threads"] == 1
        else:
            assert r["ort_intra_op_threads"] is None


def _append(state, path, name):
    """A worker set-up for the round-robin test: each call appends ``name`` to the file ``path``."""

    def fn():
        with open(path, "a") as f:
            f.write(name)

    state["fns"]["f"] = fn


def test_workers_are_timed_round_robin(tmp_path):
    order = tmp_path / "order"
    path = str(order)
    ws = {name: workers_mod.Worker(name, 1, use_torch=False) for name in "ab"}
    try:
        setups = workers_mod.run_all(ws, {name: (_append, dict(path=path, name=name)) for name in ws}, jobs=2)
        assert setups == {"a": None, "b": None}
        assert not order.exists()  # set up, not called
        timings, errors = workers_mod.time_round_robin(ws, "f", repeat=3, min_time=0.0, settle=0.0)
        assert errors == {} and set(timings) == {"a", "b"}
        assert all(t.calls_per_repeat == 1 and 0 < t.p10_s <= t.median_s <= t.p90_s for t in timings.values())
        # As in one process: warm-up of each worker in turn, then repeat r of a, of b, then repeat r + 1.
        assert order.read_text() == "aaabbb" * 4
        facts = {name: w.facts() for name, w in ws.items()}
        assert facts["a"]["pid"] != facts["b"]["pid"] and os.getpid() not in (facts["a"]["pid"], facts["b"]["pid"])
        with pytest.raises(workers_mod.WorkerError, match="KeyError"):
            ws["a"].call("batch", "nope", 1, 0.0, True)
    finally:
        for w in ws.values():
            w.close()
    assert not any(w.process.is_alive() for w in ws.values())


def test_kernel_table_text_and_markdown(records):
    text = bench.kernel_table(records)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["N", "x", "K"] and set(lines[1]) == {"-", " "}
    assert "% peak" in lines[0] and "% peak: GOP/s / (this machine's per-core" in text
    for r in timed_records(records):
        if r["pct_peak"] is not None:
            assert f"{r['pct_peak']:.1f}" in text
    timed = [r for r in records if r["median_s"] is not None]
    assert sum(1 for line in lines if "sparsecpu int8" in line) == 4
    for r in timed:
        assert f"{r['median_s'] * 1e6:.1f}" in text
    md = bench.kernel_table(records, markdown=True).split("\n\n")[0].splitlines()
    assert len(md) == 2 + len(timed)
    assert all(line.startswith("| ") and line.endswith(" |") for line in md)
    assert all(cell.strip().strip(":").replace("-", "") == "" and len(cell.strip()) >= 3 for cell in md[1].split("|")[1:-1])
    assert len({line.count("|") for line in md}) == 1


def timed_records(records):
    return [r for r in records if r["median_s"] is not None]


def test_kernel_table_reads_records_without_pct_peak(records):
    old = [{k: v for k, v in r.items() if k != "pct_peak"} for r in records]  # e.g. an older JSON file
    row = next(line for line in bench.kernel_table(old).splitlines() if "sparsecpu int8" in line)
    assert "n/a" in row


# The per-core peaks: measured on every level the CPU has natively, absent with the reason elsewhere.
PEAK_LEVELS = {"fp32_fma": {"avx2": 16, "avx512": 32}, "int8": {"avx2": 32, "avx512": 64, "avx512_vnni": 128}}


def test_peak_measures_native_levels_and_names_the_absent_ones():
    native = sparsecpu._C.supported_isas()  # reference .. the CPU's best, whatever SPARSECPU_ISA says
    peak = sparsecpu._C.peak(runs=2)
    assert set(peak) == set(PEAK_LEVELS)
    for kind, levels in PEAK_LEVELS.items():
        unit = "gflops" if kind == "fp32_fma" else "gops"
        entry = peak[kind]
        assert list(entry["levels"]) == list(levels)
        for isa, ops in levels.items():
            level = entry["levels"][isa]
            assert level["isa"] == isa and level["ops_per_instruction"] == ops and level["instruction"]
            if isa in native:
                assert "absent" not in level, level
                assert math.isfinite(level[unit]) and level[unit] > 0 and level["seconds"] > 0
            else:
                assert unit not in level
                assert level["absent"].startswith(f"no {isa} on this CPU"), level
        measured = [isa for isa in levels if isa in native]
        if measured:  # the best native level's figures, the ones % peak uses
            assert entry["isa"] == measured[-1] and "absent" not in entry
            assert {k: v for k, v in entry.items() if k != "levels"} == entry["levels"][measured[-1]]
        else:
            assert entry["isa"] is None and entry["absent"].startswith("no avx2 on this CPU")
    with pytest.raises(ValueError, match="runs"):
        sparsecpu._C.peak(runs=0)
    with pytest.raises(ValueError, match="runs"):
        peak_mod.measure(0)


def test_peak_is_measured_once_and_copied():
    a = bench.machine_peak()
    a["int8"]["gops"] = -1.0
    assert bench.machine_peak()["int8"].get("gops") != -1.0


def test_percent_of_peak_and_records():
    peak = {"fp32_fma": {"isa": "avx2", "gflops": 100.0, "instruction": "vfmadd231ps ymm",
                         "ops_per_instruction": 16.0,
                         "levels": {"avx2": {"isa": "avx2", "gflops": 100.0, "instruction": "vfmadd231ps ymm",
                                             "ops_per_instruction": 16.0},
                                    "avx512": {"isa": "avx512", "instruction": "vfmadd231ps zmm",
                                               "ops_per_instruction": 32.0, "absent": "no avx512 on this CPU"}}},
            "int8": {"isa": None, "absent": "no avx2 on this CPU", "levels": {}}}
    assert bench.percent_of_peak(50.0, "fp32", 2, peak) == pytest.approx(25.0)
    assert bench.percent_of_peak(None, "fp32", 2, peak) is None
    assert bench.percent_of_peak(50.0, "int8", 2, peak) is None  # no int8 level here
    with pytest.raises(ValueError, match="dtype"):
        bench.percent_of_peak(1.0, "bf16", 1, peak)
    recs = peak_mod.peak_records(peak, 4)
    assert [(r["kind"], r["isa"], r["best"], r["gops_threads"]) for r in recs] == [
        ("fp32_fma", "avx2", True, 400.0), ("fp32_fma", "avx512", False, None)]
    table = bench.peak_table(peak, 4, runs=3)
    assert "avx2 *" in table and "400.0" in table and "absent: fp32 FMA avx512" in table
    assert peak_mod.peak_summary(peak) == "peak/core fp32 FMA 100.0 GFLOP/s (avx2), int8 n/a"


def test_plot_writes_a_png(records, tmp_path):
    path = tmp_path / "speedup.png"
    bench.plot_speedups(records, str(path))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    with pytest.raises(ValueError, match="nothing to plot"):
        bench.plot_speedups([r for r in records if r["impl"].startswith("sparsecpu")], str(tmp_path / "x.png"))


def test_environment_header():
    env = bench.environment(["sparsecpu", "bench"])
    info = sparsecpu.info()
    assert env["cpu"] == info["cpu"] and env["detected_isa"] == info["detected_isa"]
    assert env["sparsecpu"] == sparsecpu.__version__ and env["torch"] == torch.__version__
    assert env["command"] == ["sparsecpu", "bench"]
    assert "onnxruntime" in env and "date" in env
