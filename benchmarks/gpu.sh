#!/usr/bin/env bash
# One command on a GPU machine whose python already has torch (and triton): build sfpn against
# that torch, run the CUDA tests, run every benchmark in benchmarks/, and print a table last.
#   bash benchmarks/gpu.sh            (PYTHON=/path/to/python to choose the interpreter)
# Leaves benchmarks/results-<date>.json (pytest-benchmark) and .md (the table) behind.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
stamp=$(date -u +%Y%m%d-%H%M%S)
json="benchmarks/results-${stamp}.json"

"$PYTHON" -m pip install -e . --no-build-isolation --no-deps
"$PYTHON" -m sfpn.info
"$PYTHON" -m pytest -m cuda -q tests/
"$PYTHON" -m pytest benchmarks/ --benchmark-only --benchmark-json "$json" -q
"$PYTHON" benchmarks/table.py "$json" | tee "benchmarks/results-${stamp}.md"
