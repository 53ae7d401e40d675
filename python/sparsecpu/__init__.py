"""sparsecpu: block-sparse (4x1) and int8 kernels for pruned transformer inference on x86 CPUs.

>>> import sparsecpu
>>> p = sparsecpu.pack(w, dtype="int8")          # w: N x K, pruned in 4x1 blocks
>>> y = sparsecpu.linear(x, p, bias=b, activation="gelu")
"""

import sys as _sys
import types as _types

from . import _C
from .formats import PackedWeight, pack
from .ops import linear
from . import onnx  # onnx and onnxruntime are imported only when its functions run

__version__ = "0.1.0"

__all__ = ["PackedWeight", "pack", "linear", "info", "set_num_threads", "get_num_threads", "__version__"]

_THREADING = ("auto", "pool")


def _threading_from_env() -> None:
    """``SPARSECPU_THREADING=auto`` (the default): sparsecpu's parallel work runs on the OpenMP
    runtime torch loads into the process, from the first call after it is there, so that torch's
    OpenMP threads, which spin for a while after every torch op, pick up sparsecpu's layers instead of
    fighting sparsecpu's own threads for the cores. ``pool``: sparsecpu's own pool, always. Nothing
    of torch's or OpenMP's configuration is changed."""
    import os

    mode = os.environ.get("SPARSECPU_THREADING", "") or "auto"
    if mode not in _THREADING:
        raise ValueError(f"SPARSECPU_THREADING must be one of {', '.join(_THREADING)}, got {mode!r}")
    _C.set_host_openmp(mode == "auto")


_threading_from_env()


def info() -> dict:
    """What sparsecpu detected and will run: CPU, features, ISA level, kernel per op, threads.

    The level is the best the CPU and OS support, capped by the ``SPARSECPU_ISA`` environment
    variable (``reference``, ``avx2``, ``avx512``, ``avx512_vnni``, ``amx``); ``emulated`` is True only
    under :func:`sparsecpu.testing.isa` with an emulated AVX-512 or AMX level. ``amx`` is
    ``"available"`` when the ``amx`` level is detected, else ``"not used: <why>"``: the CPU lacks AMX,
    the OS has not enabled the tile state, or Linux refused the process the tile-data permission
    (``SPARSECPU_AMX_PERMISSION=deny`` refuses it on purpose, for tests). ``threading`` says where the
    parallel work runs: ``"sparsecpu pool"`` or ``"host OpenMP (<path>)"`` (torch's runtime, see
    ``SPARSECPU_THREADING`` in the README).

    ``onnxruntime_library`` is the path of the ONNX Runtime custom-op library, or None when this
    installation was built without it; ``onnxruntime_library_error`` then says why and how to get it
    (None otherwise).
    """
    d = dict(_C.info())
    d["version"] = __version__
    d["onnxruntime_library"], d["onnxruntime_library_error"] = onnx._runtime.library_status()
    return d


def set_num_threads(n: int) -> None:
    """Sets how many threads sparsecpu's parallel work runs on (default: the CPUs this process may
    run on), on its own pool or on torch's OpenMP runtime (``info()["threading"]``); torch's own
    thread count is not changed."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"num_threads must be an int, got {type(n).__name__}")
    if not 1 <= n <= 1024:
        raise ValueError(f"num_threads must be in [1, 1024], got {n}")
    _C.set_num_threads(n)


def get_num_threads() -> int:
    """How many threads sparsecpu's parallel work runs on."""
    return _C.get_num_threads()


# The torch front door (sparsecpu.nn, sparsify, prune) imports torch, an optional dependency: it is
# loaded on first use so that `import sparsecpu` works without torch.
_TORCH_API = {"nn": ("nn", None), "sparsify": ("sparsify", "sparsify"), "prune": ("prune", "prune")}


def __getattr__(name: str):
    if name in _TORCH_API:
        import importlib

        module_name, attr = _TORCH_API[name]
        module = importlib.import_module(f".{module_name}", __name__)
        value = module if attr is None else getattr(module, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Package(_types.ModuleType):
    """``sparsecpu.sparsify`` and ``sparsecpu.prune`` are the functions, each held by the submodule of
    its name (``sparsify.py``, ``prune.py``). Python binds a submodule on its package when it first
    imports it, so ``from sparsecpu.prune import keep_masks`` would leave ``sparsecpu.prune`` the
    module; this package binds the module's function of that name instead. The modules stay reachable
    by ``from sparsecpu.sparsify import SparsifyReport`` and ``sys.modules`` (``import
    sparsecpu.sparsify as m`` gives the function, as the attribute does)."""

    def __setattr__(self, name: str, value) -> None:
        if (_TORCH_API.get(name, (None, None))[1] == name and isinstance(value, _types.ModuleType)
                and value.__name__ == f"{self.__name__}.{name}"):
            value = getattr(value, name)
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package
