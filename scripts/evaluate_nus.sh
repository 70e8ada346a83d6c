#!/bin/sh
# Evaluate a BiAM checkpoint (ours or the published one) on the NUS-WIDE test split.
#   sh scripts/evaluate_nus.sh [CHECKPOINT] [KEY VALUE ...]
# CHECKPOINT defaults to pretrained_weights/model_best_nus.pth (pretrained_weights/README.md).
# Results: OUTPUT_DIR/eval/test-<checkpoint name>/metrics.json (OUTPUT_DIR default below).
set -eu
. "$(dirname -- "$0")/_common.sh"
ckpt=pretrained_weights/model_best_nus.pth
if [ "$#" -gt 0 ] && [ -f "$1" ]; then
    ckpt=$1
    shift
fi
root=$(arg_value DATA.ROOT "$@")
root=${root:-datasets/NUS-WIDE/packed}
require_file "$ckpt" "Download the published NUS-WIDE checkpoint as described in pretrained_weights/README.md,
or pass a checkpoint of your own: sh scripts/evaluate_nus.sh output/nus_wide/checkpoints/checkpoint_epoch_0045.pth"
require_file "$root/manifest.json" "Convert the released NUS-WIDE features once with:
  biam-convert nus_wide --src datasets --out $root
(what goes where: datasets/NUS-WIDE/README.md), or pass DATA.ROOT DIR."
launch biam.cli.evaluate --config-file "$REPO/configs/nus_wide.yaml" --checkpoint "$ckpt" \
    DATA.ROOT "$root" OUTPUT_DIR output/eval_nus_wide "$@"
