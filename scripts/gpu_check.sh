#!/bin/sh
# The prepared GPU check (docs/benchmarks.md, "GPU check") as one command for a device call of at
# most 10 minutes on one CUDA GPU:
#   sh scripts/gpu_check.sh OUT_DIR [--dry-run] [--budget S] [--parts tests,train,eval,bench]
# 1. the CUDA-marked tests; 2. the demo trained in CPU float32, CUDA float32 and CUDA bf16 +
# compile from one seed, compared; 3. one checkpoint evaluated on CUDA and on the CPU; 4. the
# benchmark's CUDA mode (test pass and epoch goals). Each part is stopped at its time limit and the
# whole at --budget (default 530 s); OUT_DIR/gpu_check.json is rewritten after every step, so a
# run stopped from outside keeps what it measured. --dry-run rehearses every part on the CPU at
# reduced size. Driver: scripts/gpu_check.py (--plan lists the parts and their time limits).
set -eu
. "$(dirname -- "$0")/_common.sh"
[ "$#" -gt 0 ] && [ "${1#-}" = "$1" ] || die "usage: sh scripts/gpu_check.sh OUT_DIR [--dry-run] [--budget S] [--parts LIST]"
py=${PYTHON:-python}
command -v nvidia-smi > /dev/null 2>&1 && mkdir -p "$1" \
    && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$1/nvidia-smi.txt" 2>&1 || true
exec "$py" "$REPO/scripts/gpu_check.py" "$@"
