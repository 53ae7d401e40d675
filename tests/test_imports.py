"""The import paths users write keep working, whatever order the modules are imported in: the
package attributes ``sparsecpu.sparsify`` and ``sparsecpu.prune`` are the functions, although the
modules that hold them (``sparsify.py``, ``prune.py``) have the same names."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import sparsecpu

pytest.importorskip("torch")

# Each snippet runs in a fresh interpreter: the import order is the point.
_CHECK = """
import inspect, sparsecpu
assert inspect.isfunction(sparsecpu.sparsify) and sparsecpu.sparsify.__module__ == "sparsecpu.sparsify"
assert inspect.isfunction(sparsecpu.prune) and sparsecpu.prune.__module__ == "sparsecpu.prune"
assert inspect.isfunction(sparsecpu.prune.keep_masks) and inspect.isfunction(sparsecpu.onnx.convert)
assert sparsecpu.nn.SparseLinear.__module__ == "sparsecpu.nn"
from sparsecpu import sparsify, prune, nn, onnx
assert sparsify is sparsecpu.sparsify and prune is sparsecpu.prune and nn is sparsecpu.nn
"""

_ORDERS = {
    "functions first": "import sparsecpu; sparsecpu.sparsify, sparsecpu.prune\n"
                       "import sparsecpu.sparsify, sparsecpu.prune\n",
    "modules first": "import sparsecpu.prune\nfrom sparsecpu.sparsify import SparsifyReport, LayerReport\n",
    "from-imports": "from sparsecpu.prune import keep_masks\nfrom sparsecpu.sparsify import DEFAULT_MIN_SPARSITY\n",
    "every submodule": "import importlib, pathlib, sparsecpu\n"
                       "root = pathlib.Path(sparsecpu.__file__).parent\n"
                       "for f in sorted(root.rglob('*.py')):\n"
                       "    parts = f.relative_to(root.parent).with_suffix('').parts\n"
                       "    if parts[-1] != '__main__':\n"
                       "        importlib.import_module('.'.join(parts[:-1] if parts[-1] == '__init__' else parts))\n",
}


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(sparsecpu.__file__).parent.parent)
    return env


@pytest.mark.parametrize("order", sorted(_ORDERS))
def test_functions_stay_package_attributes(order):
    r = subprocess.run([sys.executable, "-c", _ORDERS[order] + _CHECK], capture_output=True, text=True,
                       env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr


def test_public_names_resolve():
    import sparsecpu.onnx

    for name in sparsecpu.__all__:
        assert getattr(sparsecpu, name) is not None, name
    for name in sparsecpu.onnx.__all__:
        assert getattr(sparsecpu.onnx, name) is not None, name
    from sparsecpu.onnx.patterns import Graph, match_attention  # noqa: F401
    from sparsecpu.onnx.rewrite import ConvertReport, NodeReport, convert

    assert sparsecpu.onnx.convert is convert and sparsecpu.onnx.ConvertReport is ConvertReport
    assert sparsecpu.onnx.NodeReport is NodeReport
    assert sparsecpu.formats.block_density is not None and sparsecpu.formats.pack is sparsecpu.pack


def test_python_m_sparsecpu():
    r = subprocess.run([sys.executable, "-m", "sparsecpu", "onnx", "convert", "--help"], capture_output=True,
                       text=True, env=_env(), timeout=120)
    assert r.returncode == 0 and "--min-sparsity" in r.stdout, r.stderr
