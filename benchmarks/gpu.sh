#!/usr/bin/env bash
# The GPU run in one command, on a bare machine whose python has a CUDA build of torch, Triton,
# torchvision, pytest and pytest-benchmark (pycocotools is not needed):
#   1. build sfpn against that torch (CUDA kernels for the local GPU's architecture only);
#   2. measure the GPU's copy bandwidth and matrix rates (benchmarks/gpu_ceilings.py), check that
#      the CUDA kernels are registered, then run the CUDA tests;
#   3. time the R50 rows of step 4 round-robin (benchmarks/side_by_side.py) for issue 22's goals,
#      read as ratios paired within a round: first, so that a spent budget still leaves them;
#      then benchmarks/ce_rows.py, a candidate kernel against the one it would replace, and
#      benchmarks/profile_detector.py --device cuda, SFPN against FPN op by op;
#   4. run every benchmark on CUDA: the ops, the semantic head, and a training step and an
#      inference pass of faster_rcnn_r50_sfpn_1x against faster_rcnn_r50_fpn_1x and torchvision's
#      fasterrcnn_resnet50_fpn at 800x1344, batch 2, each in fp32 and in bf16 autocast (the
#      `-bf16` rows of benchmarks/bench_detector.py);
#   5. print the table for benchmarks/RESULTS.md last.
# Every stage runs, within one time budget (9 minutes by default); any failure (a test, a
# benchmark's own check against its reference, the build, the budget) makes the exit status 1
# and is repeated in a banner under the table.
#
#   bash benchmarks/gpu.sh [--out DIR] [--no-build] [--budget SECONDS] [--dry-run]
#   bash benchmarks/gpu.sh --table JSON     only step 5, for a JSON an earlier run wrote
#
#   --out DIR   where the benchmark JSON, the table and the log go (default benchmarks/results)
#   PYTHON      the interpreter (default python3); MAX_JOBS (default: all cores) and
#               TORCH_CUDA_ARCH_LIST (default: the GPU's own, e.g. 9.0) steer the build.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

PYTHON=${PYTHON:-python3}
OUT_DIR=benchmarks/results
BUILD=1
DRY_RUN=0
BUDGET=540
TABLE_ONLY=

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }  # the header comment
die() { echo "gpu.sh: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || die "--out needs a folder"; OUT_DIR=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --budget) [[ ${2:-} =~ ^[0-9]+$ ]] || die "--budget needs a number of seconds"; BUDGET=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --table) [ $# -ge 2 ] || die "--table needs a JSON file"; TABLE_ONLY=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1' (try --help)" ;;
  esac
done

if [ -n "$TABLE_ONLY" ]; then
  [ -f "$TABLE_ONLY" ] || die "no such file: $TABLE_ONLY"
  exec "$PYTHON" benchmarks/table.py "$TABLE_ONLY"
fi

mkdir -p "$OUT_DIR"
stamp=$(date -u +%Y-%m-%d-%H%M%S)
json="$OUT_DIR/${stamp}-gpu.json"
table_file="$OUT_DIR/${stamp}-gpu.md"
log="$OUT_DIR/${stamp}-gpu.log"
deadline=$((SECONDS + BUDGET))
failures=()

# The OpenMP wait policy is the package's own (sfpn/_threads.py: GOMP_SPINCOUNT=100000), which the
# CPU rows then measure as users get it.
export PYTHONUNBUFFERED=1

# stage NAME COMMAND...: runs COMMAND within the time left, logs it, and records a failure.
stage() {
  local name=$1; shift
  local left=$((deadline - SECONDS))
  echo
  echo "=== $name ($left s of the budget left): $*"
  if [ "$DRY_RUN" -eq 1 ]; then return 0; fi
  if [ "$left" -le 0 ]; then
    failures+=("$name: not run, the ${BUDGET}-second budget was spent")
    return 1
  fi
  local start=$SECONDS status=0
  timeout --signal=INT --kill-after=15 "$left" "$@" || status=$?
  echo "=== $name: exit status $status after $((SECONDS - start)) s"
  if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    failures+=("$name: stopped at the end of the ${BUDGET}-second budget")
  elif [ "$status" -ne 0 ]; then
    failures+=("$name: exit status $status")
  fi
  return "$status"
}

arch_list() {
  "$PYTHON" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())'
}

main() {
  echo "gpu.sh: $(date -u), python $PYTHON, out $OUT_DIR"
  if [ "$DRY_RUN" -eq 0 ]; then
    "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
      || { failures+=("no CUDA device visible to $PYTHON"); return; }
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    "$PYTHON" -c 'import torch, triton; print("torch", torch.__version__, "CUDA", torch.version.cuda, "triton", triton.__version__, "device", torch.cuda.get_device_name())'
  fi

  if [ "$BUILD" -eq 1 ]; then
    # The build runs without isolation, on this Python's setuptools: pyproject's SPDX license
    # needs 77 or newer, and an older one fails deep in pip's output.
    if [ "$DRY_RUN" -eq 0 ] && ! "$PYTHON" -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 77)'; then
      failures+=("setuptools $("$PYTHON" -c 'import setuptools; print(setuptools.__version__)') is older than 77, which the build needs: install a newer one (or carry its wheel), then run again")
      return
    fi
    local arch=${TORCH_CUDA_ARCH_LIST:-}
    if [ -z "$arch" ] && [ "$DRY_RUN" -eq 0 ]; then arch=$(arch_list); fi
    stage build env SFPN_WITH_CUDA=1 TORCH_CUDA_ARCH_LIST="${arch:-9.0}" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
      "$PYTHON" -m pip install --no-deps --no-build-isolation --no-input -q -e . \
      || { failures+=("the build failed: nothing else can run"); return; }
  fi

  # The copy bandwidth and matrix rates the op figures are read against.
  stage "ceilings" "$PYTHON" benchmarks/gpu_ceilings.py

  # The op tests need sfpn's CUDA kernels: a build that silently fell back to the reference
  # paths would pass them while testing nothing.
  stage "CUDA kernels registered" "$PYTHON" -c '
import sys, torch, sfpn.ops  # noqa: F401  (loads sfpn._C)
ops = ["upsample_add", "semantic_fuse", "roi_align", "multilevel_roi_align", "nms", "batched_nms", "batched_nms_padded"]
missing = [op for op in ops if not torch._C._dispatch_has_kernel_for_dispatch_key(f"sfpn::{op}", "CUDA")]
print("CUDA kernels missing for:", missing) if missing else print("CUDA kernels registered for", len(ops), "ops")
sys.exit(1 if missing else 0)' || "$PYTHON" -m sfpn.info

  # A static copy of libstdc++ in sfpn._C crashes on the first C++ error message with a number.
  stage "sfpn._C links the shared C++ runtime" "$PYTHON" -m pytest -q -p no:cacheprovider tests/native/test_linkage.py

  # The cuda-marked tests, and the Triton kernels' and semantic head's tests (on CUDA when there).
  stage "CUDA tests" "$PYTHON" -m pytest -q -p no:cacheprovider -m cuda \
    tests/ops
  stage "Triton and semantic-head tests on CUDA" "$PYTHON" -m pytest -q -p no:cacheprovider \
    tests/ops/test_resize_sum.py tests/ops/test_group_norm_relu.py tests/ops/test_cross_entropy.py \
    tests/ops/test_library.py tests/modeling/test_semantic_head.py

  # Issue 22's detector goals before the long tail of op benchmarks (each torch.compile peer
  # compiles for seconds), so that a budget spent early still leaves them measured.
  stage "side by side" "$PYTHON" benchmarks/side_by_side.py --rounds 10 --json "$OUT_DIR/${stamp}-gpu-side-by-side.json"
  # Candidate kernels, each checked against float64 and timed beside the kernel it would replace.
  stage "candidate: the upsampling cross entropy a label row at a time" "$PYTHON" benchmarks/ce_rows.py
  # Where SFPN's extra time goes on this GPU, op by op (the table RESULTS.md's GPU entry explains).
  stage "profile: SFPN against FPN" "$PYTHON" benchmarks/profile_detector.py --device cuda --model r50 \
    --size 800 1344 --rounds 3 --top 15
  # The training step and inference first (fp32 and bf16 rows): the figures the others explain.
  # Then every other file in benchmarks/
  # (pytest skips the repeat). If the budget runs out, pytest is interrupted, still writes the
  # JSON of what ran, and the table shows that.
  stage benchmarks "$PYTHON" -m pytest -q -p no:cacheprovider benchmarks/bench_detector.py benchmarks/ \
    --benchmark-only -k cuda --benchmark-json "$json"

  echo
  if [ "$DRY_RUN" -eq 1 ]; then
    echo "=== table: $PYTHON benchmarks/table.py $json | tee $table_file"
  elif [ -f "$json" ]; then
    echo "=== table for benchmarks/RESULTS.md ($json)"
    "$PYTHON" benchmarks/table.py "$json" | tee "$table_file" || failures+=("table: benchmarks/table.py failed")
  else
    failures+=("table: no benchmark JSON was written")
  fi
}

exec 3>&1 4>&2 > >(tee "$log") 2>&1
tee_pid=$!
main
echo
status=0
if [ "${#failures[@]}" -gt 0 ]; then
  echo "################################################################################"
  echo "gpu.sh FAILED (${#failures[@]}), after $SECONDS s:"
  printf '  - %s\n' "${failures[@]}"
  echo "################################################################################"
  status=1
else
  echo "gpu.sh: every stage passed, in $SECONDS s; log $log"
fi
exec 1>&3 2>&4  # close the pipe to tee, and let it finish writing before we exit
wait "$tee_pid" 2>/dev/null || true
exit "$status"
