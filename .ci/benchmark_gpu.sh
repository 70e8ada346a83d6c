#!/bin/sh
# Maintainer tooling: the benchmark's whole GPU mode as one prepared command, for a machine with
# one CUDA GPU and about 10 minutes (the lent machine's 15-minute lease runs .ci/device_check.sh,
# which holds the key parts; this is every part).
#   sh .ci/benchmark_gpu.sh [OUT_DIR] [extra python -m biam.benchmark options]
# Writes OUT_DIR/gpu.json (rewritten after every part, so a run stopped from outside keeps what
# it measured) and OUT_DIR/gpu.log. OUT_DIR defaults to output/benchmark.
# The parts run most important first (the epoch and test-pass goals), each in its own process
# and stopped after PART_TIMEOUT seconds (default 240); a failed part is reported, the rest run.
# BUDGET (default 540 s, data building included) bounds the whole run: no part starts once it is
# spent, and each gets at most what is left, so a device call of 10 minutes always ends with a report.
# Data is built in BENCH_DATA (default: a temporary folder on local disk, removed afterwards).
set -eu
. "$(dirname -- "$0")/../scripts/_common.sh"
out=output/benchmark
if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
    out=$1
    shift
fi
py=${PYTHON:-python}
"$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || die ".ci/benchmark_gpu.sh: no CUDA device is visible to torch; run 'python -m biam.benchmark' for the CPU mode"
mkdir -p "$out"
set -- --device cuda --out "$out/gpu.json" --parts train,testpass,data,eval_nus,eval_oi,train_oi \
    --part-timeout "${PART_TIMEOUT:-240}" --budget "${BUDGET:-540}" "$@"
if [ -n "${BENCH_DATA:-}" ]; then
    set -- "$@" --data-dir "$BENCH_DATA"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/gpu.log" 2>&1 || true
# Into the log first (it travels with the JSON), then to the terminal; the exit code is the benchmark's.
status=0
"$py" -m biam.benchmark "$@" >> "$out/gpu.log" 2>&1 || status=$?
cat "$out/gpu.log"
exit "$status"
