"""Measured costs of the int8 weight formats on this machine: what ``format="auto"`` decides from.

Which format runs a pruned int8 layer fastest depends on the CPU: on AVX2 the 4x1 block-sparse kernel
beats the dense int8 GEMM up to a block density of about 0.75 at 128 rows, while on a CPU with AMX the
dense GEMM runs on tiles several times faster and the panel format (16 channels sharing their kept
columns, on tiles too) joins in. So instead of a constant tuned on one CPU, the first decision on a
machine runs a short calibration (about a second): each format's kernel on a 768 x 768 weight, at
1 and 128 rows, at a few densities, the median of several runs. Per format and row count the time is
fitted as ``a + b * density`` (dense: density 1) and scaled by the weight's size, and a layer takes the
format with the lowest predicted time for its own densities. The result is cached on disk per CPU
model, ISA level, thread count and sparsecpu version (``$SPARSECPU_CACHE_DIR``, else
``$XDG_CACHE_HOME/sparsecpu`` or ``~/.cache/sparsecpu``), so later processes only read it.

The panel format is a candidate only where its kernel runs natively (the ``amx`` level); elsewhere it
would run its reference kernel.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from . import _C

__all__ = ["Calibration", "Choice", "format_densities", "load", "path"]

VERSION = 1                      # of the cache file's layout and of the measurement plan below
SHAPE = (768, 768)               # N x K of the weight measured
ROWS = (1, 128)                  # rows per call measured; other row counts interpolate
DENSITIES = (0.05, 0.25, 0.5)    # block densities of the sparse formats measured
_BUDGET_S = 0.03                 # per measurement: repeat a call until this long, take the median per call
_REPEATS = 5


def format_densities(weight: np.ndarray, formats: Tuple[str, ...] = ("bsr", "dense", "panel")) -> Dict[str, float]:
    """The density each int8 format would store ``weight`` (``N x K``) at: ``"bsr"`` the kept 4x1 blocks
    over all, ``"dense"`` 1, ``"panel"`` the input columns kept by any channel of a 16-channel panel,
    padded to 64 per panel, over all (a 16x1-pruned weight: its block density; a 4x1-pruned one more)."""
    from .formats import block_density

    w = np.asarray(weight)
    out: Dict[str, float] = {}
    if "bsr" in formats:
        out["bsr"] = block_density(w)
    if "dense" in formats:
        out["dense"] = 1.0
    if "panel" in formats:
        n, k = w.shape
        panels = -(-n // 16)
        padded = np.zeros((panels * 16, k), dtype=bool)
        padded[:n] = w != 0
        kept = padded.reshape(panels, 16, k).any(axis=1).sum(axis=1)
        out["panel"] = float(np.minimum(-(-kept // 64) * 64, -(-k // 64) * 64).sum() / (panels * k)) if k else 0.0
    return out


@dataclass(frozen=True)
class Choice:
    """A decision: the format, its predicted seconds per call at ``rows`` rows, and every candidate's."""

    format: str
    seconds: float
    rows: int
    predicted: Dict[str, float]

    def __str__(self) -> str:
        return f"{self.format} (predicted {self.seconds * 1e6:.0f} us at M = {self.rows})"


@dataclass(frozen=True)
class Calibration:
    """Measured costs on one machine. ``fits[format][rows] = (a, b)``: seconds per call of a 768 x 768
    weight at that many rows is ``a + b * density``."""

    key: Dict[str, object]
    fits: Dict[str, Dict[int, Tuple[float, float]]]
    measured: List[Tuple[str, int, float, float]] = field(default_factory=list)  # format, rows, density, seconds

    @property
    def formats(self) -> Tuple[str, ...]:
        return tuple(self.fits)

    def predict(self, format: str, shape: Tuple[int, int], density: float, rows: int) -> float:
        """Predicted seconds per call of ``format`` for an ``N x K`` weight stored at ``density``, at ``rows`` rows."""
        by_rows = self.fits[format]
        lo, hi = min(by_rows), max(by_rows)
        r = min(max(rows, lo), hi)
        (a0, b0), (a1, b1) = by_rows[lo], by_rows[hi]
        t = (r - lo) / (hi - lo) if hi > lo else 0.0
        per_call = (a0 + b0 * density) * (1 - t) + (a1 + b1 * density) * t
        scale = shape[0] * shape[1] / (SHAPE[0] * SHAPE[1]) * max(1.0, rows / hi)
        return max(per_call, 0.0) * scale

    def choose(self, weight: np.ndarray, rows: int = 128, formats: Optional[Tuple[str, ...]] = None) -> Choice:
        """The fastest of ``formats`` (default: every calibrated one) for ``weight`` at ``rows`` rows per call."""
        candidates = tuple(f for f in (formats or self.formats) if f in self.fits)
        if not candidates:
            raise ValueError(f"none of {formats} is calibrated here (calibrated: {self.formats})")
        shape = tuple(np.shape(weight))
        densities = format_densities(weight, candidates)
        predicted = {f: self.predict(f, shape, densities[f], rows) for f in candidates}
        best = min(candidates, key=predicted.__getitem__)
        return Choice(best, predicted[best], rows, predicted)

    def to_json(self) -> str:
        """The cache file's text."""
        d = asdict(self)
        d["fits"] = {f: {str(r): ab for r, ab in by.items()} for f, by in self.fits.items()}
        return json.dumps(d, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Calibration":
        """Reads :meth:`to_json`'s text; ``ValueError``, ``KeyError``, ``TypeError`` or ``IndexError`` if malformed."""
        d = json.loads(text)
        fits = {f: {int(r): (float(ab[0]), float(ab[1])) for r, ab in by.items()} for f, by in d["fits"].items()}
        measured = [(str(m[0]), int(m[1]), float(m[2]), float(m[3])) for m in d["measured"]]
        return cls(d["key"], fits, measured)

    def __str__(self) -> str:
        lines = [f"calibration of {self.key['cpu']} at {self.key['isa']}, {self.key['threads']} threads"]
        lines.append("format  rows  density  us/call (768 x 768)")
        for fmt, rows, density, seconds in self.measured:
            lines.append(f"{fmt:<6}  {rows:>4}  {density:>7.2f}  {seconds * 1e6:>8.1f}")
        return "\n".join(lines)


def _key() -> Dict[str, object]:
    from . import __version__, get_num_threads

    info = _C.info()
    isa = info["isa"] + (":emulated" if info["emulated"] else "")
    return {"cpu": info["cpu"], "isa": isa, "threads": get_num_threads(), "sparsecpu": __version__, "version": VERSION}


def path(key: Optional[Dict[str, object]] = None) -> Path:
    """Where this machine's calibration is cached."""
    key = key or _key()
    root = os.environ.get("SPARSECPU_CACHE_DIR")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "sparsecpu")
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(root) / f"calibration-{digest}.json"


def _seconds_per_call(fn) -> float:
    fn()
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    inner = max(1, int(_BUDGET_S / _REPEATS / once))
    samples = []
    for _ in range(_REPEATS):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - start) / inner)
    return statistics.median(samples)


def _weight(rng: np.random.Generator, density: float, block_rows: int) -> np.ndarray:
    n, k = SHAPE
    w = rng.standard_normal((n, k)).astype(np.float32)
    keep = rng.random((n // block_rows, k)) < density
    return w * np.repeat(keep, block_rows, axis=0)


def _candidates(key: Dict[str, object]) -> Tuple[str, ...]:
    return ("bsr", "dense", "panel") if key["isa"] == "amx" else ("bsr", "dense")


def _measure(key: Dict[str, object]) -> Calibration:
    from .formats import pack
    from .ops import linear

    rng = np.random.default_rng(0)
    xs = {rows: rng.standard_normal((rows, SHAPE[1])).astype(np.float32) for rows in ROWS}
    measured = []
    fits: Dict[str, Dict[int, Tuple[float, float]]] = {}
    for fmt in _candidates(key):
        block = (16, 1) if fmt == "panel" else (4, 1)
        densities = (1.0,) if fmt == "dense" else DENSITIES
        packed = {d: pack(_weight(rng, d, block[0]), dtype="int8", block=block, format=fmt) for d in densities}
        fits[fmt] = {}
        for rows in ROWS:
            points = []
            for d, p in packed.items():
                seconds = _seconds_per_call(lambda: linear(xs[rows], p))
                points.append((p.density if fmt != "dense" else 1.0, seconds))
                measured.append((fmt, rows, points[-1][0], seconds))
            if len(points) == 1:
                fits[fmt][rows] = (0.0, points[0][1])
            else:
                b, a = np.polyfit([p[0] for p in points], [p[1] for p in points], 1)
                fits[fmt][rows] = (float(a), float(b))
    return Calibration(key, fits, measured)


_loaded: Dict[str, Calibration] = {}


def load(refresh: bool = False) -> Calibration:
    """This machine's calibration at the active ISA level and thread count: from memory, else from the
    cache file, else measured now (about a second) and written there (an unwritable cache directory is
    not an error: the result then lives for this process). ``refresh`` measures again."""
    key = _key()
    file = path(key)
    name = str(file)
    if not refresh and name in _loaded:
        return _loaded[name]
    calibration = None
    if not refresh:
        try:
            calibration = Calibration.from_json(file.read_text())
            if calibration.key != key:
                calibration = None
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            calibration = None
    if calibration is None:
        calibration = _measure(key)
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            tmp = file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(calibration.to_json())
            os.replace(tmp, file)
        except OSError:
            pass
    _loaded[name] = calibration
    return calibration
