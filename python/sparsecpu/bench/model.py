"""Model benchmark: a transformers model pruned in 4x1 blocks, end to end, in torch and ONNX Runtime.

The model comes from a transformers config (``bert-base``, ``bert-large``, ``distilbert``, ``gpt2``:
random weights, nothing downloaded) or a local directory (its weights if it has any). Every
``nn.Linear`` / GPT-2 ``Conv1D`` whose weight is not tied to an embedding is pruned to the requested
fraction of zero 4x1 blocks (4 output channels x 1 input channel, smallest L2 norm first, per layer).

Rows (each timed on the same inputs, interleaved round-robin):

- ``torch_fp32``: the pruned model as it is.
- ``torch_dynamic_int8``: ``torch.ao.quantization.quantize_dynamic`` of its ``nn.Linear`` layers
  (GPT-2's ``Conv1D`` layers are turned into the equivalent ``nn.Linear`` first, else it would
  quantize nothing).
- ``sparsecpu_torch_fp32`` / ``sparsecpu_torch_int8``: ``sparsecpu.sparsify(model, dtype=..., skip=())``
  (GPT-2's unpruned ``lm_head`` runs dense int8 on the int8 path).
- ``ort_fp32``: the model exported with ``torch.onnx.export`` and run in ONNX Runtime.
- ``ort_dynamic_int8``: that graph after ONNX Runtime's ``quantize_dynamic``.
- ``sparsecpu_ort_fp32`` / ``sparsecpu_ort_int8``: ``sparsecpu.onnx.convert(src, dst, dtype=...)``
  of that graph, run by ``sparsecpu.onnx.session(dst, threads)`` (its defaults: ORT spinning off).

For a causal LM (GPT-2) the torch rows also time greedy ``generate()`` (KV cache on) and report
tokens/s.
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

import sparsecpu

from . import _ort
from .report import render_table
from .timing import default_threads, time_interleaved

__all__ = ["MODEL_IMPLS", "MODEL_PRESETS", "ModelImpl", "load_model", "model_table", "prune_4x1_", "run_model_bench"]

MODEL_PRESETS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "bert-base": ("bert", {}),
    "bert-large": ("bert", {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                            "intermediate_size": 4096}),
    "distilbert": ("distilbert", {}),
    "gpt2": ("gpt2", {}),
}
"""``--model`` names: transformers ``model_type`` and the config fields that differ from its defaults."""
_CAUSAL_TYPES = ("gpt2",)


@dataclass(frozen=True)
class ModelImpl:
    """One row of the model benchmark: record name, table label, dtype, storage format."""

    name: str
    label: str
    dtype: str
    format: str


MODEL_IMPLS: Tuple[ModelImpl, ...] = (
    ModelImpl("torch_fp32", "torch fp32", "fp32", "dense"),
    ModelImpl("torch_dynamic_int8", "torch qdynamic int8", "int8", "dense"),
    ModelImpl("sparsecpu_torch_fp32", "sparsecpu torch fp32", "fp32", "sparsecpu"),
    ModelImpl("sparsecpu_torch_int8", "sparsecpu torch int8", "int8", "sparsecpu"),
    ModelImpl("ort_fp32", "ORT fp32", "fp32", "dense"),
    ModelImpl("ort_dynamic_int8", "ORT qdynamic int8", "int8", "dense"),
    ModelImpl("sparsecpu_ort_fp32", "sparsecpu ORT fp32", "fp32", "sparsecpu"),
    ModelImpl("sparsecpu_ort_int8", "sparsecpu ORT int8", "int8", "sparsecpu"),
)
_LABEL = {i.name: i.label for i in MODEL_IMPLS}


def load_model(model: str, seed: int = 0) -> Tuple[nn.Module, Any, bool]:
    """``(module, config, causal)`` for a preset name (random weights from its transformers config) or
    a local directory with a ``config.json`` (its weights if it has any, else random ones).

    ``causal`` is True for causal language models (GPT-2 and configs whose architecture is a
    ``...LMHeadModel`` / ``...ForCausalLM``): they are built with their LM head and benchmarked on
    ``generate()`` too. Raises ``ValueError`` for an unknown name or a path without ``config.json``.
    """
    import transformers

    path = None
    if model in MODEL_PRESETS:
        model_type, fields = MODEL_PRESETS[model]
        config = transformers.AutoConfig.for_model(model_type, **fields)
    elif os.path.isfile(os.path.join(model, "config.json")):
        path = model
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    else:
        raise ValueError(f"--model must be one of {sorted(MODEL_PRESETS)} or a directory with a config.json, "
                         f"got {model!r}")
    architectures = getattr(config, "architectures", None) or []
    causal = config.model_type in _CAUSAL_TYPES or any(a.endswith(("LMHeadModel", "ForCausalLM")) for a in architectures)
    cls = transformers.AutoModelForCausalLM if causal else transformers.AutoModel
    torch.manual_seed(seed)
    weights = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
    if path is not None and any(os.path.exists(os.path.join(path, w)) for w in weights):
        module = cls.from_pretrained(path, local_files_only=True)
    else:
        module = cls.from_config(config)
    return module.eval(), config, causal


def prune_4x1_(model: nn.Module, sparsity: float) -> int:
    """Prunes every ``nn.Linear`` and ``Conv1D`` of ``model`` whose weight is not shared with an
    embedding (a tied LM head stays dense) to ``sparsity`` zero 4x1 blocks, per layer, in place
    (:func:`sparsecpu.prune`); returns how many layers it pruned."""
    embeddings = {m.weight.data_ptr() for m in model.modules() if isinstance(m, nn.Embedding)}
    tied = tuple(name for name, m in model.named_modules()
                 if name and isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.data_ptr() in embeddings
                 and not isinstance(m, nn.Embedding))
    return len(sparsecpu.prune(model, sparsity=sparsity, block=(4, 1), scope="layer", skip=tied))


def _conv1d_as_linear_(model: nn.Module) -> None:
    """Replaces every transformers ``Conv1D`` (GPT-2) with the equivalent ``nn.Linear``, in place."""
    from transformers.pytorch_utils import Conv1D

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                k, n = child.weight.shape
                linear = nn.Linear(k, n)
                with torch.no_grad():
                    linear.weight.copy_(child.weight.t())
                    linear.bias.copy_(child.bias)
                setattr(parent, name, linear)


class _Forward(nn.Module):
    """``(input_ids, attention_mask) -> first output`` (last hidden state or logits), without KV cache:
    the call that is timed and exported."""

    def __init__(self, model: nn.Module, causal: bool):
        super().__init__()
        self.model = model
        self.kwargs = {"use_cache": False} if causal else {}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **self.kwargs)[0]


def _export(model: nn.Module, causal: bool, ids: torch.Tensor, mask: torch.Tensor, path: str) -> None:
    """``torch.onnx.export`` of the forward call (fixed shapes) to ``path``."""
    with warnings.catch_warnings(), _ort.quiet():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Forward(model, causal).eval(), (ids, mask), path, input_names=["input_ids", "attention_mask"],
                          output_names=["output"], opset_version=_ort.OPSET, dynamo=True, verbose=False)


def _ort_runner(sess: Any, ids: torch.Tensor, mask: torch.Tensor) -> Callable[[], Any]:
    """A zero-argument call of ``sess`` on the inputs it declares."""
    available = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    feed = {i.name: available[i.name] for i in sess.get_inputs()}
    return lambda: sess.run(None, feed)


def _cosine(y: Any, ref: torch.Tensor) -> float:
    # float64: over millions of logits a float32 dot product drifts past 1.0 for identical outputs.
    y = torch.as_tensor(y[0] if isinstance(y, list) else y).double().flatten()
    return float(F.cosine_similarity(y, ref.double().flatten(), dim=0))


def run_model_bench(
    model: str = "bert-base",
    sparsity: float = 0.9,
    seq: int = 128,
    batch: int = 1,
    threads: Optional[int] = None,
    repeat: int = 10,
    prompt: int = 32,
    new_tokens: int = 64,
    impls: Optional[Sequence[str]] = None,
    progress: Optional[Callable[[str], None]] = None,
    seed: int = 0,
) -> List[Dict[str, Any]]:
    """Benchmarks ``model`` (see :func:`load_model`) pruned to ``sparsity`` on ``batch x seq`` random
    tokens; for a causal LM also greedy generation of ``new_tokens`` after a ``prompt``-token prompt
    (batch 1). ``impls`` restricts the rows (names of :data:`MODEL_IMPLS`; default: all that this
    installation can run). torch, sparsecpu and ONNX Runtime's intra-op pool use ``threads``.

    Returns one record per row and op (``"model"`` for the forward pass, ``"generate"``): ``op``,
    ``model``, ``impl``, ``dtype``, ``format``, ``M`` (tokens per call), ``N``/``K`` (None),
    ``batch``, ``seq``, ``sparsity``, ``threads``, ``median_s``, ``p10_s``, ``p90_s``, ``repeat``,
    ``tokens_per_s``, ``sequences_per_s`` (forward), ``new_tokens``/``prompt_tokens`` (generate),
    ``speedup`` (torch fp32's median / this one's, same run), ``cosine`` (forward output vs torch
    fp32's) and ``error`` (why the row did not run, else None).
    """
    names = [i.name for i in MODEL_IMPLS]
    wanted = list(impls) if impls is not None else names
    unknown = set(wanted) - set(names)
    if unknown:
        raise ValueError(f"unknown model implementations {sorted(unknown)}; expected some of {names}")
    for name, value in (("seq", seq), ("batch", batch), ("repeat", repeat), ("prompt", prompt), ("new_tokens", new_tokens)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    say = progress or (lambda line: None)
    threads = threads or default_threads()
    saved = torch.get_num_threads(), sparsecpu.get_num_threads()
    torch.set_num_threads(threads)
    sparsecpu.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="sparsecpu-bench-") as tmp:
            return _run(model, sparsity, seq, batch, threads, repeat, prompt, new_tokens, wanted, say, seed, tmp)
    finally:
        torch.set_num_threads(saved[0])
        sparsecpu.set_num_threads(saved[1])


def _run(model_name, sparsity, seq, batch, threads, repeat, prompt, new_tokens, wanted, say, seed, tmp):
    t0 = time.perf_counter()
    say(f"building {model_name} ...")
    base, config, causal = load_model(model_name, seed)
    params = sum(p.numel() for p in base.parameters())
    pruned = prune_4x1_(base, sparsity)
    say(f"{model_name}: {params / 1e6:.1f}M parameters, {pruned} linear layers pruned to {sparsity:g} "
        f"zero 4x1 blocks ({time.perf_counter() - t0:.0f}s)")
    g = torch.Generator().manual_seed(seed + 1)
    vocab = config.vocab_size
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    mask = torch.ones_like(ids)

    errors: Dict[str, str] = {}
    modules: Dict[str, nn.Module] = {}
    fns: Dict[str, Callable[[], Any]] = {}

    def attempt(name: str, setup: Callable[[], None]) -> None:
        if name not in wanted:
            return
        say(f"setting up {_LABEL[name]} ...")
        try:
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # deprecations of torch.ao.quantization, qint8 tensors
                setup()
        except Exception as e:  # noqa: BLE001 -- one row failing must not stop the others; its error is reported
            errors[name] = f"{type(e).__name__}: {e}"
            fns.pop(name, None)
            modules.pop(name, None)
            say(f"  {_LABEL[name]} not run: {errors[name]}")

    def torch_row(name: str, m: nn.Module) -> None:
        modules[name] = m
        fwd = _Forward(m, causal)
        fns[name] = lambda: fwd(ids, mask)

    attempt("torch_fp32", lambda: torch_row("torch_fp32", base))

    def dynamic_int8() -> None:
        m = copy.deepcopy(base)
        _conv1d_as_linear_(m)
        torch_row("torch_dynamic_int8", torch.ao.quantization.quantize_dynamic(m, {nn.Linear}, dtype=torch.qint8))

    attempt("torch_dynamic_int8", dynamic_int8)
    for dtype in ("fp32", "int8"):
        name = f"sparsecpu_torch_{dtype}"

        def sparsified(name: str = name, dtype: str = dtype) -> None:
            m = copy.deepcopy(base)
            # skip=(): GPT-2's lm_head (not pruned) becomes dense int8 on the int8 path.
            sparsecpu.sparsify(m, dtype=dtype, skip=())
            torch_row(name, m)

        attempt(name, sparsified)

    onnx_names = [n for n in wanted if "ort" in n]
    if onnx_names:
        reason = _ort.missing()
        fp32_path = os.path.join(tmp, "model.onnx")
        if reason is None:
            say("exporting to ONNX (torch.onnx.export) ...")
            try:
                _export(base, causal, ids, mask, fp32_path)
            except Exception as e:  # noqa: BLE001 -- export of an arbitrary model may fail; ORT rows are skipped
                reason = f"torch.onnx.export failed: {type(e).__name__}: {e}"
        if reason is not None:
            for n in onnx_names:
                errors[n] = reason
        else:

            def ort_row(name: str, path: str) -> None:
                fns[name] = _ort_runner(_ort.session(path, threads), ids, mask)

            attempt("ort_fp32", lambda: ort_row("ort_fp32", fp32_path))

            def ort_int8() -> None:
                dst = os.path.join(tmp, "model.int8.onnx")
                _ort.quantize_dynamic(fp32_path, dst)
                ort_row("ort_dynamic_int8", dst)

            attempt("ort_dynamic_int8", ort_int8)
            for dtype in ("fp32", "int8"):
                name = f"sparsecpu_ort_{dtype}"

                def converted(name: str = name, dtype: str = dtype) -> None:
                    import sparsecpu.onnx

                    dst = os.path.join(tmp, f"model.sparsecpu.{dtype}.onnx")
                    with _ort.quiet():
                        sparsecpu.onnx.convert(fp32_path, dst, dtype=dtype)
                    fns[name] = _ort_runner(sparsecpu.onnx.session(dst, threads), ids, mask)

                attempt(name, converted)

    def rounds(done: int) -> None:
        say(f"  round {done}/{repeat} ({time.perf_counter() - t0:.0f}s)")

    records: List[Dict[str, Any]] = []
    common = {"model": model_name, "N": None, "K": None, "batch": batch, "seq": seq, "sparsity": sparsity,
              "threads": threads, "repeat": repeat}
    with torch.inference_mode():
        ref = fns["torch_fp32"]() if "torch_fp32" in fns else None
        cosines = {n: _cosine(fn(), ref) for n, fn in fns.items()} if ref is not None else {}
        say(f"timing the forward pass of {len(fns)} implementations, {repeat} repeats ...")
        timings = time_interleaved(fns, repeat, settle_by_calls=False, progress=rounds)
    for impl in MODEL_IMPLS:
        if impl.name not in wanted:
            continue
        t = timings.get(impl.name)
        records.append({"op": "model", "impl": impl.name, "dtype": impl.dtype, "format": impl.format,
                        "M": batch * seq, **common,
                        "median_s": t.median_s if t else None, "p10_s": t.p10_s if t else None,
                        "p90_s": t.p90_s if t else None,
                        "sequences_per_s": batch / t.median_s if t else None,
                        "tokens_per_s": batch * seq / t.median_s if t else None,
                        "cosine": cosines.get(impl.name), "error": errors.get(impl.name)})
    _add_speedups(records)

    if causal:
        gen_ids = torch.randint(0, vocab, (1, prompt), generator=g)
        # No end-of-sequence token: every run makes exactly new_tokens tokens (min_new_tokens would do
        # it too, but by masking the whole vocabulary with torch.isin at every step: ~0.5 ms a token of
        # logits processing that is no model's work).
        kwargs = dict(input_ids=gen_ids, attention_mask=torch.ones_like(gen_ids), max_new_tokens=new_tokens,
                      do_sample=False, eos_token_id=None,
                      pad_token_id=config.eos_token_id if config.eos_token_id is not None else 0)
        gens = {n: (lambda m=m: m.generate(**kwargs)) for n, m in modules.items()}
        say(f"timing generate() of {new_tokens} tokens after a {prompt}-token prompt, {len(gens)} implementations, "
            f"{repeat} repeats ...")
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # generation-config advice
            timings = time_interleaved(gens, repeat, settle_by_calls=False, progress=rounds)
        gen_records = []
        for impl in MODEL_IMPLS:
            if impl.name not in wanted or "ort" in impl.name:
                continue
            t = timings.get(impl.name)
            gen_records.append({"op": "generate", "impl": impl.name, "dtype": impl.dtype, "format": impl.format,
                                "M": 1, **common, "batch": 1, "seq": prompt + new_tokens,
                                "prompt_tokens": prompt, "new_tokens": new_tokens,
                                "median_s": t.median_s if t else None, "p10_s": t.p10_s if t else None,
                                "p90_s": t.p90_s if t else None,
                                "tokens_per_s": new_tokens / t.median_s if t else None,
                                "error": errors.get(impl.name)})
        _add_speedups(gen_records)
        records.extend(gen_records)
    say(f"done ({time.perf_counter() - t0:.0f}s)")
    return records


def _add_speedups(records: List[Dict[str, Any]]) -> None:
    """``speedup``: torch fp32's median over each record's (same op), None where either is missing."""
    base = next((r["median_s"] for r in records if r["impl"] == "torch_fp32"), None)
    for r in records:
        r["speedup"] = base / r["median_s"] if base and r["median_s"] else None


def _fmt(v: Optional[float], spec: str, suffix: str = "") -> str:
    return "n/a" if v is None else format(v, spec) + suffix


def model_table(records: Sequence[Mapping[str, Any]], markdown: bool = False) -> str:
    """The model benchmark's tables: the forward pass (latency median and p10-p90, throughput, speedup
    and output cosine vs torch fp32) and, for causal LMs, ``generate()`` tokens/s; then notes on the
    rows that did not run."""
    parts = []
    fwd = [r for r in records if r["op"] == "model"]
    gen = [r for r in records if r["op"] == "generate"]
    if fwd:
        r0 = fwd[0]
        parts.append(f"{r0['model']}, batch {r0['batch']} x seq {r0['seq']}, {r0['sparsity']:g} of the 4x1 blocks "
                     f"zero, {r0['threads']} threads, {r0['repeat']} repeats: forward pass")
        rows = [[_LABEL[r["impl"]], r["dtype"], _fmt(r["median_s"] and r["median_s"] * 1e3, ".1f"),
                 "n/a" if r["median_s"] is None else f"{r['p10_s'] * 1e3:.1f}-{r['p90_s'] * 1e3:.1f}",
                 _fmt(r["sequences_per_s"], ".1f"), _fmt(r["tokens_per_s"], ".0f"), _fmt(r["speedup"], ".2f", "x"),
                 _fmt(r["cosine"], ".4f")] for r in fwd if r["median_s"] is not None]
        parts.append(render_table(["impl", "dtype", "median ms", "p10-p90 ms", "seq/s", "tokens/s",
                                   "speedup vs torch fp32", "cosine vs torch fp32"], rows, markdown, left=(0, 1)))
    if gen:
        r0 = gen[0]
        parts.append(f"greedy generate(): {r0['new_tokens']} new tokens after a {r0['prompt_tokens']}-token prompt, "
                     f"batch 1 (KV cache on)")
        rows = [[_LABEL[r["impl"]], r["dtype"], _fmt(r["median_s"], ".3f"),
                 f"{r['p10_s']:.3f}-{r['p90_s']:.3f}", _fmt(r["tokens_per_s"], ".1f"), _fmt(r["speedup"], ".2f", "x")]
                for r in gen if r["median_s"] is not None]
        parts.append(render_table(["impl", "dtype", "median s", "p10-p90 s", "tokens/s", "speedup vs torch fp32"],
                                  rows, markdown, left=(0, 1)))
    skipped = {r["impl"]: r["error"] for r in records if r["median_s"] is None and r["error"]}
    notes = [f"{'- ' if markdown else ''}not run: {_LABEL[name]}: {why}" for name, why in skipped.items()]
    if notes:
        parts.append("\n".join(notes))
    return ("\n\n" if markdown else "\n").join(parts)
