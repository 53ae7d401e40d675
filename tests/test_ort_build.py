"""The ONNX Runtime custom-op library as built and installed: the installed package has it and says
so; a package built without it (no ONNX Runtime header: an offline machine) says why and how to get
it; and CMake's configure step without the header still succeeds, leaving only that library out."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import sparsecpu
import sparsecpu.onnx
import sparsecpu.onnx._runtime as runtime
from sparsecpu import cli

SOURCE = Path(__file__).resolve().parent.parent  # the source tree these tests belong to
HOW_TO = "ONNXRUNTIME_INCLUDE_DIR=/path/to/dir/holding/onnxruntime_c_api.h pip install ."


def _flat(text: str) -> str:
    """``text`` with runs of whitespace as single spaces (CMake reflows a warning's paragraphs)."""
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------
# The installed package.


def test_installed_package_has_the_library_and_info_reports_it(capsys):
    lib = Path(sparsecpu.__file__).resolve().parent / "libsparsecpu_ort.so"
    d = sparsecpu.info()
    assert d["onnxruntime_library"] == sparsecpu.onnx.library_path() == str(lib), d
    assert d["onnxruntime_library_error"] is None
    assert lib.is_file()
    assert cli.main(["info"]) == 0
    assert f"ort library:  {lib}\n" in capsys.readouterr().out


@pytest.fixture
def no_library(monkeypatch, tmp_path):
    """The package as an offline build leaves it: no libsparsecpu_ort.so beside it (the lookup is
    pointed at a file that is not there; the installed package is left alone)."""
    missing = tmp_path / "sparsecpu" / "libsparsecpu_ort.so"
    monkeypatch.setattr(runtime, "_library_file", lambda: missing)
    return missing


def test_library_path_without_the_library(no_library):
    with pytest.raises(FileNotFoundError) as e:
        sparsecpu.onnx.library_path()
    text = str(e.value)
    assert text.startswith(f"{no_library} is missing: this sparsecpu installation was built without its ONNX Runtime")
    assert HOW_TO in _flat(text) and "libonnxruntime-dev" in text and "pip install -v" in text


def test_info_and_cli_without_the_library(no_library, capsys):
    d = sparsecpu.info()
    assert d["onnxruntime_library"] is None
    with pytest.raises(FileNotFoundError) as e:
        sparsecpu.onnx.library_path()
    assert d["onnxruntime_library_error"] == str(e.value)
    json.dumps(d)
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"ort library:  NOT BUILT: {no_library} is missing" in out and HOW_TO in out


def test_session_without_the_library(no_library, tmp_path):
    pytest.importorskip("onnxruntime")
    with pytest.raises(FileNotFoundError, match="built without its ONNX Runtime custom-op library"):
        sparsecpu.onnx.session(tmp_path / "model.onnx")


# ---------------------------------------------------------------------------------------------
# CMake's configure step (no build) on the source tree, with the tools the wheel builds with.


def _which(name: str):
    """``name`` from this interpreter's environment first (pip's cmake / ninja), then PATH."""
    return shutil.which(name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))


def _configure(build: Path, *args: str, **env: str):
    """Runs ``cmake -S SOURCE -B build args...``; returns (the process, the names of its targets)."""
    if not (SOURCE / "CMakeLists.txt").is_file():
        pytest.skip(f"no source tree beside the tests ({SOURCE})")
    cmake = _which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed in this environment (pip install cmake; scripts/test.sh does)")
    if importlib.util.find_spec("pybind11") is None:
        pytest.skip("pybind11 is not installed in this environment (pip install pybind11; scripts/test.sh does)")
    if importlib.util.find_spec("simde_py") is None and not os.environ.get("SIMDE_INCLUDE_DIR"):
        pytest.skip("SIMDe not found: pip install simde-py (scripts/test.sh does), or set SIMDE_INCLUDE_DIR")
    if not (os.environ.get("CXX") or _which("c++") or _which("g++") or _which("clang++")):
        pytest.skip("no C++ compiler")
    ninja, make = _which("ninja"), _which("make")
    if ninja:
        generator = ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
    elif make:
        generator = ["-G", "Unix Makefiles"]
    else:
        pytest.skip("neither ninja nor make is installed (pip install ninja)")
    import pybind11

    # CMake's file API lists the targets the configure step defined, whatever the generator.
    query = build / ".cmake" / "api" / "v1" / "query"
    query.mkdir(parents=True)
    (query / "codemodel-v2").touch()
    environ = {k: v for k, v in os.environ.items() if k != "ONNXRUNTIME_INCLUDE_DIR"}
    environ.update(env)
    r = subprocess.run(
        [cmake, "-S", str(SOURCE), "-B", str(build), *generator, f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
         f"-DPython_EXECUTABLE={sys.executable}", *args],
        capture_output=True, text=True, env=environ, timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    reply = build / ".cmake" / "api" / "v1" / "reply"
    index = json.loads(next(reply.glob("index-*.json")).read_text())
    model = json.loads((reply / index["reply"]["codemodel-v2"]["jsonFile"]).read_text())
    targets = {t["name"] for t in model["configurations"][0]["targets"]}
    assert "_C" in targets and "sparsecpu_core" in targets, targets
    return r, targets


# Any fetch in these tests goes to a mirror that is not there (a file:// URL: no network involved).
def _no_mirror(tmp_path: Path) -> dict:
    return {"SPARSECPU_DEBIAN_MIRROR": (tmp_path / "no-mirror").as_uri()}


def _assert_skipped_loudly(r, targets, why: str) -> None:
    assert "sparsecpu_ort" not in targets, targets
    err = _flat(r.stderr)
    assert "CMake Warning" in err and "libsparsecpu_ort, sparsecpu's ONNX Runtime custom-op library, is NOT built" in err
    assert why in err, r.stderr
    assert HOW_TO in r.stderr, r.stderr  # on a line of its own, ready to copy


def test_configure_with_a_given_dir_lacking_the_header_skips_the_library(tmp_path):
    empty = tmp_path / "include"
    empty.mkdir()
    r, targets = _configure(tmp_path / "build", f"-DONNXRUNTIME_INCLUDE_DIR={empty}", **_no_mirror(tmp_path))
    assert "Fetching" not in r.stdout, "a given ONNXRUNTIME_INCLUDE_DIR is used as it is, never fetched into"
    _assert_skipped_loudly(r, targets, f"ONNXRUNTIME_INCLUDE_DIR={empty} holds no onnxruntime_c_api.h (a given "
                           "directory is used as it is: nothing is fetched).")


def test_configure_offline_skips_the_library_with_the_fetch_error(tmp_path):
    r, targets = _configure(tmp_path / "build", **_no_mirror(tmp_path))
    assert "Fetching the ONNX Runtime C API header" in r.stdout
    _assert_skipped_loudly(r, targets, "Fetching it from Debian's libonnxruntime-dev failed "
                           "(third_party/fetch_onnxruntime_headers.py: 1):")
    assert f"cannot download {(tmp_path / 'no-mirror').as_uri()}/dists/trixie/InRelease" in _flat(r.stderr), r.stderr


def test_configure_with_the_header_defines_the_library(tmp_path):
    include = tmp_path / "include"
    include.mkdir()
    (include / "onnxruntime_c_api.h").write_text("/* configure only: never compiled */\n")
    r, targets = _configure(tmp_path / "build", f"-DONNXRUNTIME_INCLUDE_DIR={include}", **_no_mirror(tmp_path))
    assert "sparsecpu_ort" in targets
    assert "Fetching" not in r.stdout and "NOT built" not in r.stderr
