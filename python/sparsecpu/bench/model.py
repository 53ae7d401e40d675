"""Model benchmark: a transformers model pruned in 4x1 blocks, end to end, in torch and ONNX Runtime.

The model comes from a transformers config (``bert-base``, ``bert-large``, ``distilbert``, ``gpt2``:
random weights, nothing downloaded) or a local directory (its weights if it has any). Every
``nn.Linear`` / GPT-2 ``Conv1D`` whose weight is not tied to an embedding is pruned to the requested
fraction of zero 4x1 blocks (4 output channels x 1 input channel, smallest L2 norm first, per layer).

Rows (each in a worker process of its own, on the same inputs, timed interleaved round-robin):

- ``torch_fp32``: the pruned model as it is.
- ``torch_dynamic_int8``: ``torch.ao.quantization.quantize_dynamic`` of its ``nn.Linear`` layers
  (GPT-2's ``Conv1D`` layers are turned into the equivalent ``nn.Linear`` first, else it would
  quantize nothing).
- ``sparsecpu_torch_fp32`` / ``sparsecpu_torch_int8``: ``sparsecpu.sparsify(model, dtype=...)`` with its
  defaults (GPT-2's unpruned ``lm_head`` runs dense int8 on the int8 path).
- ``ort_fp32``: the model exported with ``torch.onnx.export`` and run in ONNX Runtime.
- ``ort_dynamic_int8``: that graph after ONNX Runtime's ``quantize_dynamic``.
- ``sparsecpu_ort_fp32`` / ``sparsecpu_ort_int8``: ``sparsecpu.onnx.convert(src, dst, dtype=...)``
  of that graph, run by ``sparsecpu.onnx.session(dst, threads)`` (its defaults: ORT spinning off).

For a causal LM (GPT-2) the torch rows also time greedy ``generate()`` (KV cache on) and report
tokens/s.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

import sparsecpu

from . import _ort
from .report import render_table
from .timing import default_threads
from .workers import FACT_KEYS, Worker, WorkerError, run_all, time_round_robin

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

    _check_model(model)
    path = None
    if model in MODEL_PRESETS:
        model_type, fields = MODEL_PRESETS[model]
        config = transformers.AutoConfig.for_model(model_type, **fields)
    else:
        path = model
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
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


def _check_model(model: str) -> None:
    """Raises ``ValueError`` unless ``model`` is a preset name or a directory with a ``config.json``."""
    if model not in MODEL_PRESETS and not os.path.isfile(os.path.join(model, "config.json")):
        raise ValueError(f"--model must be one of {sorted(MODEL_PRESETS)} or a directory with a config.json, "
                         f"got {model!r}")


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
    initializer: Optional[Callable[[], Any]] = None,
) -> List[Dict[str, Any]]:
    """Benchmarks ``model`` (see :func:`load_model`) pruned to ``sparsity`` on ``batch x seq`` random
    tokens; for a causal LM also greedy generation of ``new_tokens`` after a ``prompt``-token prompt
    (batch 1). ``impls`` restricts the rows (names of :data:`MODEL_IMPLS`; default: all that this
    installation can run).

    Each row runs in a worker process of its own (:mod:`sparsecpu.bench.workers`): torch at its
    defaults with ``torch.set_num_threads(threads)`` (ONNX Runtime rows do not load torch), sparsecpu's
    rows also ``sparsecpu.set_num_threads(threads)``, ONNX Runtime sessions with ``threads`` intra-op
    threads (default: the CPUs this process may use); this process's settings are not touched. One
    more worker builds and prunes the model once, saves it for the torch rows to load, and exports it
    with ``torch.onnx.export`` for the ONNX Runtime rows. A row whose set-up or run fails gets its
    error in its record; the others go on. ``initializer``: a picklable (module-level) callable each
    worker runs once at start-up (for tests).

    Returns one record per row and op (``"model"`` for the forward pass, ``"generate"``): ``op``,
    ``model``, ``impl``, ``dtype``, ``format``, ``M`` (tokens per call), ``N``/``K`` (None),
    ``batch``, ``seq``, ``sparsity``, ``threads``, ``median_s``, ``p10_s``, ``p90_s``, ``repeat``,
    ``tokens_per_s``, ``sequences_per_s`` (forward), ``new_tokens``/``prompt_tokens`` (generate),
    ``speedup`` (torch fp32's median / this one's, same run), ``cosine`` (forward output vs torch
    fp32's, computed here from the outputs the workers return), ``error`` (why the row did not run,
    else None), and how its worker ran (:data:`~sparsecpu.bench.workers.FACT_KEYS`: ``pid``, ``env``,
    ``torch_threads``, ``torch_interop_threads``, ``sparsecpu_threads``, ``sparsecpu_threading``,
    ``ort_intra_op_threads``; all None where no worker ran the row).
    """
    names = [i.name for i in MODEL_IMPLS]
    wanted = list(impls) if impls is not None else names
    unknown = set(wanted) - set(names)
    if unknown:
        raise ValueError(f"unknown model implementations {sorted(unknown)}; expected some of {names}")
    for name, value in (("seq", seq), ("batch", batch), ("repeat", repeat), ("prompt", prompt), ("new_tokens", new_tokens)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    _check_model(model)
    say = progress or (lambda line: None)
    threads = threads or default_threads()
    with tempfile.TemporaryDirectory(prefix="sparsecpu-bench-") as tmp:
        return _run(model, sparsity, seq, batch, threads, repeat, prompt, new_tokens, wanted, say, seed, tmp,
                    initializer)


# --- in the workers ---------------------------------------------------------------------------------


def _prepare(state: Dict[str, Any], model: str, sparsity: float, seed: int, batch: int, seq: int, prompt: int,
             path: str) -> Dict[str, Any]:
    """In the preparing worker: builds and prunes the model, saves it (the whole module, pickled) to
    ``path`` for the torch rows, and draws the inputs every row gets (numpy arrays)."""
    t0 = time.perf_counter()
    base, config, causal = load_model(model, seed)
    params = sum(p.numel() for p in base.parameters())
    pruned = prune_4x1_(base, sparsity)
    torch.save(base, path)
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, config.vocab_size, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    state["export"] = base, causal, ids, mask
    out = {"params": params, "pruned": pruned, "causal": causal, "eos_token_id": config.eos_token_id,
           "inputs": {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}, "gen_ids": None,
           "seconds": time.perf_counter() - t0}
    if causal:
        out["gen_ids"] = torch.randint(0, config.vocab_size, (1, prompt), generator=g).numpy()
    return out


def _export_prepared(state: Dict[str, Any], path: str) -> None:
    """In the preparing worker, after :func:`_prepare`: ``torch.onnx.export`` of that model to ``path``."""
    base, causal, ids, mask = state.pop("export")
    _export(base, causal, ids, mask, path)


def _setup_torch_row(state: Dict[str, Any], name: str, path: str, inputs: Mapping[str, Any], causal: bool,
                     gen_ids: Any, new_tokens: int, pad_token_id: int) -> None:
    """In the worker of torch row ``name``: loads the pruned model from ``path``, turns it into that
    row's form, and stores its forward pass (``"forward"``) and, for a causal LM, greedy generation
    (``"generate"``)."""
    m = torch.load(path, weights_only=False)  # the module the preparing worker pickled, tied weights and all
    with torch.inference_mode():
        if name == "torch_dynamic_int8":
            _conv1d_as_linear_(m)
            m = torch.ao.quantization.quantize_dynamic(m, {nn.Linear}, dtype=torch.qint8)
        elif name.startswith("sparsecpu_torch_"):
            sparsecpu.sparsify(m, dtype=name[len("sparsecpu_torch_"):])  # as a user calls it: every default
        elif name != "torch_fp32":
            raise ValueError(f"not a torch row: {name!r}")
    ids, mask = torch.from_numpy(inputs["input_ids"]), torch.from_numpy(inputs["attention_mask"])
    fwd = _Forward(m, causal)
    state["fns"]["forward"] = lambda: fwd(ids, mask)
    if causal:
        gen = torch.from_numpy(gen_ids)
        # No end-of-sequence token: every run makes exactly new_tokens tokens (min_new_tokens would do
        # it too, but by masking the whole vocabulary with torch.isin at every step: ~0.5 ms a token of
        # logits processing that is no model's work).
        kwargs = dict(input_ids=gen, attention_mask=torch.ones_like(gen), max_new_tokens=new_tokens,
                      do_sample=False, eos_token_id=None, pad_token_id=pad_token_id)
        state["fns"]["generate"] = lambda: m.generate(**kwargs)


# --- in this process ----------------------------------------------------------------------------------


def _cosine(y: np.ndarray, ref: np.ndarray) -> float:
    # float64: over millions of logits a float32 dot product drifts past 1.0 for identical outputs. Plain
    # numpy (no BLAS): no thread pool of this process spins beside the workers.
    y, ref = y.astype(np.float64).ravel(), ref.astype(np.float64).ravel()
    if y.shape != ref.shape:
        raise ValueError(f"output has {y.size} values, torch fp32's {ref.size}")
    norms = math.sqrt(float(np.sum(y * y)) * float(np.sum(ref * ref)))
    return float(np.sum(y * ref)) / max(norms, 1e-8)


def _run(model_name, sparsity, seq, batch, threads, repeat, prompt, new_tokens, wanted, say, seed, tmp, initializer):
    t0 = time.perf_counter()
    errors: Dict[str, str] = {}
    ort_rows = [n for n in wanted if "ort" in n]
    reason = _ort.missing() if ort_rows else None
    if reason is not None:
        errors.update(dict.fromkeys(ort_rows, reason))
        ort_rows = []
    torch_rows = [n for n in wanted if "ort" not in n]
    say(f"building {model_name} ...")
    # Everything starts at once: the workers import torch / onnxruntime while the model is built.
    prep = Worker("prepare", threads, None, initializer)
    workers: Dict[str, Worker] = {}
    try:
        for n in torch_rows + ort_rows:
            ours = n.startswith("sparsecpu_")
            workers[n] = Worker(n, threads, threads if ours else None, initializer, use_torch="ort" not in n)
        try:
            prepared = prep.call("run", _prepare, model=model_name, sparsity=sparsity, seed=seed, batch=batch,
                                 seq=seq, prompt=prompt, path=os.path.join(tmp, "model.pt"))
        except WorkerError as e:
            raise RuntimeError(f"could not build {model_name}: {e}") from None
        causal = prepared["causal"]
        say(f"{model_name}: {prepared['params'] / 1e6:.1f}M parameters, {prepared['pruned']} linear layers pruned to "
            f"{sparsity:g} zero 4x1 blocks ({prepared['seconds']:.0f}s)")
        eos = prepared["eos_token_id"]
        torch_args = dict(path=os.path.join(tmp, "model.pt"), inputs=prepared["inputs"], causal=causal,
                          gen_ids=prepared["gen_ids"], new_tokens=new_tokens,
                          pad_token_id=eos if eos is not None else 0)
        onnx_path = os.path.join(tmp, "model.onnx")
        calls = {}
        if ort_rows:  # first: the ONNX Runtime rows wait for it
            say("exporting to ONNX (torch.onnx.export) ...")
            calls["prepare"] = (_export_prepared, dict(path=onnx_path))
        calls.update({n: (_setup_torch_row, dict(name=n, **torch_args)) for n in torch_rows})
        if torch_rows:
            say(f"setting up {', '.join(_LABEL[n] for n in torch_rows)} (one worker process each) ...")
        setups = run_all({**workers, "prepare": prep}, calls, jobs=default_threads())
        prep.close()
        if ort_rows:
            exported = setups.pop("prepare")
            if isinstance(exported, WorkerError):
                errors.update(dict.fromkeys(ort_rows, f"torch.onnx.export failed: {exported}"))
                for n in ort_rows:
                    workers.pop(n).close()
                ort_rows = []
            else:
                say(f"setting up {', '.join(_LABEL[n] for n in ort_rows)} (one worker process each) ...")
                ort_calls = {}
                for n in ort_rows:
                    row_tmp = os.path.join(tmp, n)
                    os.makedirs(row_tmp)
                    ort_calls[n] = (_ort.setup_model_row, dict(name=n, src=onnx_path, tmp=row_tmp, threads=threads,
                                                               inputs=prepared["inputs"]))
                setups.update(run_all(workers, ort_calls, jobs=default_threads()))
        for n in wanted:
            if isinstance(setups.get(n), WorkerError):
                errors[n] = str(setups[n])
                say(f"  {_LABEL[n]} not run: {errors[n]}")
        ready = {n: workers[n] for n in wanted if n in workers and n not in errors}
        return _measure(model_name, ready, workers, errors, causal, wanted, batch, seq, sparsity, threads, repeat,
                        prompt, new_tokens, say, t0)
    finally:
        prep.close()
        for w in workers.values():
            w.close()


def _measure(model_name, ready, workers, errors, causal, wanted, batch, seq, sparsity, threads, repeat, prompt,
             new_tokens, say, t0):
    """Cosines, interleaved timing of the forward pass (and of generate() for a causal LM), records."""
    cosines: Dict[str, float] = {}
    if "torch_fp32" in ready:
        try:
            ref = ready["torch_fp32"].call("output", "forward")
        except WorkerError as e:
            errors["torch_fp32"] = str(e)
            ready.pop("torch_fp32")
        else:
            for n, w in list(ready.items()):
                try:
                    cosines[n] = _cosine(ref if n == "torch_fp32" else w.call("output", "forward"), ref)
                except WorkerError as e:
                    errors[n] = str(e)
                    ready.pop(n)

    def rounds(done: int) -> None:
        say(f"  round {done}/{repeat} ({time.perf_counter() - t0:.0f}s)")

    say(f"timing the forward pass of {len(ready)} implementations, {repeat} repeats ...")
    timings, failed = time_round_robin(ready, "forward", repeat, settle_by_calls=False, progress=rounds)
    errors.update(failed)
    gen_timings: Dict[str, Any] = {}
    gens = {n: w for n, w in ready.items() if "ort" not in n and n not in errors}
    if causal:
        say(f"timing generate() of {new_tokens} tokens after a {prompt}-token prompt, {len(gens)} implementations, "
            f"{repeat} repeats ...")
        gen_timings, gen_failed = time_round_robin(gens, "generate", repeat, settle_by_calls=False, progress=rounds)
    facts = {n: w.facts() for n, w in workers.items()}

    records: List[Dict[str, Any]] = []
    common = {"model": model_name, "N": None, "K": None, "batch": batch, "seq": seq, "sparsity": sparsity,
              "threads": threads, "repeat": repeat}
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
                        "cosine": cosines.get(impl.name), "error": errors.get(impl.name),
                        **_facts(facts, impl.name)})
    _add_speedups(records)

    if causal:
        gen_records = []
        for impl in MODEL_IMPLS:
            if impl.name not in wanted or "ort" in impl.name:
                continue
            t = gen_timings.get(impl.name)
            gen_records.append({"op": "generate", "impl": impl.name, "dtype": impl.dtype, "format": impl.format,
                                "M": 1, **common, "batch": 1, "seq": prompt + new_tokens,
                                "prompt_tokens": prompt, "new_tokens": new_tokens,
                                "median_s": t.median_s if t else None, "p10_s": t.p10_s if t else None,
                                "p90_s": t.p90_s if t else None,
                                "tokens_per_s": new_tokens / t.median_s if t else None,
                                "error": errors.get(impl.name) or gen_failed.get(impl.name),
                                **_facts(facts, impl.name)})
        _add_speedups(gen_records)
        records.extend(gen_records)
    say(f"done ({time.perf_counter() - t0:.0f}s)")
    return records


def _facts(facts: Mapping[str, Mapping[str, Any]], name: str) -> Dict[str, Any]:
    got = facts.get(name, {})
    return {key: got.get(key) for key in FACT_KEYS}


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
