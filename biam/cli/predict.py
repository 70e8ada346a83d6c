"""``biam-predict``: tag images with any label list; see :mod:`biam.engine.predict`.

Exit status: 0 all images tagged; 1 some images could not be read; 2 bad input or a refused
output path; 4 another biam-predict is writing the same --visualize folder.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ..backbones import WeightsNotFoundError
from ..config import ConfigError
from ..data.released import RecordError
from ..engine.checkpoint import CheckpointError
from ..engine.predict import run
from ..utils.ownership import FolderBusyError, FolderOwnershipError
from ._errors import ExitOn, run_main

EXITS = (
    ExitOn(FolderBusyError, 4),
    # Bad input (files, labels, config, weights): one clear line instead of a traceback.
    ExitOn((ConfigError, CheckpointError, WeightsNotFoundError, RecordError, FileNotFoundError, KeyError,
            ValueError, FolderOwnershipError), 2),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biam-predict",
        description="Top-K labels (and attention maps) of images for any label list, with a BiAM checkpoint.",
        epilog="Positional arguments are images or folders, optionally followed by KEY VALUE config overrides "
               "(e.g. MODEL.HEADS 8); model options must match the checkpoint.")
    parser.add_argument("--labels", required=True, metavar="FILE", help="label names, one a line")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--embeddings", metavar="FILE", help=".npy (C, 300) or .npz (one array, or 'seen' + 'unseen' "
                                                          "as in a packed dataset) with rows in --labels order")
    group.add_argument("--glove", metavar="FILE.txt", help="GloVe text file; multi-word labels are averaged")
    parser.add_argument("--glove-missing", choices=("error", "skip-word", "zero"), default="error",
                        help="labels with words the GloVe file lacks: error (default), average the known words, "
                             "or a zero row")
    parser.add_argument("--checkpoint", required=True, metavar="FILE",
                        help="BiAM weights: our training checkpoint or a published state dict (model_best_nus.pth)")
    vgg = parser.add_mutually_exclusive_group()
    vgg.add_argument("--vgg-weights", metavar="FILE",
                     help="ImageNet state dict of the checkpoint's backbone (VGG19: vgg19-dcbb9e9d.pth; the backbone is "
                          "the one the checkpoint records, or MODEL.BACKBONE); default: torchvision's cache")
    vgg.add_argument("--random-vgg", type=int, metavar="SEED",
                     help="seeded random backbone weights (tests and smoke runs only)")
    parser.add_argument("--top-k", "--topk", dest="top_k", type=int, default=5, metavar="K",
                        help="labels shown per image (default 5)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--output", metavar="FILE", help="write the table / JSON to FILE instead of stdout "
                                                         "(an existing FILE only with --overwrite; never an input image)")
    parser.add_argument("--visualize", metavar="DIR",
                        help="write one attention figure <image stem>_attention.png per image into DIR: a new or empty "
                             "folder, or one biam-predict wrote before (never a folder holding input images)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --output FILE, and write figures into a --visualize DIR that holds "
                             "other files (they are never replaced: a taken name gets a number)")
    parser.add_argument("--batch-size", type=int, default=8, metavar="N", help="images per forward pass (default 8)")
    parser.add_argument("--workers", type=int, default=0, metavar="N", help="image decoding worker processes (default 0)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto", help="default: a GPU when present")
    parser.add_argument("--config-file", default="", metavar="FILE",
                        help="YAML config with the checkpoint's model options (e.g. configs/nus_wide.yaml)")
    parser.add_argument("opts", nargs="*", metavar="IMAGE | KEY VALUE",
                        help="image files or folders, then optional config overrides such as MODEL.HEADS 8")
    return parser



def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.top_k < 1 or args.batch_size < 1 or args.workers < 0:
        parser.error("--top-k and --batch-size must be >= 1, --workers >= 0")
    return run_main("biam-predict", lambda: run(args), EXITS)


if __name__ == "__main__":
    sys.exit(main())
