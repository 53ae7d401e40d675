"""The ``sparsecpu`` command: ``info``, ``demo``, ``bench kernels``, ``bench model``, ``bench peak`` and ``onnx convert``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, List, Optional, Tuple, TypeVar

T = TypeVar("T")


def _cmd_info(args: argparse.Namespace) -> int:
    import sparsecpu

    d = sparsecpu.info()
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    print(f"sparsecpu {d['version']}")
    print(f"cpu:          {d['cpu']} ({d['vendor']})")
    print(f"features:     {' '.join(d['features'])}")
    print(f"detected isa: {d['detected_isa']}")
    print(f"amx:          {d['amx']}")
    print(f"active isa:   {d['isa']}{' (emulated)' if d['emulated'] else ''}")
    print(f"threads:      {d['threads']} ({d['threading']})")
    for op, name in d["kernels"].items():
        print(f"  {op:<14} {name}")
    print(f"ort library:  {d['onnxruntime_library'] or 'NOT BUILT: ' + d['onnxruntime_library_error']}")
    return 0


def _have_torch(command: str) -> bool:
    """Whether torch imports; if not, tells the user how to get it."""
    try:
        import torch  # noqa: F401
    except ImportError:
        print(f"sparsecpu {command} compares against PyTorch, which is not installed: pip install torch", file=sys.stderr)
        return False
    return True


def _run_kernels(args: argparse.Namespace, shapes, ms, sparsities, dtypes, baselines) -> List[dict]:
    """Runs the kernel cases (progress to stderr); prints a line about the machine, then the table, and
    writes ``--json`` / ``--plot`` if asked."""
    import torch

    import sparsecpu
    from sparsecpu.bench import default_threads, environment, kernel_table, plot_speedups, run_kernel_cases, write_json
    from sparsecpu.bench.peak import machine_peak, peak_summary

    threads = args.threads or [default_threads()]
    d = sparsecpu.info()
    peak = machine_peak()  # before the cases, for the "% peak" column
    print(f"sparsecpu {d['version']} ({d['isa']}), torch {torch.__version__}, {d['cpu']}, threads {','.join(map(str, threads))}, "
          f"{peak_summary(peak)}")
    if getattr(args, "markdown", False):
        print()  # a Markdown table must not follow a paragraph line directly
    sys.stdout.flush()
    records = run_kernel_cases(
        shapes, ms, sparsities, dtypes, threads, args.repeat, progress=lambda line: print(line, file=sys.stderr),
        baselines=baselines, peak=peak,
    )
    print(kernel_table(records, markdown=getattr(args, "markdown", False)))
    if getattr(args, "json", None):
        write_json(args.json, {**environment(), "peak": peak}, records)
        print(f"wrote {len(records)} records to {args.json}", file=sys.stderr)
    if getattr(args, "plot", None):
        plot_speedups(records, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return records


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from sparsecpu import calibration

    c = calibration.load(refresh=args.refresh)
    if args.json:
        print(c.to_json())
    else:
        print(c)
        print(f"cached in {calibration.path(c.key)}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    if not _have_torch("demo"):
        return 2
    from sparsecpu.bench import BASELINES, BERT_BASE_SHAPES

    print("sparsecpu demo: BERT-base linear layers (N x K = 768x768, 3072x768, 768x3072), M = 128 tokens,")
    print("random weights pruned to 90% in 4x1 blocks; sparsecpu.linear vs PyTorch's (F.linear, torch._int_mm,")
    print("quantize_dynamic, CSR) and, where installed, ONNX Runtime's kernels.")
    _run_kernels(args, BERT_BASE_SHAPES, [128], [0.9], ["int8", "fp32"], BASELINES)
    return 0


def _cmd_bench_kernels(args: argparse.Namespace) -> int:
    if not _have_torch("bench kernels"):
        return 2
    from sparsecpu.bench import BERT_BASE_SHAPES, DEFAULT_BASELINES, DEFAULT_MS, DEFAULT_SPARSITIES

    if args.plot and not _have("matplotlib", "--plot"):
        return 2
    _run_kernels(args, args.shapes or BERT_BASE_SHAPES, args.m or DEFAULT_MS, args.sparsity or DEFAULT_SPARSITIES,
                 args.dtype, DEFAULT_BASELINES if args.baselines is None else args.baselines)
    return 0


def _cmd_bench_peak(args: argparse.Namespace) -> int:
    import sparsecpu
    from sparsecpu.bench.peak import measure, peak_records, peak_table
    from sparsecpu.bench.report import environment, write_json
    from sparsecpu.bench.timing import default_threads

    threads = args.threads or default_threads()
    d = sparsecpu.info()
    print(f"sparsecpu {d['version']}, {d['cpu']}, detected isa {d['detected_isa']}, threads {threads}")
    if args.markdown:
        print()
    peak = measure(args.runs)
    print(peak_table(peak, threads, args.runs, markdown=args.markdown))
    if args.json:
        records = peak_records(peak, threads)
        write_json(args.json, {**environment(), "peak": peak, "runs": args.runs}, records)
        print(f"wrote {len(records)} records to {args.json}", file=sys.stderr)
    return 0


def _cmd_bench_model(args: argparse.Namespace) -> int:
    if not _have_torch("bench model") or not _have("transformers", "bench model"):
        return 2
    import sparsecpu
    from sparsecpu.bench import default_threads, environment, write_json
    from sparsecpu.bench.model import model_table, run_model_bench

    threads = args.threads or default_threads()
    d = sparsecpu.info()
    print(f"sparsecpu {d['version']} ({d['isa']}), {d['cpu']}, threads {threads}")
    if args.markdown:
        print()
    sys.stdout.flush()
    try:
        records = run_model_bench(
            args.model, args.sparsity, args.seq, args.batch, threads, args.repeat, args.prompt, args.new_tokens,
            progress=lambda line: print(line, file=sys.stderr),
        )
    except ValueError as e:
        print(f"sparsecpu bench model: error: {e}", file=sys.stderr)
        return 2
    print(model_table(records, markdown=args.markdown))
    if args.json:
        write_json(args.json, environment(), records)
        print(f"wrote {len(records)} records to {args.json}", file=sys.stderr)
    return 0


def _cmd_onnx_convert(args: argparse.Namespace) -> int:
    import sparsecpu.onnx

    try:
        report = sparsecpu.onnx.convert(args.src, args.dst, dtype=args.dtype, min_sparsity=args.min_sparsity, rows=args.rows,
                                        format=args.format, fuse_norm=not args.no_fuse_norm,
                                        fuse_attention=not args.no_fuse_attention)
    except (ImportError, ValueError, FileNotFoundError) as e:
        print(f"sparsecpu onnx convert: {e}", file=sys.stderr)
        return 1
    print(report)
    if args.verify:
        from sparsecpu.onnx._runtime import format_verify

        dims = dict(args.dim or [])
        result = sparsecpu.onnx.verify(args.src, args.dst, dims=dims, threads=args.threads)
        print(f"verify (random inputs; symbolic dims {dims or 'all 4'}):")
        print(format_verify(result))
    return 0


def _dim(text: str) -> Tuple[str, int]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=SIZE, got {text!r}")
    try:
        return name, _positive_int(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected NAME=SIZE, got {text!r} ({e})") from None


def _fraction(text: str) -> float:
    try:
        return _sparsity(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None

def _have(module: str, what: str) -> bool:
    """Whether ``module`` imports; if not, tells the user how to get it."""
    try:
        __import__(module)
    except ImportError:
        print(f"sparsecpu {what} needs {module}, which is not installed: pip install {module}", file=sys.stderr)
        return False
    return True


def _csv(item: Callable[[str], T], what: str) -> Callable[[str], List[T]]:
    """An argparse type: a comma-separated list of ``item``."""

    def parse(text: str) -> List[T]:
        try:
            values = [item(part.strip()) for part in text.split(",") if part.strip()]
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r} ({e})") from None
        if not values:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return values

    return parse


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise ValueError(f"{v} is not positive")
    return v


def _sparsity(text: str) -> float:
    v = float(text)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{v} is not in [0, 1]")
    return v


def _shape(text: str) -> Tuple[int, int]:
    n, sep, k = text.lower().partition("x")
    if not sep:
        raise ValueError(f"{text!r} is not NxK")
    return _positive_int(n), _positive_int(k)


def _bench_kernels_module():
    """``sparsecpu.bench.kernels`` for the argument parsers (it needs torch)."""
    try:
        import sparsecpu.bench.kernels as kernels
    except ImportError as e:
        raise argparse.ArgumentTypeError(f"sparsecpu bench needs PyTorch ({e}): pip install torch") from None
    return kernels


def _shapes(text: str) -> List[Tuple[int, int]]:
    """An argparse type: comma-separated ``NxK`` shapes and preset names, expanded in order."""
    presets = _bench_kernels_module().SHAPE_PRESETS
    out: List[Tuple[int, int]] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part in presets:
            out.extend(s for s in presets[part] if s not in out)
            continue
        try:
            shape = _shape(part)
        except ValueError as e:
            raise argparse.ArgumentTypeError(
                f"expected NxK or one of {', '.join(presets)}, got {part!r} ({e})") from None
        if shape not in out:
            out.append(shape)
    if not out:
        raise argparse.ArgumentTypeError(f"expected weight shapes, got {text!r}")
    return out


def _baselines(text: str) -> List[str]:
    """An argparse type: ``default``, ``all``, ``none`` or comma-separated baseline names."""
    kernels = _bench_kernels_module()
    keywords = {"default": list(kernels.DEFAULT_BASELINES), "all": list(kernels.BASELINES), "none": []}
    if text in keywords:
        return keywords[text]
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [n for n in names if n not in kernels.BASELINES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"expected default, all, none or some of {','.join(kernels.BASELINES)}; got {text!r}")
    return names


def _dtype(text: str) -> str:
    if text not in ("int8", "fp32"):
        raise ValueError(f"{text!r} is not int8 or fp32")
    return text


def _add_timing_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads", type=_csv(_positive_int, "thread counts like 1,2"), default=None,
        help="thread counts, comma-separated: torch.set_num_threads (and sparsecpu's, ONNX Runtime's intra-op "
        "threads) in every implementation's worker process (default: the CPUs this process may use)",
    )
    p.add_argument("--repeat", type=_positive_int, default=15, help="timed repeats per implementation (default: 15)")


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``sparsecpu`` console script and ``python -m sparsecpu``."""
    parser = argparse.ArgumentParser(prog="sparsecpu", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="detected CPU features, ISA level, kernels and threads")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(fn=_cmd_info)

    p = sub.add_parser(
        "calibrate",
        help="measure (or show the cached) costs of the int8 formats on this machine, which format='auto' uses",
        description="Times each int8 weight format's kernel (bsr, dense, and panel at the amx level) on a 768x768 "
        "weight at 1 and 128 rows and a few densities, and caches the result per CPU, ISA level, thread count "
        "and sparsecpu version; format='auto', sparsify and onnx convert choose each layer's format from it.",
    )
    p.add_argument("--refresh", action="store_true", help="measure again even if a calibration is cached")
    p.add_argument("--json", action="store_true", help="print the cached file's JSON")
    p.set_defaults(fn=_cmd_calibrate)

    p = sub.add_parser(
        "demo",
        help="time BERT-base-sized layers pruned to 90%% against torch and ONNX Runtime kernels (needs torch)",
        description="Packs random BERT-base-sized weights (768x768, 3072x768, 768x3072) pruned to 90% in 4x1 "
        "blocks and prints the median time of sparsecpu.linear (int8, fp32) beside every baseline of "
        "'sparsecpu bench kernels' (torch F.linear, torch._int_mm, quantize_dynamic, CSR; ONNX Runtime fp32 "
        "and int8 when installed) for M = 128, with speedups. Needs torch.",
    )
    _add_timing_args(p)
    p.set_defaults(fn=_cmd_demo)

    p = sub.add_parser("bench", help="benchmarks (kernels, model: need torch) and this machine's compute peaks")
    bench = p.add_subparsers(dest="bench", required=True)
    p = bench.add_parser(
        "kernels",
        help="sparsecpu.linear vs torch and ONNX Runtime kernels over shapes, M and sparsities",
        description="Times sparsecpu.linear (int8, fp32; float32 torch x in, y out) on weights pruned in 4x1 "
        "blocks against, in the same interleaved run: F.linear on the weight stored dense, torch "
        "quantize_dynamic int8 Linear, torch CSR sparse matmul, ONNX Runtime MatMul (fp32 and "
        "quantize_dynamic int8) and, on request, torch._int_mm. Each implementation runs in a worker process of "
        "its own, at its library's defaults but for the thread count; the workers are timed round-robin. Prints a "
        "table with sparsecpu's speedup over each baseline and the effective and dense-equivalent GOP/s; progress "
        "goes to stderr.",
    )
    p.add_argument("--shapes", type=_shapes, default=None,
                   help="weight shapes N x K (out x in) and/or presets bert-base, bert-large, gpt2, comma-separated "
                   "(default: bert-base = 768x768,3072x768,768x3072)")
    p.add_argument("--m", type=_csv(_positive_int, "row counts like 1,8,128"), default=None,
                   help="rows of x (tokens), comma-separated (default: 128)")
    p.add_argument("--sparsity", type=_csv(_sparsity, "fractions of zero 4x1 blocks like 0.7,0.9"),
                   default=None, help="fractions of zero 4x1 blocks, comma-separated (default: 0.7,0.8,0.9)")
    p.add_argument("--dtype", type=_csv(_dtype, "int8 and/or fp32"), default=["int8", "fp32"],
                   help="dtypes: sparsecpu's weight dtypes and the baselines of the same dtype (default: int8,fp32)")
    _add_timing_args(p)
    p.add_argument("--baselines", type=_baselines, default=None, metavar="LIST",
                   help="default (all but torch_int_mm, which is very slow on some CPUs), all, none, or "
                   "comma-separated names: torch_linear, torch_dynamic_int8, torch_int_mm, torch_csr, ort_fp32, "
                   "ort_int8 (missing packages skip theirs with a note)")
    p.add_argument("--json", metavar="FILE", help="also write the records and an environment header as JSON to FILE")
    p.add_argument("--plot", metavar="FILE.png", help="also plot sparsecpu's speedup vs sparsity per shape (matplotlib)")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown (for a README)")
    p.set_defaults(fn=_cmd_bench_kernels)

    p = bench.add_parser(
        "peak",
        help="this machine's per-core fp32 FMA and int8 compute peaks (about a second; no torch needed)",
        description="Times, on one thread, a loop of one arithmetic instruction on independent accumulators "
        "for each ISA level this CPU has natively: vfmadd231ps ymm/zmm (fp32 FMA) and the exact u8 x s8 dot "
        "of each int8 kernel level (vpmaddwd + vpaddd ymm/zmm, vpdpbusd zmm), best of --runs. Prints GOP/s "
        "per core and x --threads, one op being one multiply or add of the 2*M*N*K that 'bench kernels' "
        "counts, whose '% peak' column is stated against these figures. Levels the CPU lacks are listed "
        "with the reason.",
    )
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="thread count the per-core peaks are multiplied by (default: the CPUs this process may use)")
    p.add_argument("--runs", type=_positive_int, default=20, help="timed runs per loop, best kept (default: 20)")
    p.add_argument("--json", metavar="FILE", help="also write the table's records, the raw peaks and an environment "
                   "header as JSON to FILE")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown (for a README)")
    p.set_defaults(fn=_cmd_bench_peak)

    p = bench.add_parser(
        "model",
        help="a pruned transformers model end to end: torch, torch int8, ONNX Runtime, sparsecpu",
        description="Builds a transformers model from its config (random weights, no download) or a local "
        "directory, prunes its linear layers in 4x1 blocks, and times the forward pass in torch fp32, torch "
        "quantize_dynamic int8, ONNX Runtime fp32 and quantize_dynamic int8 (exported with torch.onnx.export), "
        "and sparsecpu's torch and ONNX Runtime paths where installed, each in a worker process of its own, "
        "timed round-robin: latency median/p90, throughput, speedup and output cosine vs torch fp32. For GPT-2 "
        "also tokens/s of greedy generate().",
    )
    p.add_argument("--model", default="bert-base", metavar="NAME|PATH",
                   help="bert-base, bert-large, distilbert, gpt2, or a directory with a config.json (default: bert-base)")
    p.add_argument("--sparsity", type=_sparsity, default=0.9, help="fraction of zero 4x1 blocks (default: 0.9)")
    p.add_argument("--seq", type=_positive_int, default=128, help="sequence length (default: 128)")
    p.add_argument("--batch", type=_positive_int, default=1, help="batch size (default: 1)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="threads for torch, sparsecpu and ONNX Runtime in every row's worker process (default: the "
                   "CPUs this process may use)")
    p.add_argument("--repeat", type=_positive_int, default=10, help="timed repeats per implementation (default: 10)")
    p.add_argument("--prompt", type=_positive_int, default=32, help="prompt tokens for generate() (default: 32)")
    p.add_argument("--new-tokens", type=_positive_int, default=64, help="tokens generate() adds (default: 64)")
    p.add_argument("--json", metavar="FILE", help="also write the records and an environment header as JSON to FILE")
    p.add_argument("--markdown", action="store_true", help="print the tables as Markdown (for a README)")
    p.set_defaults(fn=_cmd_bench_model)
    p = sub.add_parser("onnx", help="ONNX models: rewrite sparse layers for ONNX Runtime (needs onnx, onnxruntime)")
    onnx_sub = p.add_subparsers(dest="onnx", required=True)
    p = onnx_sub.add_parser(
        "convert",
        help="replace sparse MatMul/Gemm (+ bias + GELU/Relu + residual Add + LayerNorm) with sparsecpu "
        "SparseLinear nodes",
        description="Rewrites SRC into DST: every MatMul/Gemm whose weight is a constant 2-D initializer becomes "
        "one com.sparsecpu:SparseLinear node (int8: the format measured fastest on this machine, see 'sparsecpu "
        "calibrate', or with --min-sparsity block-sparse from that fraction of zero 4x1 blocks up, dense int8 "
        "below it; fp32: block-sparse from --min-sparsity, below it left as it is; as sparsecpu.sparsify "
        "decides), together with "
        "the bias Add and the GELU/Relu that follow it, and a residual Add + LayerNormalization after those "
        "(BERT's output blocks); each attention subgraph becomes one com.sparsecpu:Attention node. Prints a per-node table. DST runs in ONNX Runtime "
        "with the library sparsecpu.onnx.library_path() registered (sparsecpu.onnx.session does that).",
    )
    p.add_argument("src", help="input .onnx model (external data is read from beside it)")
    p.add_argument("dst", help="output .onnx model")
    p.add_argument("--dtype", type=_dtype, default="int8", help="int8 (default) or fp32")
    p.add_argument("--min-sparsity", type=_fraction, default=None, metavar="S",
                   help="run weights with at least this fraction of zero 4x1 blocks block-sparse; below it int8 runs the "
                   "dense int8 GEMM and fp32 stays an ONNX Runtime MatMul (default: the measured choice for int8, "
                   "0.7 for fp32)")
    p.add_argument("--format", choices=["auto", "bsr", "dense", "panel"], default="auto",
                   help="weight format (default: auto, the rule above)")
    p.add_argument("--rows", type=_positive_int, default=128,
                   help="rows per call (tokens per run) the measured choice is made for (default 128; 1 for decoding)")
    p.add_argument("--no-fuse-norm", action="store_true",
                   help="leave the residual Add + LayerNormalization after a converted layer as they are")
    p.add_argument("--no-fuse-attention", action="store_true",
                   help="leave the attention subgraphs (MatMul, Softmax, MatMul) as they are")
    p.add_argument("--verify", action="store_true",
                   help="run ONNX Runtime on both models with random inputs; print max |diff| and cosine per output")
    p.add_argument("--dim", type=_dim, action="append", metavar="NAME=SIZE",
                   help="size of a symbolic input dimension for --verify (repeatable; default 4)")
    p.add_argument("--threads", type=_positive_int, default=None, help="ONNX Runtime intra-op threads for --verify")
    p.set_defaults(fn=_cmd_onnx_convert)

    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
