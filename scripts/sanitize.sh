#!/usr/bin/env bash
# Runs the test suite against an AddressSanitizer + UBSan build of the extension and of the ONNX
# Runtime custom-op library (valgrind cannot decode AVX-512, so this is how the kernels and the
# untrusted-buffer and model-file checks are checked for out-of-bounds reads). Reuses the venv of
# scripts/test.sh (run that first).
#   bash scripts/sanitize.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
venv="$(cd "${SPARSECPU_TEST_VENV:-.venv-test}" && pwd)"
build="$root/build-sanitize"
"$venv/bin/pip" install --quiet pybind11 cmake ninja "simde-py>=0.8.2"
flags="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
"$venv/bin/cmake" -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_MAKE_PROGRAM="$venv/bin/ninja" -DCMAKE_CXX_FLAGS="$flags" \
  -DCMAKE_MODULE_LINKER_FLAGS="-fsanitize=address,undefined" \
  -Dpybind11_DIR="$("$venv/bin/python" -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$venv/bin/python" >/dev/null
"$venv/bin/ninja" -C "$build" >/dev/null
pkg="$build/pkg"
rm -rf "$pkg" && mkdir -p "$pkg"
cp -r python/sparsecpu "$pkg/"
rm -f "$pkg"/sparsecpu/_C*.so "$pkg"/sparsecpu/libsparsecpu_ort.so
cp "$build"/_C*.so "$build"/libsparsecpu_ort.so "$pkg/sparsecpu/"
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1
PYTHONPATH="$pkg" exec "$venv/bin/python" -m pytest -p no:cacheprovider tests "$@"
