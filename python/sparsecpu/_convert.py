"""Old name of :mod:`sparsecpu._arrays`, kept only for ``ops.py``, which another branch is rewriting
(issue 18): once ``ops.py`` imports ``as_numpy_f32`` from ``._arrays``, delete this file."""

from ._arrays import as_numpy_f32, is_torch_tensor  # noqa: F401
