"""Benchmark of the dense int8 GEMM, the skinny-M kernels and the outlier check (issue 3), 2 threads.

    python bench/dense_skinny.py [--threads 2] [--repeat 15] [--json FILE] [--density-sweep]

Every case times sparsecpu and its baselines in one interleaved run (``time_interleaved`` of the
kernel benchmark). sparsecpu is timed as a user calls it: float32 torch ``x`` in, ``y`` out, the u8
quantization of ``x`` inside the call. ``torch._int_mm`` gets pre-quantized int8 operands; torch's
dynamic int8 Linear is ``torch.ao.quantization.quantize_dynamic`` on an ``nn.Linear`` (fbgemm).
For the skinny cases the weight bytes each sparsecpu call reads are printed with the bandwidth they
imply (bytes / median time). ``--density-sweep`` times block-sparse vs dense int8 at M = 128 over
block densities: what ``sparsecpu._layout.DEFAULT_MIN_SPARSITY["int8"]`` was set from.
``--cpu-time`` (with ``--threads 1``) measures the CPU time of the calling thread instead of wall time:
on a machine shared with other jobs it stays meaningful, since time spent preempted is not counted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

import sparsecpu
from sparsecpu.bench.kernels import pruned_weight
from sparsecpu.bench.timing import time_interleaved

SHAPES = ((768, 768), (3072, 768), (768, 3072))  # N x K


def weight_bytes(p: sparsecpu.PackedWeight) -> int:
    """Bytes of the packed buffer a call reads: all of it (header and padding are noise)."""
    return p.nbytes


def dynamic_linear(w: torch.Tensor) -> torch.nn.Module:
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    torch.backends.quantized.engine = "fbgemm"
    return torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear}, dtype=torch.qint8)


def int_mm_operands(x: torch.Tensor, w: torch.Tensor):
    xq = torch.clamp(torch.round(x / (x.abs().max() / 127)), -127, 127).to(torch.int8)
    wq = torch.clamp(torch.round(w / (w.abs().max() / 127)), -127, 127).to(torch.int8).t().contiguous()
    return xq, wq


def cpu_time_interleaved(fns, repeat):
    """{name: median CPU seconds per call of the calling thread}, batches interleaved round-robin."""
    calls, per_call = {}, {k: [] for k in fns}
    for name, fn in fns.items():
        n = 1
        while True:
            t0 = time.thread_time()
            for _ in range(n):
                fn()
            if time.thread_time() - t0 > 2e-3:
                break
            n *= 2
        calls[name] = n
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.thread_time()
            for _ in range(calls[name]):
                fn()
            per_call[name].append((time.thread_time() - t0) / calls[name])
    return {k: sorted(v)[len(v) // 2] for k, v in per_call.items()}


CPU_TIME = False


def case(label, fns, repeat, rows, bytes_of=None):
    if CPU_TIME:
        med = cpu_time_interleaved(fns, repeat)
    else:
        med = {k: v.median_s for k, v in time_interleaved(fns, repeat=repeat).items()}
    rows.append({"case": label, "median_us": {k: v * 1e6 for k, v in med.items()},
                 "bytes": bytes_of or {}})
    ours = [k for k in med if k.startswith("sparsecpu")]
    others = [k for k in med if not k.startswith("sparsecpu")]
    print(f"\n{label}")
    for k in fns:
        extra = ""
        if bytes_of and k in bytes_of:
            extra = f"   weight bytes {bytes_of[k] / 1e6:.3f} MB -> {bytes_of[k] / med[k] / 1e9:.1f} GB/s"
        print(f"  {k:34s} {med[k] * 1e6:10.1f} us{extra}")
    for o in ours:
        for b in others:
            print(f"  {o} vs {b}: {med[b] / med[o]:.2f}x")
    return med


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--json")
    ap.add_argument("--density-sweep", action="store_true")
    ap.add_argument("--cpu-time", action="store_true", help="CPU time of the calling thread (needs --threads 1)")
    a = ap.parse_args(argv)
    if a.cpu_time and a.threads != 1:
        ap.error("--cpu-time measures the calling thread only: use it with --threads 1")
    global CPU_TIME
    CPU_TIME = a.cpu_time
    torch.set_num_threads(a.threads)
    sparsecpu.set_num_threads(a.threads)
    print(f"threads {a.threads}; {sparsecpu.info()['cpu']}; isa {sparsecpu.info()['isa']}", file=sys.stderr)
    rows = []
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        # Dense int8 at M = 128.
        for n, k in SHAPES:
            w = torch.randn(n, k, generator=g)
            x = torch.randn(128, k, generator=g)
            p = sparsecpu.pack(w, dtype="int8", format="dense")
            xq, wq = int_mm_operands(x, w)
            dq = dynamic_linear(w)
            case(f"dense int8 M=128 {n}x{k}", {
                "sparsecpu_dense_int8": lambda: sparsecpu.linear(x, p),
                "torch._int_mm": lambda: torch._int_mm(xq, wq),
                "quantize_dynamic": lambda: dq(x),
                "F.linear_fp32": lambda: F.linear(x, w),
            }, a.repeat, rows)
        # Skinny M = 1.
        for n, k in SHAPES[1:]:
            w = torch.randn(n, k, generator=g)
            ws = pruned_weight(n, k, 0.9, seed=1)
            x = torch.randn(1, k, generator=g)
            pd = sparsecpu.pack(w, dtype="int8", format="dense")
            ps = sparsecpu.pack(ws, dtype="int8", format="bsr")
            pf = sparsecpu.pack(ws, dtype="fp32")
            dq = dynamic_linear(w)
            case(f"skinny M=1 {n}x{k}", {
                "sparsecpu_dense_int8": lambda: sparsecpu.linear(x, pd),
                "sparsecpu_bsr90_int8": lambda: sparsecpu.linear(x, ps),
                "sparsecpu_bsr90_fp32": lambda: sparsecpu.linear(x, pf),
                "F.linear_fp32": lambda: F.linear(x, w),
                "quantize_dynamic": lambda: dq(x),
            }, a.repeat, rows, {"sparsecpu_dense_int8": weight_bytes(pd), "sparsecpu_bsr90_int8": weight_bytes(ps),
                                "sparsecpu_bsr90_fp32": weight_bytes(pf), "F.linear_fp32": 4 * n * k})
        # Outlier check, none present (|x| <= 5 < 6).
        for label, w, m, fmt in (("dense M=128 768x768", torch.randn(768, 768, generator=g), 128, "dense"),
                                 ("bsr90 M=128 3072x768", pruned_weight(3072, 768, 0.9, seed=2), 128, "bsr"),
                                 ("bsr90 M=1 3072x768", pruned_weight(3072, 768, 0.9, seed=3), 1, "bsr")):
            x = torch.randn(m, w.shape[1], generator=g).clamp_(-5, 5)
            off = sparsecpu.pack(w, dtype="int8", format=fmt)
            on = sparsecpu.pack(w, dtype="int8", format=fmt, outlier_threshold=6.0)
            case(f"outliers {label}", {
                "sparsecpu_outliers_on": lambda: sparsecpu.linear(x, on),
                "outliers_off": lambda: sparsecpu.linear(x, off),
            }, a.repeat, rows)
        if a.density_sweep:
            for n, k in SHAPES:
                x = torch.randn(128, k, generator=g)
                fns = {"sparsecpu_dense": None}
                pd = sparsecpu.pack(torch.randn(n, k, generator=g), dtype="int8", format="dense")
                fns["sparsecpu_dense"] = lambda: sparsecpu.linear(x, pd)
                for d in (0.5, 0.6, 0.7, 0.8, 0.9):
                    pb = sparsecpu.pack(pruned_weight(n, k, 1 - d, seed=4), dtype="int8", format="bsr")
                    fns[f"bsr_density_{d}"] = (lambda pb=pb: sparsecpu.linear(x, pb))
                case(f"density sweep M=128 {n}x{k}", fns, a.repeat, rows)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
