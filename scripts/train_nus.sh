#!/bin/sh
# Train BiAM on NUS-WIDE with the paper's recipe, then print the ZSL and GZSL tables.
#   sh scripts/train_nus.sh [KEY VALUE ...]        e.g. OUTPUT_DIR output/nus1 SOLVER.BATCH_SIZE 64
#   NPROC=4 sh scripts/train_nus.sh                 four GPUs on this machine (torchrun)
#   sh scripts/train_nus.sh --resume                continue from the last checkpoint
set -eu
. "$(dirname -- "$0")/_common.sh"
root=$(arg_value DATA.ROOT "$@")
root=${root:-datasets/NUS-WIDE/packed}
require_file "$root/manifest.json" "Convert the released NUS-WIDE features once with:
  biam-convert nus_wide --src datasets --out $root
(what goes where: datasets/NUS-WIDE/README.md), or pass DATA.ROOT DIR."
launch biam.cli.train --config-file "$REPO/configs/nus_wide.yaml" DATA.ROOT "$root" "$@"
