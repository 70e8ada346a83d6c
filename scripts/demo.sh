#!/bin/sh
# The built-in demo, on the CPU in a few minutes: a synthetic dataset in the released NUS-WIDE
# layout -> biam-convert -> biam-train (configs/demo.yaml) -> ZSL/GZSL tables with chance levels.
#   sh scripts/demo.sh [KEY VALUE ...]          extra config overrides for the training run
# Outputs in $DEMO_DIR (default output/demo): released/, packed/, run/ (log, curve.png, metrics.json).
# DEMO_NUM_TRAIN / DEMO_NUM_TEST (default 600 / 200) set the synthetic dataset's size.
set -eu
. "$(dirname -- "$0")/_common.sh"
demo=${DEMO_DIR:-output/demo}
py=${PYTHON:-python}

echo "== 1/3 synthetic dataset in the released layout: $demo/released"
"$py" -m biam.cli.synthetic --out "$demo/released" --seed 0 \
    --num-train "${DEMO_NUM_TRAIN:-600}" --num-test "${DEMO_NUM_TEST:-200}"
echo "== 2/3 convert to packed shards: $demo/packed"
# No ImageNet VGG19 weights are needed for synthetic data: a seeded random head makes the
# scene features, and the manifest records that it did.
"$py" -m biam.cli.convert nus_wide --src "$demo/released" --out "$demo/packed" --scene-fallback random --overwrite
echo "== 3/3 train and evaluate: $demo/run"
# --overwrite: a rerun of the demo replaces the demo's own earlier run in $demo/run.
"$py" -m biam.cli.train --config-file "$REPO/configs/demo.yaml" DATA.ROOT "$demo/packed" OUTPUT_DIR "$demo/run" --overwrite "$@"
echo "== done: training curve $demo/run/curve.png, metrics $demo/run/metrics.json"
