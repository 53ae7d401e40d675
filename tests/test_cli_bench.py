"""``sparsecpu bench kernels`` / ``bench model`` as a user runs them (``python -m sparsecpu`` and the
console script) on tiny cases: exit codes, tables, the JSON file and its header, the PNG, usage errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

import sparsecpu  # noqa: E402
from sparsecpu.bench import DEFAULT_BASELINES  # noqa: E402
from sparsecpu.bench.workers import FACT_KEYS, relevant_env  # noqa: E402
from sparsecpu.cli import main  # noqa: E402

RECORD_KEYS = {"op", "impl", "dtype", "format", "M", "N", "K", "sparsity", "threads", "median_s", "p10_s",
               "p90_s", "repeat", "error"}
HEADER_KEYS = {"cpu", "detected_isa", "isa", "sparsecpu", "torch", "onnxruntime", "date", "command"}


def _env():
    return {k: v for k, v in os.environ.items() if k != "SPARSECPU_ISA"}


def _run(args, tmp_path, script=None):
    cmd = [script, *args] if script else [sys.executable, "-m", "sparsecpu", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=300)


def _check_workers(records, threads):
    """One worker process per implementation, with the command's environment and the threads asked."""
    pids = {}
    for rec in records:
        assert set(FACT_KEYS) <= set(rec)
        if rec["pid"] is None:  # no worker: a package is missing
            assert rec["error"] is not None
            continue
        pids.setdefault(rec["impl"], set()).add(rec["pid"])
        assert rec["env"] == relevant_env(_env())  # e.g. no OMP_WAIT_POLICY unless the command had it
        assert rec["torch_threads"] in (threads, None) and rec["ort_intra_op_threads"] in (threads, None)
        assert (rec["ort_intra_op_threads"] is not None) == ("ort" in rec["impl"] and rec["error"] is None)
        if rec["impl"].startswith("sparsecpu"):
            assert rec["sparsecpu_threads"] == threads and rec["sparsecpu_threading"]
    assert all(len(p) == 1 for p in pids.values()), pids
    assert len({p for ps in pids.values() for p in ps}) == len(pids)


def test_bench_kernels_json_plot_and_table(tmp_path):
    r = _run(["bench", "kernels", "--shapes", "8x16,12x20", "--m", "3", "--sparsity", "0.5,0.75", "--repeat", "2",
              "--threads", "1", "--json", "out.json", "--plot", "out.png"], tmp_path)
    assert r.returncode == 0, r.stderr
    # Progress: one line per case on stderr, then the files.
    assert "[1/4" in r.stderr and "[4/4" in r.stderr and "wrote 28 records to out.json" in r.stderr
    doc = json.loads((tmp_path / "out.json").read_text())
    assert set(doc) == {"header", "records"}
    assert HEADER_KEYS <= set(doc["header"])
    assert doc["header"]["sparsecpu"] == sparsecpu.__version__
    assert doc["header"]["detected_isa"] == sparsecpu.info()["detected_isa"]
    records = doc["records"]
    assert len(records) == 4 * (2 + len(DEFAULT_BASELINES))
    assert {r["impl"] for r in records} == {"sparsecpu_int8", "sparsecpu_fp32", *DEFAULT_BASELINES}
    for rec in records:
        assert RECORD_KEYS <= set(rec), RECORD_KEYS - set(rec)
        assert rec["op"] == "linear" and rec["M"] == 3 and rec["threads"] == 1 and rec["repeat"] == 2
        assert (rec["N"], rec["K"]) in {(8, 16), (12, 20)} and rec["sparsity"] in (0.5, 0.75)
        assert (rec["median_s"] is None) == (rec["error"] is not None)
    assert all(rec["median_s"] > 0 for rec in records if rec["impl"].startswith("sparsecpu"))
    _check_workers(records, threads=1)
    assert all(rec["torch_threads"] == 1 for rec in records if rec["pid"] is not None)
    # % peak: every timed row, against the peak measured in the same run (in the header).
    peak = doc["header"]["peak"]
    assert set(peak) == {"fp32_fma", "int8"}
    for rec in records:
        kind = peak["int8" if rec["dtype"] == "int8" else "fp32_fma"]
        per_core = kind.get("gops", kind.get("gflops"))
        if rec["median_s"] is None or per_core is None:
            assert rec["pct_peak"] is None
        else:
            assert math.isfinite(rec["pct_peak"]) and rec["pct_peak"] > 0
            assert abs(rec["pct_peak"] - 100 * rec["gops_effective"] / per_core) < 1e-6 * rec["pct_peak"]
    assert "peak/core fp32 FMA" in r.stdout.splitlines()[0]
    png = (tmp_path / "out.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # The table: a header, a rule, one row per timed record, the footnote.
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"sparsecpu {sparsecpu.__version__}")
    assert lines[1].startswith("N x K") and "sparsecpu speedup" in lines[1] and "% peak" in lines[1]
    timed = [rec for rec in records if rec["median_s"] is not None]
    assert sum("sparsecpu int8" in line for line in lines) == 4
    assert lines.index(next(line for line in lines if line.startswith("median and p10-p90"))) == 3 + len(timed)


def test_bench_kernels_markdown_filters_and_presets(tmp_path, capsys):
    out = tmp_path / "o.json"
    assert main(["bench", "kernels", "--shapes", "4x8,gpt2", "--m", "1", "--sparsity", "0.9", "--dtype", "fp32",
                 "--baselines", "torch_linear", "--repeat", "1", "--threads", "1", "--markdown", "--json", str(out)]) == 0
    stdout = capsys.readouterr().out
    records = json.loads(out.read_text())["records"]
    shapes = [(rec["N"], rec["K"]) for rec in records if rec["impl"] == "sparsecpu_fp32"]
    assert shapes == [(4, 8), (2304, 768), (768, 768), (3072, 768), (768, 3072)]
    assert {rec["impl"] for rec in records} == {"sparsecpu_fp32", "torch_linear"}
    table = [line for line in stdout.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 2 * 5
    assert len({line.count("|") for line in table}) == 1
    assert "| 2304x768 |" in stdout


@pytest.mark.parametrize("args,message", [
    (["--shapes", "7"], "expected NxK or one of"),
    (["--shapes", "bert-huge"], "expected NxK or one of"),
    (["--baselines", "torch_linear,mkl"], "expected default, all, none or some of"),
    (["--sparsity", "1.5"], "not in [0, 1]"),
    (["--dtype", "bf16"], "int8 and/or fp32"),
    (["--m", "0"], "not positive"),
])
def test_bench_kernels_usage_errors(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "kernels", *args])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_bench_peak_table_and_json(tmp_path):
    r = _run(["bench", "peak", "--runs", "2", "--threads", "3", "--json", "peak.json"], tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "peak.json").read_text())
    assert {"header", "records"} <= set(doc) and HEADER_KEYS - {"torch"} <= set(doc["header"])
    assert doc["header"]["runs"] == 2 and set(doc["header"]["peak"]) == {"fp32_fma", "int8"}
    assert f"wrote {len(doc['records'])} records to peak.json" in r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"sparsecpu {sparsecpu.__version__}") and "threads 3" in lines[0]
    assert lines[1].split()[:3] == ["kind", "isa", "instruction"] and "GOP/s x 3 threads" in lines[1]
    measured = [rec for rec in doc["records"] if rec["gops_per_core"] is not None]
    assert lines[3 + len(measured)].startswith("one op = one multiply or one add")
    native = sparsecpu._C.supported_isas()
    # What it prints is what it writes: one row per measured level, a note per absent one.
    for rec, line in zip(measured, lines[3:]):
        assert rec["isa"] in native and rec["absent"] is None and rec["threads"] == 3
        assert math.isfinite(rec["gops_per_core"]) and rec["gops_per_core"] > 0
        assert abs(rec["gops_threads"] - 3 * rec["gops_per_core"]) < 1e-9 * rec["gops_threads"]
        assert rec["isa"] in line.split() and rec["instruction"] in line
        assert f"{rec['gops_per_core']:.1f}" in line and f"{rec['gops_threads']:.1f}" in line
        assert (" *" in line) == rec["best"]
    for rec in doc["records"]:
        if rec["gops_per_core"] is None:
            assert rec["isa"] not in native and rec["absent"] in r.stdout.replace("\n  ", " ")
    assert sum(rec["best"] for rec in doc["records"]) == len({rec["kind"] for rec in measured})


def test_bench_peak_without_torch(tmp_path):
    # bench peak needs neither torch nor the kernel benchmark: run it with `import torch` failing.
    code = ("import sys; sys.modules['torch'] = None; from sparsecpu.cli import main; "
            "sys.exit(main(['bench', 'peak', '--runs', '1', '--markdown']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "| kind" in r.stdout and "| int8" in r.stdout


def _tiny_bert(path: Path) -> str:
    transformers = pytest.importorskip("transformers")
    transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                            vocab_size=97, max_position_embeddings=32).save_pretrained(str(path))
    return str(path)


def test_bench_model_tiny_config(tmp_path):
    model = _tiny_bert(tmp_path / "tiny")
    r = _run(["bench", "model", "--model", model, "--sparsity", "0.5", "--seq", "8", "--batch", "2", "--threads", "1",
              "--repeat", "2", "--json", "m.json"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "forward pass" in r.stdout and "torch fp32" in r.stdout and "speedup vs torch fp32" in r.stdout
    assert "pruned" in r.stderr and "timing the forward pass" in r.stderr
    doc = json.loads((tmp_path / "m.json").read_text())
    assert HEADER_KEYS <= set(doc["header"])
    recs = {rec["impl"]: rec for rec in doc["records"]}
    assert set(recs) == {"torch_fp32", "torch_dynamic_int8", "sparsecpu_torch_fp32", "sparsecpu_torch_int8",
                         "ort_fp32", "ort_dynamic_int8", "sparsecpu_ort_fp32", "sparsecpu_ort_int8"}
    for rec in recs.values():
        assert RECORD_KEYS <= set(rec)
        assert rec["op"] == "model" and rec["M"] == 16 and rec["batch"] == 2 and rec["seq"] == 8
        assert (rec["median_s"] is None) == (rec["error"] is not None)
    assert recs["torch_fp32"]["median_s"] > 0 and recs["torch_dynamic_int8"]["median_s"] > 0
    _check_workers(doc["records"], threads=1)
    for name in ("ort_fp32", "ort_dynamic_int8"):  # run, or say why not
        assert recs[name]["median_s"] is not None or "onnx" in recs[name]["error"]
    # Rows that did not run are listed with the reason.
    for rec in recs.values():
        if rec["error"]:
            assert "not run:" in r.stdout and rec["error"] in r.stdout


def test_bench_model_unknown_model(capsys):
    pytest.importorskip("transformers")
    assert main(["bench", "model", "--model", "bert-huge"]) == 2
    err = capsys.readouterr().err
    assert "bert-huge" in err and "bert-base" in err


def test_console_script_bench(tmp_path):
    script = Path(sys.executable).parent / "sparsecpu"
    if not script.exists():
        pytest.skip("the sparsecpu console script is not installed in this environment")
    r = _run(["bench", "kernels", "--shapes", "8x8", "--m", "2", "--sparsity", "0.5", "--repeat", "1",
              "--baselines", "none", "--json", "s.json"], tmp_path, script=str(script))
    assert r.returncode == 0, r.stderr
    records = json.loads((tmp_path / "s.json").read_text())["records"]
    assert {rec["impl"] for rec in records} == {"sparsecpu_int8", "sparsecpu_fp32"}
