"""``biam-predict``: tag images with any label list, optionally with attention figures.

    biam-predict photo.jpg photos/ --labels labels.txt --glove glove.6B.300d.txt \
        --checkpoint pretrained_weights/model_best_nus.pth [--top-k 5] [--json] [--visualize figs/] \
        [--config-file configs/nus_wide.yaml] [MODEL.HEADS 8 ...]

A thin layer over :class:`biam.engine.predict.Predictor`: parse, read the labels, build the
predictor, tag, print or write. Images are files, and folders searched recursively; KEY VALUE
config overrides may come anywhere among them or after the options.

Outputs never replace a file biam-predict did not write: ``--visualize DIR`` writes
``<image stem>_attention.png`` figures into a folder it owns
(:class:`biam.engine.predict.FigureFolder`); ``--output FILE`` refuses an input image and an
existing file unless ``--overwrite``.

Exit status: 0 all images tagged; 1 some images could not be read (they are listed, with the
reason, on stderr and under "unreadable" in the JSON; the others are still tagged); 2 bad input
(an empty label file, a label holding a line separator, ...) or a refused output path; 4 another
biam-predict is writing the same --visualize folder; 5 the system refused a read or write (disk
full, permission; the file is named).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from ..backbones import WeightsNotFoundError, list_backbones
from ..config import ConfigError, load_cfg
from ..data.released import RecordError
from ..engine.checkpoint import CheckpointError
from ..engine.predict import FigureFolder, Predictor, TagResult, collect_images, embed_labels, read_label_file
from ..utils.io import atomic_open
from ..utils.ownership import FolderBusyError, FolderOwnershipError
from ._errors import ExitOn, run_main, system_error

_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


def split_inputs(tokens: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Positional tokens -> (input paths, KEY VALUE overrides).

    A token that looks like a config key (``MODEL.TOPK``: upper case, dotted) and is not an
    existing path starts an override; the token after it is its value.
    """
    paths, opts = [], []
    it = iter(tokens)
    for tok in it:
        if _CONFIG_KEY.match(tok) and not Path(tok).exists():
            value = next(it, None)
            if value is None:
                raise ValueError(f"config override {tok} has no value")
            opts += [tok, value]
        else:
            paths.append(tok)
    return paths, opts


EXITS = (
    ExitOn(FolderBusyError, 4),
    # Bad input (files, labels, config, weights): one clear line instead of a traceback.
    ExitOn((ConfigError, CheckpointError, WeightsNotFoundError, RecordError, FileNotFoundError, KeyError,
            ValueError, FolderOwnershipError), 2),
    system_error(),  # an OSError not above (disk full, permission): 5, the file named
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biam-predict",
        description="Top-K labels (and attention maps) of images for any label list, with a BiAM checkpoint.",
        epilog="Positional arguments are images or folders, optionally followed by KEY VALUE config overrides "
               "(e.g. MODEL.HEADS 8), also after the options; model options must match the checkpoint.")
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
    # --vgg-weights / --random-vgg: the names from when VGG19 was the only backbone, kept working.
    vgg.add_argument("--weights", "--vgg-weights", dest="vgg_weights", metavar="FILE",
                     help="weights of the checkpoint's backbone (the one it records, or MODEL.BACKBONE; registered: "
                          f"{', '.join(list_backbones())}): for vgg19 and resnet101 torchvision's ImageNet state dict "
                          "(vgg19-dcbb9e9d.pth), for the CLIP ones an open_clip checkpoint (FILE, TAG or TAG=FILE, "
                          "docs/methods.md); default: torchvision's cache (vgg19, resnet101 only)")
    vgg.add_argument("--random-weights", "--random-vgg", dest="random_vgg", type=int, metavar="SEED",
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
                        help="image files or folders and optional config overrides such as MODEL.HEADS 8 "
                             "(before or after the options)")
    return parser


def _check_output(out: Path, images: Sequence[str], overwrite: bool) -> None:
    if any(out.resolve() == Path(img).resolve() for img in images):
        raise ValueError(f"--output {out} is one of the input images; choose another file name")
    if out.is_dir():
        raise ValueError(f"--output {out} is a folder; give a file name")
    if out.exists() and not overwrite:
        raise ValueError(f"--output {out} already exists; choose a new file name, or pass --overwrite to replace it")


def format_table(result: TagResult) -> str:
    """The text table: each image, then its ranked labels and scores; unreadable images last."""
    lines = []
    for r in result.images:
        lines.append(r.name)
        width = max(len(label) for label, _ in r.labels) if r.labels else 0
        for rank, (label, score) in enumerate(r.labels, 1):
            lines.append(f"  {rank:>2}  {label:<{width}}  {score:.4f}")
    for name, reason in result.unreadable:
        lines.append(f"{name}\n  unreadable: {reason}")
    return "\n".join(lines) + "\n"


def format_json(result: TagResult, checkpoint: str, weights_source: str) -> str:
    def entry(r):
        out = {"image": r.name, "labels": [{"label": label, "score": score} for label, score in r.labels]}
        if r.figure is not None:
            out["figure"] = r.figure
        return out

    return json.dumps({"checkpoint": checkpoint, "vgg_weights": weights_source, "top_k": result.top_k,
                       "results": [entry(r) for r in result.images],
                       "unreadable": [{"image": n, "reason": why} for n, why in result.unreadable]},
                      indent=1, ensure_ascii=False) + "\n"


def run(args) -> int:
    """Tag the images of parsed ``biam-predict`` arguments -> exit status (0, or 1 if some were unreadable)."""
    inputs, opts = split_inputs(args.opts)
    cfg = load_cfg(args.config_file or None, opts)
    images = collect_images(inputs)
    if args.output:
        _check_output(Path(args.output), images, args.overwrite)
    # Labels first: a bad label file or embedding fails before any folder is made or model loaded.
    names = read_label_file(args.labels)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        labels = embed_labels(names, cfg.MODEL.EMBED_DIM, embeddings=args.embeddings, word_vectors=args.glove,
                              missing=args.glove_missing, labels_source=args.labels)
    for w in caught:  # --glove-missing zero: the labels that will score the same for every image
        print(f"biam-predict: warning: {w.message} (they score the same for every image)", file=sys.stderr)
    figures = FigureFolder(args.visualize, images, args.overwrite) if args.visualize else None
    try:
        # The config again, with MODEL.NAME from the checkpoint's record unless the user set it.
        predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device, weights=args.vgg_weights,
                                              random_weights=args.random_vgg, config_file=args.config_file or None,
                                              opts=opts)
        result = predictor.tag(images, labels, k=args.top_k, batch_size=args.batch_size, workers=args.workers,
                               figures=figures, progress=True)
    finally:
        if figures is not None:
            figures.close()
    if args.json:
        text = format_json(result, str(args.checkpoint), predictor.weights_source)
    else:
        text = format_table(result)
    if args.output:
        with atomic_open(args.output, "w") as f:  # complete or absent, never half a file
            f.write(text)
    else:
        sys.stdout.write(text)
    for name, reason in result.unreadable:
        print(f"biam-predict: unreadable image {name}: {reason}", file=sys.stderr)
    bad = len(result.unreadable)
    print(f"biam-predict: {len(result.images)} of {len(images)} images tagged" +
          (f", {bad} unreadable" if bad else "") + (f"; figures in {args.visualize}" if args.visualize else ""),
          file=sys.stderr)
    return 1 if bad else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    # Intermixed: KEY VALUE pairs after the options (sh scripts/demo_own_data.sh SOLVER.MAX_EPOCHS 30).
    args = parser.parse_intermixed_args(argv)
    if args.top_k < 1 or args.batch_size < 1 or args.workers < 0:
        parser.error("--top-k and --batch-size must be >= 1, --workers >= 0")
    return run_main("biam-predict", lambda: run(args), EXITS)


if __name__ == "__main__":
    sys.exit(main())
