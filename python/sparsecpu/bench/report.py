"""What a benchmark run reports: the environment header, tables (text or Markdown), JSON, the plot."""

from __future__ import annotations

import datetime
import functools
import importlib
import json
import platform
import sys
import textwrap
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import sparsecpu

__all__ = ["environment", "kernel_table", "plot_speedups", "render_table", "write_json"]

KERNEL_FOOTNOTE = (
    "median and p10-p90 of the time per call over the interleaved repeats; GOP/s: operations performed "
    "(sparse: stored entries only) / median; % peak: GOP/s / (this machine's per-core int8 or fp32 FMA peak "
    "of the best native level, 'sparsecpu bench peak', x threads); dense-eq: 2*M*N*K / median; speedup: "
    "that baseline's median / sparsecpu's of the same dtype (> 1: sparsecpu faster). sparsecpu and torch "
    "qdynamic / ORT qdynamic quantize x inside the call."
)


@functools.lru_cache(maxsize=None)
def _impls() -> Tuple[Any, Dict[str, str], frozenset]:
    """``(IMPLS, label by name, names of sparsecpu's own)``, imported on first use: the kernel
    benchmark needs torch, environment() and render_table() (``sparsecpu bench peak``) do not."""
    from .kernels import IMPLS

    return IMPLS, {i.name: i.label for i in IMPLS}, frozenset(i.name for i in IMPLS if i.ours)
_INT_MM_NOTE = "torch._int_mm gets pre-quantized int8 x and returns raw int32."


def _version(module: str) -> Optional[str]:
    try:
        return importlib.import_module(module).__version__
    except ImportError:
        return None


def environment(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """The JSON header of a run: CPU model, detected and active ISA, kernels, library versions, date, and
    the threading environment variables set (``env``, see :func:`sparsecpu.bench.workers.relevant_env`)."""
    d = sparsecpu.info()
    env = {
        "cpu": d["cpu"],
        "vendor": d["vendor"],
        "features": d["features"],
        "detected_isa": d["detected_isa"],
        "isa": d["isa"],
        "kernels": d["kernels"],
        "sparsecpu": d["version"],
        "torch": _version("torch"),
        "onnxruntime": _version("onnxruntime"),
        "onnx": _version("onnx"),
        "transformers": _version("transformers"),
        "numpy": _version("numpy"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": list(sys.argv if argv is None else argv),
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        env["torch_quantized_engine"] = torch.backends.quantized.engine
    from .workers import relevant_env

    env["env"] = relevant_env()  # what every worker process inherits (each record lists its own)
    return env


def write_json(path: str, header: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> None:
    """Writes ``{"header": header, "records": records}`` to ``path`` (indented, trailing newline)."""
    with open(path, "w") as f:
        json.dump({"header": dict(header), "records": list(records)}, f, indent=2)
        f.write("\n")


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool = False,
                 left: Sequence[int] = (0,)) -> str:
    """Fixed-width text (or a GitHub Markdown table) of string cells; the columns whose indices are in
    ``left`` are left-aligned, the others right-aligned."""
    widths = [max([3 if markdown else 1] + [len(line[c]) for line in [header, *rows]]) for c in range(len(header))]

    def cell(c: int, text: str) -> str:
        return text.ljust(widths[c]) if c in left else text.rjust(widths[c])

    if markdown:
        rule = ["-" * (w - 1) + ("-" if c in left else ":") for c, w in enumerate(widths)]
        lines = [header, rule, *rows]
        return "\n".join("| " + " | ".join(cell(c, t) for c, t in enumerate(line)) + " |" for line in lines)
    lines = ["  ".join(cell(c, t) for c, t in enumerate(line)).rstrip() for line in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _num(v: Optional[float], fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


def kernel_table(records: Sequence[Mapping[str, Any]], markdown: bool = False) -> str:
    """The kernel benchmark's table: one row per case and implementation (sparsecpu first), with the
    median and p10-p90 in µs, effective GOP/s and its % of the machine's peak (``pct_peak``, "n/a" in
    records without it), dense-equivalent GOP/s and, for baselines, sparsecpu's speedup over them;
    followed by notes on implementations that could not run."""
    impls, labels, ours = _impls()
    header = ["N x K", "M", "sparsity", "threads", "impl", "format", "median µs", "p10-p90 µs",
              "GOP/s", "% peak", "dense-eq GOP/s", "sparsecpu speedup"]
    rows: List[List[str]] = []
    order = {i.name: n for n, i in enumerate(impls)}
    cases: Dict[Tuple, List[Mapping[str, Any]]] = {}
    for r in records:
        cases.setdefault((r["N"], r["K"], r["M"], r["sparsity"], r["threads"]), []).append(r)
    skipped: Dict[str, str] = {}
    for (n, k, m, s, t), case in cases.items():
        first = True
        for r in sorted(case, key=lambda r: order[r["impl"]]):
            if r["median_s"] is None:
                skipped.setdefault(r["impl"], r["error"] or "not run")
                continue
            ident = [f"{n}x{k}", str(m), f"{s:g}", str(t)] if first or markdown else ["", "", "", ""]
            first = False
            spread = f"{r['p10_s'] * 1e6:.1f}-{r['p90_s'] * 1e6:.1f}"
            speedup = "—" if r["impl"] in ours else _num(r.get("speedup"), ".2f") + ("x" if r.get("speedup") else "")
            rows.append(ident + [labels[r["impl"]], r["format"], f"{r['median_s'] * 1e6:.1f}", spread,
                                 _num(r["gops_effective"], ".1f"), _num(r.get("pct_peak"), ".1f"),
                                 _num(r["gops_dense"], ".1f"), speedup])
    out = render_table(header, rows, markdown, left=(0, 4, 5))
    footnote = KERNEL_FOOTNOTE + (" " + _INT_MM_NOTE if any(r["impl"] == "torch_int_mm" for r in records) else "")
    notes = [footnote] + [f"not timed: {labels[name]}: {why}" for name, why in skipped.items()]
    if markdown:
        return out + "\n\n" + "\n".join(f"- {note}" for note in notes)
    return out + "\n" + "\n".join(textwrap.fill(note, 110, subsequent_indent="  ") for note in notes)


def plot_speedups(records: Sequence[Mapping[str, Any]], path: str, title: str = "") -> None:
    """Writes a PNG: sparsecpu's speedup over each baseline vs sparsity, one panel per shape (and per M
    and thread count when there are several), one line per baseline. Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    impls, labels, _ = _impls()
    shapes = sorted({(r["N"], r["K"]) for r in records}, key=lambda nk: (nk[1] * nk[0], nk))
    panels_rows = sorted({(r["M"], r["threads"]) for r in records})
    sparsities = sorted({r["sparsity"] for r in records})
    baselines = [i.name for i in impls if not i.ours and any(r["impl"] == i.name and r.get("speedup")
                                                             for r in records)]
    if not baselines:
        raise ValueError("nothing to plot: no baseline ran beside sparsecpu of the same dtype")
    colors = dict(zip(baselines, plt.get_cmap("tab10").colors))
    ncols, nrows = len(shapes), len(panels_rows)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols + 0.6, 3.4 * nrows + 1.4), squeeze=False,
                             sharey=True)
    dtype_of = {i.name: i.dtype for i in impls}
    for row, (m, t) in enumerate(panels_rows):
        for col, (n, k) in enumerate(shapes):
            ax = axes[row][col]
            for b in baselines:
                pts = sorted((r["sparsity"], r["speedup"]) for r in records
                             if r["impl"] == b and (r["N"], r["K"], r["M"], r["threads"]) == (n, k, m, t)
                             and r.get("speedup"))
                if pts:
                    xs, ys = zip(*pts)
                    ax.plot(xs, ys, marker="o", color=colors[b],
                            label=f"sparsecpu {dtype_of[b]} vs {labels[b]}")
            ax.axhline(1.0, color="0.4", lw=1, ls="--")
            ax.set_xticks(sparsities)
            ax.set_yscale("log", base=2)
            ax.yaxis.set_major_locator(LogLocator(base=2))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.grid(True, which="major", alpha=0.3)
            ax.set_title(f"{n}x{k} (N x K), M={m}" + (f", {t} threads" if nrows > 1 else ""), fontsize=10)
            if row == nrows - 1:
                ax.set_xlabel("sparsity (fraction of zero 4x1 blocks)")
            if col == 0:
                ax.set_ylabel("speedup of sparsecpu (> 1: faster)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    fig.legend(list(seen.values()), list(seen), loc="lower center", ncol=min(3, len(seen)), fontsize=9,
               frameon=False)
    threads = sorted({r["threads"] for r in records})
    fig.suptitle(title or f"sparsecpu speedup over baselines ({', '.join(map(str, threads))} threads)", fontsize=11)
    legend_rows = (len(seen) + 2) // 3
    fig.tight_layout(rect=(0, 0.045 * legend_rows + 0.02, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
