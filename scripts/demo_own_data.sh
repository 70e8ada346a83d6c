#!/bin/sh
# The own-data walk-through of docs/own_data.md, on the CPU in a few minutes, no download:
# generated tagged images (coloured shapes) + a word-vector file -> extract_own.py (features of a
# seeded random VGG19) -> biam-train -> biam-evaluate (ZSL/GZSL table with chance levels) ->
# biam-predict --visualize (attention maps of two test images).
#   sh scripts/demo_own_data.sh [KEY VALUE ...]     extra config overrides for training
# Outputs in $DEMO_DIR (default output/demo_own): shapes/ (images, tags.csv, label files, word
# vectors), packed/, run/ (training; run/eval/ the evaluation), attention/ (the figures).
# DEMO_OWN_SIZE=full (default: 100 images, 30 of them test) or tiny (30 images, 10 test, fewer
# epochs: a smoke run, as the tests use it). DEMO_SEED (default 0) seeds the generated data.
set -eu
. "$(dirname -- "$0")/_common.sh"
demo=${DEMO_DIR:-output/demo_own}
py=${PYTHON:-python}
config="$REPO/configs/own_demo.yaml"
case ${DEMO_OWN_SIZE:-full} in
    full) images=100 test=30 size_epochs=40 ;;
    tiny) images=30 test=10 size_epochs=30 ;;
    *) die "DEMO_OWN_SIZE must be full or tiny, got '${DEMO_OWN_SIZE}'" ;;
esac
# An override on the command line wins; the evaluated checkpoint is the last epoch's.
epochs=$(arg_value SOLVER.MAX_EPOCHS "$@")
epochs=${epochs:-$size_epochs}

echo "== 1/5 tagged images and word vectors: $demo/shapes"
"$py" -m biam.cli.demo_shapes --out "$demo/shapes" --num-images "$images" --num-test "$test" --seed "${DEMO_SEED:-0}"
echo "== 2/5 features (seeded random VGG19, no ImageNet weights needed): $demo/packed"
# --overwrite: a rerun extracts the regenerated images again instead of keeping the old shards.
"$py" "$REPO/feature_extraction/extract_own.py" --images "$demo/shapes/images" \
    --annotations "$demo/shapes/tags.csv" --seen "$demo/shapes/seen.txt" --unseen "$demo/shapes/unseen.txt" \
    --train-list "$demo/shapes/train.txt" --test-list "$demo/shapes/test.txt" \
    --word-vectors "$demo/shapes/word_vectors.txt" --out "$demo/packed" --random-weights 0 \
    --workers 0 --overwrite
echo "== 3/5 train: $demo/run"
"$py" -m biam.cli.train --config-file "$config" DATA.ROOT "$demo/packed" OUTPUT_DIR "$demo/run" \
    SOLVER.MAX_EPOCHS "$epochs" --overwrite "$@"
checkpoint="$demo/run/checkpoints/checkpoint_epoch_$(printf '%04d' "$epochs").pth"
echo "== 4/5 evaluate $checkpoint (ZSL: the 6 unseen tags; GZSL: all 14)"
"$py" -m biam.cli.evaluate --config-file "$config" DATA.ROOT "$demo/packed" OUTPUT_DIR "$demo/run" \
    --checkpoint "$checkpoint" --overwrite "$@"
echo "== 5/5 tags and attention maps of two test images: $demo/attention"
first=$((images - test))
"$py" -m biam.cli.predict "$demo/shapes/images/shape_$(printf '%05d' "$first").png" \
    "$demo/shapes/images/shape_$(printf '%05d' $((first + 1))).png" \
    --checkpoint "$checkpoint" --config-file "$config" --labels "$demo/packed/labels.txt" \
    --embeddings "$demo/packed/embeddings.npz" --random-vgg 0 --top-k 3 --visualize "$demo/attention" "$@"
echo "== done: table $demo/run/eval/, attention maps $demo/attention/, what was drawn $demo/shapes/shapes.jsonl"
