"""Model benchmark: Hugging Face BERT-base and GPT-2 (124M) from their configs, pruned in 4x1 blocks,
run by torch fp32, torch quantize_dynamic int8 and sparsecpu.sparsify, timed in the same run.

    python bench/models_torch.py [--model bert,gpt2] [--sparsity 0.9] [--threads 2] [--repeat 7]
                                 [--seq 128] [--prompt 32] [--new-tokens 64] [--profile] [--json FILE]

BERT: batch 1, ``--seq`` tokens, latency of one forward pass. GPT-2: greedy ``generate()`` of
``--new-tokens`` tokens after a ``--prompt``-token prompt (KV cache on), tokens/s; ``lm_head`` is
left out of pruning and sparsify (its weight is the token embedding). Variants are timed
round-robin, ``--repeat`` rounds, and medians reported; "torch 1 thread" runs the sparsecpu model
with torch's own ops (attention, LayerNorm, ...) on one thread and sparsecpu's pool on ``--threads``. ``--profile`` adds a torch.profiler
breakdown of the sparsecpu int8 model: sparsecpu layers vs the rest (attention, LayerNorm, ...).
No weights are downloaded: the models are randomly initialised, which is all timing needs.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
import warnings

# torch's OpenMP workers otherwise spin for milliseconds after each op and starve sparsecpu's pool
# on a small machine (see README, "Threads and torch"); set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import sparsecpu  # noqa: E402


def _quantize_dynamic(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def _round_robin(fns, repeat):
    """Times every ``fn`` once per round, ``repeat`` rounds (after one warm-up round); medians in s."""
    times = {name: [] for name in fns}
    for name, fn in fns.items():
        fn()
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}, times


def _profile(fn, label):
    """Self CPU time of one ``fn()`` call split into sparsecpu layers and everything else."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows)
    ours = sum(e.self_cpu_time_total for e in rows if e.key.startswith("sparsecpu::"))
    print(f"\nprofile of {label}: self CPU time {total / 1e3:.1f} ms, sparsecpu layers {ours / 1e3:.1f} ms ({100 * ours / total:.0f}%)")
    print(f"  {'op':40s} {'self ms':>9s} {'share':>6s} {'calls':>6s}")
    for e in rows[:14]:
        print(f"  {e.key[:40]:40s} {e.self_cpu_time_total / 1e3:9.2f} {100 * e.self_cpu_time_total / total:5.1f}% {e.count:6d}")
    return {"total_ms": total / 1e3, "sparsecpu_ms": ours / 1e3, "top": [(e.key, e.self_cpu_time_total / 1e3, e.count) for e in rows[:14]]}


def _torch_threads(fn, n, restore):
    """``fn`` run with torch's intra-op pool at ``n`` threads (sparsecpu's pool unchanged)."""

    def run():
        torch.set_num_threads(n)
        try:
            return fn()
        finally:
            torch.set_num_threads(restore)

    return run


def bench_bert(args):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    dense = BertModel(BertConfig()).eval()
    sparsecpu.prune(dense, sparsity=args.sparsity, scope="layer", skip=())
    models = {"torch fp32": dense, "torch quantize_dynamic int8": _quantize_dynamic(copy.deepcopy(dense))}
    for dtype in ("int8", "fp32"):
        m = copy.deepcopy(dense)
        report = sparsecpu.sparsify(m, dtype=dtype, skip=())
        print(f"sparsify(dtype={dtype!r}): {len(report.converted)} of {len(report)} layers converted", file=sys.stderr)
        models[f"sparsecpu {dtype}"] = m
    ids = torch.randint(0, 30522, (1, args.seq))
    fns = {name: (lambda m=m: m(input_ids=ids)) for name, m in models.items()}
    fns["sparsecpu int8, torch 1 thread"] = _torch_threads(fns["sparsecpu int8"], 1, args.threads)
    with torch.inference_mode():
        med, _ = _round_robin(fns, args.repeat)
        ref = dense(input_ids=ids).last_hidden_state
        cos = {
            name: torch.nn.functional.cosine_similarity(m(input_ids=ids).last_hidden_state.flatten(), ref.flatten(), dim=0).item()
            for name, m in models.items()
        }
        cos["sparsecpu int8, torch 1 thread"] = cos["sparsecpu int8"]
        prof = _profile(fns["sparsecpu int8"], "BERT-base sparsecpu int8") if args.profile else None
    base = med["torch fp32"]
    qd = med["torch quantize_dynamic int8"]
    print(f"\nBERT-base, {args.sparsity:.0%} 4x1 pruned, batch 1, seq {args.seq}, {args.threads} threads, median of {args.repeat}")
    print(f"  {'variant':30s} {'ms':>8s} {'vs fp32':>8s} {'vs qdyn':>8s} {'cos vs fp32':>12s}")
    for name, t in med.items():
        print(f"  {name:30s} {t * 1e3:8.1f} {base / t:7.2f}x {qd / t:7.2f}x {cos[name]:12.5f}")
    return {"median_ms": {k: v * 1e3 for k, v in med.items()}, "cosine": cos, "profile": prof}


def bench_gpt2(args):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    dense = GPT2LMHeadModel(GPT2Config()).eval()
    sparsecpu.prune(dense, sparsity=args.sparsity, scope="layer")
    models = {"torch fp32": dense}
    for dtype in ("int8", "fp32"):
        m = copy.deepcopy(dense)
        sparsecpu.sparsify(m, dtype=dtype)
        models[f"sparsecpu {dtype}"] = m
    prompt = torch.randint(0, 50257, (1, args.prompt))
    kw = dict(max_new_tokens=args.new_tokens, eos_token_id=None, do_sample=False, use_cache=True, pad_token_id=50256)
    fns = {name: (lambda m=m: m.generate(prompt, **kw)) for name, m in models.items()}
    fns["sparsecpu int8, torch 1 thread"] = _torch_threads(fns["sparsecpu int8"], 1, args.threads)
    with torch.inference_mode():
        med, _ = _round_robin(fns, max(3, args.repeat // 2))
        prof = _profile(fns["sparsecpu int8"], "GPT-2 generate, sparsecpu int8") if args.profile else None
        # The prompt's forward pass alone; the rest of generate() is the decode steps.
        prefills = {name: (lambda m=m: m(prompt, use_cache=True)) for name, m in models.items()}
        prefills["sparsecpu int8, torch 1 thread"] = _torch_threads(prefills["sparsecpu int8"], 1, args.threads)
        prefill, _ = _round_robin(prefills, 5)
    base = med["torch fp32"]
    print(f"\nGPT-2 124M, {args.sparsity:.0%} 4x1 pruned (lm_head kept: torch fp32), greedy generate {args.new_tokens} tokens after "
          f"{args.prompt}, batch 1, {args.threads} threads, median of {max(3, args.repeat // 2)}")
    print(f"  {'variant':30s} {'s':>8s} {'tokens/s':>9s} {'vs fp32':>8s} {'prefill ms':>11s} {'ms/decode step':>15s}")
    step = {name: (t - prefill[name]) / args.new_tokens for name, t in med.items()}
    for name, t in med.items():
        print(f"  {name:30s} {t:8.2f} {args.new_tokens / t:9.1f} {base / t:7.2f}x {prefill[name] * 1e3:11.1f} {step[name] * 1e3:15.2f}")
    return {"median_s": med, "tokens_per_s": {k: args.new_tokens / v for k, v in med.items()},
            "prefill_ms": {k: v * 1e3 for k, v in prefill.items()}, "decode_step_ms": {k: v * 1e3 for k, v in step.items()},
            "profile": prof}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="bert,gpt2")
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sparsecpu.set_num_threads(args.threads)
    print(f"sparsecpu {sparsecpu.info()['isa']}, torch {torch.__version__}, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}", file=sys.stderr)
    results = {}
    for model in args.model.split(","):
        results[model] = {"bert": bench_bert, "gpt2": bench_gpt2}[model](args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)


if __name__ == "__main__":
    main()
