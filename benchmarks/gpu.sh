#!/usr/bin/env bash
# One command on a GPU machine whose python already has torch (and triton): build sfpn against
# that torch, run the CUDA tests, run every benchmark in benchmarks/, and print a table last.
#   bash benchmarks/gpu.sh            (PYTHON=/path/to/python to choose the interpreter)
# Leaves benchmarks/results-<date>.json (pytest-benchmark) and .md (the table) behind. A failing
# CUDA test does not stop the benchmarks, but the script then exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python || command -v python3)}
stamp=$(date -u +%Y%m%d-%H%M%S)
json="benchmarks/results-${stamp}.json"

"$PYTHON" -m pip install -e . --no-build-isolation --no-deps
"$PYTHON" -m sfpn.info
tests_status=0
"$PYTHON" -m pytest -m cuda -q tests/ || tests_status=$?
"$PYTHON" -m pytest benchmarks/ --benchmark-only --benchmark-json "$json" -q
"$PYTHON" benchmarks/table.py "$json" | tee "benchmarks/results-${stamp}.md"
if [ "$tests_status" -ne 0 ]; then
  echo "CUDA tests FAILED (pytest exit status $tests_status): see above" >&2
fi
exit "$tests_status"
