#!/usr/bin/env bash
# The test command (README, .ci/run): builds sparsecpu into a fresh virtual environment the way a
# user installs it and runs pytest against the installed package, not the source tree, so a file
# missing from the wheel fails the tests.
#   bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${SPARSECPU_TEST_VENV:-.venv-test}"
rm -rf "$venv"
python3 -m venv "$venv"
venv="$(cd "$venv" && pwd)"
# torch is pinned: this release is a CPU build on the machine's disk; an unpinned torch pulls a
# multi-GB CUDA build. The package itself only asks for torch>=2.4 in its [test] extra.
# transformers is pinned so that a release cannot change the suite's outcome: sparsify fuses
# GPT-2's decoder block only for transformers code it was checked against (5.24-5.25), and
# tests/test_gpt2_block.py says when a new pin needs that check.
"$venv/bin/pip" install --quiet torch==2.13.0 transformers==5.25.0
"$venv/bin/pip" install --quiet ".[test]"
# The build tools themselves, for tests/test_ort_build.py (CMake's configure step on this source tree).
"$venv/bin/pip" install --quiet cmake ninja pybind11 "simde-py>=0.8.2"
# Import from outside the source tree and check it is the installed copy.
(cd / && "$venv/bin/python" -c "import sparsecpu, sys; assert 'site-packages' in sparsecpu.__file__, sparsecpu.__file__; print('testing', sparsecpu.__file__, sparsecpu.info()['isa'])")
# A build without the ONNX Runtime header skips libsparsecpu_ort with only a CMake warning (so that an
# offline machine can install the rest); the tests must never pass without it.
(cd / && "$venv/bin/python" -c "import sparsecpu, sys; e = sparsecpu.info()['onnxruntime_library_error']; sys.exit(e and 'scripts/test.sh: FAILED: the installed package lacks the ONNX Runtime library: ' + e)")
exec "$venv/bin/python" -m pytest -p no:cacheprovider tests "$@"
