#!/bin/sh
# Evaluate a BiAM checkpoint (ours or the published one) on the Open Images test split.
#   sh scripts/evaluate_openimages.sh [CHECKPOINT] [KEY VALUE ...]
# CHECKPOINT defaults to pretrained_weights/model_best_openimages.pth (pretrained_weights/README.md).
# Results: OUTPUT_DIR/eval/test-<checkpoint name>/metrics.json (OUTPUT_DIR default below).
# Prints the true per-label mAP and, beside it, the published pooled AP (docs/metrics.md).
set -eu
. "$(dirname -- "$0")/_common.sh"
ckpt=pretrained_weights/model_best_openimages.pth
if [ "$#" -gt 0 ] && [ -f "$1" ]; then
    ckpt=$1
    shift
fi
root=$(arg_value DATA.ROOT "$@")
root=${root:-datasets/OpenImages/packed}
require_file "$ckpt" "Download the published Open Images checkpoint as described in pretrained_weights/README.md,
or pass a checkpoint of your own: sh scripts/evaluate_openimages.sh output/openimages/checkpoints/checkpoint_epoch_0010.pth"
require_file "$root/manifest.json" "Convert the released Open Images features once with:
  biam-convert openimages --src datasets --out $root
(what goes where: datasets/OpenImages/README.md), or pass DATA.ROOT DIR."
launch biam.evaluate --config-file "$REPO/configs/openimages.yaml" --checkpoint "$ckpt" \
    DATA.ROOT "$root" OUTPUT_DIR output/eval_openimages "$@"
