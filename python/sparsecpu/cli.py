"""The ``sparsecpu`` command: ``info``, ``demo``, ``bench kernels`` and ``onnx convert``."""

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
    print(f"active isa:   {d['isa']}")
    print(f"threads:      {d['threads']}")
    for op, name in d["kernels"].items():
        print(f"  {op:<14} {name}")
    return 0


def _have_torch(command: str) -> bool:
    """Whether torch imports; if not, tells the user how to get it."""
    try:
        import torch  # noqa: F401
    except ImportError:
        print(f"sparsecpu {command} compares against PyTorch, which is not installed: pip install torch", file=sys.stderr)
        return False
    return True


def _run_and_print(shapes, ms, sparsities, dtypes, threads, repeat) -> List[dict]:
    """Runs the kernel cases (progress to stderr); prints a line about the machine, then the table."""
    import torch

    import sparsecpu
    from sparsecpu.bench import default_threads, format_table, run_kernel_cases

    threads = threads or [default_threads()]
    d = sparsecpu.info()
    print(f"sparsecpu {d['version']} ({d['isa']}), torch {torch.__version__}, {d['cpu']}, threads {','.join(map(str, threads))}")
    sys.stdout.flush()
    records = run_kernel_cases(
        shapes, ms, sparsities, dtypes, threads, repeat, progress=lambda line: print(line, file=sys.stderr)
    )
    print(format_table(records))
    return records


def _cmd_demo(args: argparse.Namespace) -> int:
    if not _have_torch("demo"):
        return 2
    from sparsecpu.bench import BERT_BASE_SHAPES

    print("sparsecpu demo: BERT-base linear layers (N x K = 768x768, 3072x768, 768x3072), M = 128 tokens,")
    print("random weights pruned to 90% in 4x1 blocks; sparsecpu.linear vs PyTorch's dense kernels.")
    _run_and_print(BERT_BASE_SHAPES, [128], [0.9], ["int8", "fp32"], args.threads, args.repeat)
    return 0


def _cmd_bench_kernels(args: argparse.Namespace) -> int:
    if not _have_torch("bench kernels"):
        return 2
    import torch

    import sparsecpu
    from sparsecpu.bench import BERT_BASE_SHAPES, DEFAULT_MS, DEFAULT_SPARSITIES

    records = _run_and_print(
        args.shapes or BERT_BASE_SHAPES, args.m or DEFAULT_MS, args.sparsity or DEFAULT_SPARSITIES,
        args.dtypes, args.threads, args.repeat,
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": sparsecpu.info(), "torch": torch.__version__, "records": records}, f, indent=2)
            f.write("\n")
        print(f"wrote {len(records)} records to {args.json}", file=sys.stderr)
    return 0


def _cmd_onnx_convert(args: argparse.Namespace) -> int:
    import sparsecpu.onnx

    try:
        report = sparsecpu.onnx.convert(args.src, args.dst, dtype=args.dtype, min_sparsity=args.min_sparsity,
                                        format=args.format)
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


def _dtype(text: str) -> str:
    if text not in ("int8", "fp32"):
        raise ValueError(f"{text!r} is not int8 or fp32")
    return text


def _add_timing_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads", type=_csv(_positive_int, "thread counts like 1,2"), default=None,
        help="thread counts for torch and sparsecpu, comma-separated (default: the CPUs this process may use)",
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
        "demo",
        help="time BERT-base-sized layers pruned to 90%% against F.linear and torch._int_mm (needs torch)",
        description="Packs random BERT-base-sized weights (768x768, 3072x768, 768x3072) pruned to 90% in 4x1 "
        "blocks and prints the median time of sparsecpu.linear (int8, fp32) beside F.linear and "
        "torch._int_mm for M = 128, with speedups. Needs torch.",
    )
    _add_timing_args(p)
    p.set_defaults(fn=_cmd_demo)

    p = sub.add_parser("bench", help="benchmarks (needs torch)")
    bench = p.add_subparsers(dest="bench", required=True)
    p = bench.add_parser(
        "kernels",
        help="sparsecpu.linear vs F.linear and torch._int_mm over shapes and sparsities",
        description="Times sparsecpu.linear (int8, fp32; float32 torch x in, y out) against F.linear on the "
        "pruned weight stored dense and torch._int_mm on pre-quantized int8 inputs, interleaving the "
        "implementations round-robin. Prints a table; progress goes to stderr.",
    )
    p.add_argument("--m", type=_csv(_positive_int, "row counts like 128"), default=None,
                   help="rows of x (tokens), comma-separated (default: 128)")
    p.add_argument("--sparsity", type=_csv(_sparsity, "fractions of zero 4x1 blocks like 0.7,0.9"),
                   default=None, help="fractions of zero 4x1 blocks, comma-separated (default: 0.7,0.8,0.9)")
    p.add_argument("--shapes", type=_csv(_shape, "weight shapes NxK like 768x3072"),
                   default=None,
                   help="weight shapes N x K (out x in), comma-separated (default: BERT-base 768x768,3072x768,768x3072)")
    p.add_argument("--dtypes", type=_csv(_dtype, "int8 and/or fp32"), default=["int8", "fp32"],
                   help="sparsecpu weight dtypes, each timed beside its torch baseline (default: int8,fp32)")
    _add_timing_args(p)
    p.add_argument("--json", metavar="FILE", help="also write the records (and sparsecpu.info()) as JSON to FILE")
    p.set_defaults(fn=_cmd_bench_kernels)

    p = sub.add_parser("onnx", help="ONNX models: rewrite sparse layers for ONNX Runtime (needs onnx, onnxruntime)")
    onnx_sub = p.add_subparsers(dest="onnx", required=True)
    p = onnx_sub.add_parser(
        "convert",
        help="replace sparse MatMul/Gemm (+ bias + GELU/Relu) with sparsecpu SparseLinear nodes",
        description="Rewrites SRC into DST: every MatMul/Gemm whose weight is a constant 2-D initializer with "
        "at least --min-sparsity zero 4x1 blocks becomes one com.sparsecpu:SparseLinear node, together with "
        "the bias Add and the GELU/Relu that follow it. Prints a per-node table. DST runs in ONNX Runtime "
        "with the library sparsecpu.onnx.library_path() registered (sparsecpu.onnx.session does that).",
    )
    p.add_argument("src", help="input .onnx model (external data is read from beside it)")
    p.add_argument("dst", help="output .onnx model")
    p.add_argument("--dtype", type=_dtype, default="int8", help="int8 (default) or fp32")
    p.add_argument("--min-sparsity", type=_fraction, default=0.5, metavar="S",
                   help="convert only weights with at least this fraction of zero 4x1 blocks (default: 0.5)")
    p.add_argument("--format", choices=["auto", "bsr"], default="auto", help="weight format (default: auto)")
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
