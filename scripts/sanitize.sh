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
# clang when there is one: gcc takes 10-25 minutes per SIMDe-emulated AVX-512 kernel under ASan on
# 2 cores (hours in all), clang under a minute. SANITIZE_CXX picks the compiler.
cxx="${SANITIZE_CXX:-}"
if [[ -z "$cxx" ]]; then
  for c in clang++ clang++-{20,19,18,17,16,15,14} g++; do
    if command -v "$c" >/dev/null; then cxx="$c"; break; fi
  done
fi
if "$cxx" --version | grep -q clang; then
  # clang's shared ASan runtime carries UBSan's handlers; vptr checks would need its C++ UBSan
  # runtime as well (and are what scripts/fuzz.sh leaves out too).
  flags="$flags -fno-sanitize=vptr,function -DSIMDE_NO_CHECK_IMMEDIATE_CONSTANT -Wno-psabi"
  link="-fsanitize=address,undefined -shared-libasan"
  preload="$("$cxx" -print-file-name=libclang_rt.asan-x86_64.so)"
else
  link="-fsanitize=address,undefined"
  preload="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
fi
echo "compiler: $cxx ($("$cxx" --version | head -1))"
"$venv/bin/cmake" -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_MAKE_PROGRAM="$venv/bin/ninja" -DCMAKE_CXX_COMPILER="$(command -v "$cxx")" -DCMAKE_CXX_FLAGS="$flags" \
  -DCMAKE_MODULE_LINKER_FLAGS="$link" \
  -Dpybind11_DIR="$("$venv/bin/python" -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$venv/bin/python" >/dev/null
"$venv/bin/ninja" -C "$build" >/dev/null
# Each ISA level's kernels are compiled with their own -m flags into one library: an inline function
# outside an anonymous namespace is one weak symbol to the linker, and a call one build did not inline
# may run another level's code (kernels/amx/tile.h). This build inlines less than a release one.
shared="$(nm -C --defined-only "$build"/CMakeFiles/sparsecpu_kernels_*.dir/csrc/kernels/*/*.o | grep ' [WV] sparsecpu::' | sort -u || true)"
if [[ -n "$shared" ]]; then
  echo "scripts/sanitize.sh: kernel objects share weak symbols across ISA builds (move them into anonymous namespaces):" >&2
  echo "$shared" >&2
  exit 1
fi
pkg="$build/pkg"
rm -rf "$pkg" && mkdir -p "$pkg"
cp -r python/sparsecpu "$pkg/"
rm -f "$pkg"/sparsecpu/_C*.so "$pkg"/sparsecpu/libsparsecpu_ort.so
cp "$build"/_C*.so "$build"/libsparsecpu_ort.so "$pkg/sparsecpu/"
export LD_PRELOAD="$preload"
# A report ends the process inside a test, where pytest's capture would swallow it: the reports go
# to files, printed at the end.
rm -f "$build"/report.*
export ASAN_OPTIONS="detect_leaks=0:log_path=$build/report" UBSAN_OPTIONS="print_stacktrace=1:log_path=$build/report"
rc=0
PYTHONPATH="$pkg" "$venv/bin/python" -m pytest -p no:cacheprovider tests "$@" || rc=$?
if compgen -G "$build/report.*" >/dev/null; then
  echo "scripts/sanitize.sh: sanitizer reports:" >&2
  head -n 40 "$build"/report.* >&2
  rc=1
fi
exit "$rc"
