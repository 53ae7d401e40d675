"""Worker processes: ``sparsecpu bench`` runs each implementation in a process of its own.

Thread counts, the OpenMP runtime's state (a team sized once, threads that spin after a parallel
region), ONNX Runtime's pools and the environment are per process: timed side by side in one process,
each implementation would run under whatever the others set up before it. So each one gets a fresh
interpreter (``multiprocessing``'s "spawn" context: no fork of a process whose OpenMP runtime already
has threads, the environment is the parent's as it is, ``sys.path`` is the parent's), with torch at
its defaults except ``torch.set_num_threads(threads)`` and, in sparsecpu's own workers,
``sparsecpu.set_num_threads(threads)``; nothing else is set.

The parent drives the workers through one pipe each, one command at a time: ``run`` a module-level
set-up function in the worker (it stores the callables to time in the worker's state; they never
leave the worker), ``calibrate`` and time one ``batch`` of one of them, fetch its ``output`` (a numpy
array, for the correctness columns) or the worker's ``facts`` (pid, environment, thread settings).
Commands and replies are pickled; an exception in a worker comes back as its text, and a worker that
dies (a crash in a kernel) is reported by the exit status, so one failing implementation never stops
the others. :func:`time_round_robin` times the workers' callables interleaved as
:func:`~sparsecpu.bench.timing.time_interleaved` does in one process: repeat r of every worker, then
repeat r + 1.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import warnings
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from .timing import SETTLE_S, Timing, calibrate, gc_off, summarize, timed_batch

__all__ = ["ENV_PREFIXES", "FACT_KEYS", "Worker", "WorkerError", "relevant_env", "run_all", "start_workers",
           "time_round_robin"]

ENV_PREFIXES = ("OMP_", "GOMP_", "KMP_", "MKL_", "SPARSECPU_")
"""Environment variables that change how the timed libraries thread (OpenMP, libgomp, Intel OpenMP,
MKL, sparsecpu); each record lists those set in its worker."""
FACT_KEYS = ("pid", "env", "torch_threads", "torch_interop_threads", "sparsecpu_threads", "sparsecpu_threading",
             "ort_intra_op_threads")
"""What each record says about the process that ran it (:func:`process_facts`)."""


class WorkerError(Exception):
    """A command failed in a worker (the text of its exception), or the worker died."""


def relevant_env(environ: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The variables of ``environ`` (default: this process's) whose names start with one of
    :data:`ENV_PREFIXES`, sorted by name; a variable not set is absent."""
    environ = os.environ if environ is None else environ
    return {k: environ[k] for k in sorted(environ) if k.startswith(ENV_PREFIXES)}


# --- in the worker ---------------------------------------------------------------------------------


def process_facts(state: Mapping[str, Any]) -> Dict[str, Any]:
    """:data:`FACT_KEYS` of this worker: its pid, :func:`relevant_env`, torch's intra- and inter-op
    threads (None in a worker without torch), sparsecpu's threads and where they run
    (``info()["threading"]``), and what the set-up stored in ``state["facts"]``
    (``ort_intra_op_threads`` of an ONNX Runtime session)."""
    import sparsecpu

    torch = sys.modules.get("torch")
    facts = {"pid": os.getpid(), "env": relevant_env(),
             "torch_threads": torch.get_num_threads() if torch else None,
             "torch_interop_threads": torch.get_num_interop_threads() if torch else None,
             "sparsecpu_threads": sparsecpu.get_num_threads(), "sparsecpu_threading": sparsecpu.info()["threading"],
             "ort_intra_op_threads": None}
    facts.update(state["facts"])
    return facts


def _inference() -> Any:
    """torch's inference mode where torch is loaded (what the timed calls run under), else nothing."""
    torch = sys.modules.get("torch")
    return torch.inference_mode() if torch is not None else contextlib.nullcontext()


def _to_array(y: Any) -> Any:
    """A callable's output as a numpy array: a tensor, or the first output of an ONNX Runtime run."""
    import numpy as np

    if isinstance(y, (list, tuple)):
        y = y[0]
    if hasattr(y, "detach"):
        y = y.detach().float().numpy()
    return np.ascontiguousarray(y)


def _cmd_run(state: Dict[str, Any], fn: Callable[..., Any], **kwargs: Any) -> Any:
    return fn(state, **kwargs)


def _cmd_calibrate(state: Dict[str, Any], key: str, min_time: float, settle: float) -> int:
    with _inference(), gc_off():
        return calibrate(state["fns"][key], min_time, settle)


def _cmd_batch(state: Dict[str, Any], key: str, calls: int, settle: float, settle_by_calls: bool) -> float:
    with _inference(), gc_off():
        return timed_batch(state["fns"][key], calls, settle, settle_by_calls)


def _cmd_output(state: Dict[str, Any], key: str) -> Any:
    with _inference():
        return _to_array(state["fns"][key]())


def _cmd_facts(state: Dict[str, Any]) -> Dict[str, Any]:
    return process_facts(state)


_COMMANDS = {"run": _cmd_run, "calibrate": _cmd_calibrate, "batch": _cmd_batch, "output": _cmd_output,
             "facts": _cmd_facts}


def _serve(conn: Any, threads: int, sparsecpu_threads: Optional[int], initializer: Optional[Callable[[], Any]],
           use_torch: bool) -> None:
    """A worker's life: set the thread counts once, then answer commands until told to stop (None) or
    the parent goes away. Every reply is ``("ok", value)`` or ``("error", text)``."""
    startup_error = None
    try:
        # The parent prints what matters; deprecation notices and advice from 8 processes would not help.
        warnings.simplefilter("ignore")
        if use_torch:
            import torch

            torch.set_num_threads(threads)
        import sparsecpu

        if sparsecpu_threads is not None:
            sparsecpu.set_num_threads(sparsecpu_threads)
        if initializer is not None:
            initializer()
    except Exception as e:  # noqa: BLE001 -- reported as the answer to every command
        startup_error = f"worker start-up failed: {type(e).__name__}: {e}"
    state: Dict[str, Any] = {"fns": {}, "facts": {}}
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        cmd, args, kwargs = msg
        if startup_error is not None:
            conn.send(("error", startup_error))
            continue
        try:
            value = _COMMANDS[cmd](state, *args, **kwargs)
        except Exception as e:  # noqa: BLE001 -- the parent reports it and goes on with the other workers
            conn.send(("error", f"{type(e).__name__}: {e}"))
        else:
            conn.send(("ok", value))


# --- in the parent ---------------------------------------------------------------------------------


class Worker:
    """The parent's handle on one worker process (started at once; see the module docstring).

    ``threads``: ``torch.set_num_threads`` in the worker; ``sparsecpu_threads``:
    ``sparsecpu.set_num_threads`` (None: left at its default); ``initializer``: a picklable
    (module-level) callable the worker runs once after that, before any command (for tests);
    ``use_torch=False``: the worker does not import torch (ONNX Runtime rows that need none of it).
    """

    def __init__(self, name: str, threads: int, sparsecpu_threads: Optional[int] = None,
                 initializer: Optional[Callable[[], Any]] = None, use_torch: bool = True):
        ctx = multiprocessing.get_context("spawn")
        self.name = name
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, threads, sparsecpu_threads, initializer, use_torch),
                                   name=f"sparsecpu-bench-{name}", daemon=True)
        self.process.start()
        child.close()  # the worker's end lives in the worker only: its exit is EOF here
        self.dead: Optional[str] = None

    def _died(self) -> str:
        self.process.join(5)
        code = self.process.exitcode
        if code is None:
            why = "stopped answering"
        elif code < 0:
            try:
                why = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                why = f"was killed by signal {-code}"
        else:
            why = f"exited with status {code}"
        self.dead = f"worker process {self.process.pid} ({self.name}) {why}"
        return self.dead

    def send(self, cmd: str, *args: Any, **kwargs: Any) -> None:
        """Sends one command; :meth:`recv` gets its answer."""
        if self.dead:
            raise WorkerError(self.dead)
        try:
            self.conn.send((cmd, args, kwargs))
        except (BrokenPipeError, EOFError, OSError):
            raise WorkerError(self._died()) from None

    def recv(self) -> Any:
        """The answer to the last command; raises :class:`WorkerError` with the worker's exception or
        the reason it died."""
        try:
            status, value = self.conn.recv()
        except (EOFError, OSError):
            raise WorkerError(self._died()) from None
        if status == "error":
            raise WorkerError(value)
        return value

    def call(self, cmd: str, *args: Any, **kwargs: Any) -> Any:
        self.send(cmd, *args, **kwargs)
        return self.recv()

    def facts(self) -> Dict[str, Any]:
        """:func:`process_facts` of the worker; all None but the pid if it cannot answer."""
        try:
            return self.call("facts")
        except WorkerError:
            return {**dict.fromkeys(FACT_KEYS), "pid": self.process.pid}

    def close(self, timeout: float = 10.0) -> None:
        """Asks the worker to exit and waits for it (terminates it after ``timeout`` seconds)."""
        if self.process.is_alive():
            try:
                self.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            self.process.join(timeout)
            if self.process.is_alive():
                self.process.terminate()
                self.process.join(timeout)
        self.conn.close()


def start_workers(names: Iterable[str], threads: int, ours: Callable[[str], bool],
                  initializer: Optional[Callable[[], Any]] = None) -> Dict[str, Worker]:
    """One :class:`Worker` per name, all started at once (they import torch side by side); sparsecpu's
    own (``ours(name)``) also get ``sparsecpu.set_num_threads(threads)``."""
    workers: Dict[str, Worker] = {}
    try:
        for name in names:
            workers[name] = Worker(name, threads, threads if ours(name) else None, initializer)
    except BaseException:
        for w in workers.values():
            w.close()
        raise
    return workers


def run_all(workers: Mapping[str, Worker], calls: Mapping[str, Tuple[Callable[..., Any], Mapping[str, Any]]],
            jobs: int) -> Dict[str, Any]:
    """Runs ``fn(state, **kwargs)`` of ``calls[name] = (fn, kwargs)`` (``fn`` module-level) in each named
    worker, at most ``jobs`` at a time (set-ups: nothing is timed, so they overlap, but not more of them
    than there are CPUs, which bounds the memory they take together). Returns each worker's result, or
    the :class:`WorkerError` it raised."""
    results: Dict[str, Any] = {}
    queue = [name for name in calls if name in workers]
    busy: Dict[Any, str] = {}
    while queue or busy:
        while queue and len(busy) < max(1, jobs):
            name = queue.pop(0)
            fn, kwargs = calls[name]
            try:
                workers[name].send("run", fn, **kwargs)
            except WorkerError as e:
                results[name] = e
                continue
            busy[workers[name].conn] = name
        if not busy:
            continue
        for conn in multiprocessing.connection.wait(list(busy)):
            name = busy.pop(conn)
            try:
                results[name] = workers[name].recv()
            except WorkerError as e:
                results[name] = e
    return results


def time_round_robin(
    workers: Mapping[str, Worker],
    key: str,
    repeat: int,
    min_time: float = 2e-3,
    settle: float = SETTLE_S,
    settle_by_calls: bool = True,
    progress: Optional[Callable[[int], None]] = None,
) -> Tuple[Dict[str, Timing], Dict[str, str]]:
    """Times the callable stored under ``key`` in each worker, as
    :func:`~sparsecpu.bench.timing.time_interleaved` does in one process: each is warmed up and
    calibrated in turn, then ``repeat`` rounds, each a timed batch of every worker in turn (the other
    workers wait on their pipes meanwhile). The timed loop and the settling before it run in the worker
    with its garbage collector off; the parent only passes the turn on.

    Returns ``(timings, errors)``: a worker whose callable raised or that died is dropped from the
    following rounds and its error is returned instead of a timing.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    errors: Dict[str, str] = {}
    calls: Dict[str, int] = {}
    for name, w in workers.items():
        try:
            calls[name] = w.call("calibrate", key, min_time, settle)
        except WorkerError as e:
            errors[name] = f"failed while timed: {e}"
    times: Dict[str, List[float]] = {name: [] for name in calls}
    for done in range(1, repeat + 1):
        for name in calls:
            if name in errors:
                continue
            try:
                times[name].append(workers[name].call("batch", key, calls[name], settle, settle_by_calls))
            except WorkerError as e:
                errors[name] = f"failed while timed: {e}"
        if progress is not None:
            progress(done)
    return {name: summarize(t, calls[name]) for name, t in times.items() if name not in errors}, errors
