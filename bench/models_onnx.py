"""BERT in ONNX Runtime: fp32 vs ORT's quantize_dynamic int8 vs sparsecpu-converted, one run.

    python bench/models_onnx.py [--threads 2] [--seq 128] [--batch 1] [--sparsity 0.9] [--repeat 20]
                                [--exporter dynamo|torchscript] [--workdir DIR] [--json FILE]

A BERT-base-config model (random weights; every encoder linear layer pruned in 4x1 blocks to
--sparsity by block magnitude, biases random) is exported with ``torch.onnx.export``, then
  - "ort fp32":             the exported graph as is,
  - "ort quantize_dynamic": ``onnxruntime.quantization.quantize_dynamic`` of the same graph (int8 weights),
  - "sparsecpu int8/fp32":  ``sparsecpu.onnx.convert(..., dtype=...)`` of the same graph,
all in ONNX Runtime with the same thread count, each with ORT's intra-op spinning off and on, timed
round-robin (one call of each per round) so that machine noise hits them alike. Prints medians and
ratios against the two ORT baselines of the same spinning setting.
Needs torch, transformers, onnx, onnxruntime, onnxscript.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Dict, List


def prune_4x1_(weight, sparsity: float) -> None:
    """Zeroes the ``sparsity`` fraction of 4x1 blocks (4 output rows x 1 input column) of an
    ``N x K`` weight with the smallest L2 norm, in place."""
    import torch

    n, k = weight.shape
    g = (n + 3) // 4
    padded = torch.zeros(g * 4, k)
    padded[:n] = weight
    norms = padded.reshape(g, 4, k).norm(dim=1)
    keep = torch.ones(g * k, dtype=torch.bool)
    keep[norms.flatten().argsort()[: int(sparsity * norms.numel())]] = False
    weight.mul_(keep.reshape(g, 1, k).expand(g, 4, k).reshape(g * 4, k)[:n])


def export_bert(path: Path, seq: int, batch: int, sparsity: float, exporter: str = "dynamo") -> None:
    """BERT-base config, encoder linears pruned to ``sparsity``, exported to ``path`` with
    ``torch.onnx.export`` (``exporter``: ``"dynamo"``, torch's default, or ``"torchscript"``)."""
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig()).eval()
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and name.startswith("encoder."):
                prune_4x1_(mod.weight, sparsity)
                mod.bias.normal_(0.0, 0.1)

    class Hidden(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask, return_dict=False)[0]

    ids = torch.randint(0, 30522, (batch, seq))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            torch.onnx.export(Hidden(model).eval(), (ids, torch.ones_like(ids)), str(path),
                              input_names=["input_ids", "attention_mask"], dynamo=True, verbose=False)
        else:
            torch.onnx.export(Hidden(model).eval(), (ids, torch.ones_like(ids)), str(path),
                              input_names=["input_ids", "attention_mask"], dynamo=False, opset_version=17)


def run(threads: int = 2, seq: int = 128, batch: int = 1, sparsity: float = 0.9, repeat: int = 20,
        workdir: Path = None, exporter: str = "dynamo", progress=print) -> List[Dict]:
    """Builds the four models in ``workdir`` and times them; returns one record per model."""
    import numpy as np
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    import sparsecpu.onnx

    workdir = Path(workdir or tempfile.mkdtemp(prefix="sparsecpu-bench-onnx-"))
    src = workdir / "bert.onnx"
    progress(f"exporting BERT-base ({sparsity:.0%} of 4x1 blocks pruned, {exporter} exporter) to {src}")
    export_bert(src, seq, batch, sparsity, exporter)
    models = {"ort fp32": src}
    progress("quantize_dynamic")
    models["ort quantize_dynamic"] = workdir / "bert.qdq.onnx"
    quantize_dynamic(str(src), str(models["ort quantize_dynamic"]), weight_type=QuantType.QInt8)
    for dtype in ("int8", "fp32"):
        dst = workdir / f"bert.sparse-{dtype}.onnx"
        report = sparsecpu.onnx.convert(src, dst, dtype=dtype)
        progress(f"sparsecpu convert --dtype {dtype}: {len(report.converted)} of {len(report.nodes)} MatMul/Gemm converted")
        models[f"sparsecpu {dtype}"] = dst

    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(0, 30522, (batch, seq)).astype(np.int64),
             "attention_mask": np.ones((batch, seq), np.int64)}
    # Every model under both settings of ORT's intra-op spinning (its default is on;
    # sparsecpu.onnx.session turns it off), each session otherwise configured alike.
    sessions = {}
    for spinning in (False, True):
        for name, path in models.items():
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
            if name.startswith("sparsecpu"):
                so.register_custom_ops_library(sparsecpu.onnx.library_path())
            sessions[(name, spinning)] = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    outputs = {key: s.run(None, feeds)[0] for key, s in sessions.items()}  # warm-up
    for s in sessions.values():
        s.run(None, feeds)
    times = {key: [] for key in sessions}
    progress(f"timing {repeat} rounds")
    for _ in range(repeat):
        for key, s in sessions.items():
            t = time.perf_counter()
            s.run(None, feeds)
            times[key].append(time.perf_counter() - t)
    ref = outputs[("ort fp32", False)].ravel().astype(np.float64)
    records = []
    for (name, spinning), ts in times.items():
        out = outputs[(name, spinning)].ravel().astype(np.float64)
        records.append({
            "model": name,
            "spinning": spinning,
            "median_ms": 1e3 * statistics.median(ts),
            "min_ms": 1e3 * min(ts),
            "cosine_vs_fp32": float(out @ ref / (np.linalg.norm(out) * np.linalg.norm(ref))),
            "bytes": sum(p.stat().st_size for p in workdir.glob(Path(models[name]).name + "*")),
            "threads": threads, "seq": seq, "batch": batch, "sparsity": sparsity, "repeat": repeat,
            "exporter": exporter,
        })
    return records


def format_table(records: List[Dict]) -> str:
    """One row per model and spinning setting; ratios against the ORT baselines of the same setting."""
    by = {(r["model"], r["spinning"]): r for r in records}
    rows = [("model", "ORT spinning", "median ms", "min ms", "vs ort fp32", "vs quantize_dynamic", "cosine vs fp32", "MB")]
    for r in records:
        fp32 = by[("ort fp32", r["spinning"])]["median_ms"]
        q = by[("ort quantize_dynamic", r["spinning"])]["median_ms"]
        rows.append((r["model"], "on" if r["spinning"] else "off", f"{r['median_ms']:.1f}", f"{r['min_ms']:.1f}",
                     f"{fp32 / r['median_ms']:.2f}x", f"{q / r['median_ms']:.2f}x", f"{r['cosine_vs_fp32']:.5f}",
                     f"{r['bytes'] / 1e6:.0f}"))
    w = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(row)) for row in rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--workdir", type=Path, default=None, help="where the models go (default: a new temp dir)")
    p.add_argument("--exporter", choices=["dynamo", "torchscript"], default="dynamo",
                   help="torch.onnx.export's exporter (default: dynamo, torch's default)")
    p.add_argument("--json", metavar="FILE")
    a = p.parse_args(argv)
    import onnxruntime

    import sparsecpu

    records = run(a.threads, a.seq, a.batch, a.sparsity, a.repeat, a.workdir, a.exporter,
                  progress=lambda s: print(s, file=sys.stderr, flush=True))
    d = sparsecpu.info()
    print(f"BERT-base ({a.exporter} export), batch {a.batch}, seq {a.seq}, {a.sparsity:.0%} of 4x1 blocks pruned, {a.threads} threads, "
          f"{a.repeat} rounds; onnxruntime {onnxruntime.__version__}, sparsecpu {d['version']} ({d['isa']}), {d['cpu']}")
    print(format_table(records))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"info": d, "onnxruntime": onnxruntime.__version__, "records": records}, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
