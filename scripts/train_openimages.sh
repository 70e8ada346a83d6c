#!/bin/sh
# Train BiAM on Open Images with the paper's recipe (configs/openimages.yaml: 16 heads, as the
# original release's train_openimages.sh), then print the ZSL and GZSL tables.
#   sh scripts/train_openimages.sh [KEY VALUE ...]
#   NPROC=8 sh scripts/train_openimages.sh          eight GPUs on this machine (torchrun)
#   sh scripts/train_openimages.sh --resume         continue from the last checkpoint
set -eu
. "$(dirname -- "$0")/_common.sh"
root=$(arg_value DATA.ROOT "$@")
root=${root:-datasets/OpenImages/packed}
require_file "$root/manifest.json" "Convert the released Open Images features once with:
  biam-convert openimages --src datasets --out $root
(what goes where: datasets/OpenImages/README.md), or pass DATA.ROOT DIR."
launch biam.cli.train --config-file "$REPO/configs/openimages.yaml" DATA.ROOT "$root" "$@"
