#!/usr/bin/env bash
# The first GPU run, as one command from the repository root on the GPU machine (no network):
#     bash scripts/gpu_check.sh                    # device tool: carry [".gpu-wheels"], results in $OUT
#     GPU_CHECK_DRY_RUN=1 bash scripts/gpu_check.sh   # here, on the CPU: tiny sizes, CUDA-only stages skipped
# Prepare the wheels first, here: bash scripts/prepare_gpu_wheels.sh. Stages, limits and outputs:
# scripts/gpu_check.py and docs/BENCHMARKS.md ("The GPU check"). Extra arguments go to gpu_check.py
# (e.g. --only bench_editor edit_memory; --group throughput for issue 16's editor options and IDU throughput).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/gpu_check}
mkdir -p "$OUT"
PYTHON=${PYTHON:-python3}
SITE=/tmp/splat2splat-gpu-site
if [ "${GPU_CHECK_DRY_RUN:-0}" != 1 ]; then
  started=$(date +%s)
  ls .gpu-wheels/*.whl >/dev/null 2>&1 || { echo "gpu_check FAIL: no .gpu-wheels/*.whl (run scripts/prepare_gpu_wheels.sh here and carry .gpu-wheels)"; exit 2; }
  # Into a folder of their own: the machine's packages (torch, transformers, ...) stay exactly as they are.
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .gpu-wheels/*.whl \
    || { echo "gpu_check FAIL: installing the carried wheels failed"; exit 2; }
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation -e . \
    || echo "note: the editable install of splat2splat failed; the repository is used through PYTHONPATH"
  echo "[gpu_check] wheels and splat2splat installed in $(( $(date +%s) - started )) s"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# 9 minutes at most for everything after the install (gpu_check.py plans for 510 s and kills stages past it).
timeout -k 10 540 "$PYTHON" scripts/gpu_check.py --output "$OUT" ${GPU_CHECK_DRY_RUN:+--cpu-dry-run} "$@"
