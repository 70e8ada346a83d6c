"""``biam-embed-labels``: a label-embedding file from word vectors or a CLIP text encoder.

    biam-embed-labels --packed packed/nus_clip --clip clip_vit_b16 --weights FILE \\
        --out packed/nus_clip/embeddings.npz --overwrite

writes arrays ``seen`` (S, E), ``unseen`` (U, E) (rows L2-normalised, in the label order given)
and ``encoder`` (which encoder made them) in the packed ``embeddings.npz`` layout
(docs/data_format.md, docs/methods.md); :mod:`biam.data.label_encoders` does the work.

With ``--zeroshot-checkpoint FILE`` (``--clip``) it also writes the weight-less checkpoint of the
``clip_zeroshot`` method for these embeddings (:func:`biam.modeling.clip_zeroshot.write_checkpoint`).

Exit status: 0 written; 2 bad input (missing file, unknown word, no weights, --out exists); 5 a system
error (disk full, permission), the file named.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..backbones import WeightsNotFoundError
from ..data.label_encoders import (CLIP_BACKBONES, LabelEncoderError, encode_labels_clip, encode_labels_word_vectors,
                                   save_label_embeddings)
from ..data.packed import read_manifest
from ..data.wordvec import FORMATS
from ..modeling.clip_zeroshot import write_checkpoint
from ..utils.text import read_lines
from ._errors import ExitOn, run_main, system_error

PROG = "biam-embed-labels"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Write a label-embedding file (.npz: seen, unseen, encoder; rows L2-normalised) from GloVe/"
                    "fastText word vectors or from a CLIP text encoder with prompt templates (the CLIP paper's 80 "
                    "ImageNet templates, or --template). The file records its encoder; see docs/methods.md.")
    labels = parser.add_mutually_exclusive_group(required=True)
    labels.add_argument("--packed", metavar="DIR", help="take the seen and unseen labels of this packed dataset "
                                                        "(its manifest.json), in its order")
    labels.add_argument("--seen", metavar="FILE", help="seen labels, one a line (with --unseen)")
    labels.add_argument("--labels", metavar="FILE", help="one label list, one a line (written as 'seen', 'unseen' "
                                                         "empty: what biam-predict --embeddings reads with --labels)")
    parser.add_argument("--unseen", metavar="FILE", help="unseen labels, one a line (with --seen)")
    enc = parser.add_mutually_exclusive_group(required=True)
    enc.add_argument("--word-vectors", metavar="FILE", help="GloVe (.txt) or fastText (.vec) word vectors; "
                                                            "multi-word labels are averaged")
    enc.add_argument("--clip", choices=CLIP_BACKBONES, metavar="BACKBONE",
                     help=f"the text encoder of this CLIP backbone ({', '.join(CLIP_BACKBONES)})")
    parser.add_argument("--word-vector-format", choices=FORMATS, default="auto",
                        help="auto (default: a 'count dim' first line means .vec), glove or vec")
    parser.add_argument("--weights", metavar="FILE|TAG|TAG=FILE", default=None,
                        help="--clip: the open_clip checkpoint (the same file as the image backbone's), TAG=FILE, or "
                             "online an open_clip tag such as openai")
    parser.add_argument("--random-weights", type=int, default=None, metavar="SEED",
                        help="--clip: seeded random weights instead (tests and smoke runs only; recorded)")
    parser.add_argument("--template", default=None, metavar="TEXT",
                        help="--clip: one prompt template with {} for the label (default: the 80 ImageNet templates "
                             "of the CLIP paper, averaged)")
    parser.add_argument("--device", default="cpu", help="--clip: torch device of the text encoder (default cpu)")
    parser.add_argument("--zeroshot-checkpoint", metavar="FILE.pth", default=None,
                        help="--clip: also write the weight-less checkpoint of method clip_zeroshot for these "
                             "embeddings (what biam-evaluate --checkpoint reads with MODEL.NAME clip_zeroshot)")
    parser.add_argument("--out", required=True, metavar="FILE.npz", help="the file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.seen is None) != (args.unseen is None):
        parser.error("--seen and --unseen go together")
    if args.word_vectors and (args.weights or args.random_weights is not None or args.template):
        parser.error("--weights, --random-weights and --template are options of --clip")
    if args.zeroshot_checkpoint and not args.clip:
        parser.error("--zeroshot-checkpoint needs --clip")
    if args.clip and args.weights is not None and args.random_weights is not None:
        parser.error("give either --weights or --random-weights, not both")

    def body() -> int:
        out = Path(args.out)
        if out.suffix != ".npz":
            raise ValueError(f"--out {out}: the file is written as .npz")
        if (out.exists() or out.is_symlink()) and not args.overwrite:
            raise FileExistsError(f"--out {out} exists; pass --overwrite to replace it")
        if out.is_dir():
            raise IsADirectoryError(f"--out {out} is a folder")
        if not out.parent.is_dir():
            raise FileNotFoundError(f"--out {out}: folder {out.parent} does not exist")
        zs = Path(args.zeroshot_checkpoint) if args.zeroshot_checkpoint else None
        if zs is not None and (zs.exists() or zs.is_symlink()) and not args.overwrite:
            raise FileExistsError(f"--zeroshot-checkpoint {zs} exists; pass --overwrite to replace it")
        if args.packed:
            manifest = read_manifest(args.packed)
            seen, unseen = list(manifest["labels"]["seen"]), list(manifest["labels"]["unseen"])
        elif args.labels:
            seen, unseen = read_lines(args.labels), []
        else:
            seen, unseen = read_lines(args.seen), read_lines(args.unseen)
        if not seen + unseen:
            raise ValueError("no labels to embed")
        if args.clip:
            matrix, record = encode_labels_clip(seen + unseen, args.clip, args.weights, args.random_weights,
                                                template=args.template, what=PROG, device=args.device)
        else:
            matrix, record = encode_labels_word_vectors(seen + unseen, args.word_vectors, fmt=args.word_vector_format)
        save_label_embeddings(out, matrix[: len(seen)], matrix[len(seen):], record)
        if zs is not None:
            write_checkpoint(zs, args.clip, matrix.shape[1], label_encoder=record["name"])
            print(f"{PROG}: {zs}: the clip_zeroshot checkpoint (no weights; MODEL.NAME clip_zeroshot "
                  f"MODEL.EMBED_DIM {matrix.shape[1]})")
        print(f"{PROG}: {out}: {len(seen)} seen + {len(unseen)} unseen labels, {matrix.shape[1]}-d, encoder "
              f"{record['name']}")
        return 0

    errors = (WeightsNotFoundError, FileNotFoundError, FileExistsError, IsADirectoryError, LabelEncoderError,
              ValueError, KeyError)
    return run_main(PROG, body, (ExitOn(errors, 2), system_error()))


if __name__ == "__main__":
    sys.exit(main())
