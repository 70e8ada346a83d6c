#!/bin/sh
# Maintainer tooling: THE one command given to the lent GPU machine (docs/benchmarks.md, "GPU
# check", has the device call with its carry list and time limit). Run from the repository root
# there, with .whl/ carried (made here by `sh .ci/device_wheels.sh`):
#   sh .ci/device_check.sh [gpu_check options, e.g. --parts bench]
# It installs the carried wheels ($DEVICE_WHEELS, default .whl) offline into $DEVICE_SITE
# (default /tmp/site) with no dependencies, no index and no network, puts that folder and the
# working tree on PYTHONPATH (the project is used from the tree: no pip install of it, no
# console scripts) and runs
# `python3 -m biam.benchmark.gpu_check "$OUT"`, which writes its results under $OUT as they come
# (7 files, no deeper than $OUT/logs/). $OUT is the device tool's folder of files that come back;
# outside it, give OUT=DIR yourself. Exit code: the check's (0 all passed, 1 something failed,
# 2 no GPU), or 3 when the wheels do not install.
set -u
cd "$(dirname -- "$0")/.."
out=${OUT:?"device_check.sh: set OUT to the folder for the results (the device tool sets it)"}
site=${DEVICE_SITE:-/tmp/site}
wheels=${DEVICE_WHEELS:-.whl}
mkdir -p "$out"
log="$out/gpu_check.log"
{
    echo "device_check: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -n), $(python3 --version 2>&1) at $(command -v python3)"
    if command -v nvidia-smi > /dev/null 2>&1; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
    else
        echo "nvidia-smi: not found"
    fi
    ls "$wheels"/*.whl 2>&1
} >> "$log"
t0=$(date +%s)
if ! python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
        "$wheels"/*.whl >> "$log" 2>&1; then
    echo "device_check: the carried wheels did not install into $site (see $log)" | tee -a "$log" >&2
    exit 3
fi
export PYTHONPATH="$site:$PWD"
export PYTHONUNBUFFERED=1
echo "device_check: wheels installed into $site in $(( $(date +%s) - t0 )) s; PYTHONPATH=$PYTHONPATH" >> "$log"
exec python3 -m biam.benchmark.gpu_check "$out" "$@"
