#!/bin/sh
# Evaluate BiAM on the Open Images test split: SEEN, ZSL and GZSL tables.
#   sh scripts/evaluate_openimages.sh [CHECKPOINT [GZSL_CHECKPOINT]] [KEY VALUE ...]
# Without a checkpoint: the published pair, as the original evaluation runs them: every row of
# pretrained_weights/model_best_gzsl.pth, then of pretrained_weights/model_best_zsl.pth, then the
# summary with ZSL from the ZSL file and GZSL from the GZSL file (pretrained_weights/README.md).
# One CHECKPOINT (e.g. one of ours) serves all rows; a second file gives the summary's GZSL row.
# Prints per-label mAP and, beside it, the published pooled AP, plain and weighted (the paper's
# table; docs/metrics.md). Results: OUTPUT_DIR/eval/test-<checkpoint name>/metrics.json.
set -eu
. "$(dirname -- "$0")/_common.sh"
ckpt=pretrained_weights/model_best_zsl.pth
gzsl=pretrained_weights/model_best_gzsl.pth
if [ "$#" -gt 0 ] && [ -f "$1" ]; then
    ckpt=$1
    gzsl=
    shift
    if [ "$#" -gt 0 ] && [ -f "$1" ]; then
        gzsl=$1
        shift
    fi
fi
root=$(arg_value DATA.ROOT "$@")
root=${root:-datasets/OpenImages/packed}
how="Download the published Open Images checkpoints (model_best_zsl.pth, model_best_gzsl.pth) as described in
pretrained_weights/README.md, or pass a checkpoint of your own:
  sh scripts/evaluate_openimages.sh output/openimages/checkpoints/checkpoint_epoch_0010.pth"
require_file "$ckpt" "$how"
if [ -n "$gzsl" ]; then
    require_file "$gzsl" "$how"
fi
require_file "$root/manifest.json" "Convert the released Open Images features once with:
  biam-convert openimages --src datasets --out $root
(what goes where: datasets/OpenImages/README.md), or pass DATA.ROOT DIR."
if [ -n "$gzsl" ]; then
    launch biam.cli.evaluate --config-file "$REPO/configs/openimages.yaml" --checkpoint "$ckpt" --gzsl-checkpoint "$gzsl" \
        DATA.ROOT "$root" OUTPUT_DIR output/eval_openimages "$@"
else
    launch biam.cli.evaluate --config-file "$REPO/configs/openimages.yaml" --checkpoint "$ckpt" \
        DATA.ROOT "$root" OUTPUT_DIR output/eval_openimages "$@"
fi
