#!/usr/bin/env bash
# Coverage-guided fuzzing of the untrusted-input paths under AddressSanitizer + UBSan: packed weight
# buffers (sparsecpu::validate, PackedWeight.from_bytes / _C.validate, then the kernels on what is
# accepted) and ONNX Runtime kernel creation of com.sparsecpu:SparseLinear with mutated initializers
# and attributes. Three targets, each run for SECONDS (default 300) and seeded with valid buffers of
# every format and dtype (fuzz/_fuzzlib.py):
#   validate   fuzz/validate_fuzzer.cc   libFuzzer on csrc/core + ops directly (fast, C++ coverage)
#   packed     fuzz/fuzz_packed.py       atheris on the installed Python API
#   ort        fuzz/fuzz_ort.py          atheris on onnxruntime.InferenceSession + libsparsecpu_ort.so
# The extension and the ORT library are built with clang (-fsanitize=address,undefined,fuzzer-no-link)
# into build-fuzz/, so that libFuzzer sees the C++ coverage of the Python targets too; they run with
# atheris' ASan + libFuzzer runtime preloaded. Corpora grow in build-fuzz/corpus/<target>/ across runs;
# findings (crash-*, timeout-*, oom-*, the input that caused them) land in build-fuzz/findings/<target>/.
# Reuses the venv of scripts/test.sh (run that first); installs atheris there, and clang with its
# compiler-rt (apt-get, as root) if no clang++ is found.
#   bash scripts/fuzz.sh [SECONDS] [TARGET...]      exit status 1 if anything was found
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"
seconds="${1:-300}"
shift || true
targets=("${@:-validate packed ort}")
read -r -a targets <<<"${targets[*]}"
venv="$(cd "${SPARSECPU_TEST_VENV:-.venv-test}" && pwd)"
build="$root/build-fuzz"
py="$venv/bin/python"

"$venv/bin/pip" install --quiet pybind11 cmake ninja "simde-py>=0.8.2" atheris

find_clang() {
  local c
  for c in clang++ clang++-{20,19,18,17,16,15,14}; do
    if command -v "$c" >/dev/null && "$c" -fsanitize=fuzzer -x c++ - -o /dev/null <<<'extern "C" int LLVMFuzzerTestOneInput(const char*, unsigned long) { return 0; }' 2>/dev/null; then
      echo "$c"
      return
    fi
  done
}
cxx="${FUZZ_CXX:-$(find_clang)}"
if [[ -z "$cxx" ]]; then
  echo "scripts/fuzz.sh: no clang++ with libFuzzer's runtime; installing Debian's clang and compiler-rt" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang >/dev/null
  ver="$(clang++ --version | sed -n 's/.*clang version \([0-9]*\).*/\1/p' | head -1)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "libclang-rt-$ver-dev" >/dev/null 2>&1 || true
  cxx="$(find_clang)"
  [[ -n "$cxx" ]] || { echo "scripts/fuzz.sh: clang++ cannot link -fsanitize=fuzzer" >&2; exit 2; }
fi
echo "compiler: $cxx ($("$cxx" --version | head -1))"

# The Python targets load the extension into a python that atheris' ASan + libFuzzer runtime is
# preloaded into; the extension's own sanitizer and coverage hooks must bind to that runtime, so the
# shared objects are linked without one (-z undefs overrides the ORT library's -z defs).
san="-fsanitize=address,undefined -fno-sanitize=vptr,function -fno-sanitize-recover=undefined -fno-omit-frame-pointer -DSIMDE_NO_CHECK_IMMEDIATE_CONSTANT"
"$venv/bin/cmake" -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_MAKE_PROGRAM="$venv/bin/ninja" -DCMAKE_CXX_COMPILER="$(command -v "$cxx")" \
  -DCMAKE_CXX_FLAGS="$san -fsanitize=fuzzer-no-link" -DCMAKE_CXX_STANDARD_LIBRARIES="-Wl,-z,undefs" \
  -Dpybind11_DIR="$("$py" -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$py" >/dev/null
"$venv/bin/ninja" -C "$build" _C sparsecpu_ort sparsecpu_core >"$build/build.log" 2>&1 || {
  grep -E -A5 "error|FAILED" "$build/build.log" | head -40 >&2
  echo "scripts/fuzz.sh: the clang build failed (full log: $build/build.log)" >&2
  exit 2
}
# The C++ target links libFuzzer's and the sanitizers' runtimes of the compiler itself.
"$cxx" -std=c++17 -O1 -g $san -fsanitize=fuzzer -Icsrc fuzz/validate_fuzzer.cc "$build/libsparsecpu_core.a" \
  -lpthread -ldl -o "$build/validate_fuzzer"
pkg="$build/pkg"
rm -rf "$pkg" && mkdir -p "$pkg"
cp -r python/sparsecpu "$pkg/"
rm -f "$pkg"/sparsecpu/_C*.so "$pkg"/sparsecpu/libsparsecpu_ort.so
cp "$build"/_C*.so "$build"/libsparsecpu_ort.so "$pkg/sparsecpu/"

runtime="$("$py" -c 'import atheris; print(atheris.path())')/asan_with_fuzzer.so"
export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:handle_abort=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
seeds="$build/seeds"
rm -rf "$seeds"
for t in packed ort; do
  LD_PRELOAD="$runtime" PYTHONPATH="$pkg" "$py" "fuzz/fuzz_$t.py" --write-seeds "$seeds/$t" >/dev/null 2>&1
done
common=(-max_total_time="$seconds" -timeout=60 -rss_limit_mb=6144 -print_final_stats=1 -max_len=4096 -len_control=0)
found=0
summary=()
for t in "${targets[@]}"; do
  corpus="$build/corpus/$t" findings="$build/findings/$t" log="$build/$t.log"
  mkdir -p "$corpus" "$findings"
  before="$(ls "$findings" | wc -l)"
  echo "== $t: ${seconds}s (log: $log)"
  case "$t" in
    validate) cmd=("$build/validate_fuzzer" "${common[@]}" "-artifact_prefix=$findings/" "$corpus" "$seeds/packed") ;;
    packed) cmd=(env LD_PRELOAD="$runtime" PYTHONPATH="$pkg" "$py" fuzz/fuzz_packed.py "${common[@]}" "-artifact_prefix=$findings/" "$corpus" "$seeds/packed") ;;
    ort) cmd=(env LD_PRELOAD="$runtime" PYTHONPATH="$pkg" "$py" fuzz/fuzz_ort.py "${common[@]}" "-artifact_prefix=$findings/" "$corpus" "$seeds/ort") ;;
    *) echo "unknown target $t (validate, packed, ort)" >&2; exit 2 ;;
  esac
  rc=0
  "${cmd[@]}" >"$log" 2>&1 || rc=$?
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
  cov="$(grep -E '^#[0-9]+' "$log" | tail -1 | sed -n 's/.*cov: \([0-9]*\) ft: \([0-9]*\).*/cov \1 ft \2/p')"
  new=$(( $(ls "$findings" | wc -l) - before ))
  if [[ $rc -ne 0 || $new -gt 0 ]]; then
    found=1
    summary+=("$t: ${execs:-?} executions, $cov, exit $rc, FINDINGS: $new new in $findings (see $log)")
    grep -E "ERROR: (AddressSanitizer|libFuzzer)|runtime error|FINDING|Uncaught Python exception|Error" "$log" | head -5 || true
  else
    summary+=("$t: ${execs:-?} executions, $cov, corpus $(ls "$corpus" | wc -l) inputs, no findings")
  fi
done
echo "== summary (${seconds}s per target)"
printf '  %s\n' "${summary[@]}"
exit "$found"
