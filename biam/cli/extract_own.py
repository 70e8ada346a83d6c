"""``python feature_extraction/extract_own.py``: your own tagged images -> packed features, labels and embeddings (see docs/own_data.md).

    python feature_extraction/extract_own.py --images photos/ --annotations tags.csv \
        --unseen unseen.txt --test-fraction 0.25 --word-vectors glove.6B.300d.txt \
        --out datasets/own/packed [--weights pretrained_weights/vgg19-dcbb9e9d.pth]

Several GPUs: ``torchrun --nproc_per_node 4 feature_extraction/extract_own.py ...``. Resumable
like the NUS-WIDE extractor: rerun the same command after an interruption. The annotation
formats, the label and image split rules and the checks are described in
:mod:`biam.datasets.own.annotations`; label embeddings in :mod:`biam.data.wordvec`. Labels are +1/-1,
seen columns then unseen columns; features are VGG19 conv5_4 regions + fc7 scene. Besides
the packed files, ``<out>/labels.txt`` lists the labels (seen then unseen) in the row order of
``embeddings.npz``.

Exit status: 0 done; 2 bad or missing input, missing weights, or a refused --out folder; 4 another
process is writing --out; 5 the system refused a write (disk full, permission: the file is named).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..data.packed import save_embeddings
from ..data.wordvec import FORMATS, WordVectorError, label_embeddings
from ..datasets.own.annotations import SPLITS, UNSEEN_RULES, OwnDataError, build_own_dataset
from ..utils import comm
from ..utils.io import atomic_open
from ..utils.ownership import claim_output
from ._extract import add_extraction_arguments, check_label_files, run_extractor, run_split

TOOL = "extract_own"


LABELS_FILE = "labels.txt"


def write_labels(path: Path, labels: Sequence[str]) -> None:
    """Seen then unseen label names, one a line (UTF-8), written to a temporary name and renamed."""
    with atomic_open(path, "w") as fh:
        fh.write("".join(f"{label}\n" for label in labels))


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text}")
    return value


def build_parser(prog: str = "biam-extract-own") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="A folder of images + an annotation file (CSV 'image,tags[,split]' with tags separated by ';', "
                    "or JSON lines) + a word-vector file (GloVe or fastText .vec) -> a packed dataset: VGG19 "
                    "conv5_4 regions + fc7 scene, +1/-1 labels (seen then unseen columns) and label embeddings. "
                    "Resumable; several GPUs through torchrun. See docs/own_data.md.")
    parser.add_argument("--images", required=True, metavar="DIR", help="image folder; annotation paths are relative to it")
    parser.add_argument("--annotations", required=True, metavar="FILE",
                        help="tags.csv (header 'image,tags' [',split'], tags separated by ';') or tags.jsonl "
                             "({\"image\": ..., \"tags\": [...], \"split\": ...} per line)")
    labels = parser.add_argument_group("seen/unseen labels (label files, or a fraction chosen by a seeded rule)")
    labels.add_argument("--seen", metavar="FILE", help="seen labels, one a line (UTF-8)")
    labels.add_argument("--unseen", metavar="FILE",
                        help="unseen labels, one a line; with only one of --seen/--unseen the other side is every "
                             "other tag of the data")
    labels.add_argument("--unseen-fraction", type=_fraction, metavar="F",
                        help="instead of label files: this fraction of the tags becomes unseen")
    labels.add_argument("--unseen-rule", choices=UNSEEN_RULES, default="random",
                        help="with --unseen-fraction: random (uniform, seeded; default) or rarest (fewest images)")
    split = parser.add_argument_group("train/test images (a 'split' field, two lists, or a seeded fraction)")
    split.add_argument("--train-list", metavar="FILE", help="train image paths, one a line (with --test-list)")
    split.add_argument("--test-list", metavar="FILE", help="test image paths, one a line (with --train-list)")
    split.add_argument("--test-fraction", type=_fraction, metavar="F",
                       help="this fraction of the images goes to test (seeded) when the annotations have no split")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fraction rules (default 0)")
    parser.add_argument("--word-vectors", required=True, metavar="FILE",
                        help="GloVe .txt or fastText .vec text file; multi-word labels are averaged")
    parser.add_argument("--word-vector-format", choices=FORMATS, default="auto",
                        help="auto (default: a 'count dim' first line means .vec), glove or vec")
    parser.add_argument("--dataset-name", default="own", metavar="NAME",
                        help="dataset name recorded in the manifest (default 'own'); DATA.DATASET must name the same, "
                             "registered dataset")
    parser.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS),
                        help="splits to extract (default: train test)")
    add_extraction_arguments(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None, prog: str = "biam-extract-own") -> int:
    """``biam-extract-own``; ``prog`` is the name its usage line shows (the feature_extraction/ script's own)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)

    def work() -> None:
        # Every rank reads and checks the inputs (cheap next to extraction), so a bad file stops
        # all of them before any image is processed.
        data = build_own_dataset(
            args.annotations, args.images, seen_file=args.seen, unseen_file=args.unseen,
            unseen_fraction=args.unseen_fraction, unseen_rule=args.unseen_rule, train_list=args.train_list,
            test_list=args.test_list, test_fraction=args.test_fraction, seed=args.seed)
        vectors = label_embeddings(data.seen + data.unseen, args.word_vectors, fmt=args.word_vector_format,
                                   progress=comm.is_main_process())
        if comm.is_main_process():
            print(f"{TOOL}: {data.summary()}")
        # Inputs are good: take --out now (lock + ownership, rank 0), as the other extractors do;
        # a bad input above has written nothing at all.
        with claim_output(args.out, args.overwrite, TOOL):
            # A rerun rewrites nothing it has not compared: the same labels, order and vectors, or a refusal.
            same = check_label_files(args.out, data.seen, data.unseen, vectors, args.overwrite, LABELS_FILE,
                                     dataset=args.dataset_name)
            for split in args.splits:
                run_split(data.split_spec(split, dataset=args.dataset_name), args, TOOL)
            if comm.is_main_process() and not same:
                save_embeddings(args.out, vectors[: len(data.seen)], vectors[len(data.seen):])
                # The row order of embeddings.npz, for `biam-predict --labels ... --embeddings ...`.
                write_labels(Path(args.out) / LABELS_FILE, data.seen + data.unseen)

    return run_extractor(TOOL, parser, args, work, errors=(OwnDataError, WordVectorError), claim_before_joining=False)


if __name__ == "__main__":
    sys.exit(main())
