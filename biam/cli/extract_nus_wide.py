"""``python feature_extraction/extract_nus_wide.py``: NUS-WIDE images (official release) -> packed
features, labels and embeddings.

    python feature_extraction/extract_nus_wide.py --nus-root datasets/NUS-WIDE \
        --embeddings datasets/NUS-WIDE/wiki_contexts/NUS_WIDE_pretrained_w2v_glove-wiki-gigaword-300 \
        --out datasets/NUS-WIDE/packed [--splits train test] [--weights pretrained_weights/vgg19-dcbb9e9d.pth]

Several GPUs: ``torchrun --nproc_per_node 4 feature_extraction/extract_nus_wide.py ...``. The
release readers and the label order are in :mod:`biam.datasets.nus_wide.images`.

Exit status: 0 done; 2 bad or missing input, missing weights, or a refused --out folder; 4 another
process is writing --out; 5 the system refused a write (disk full, permission: the file is named).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..data.packed import save_embeddings
from ..data.released import RecordError
from ..datasets.nus_wide.images import SPLIT_FILES, build_split, load_label_embeddings
from ..datasets.nus_wide.release import nus_wide_label_names
from ..utils import comm
from ..utils.text import read_lines
from ._extract import (add_extraction_arguments, add_label_embedding_arguments, check_label_files, run_extractor,
                       run_split)

TOOL = "extract_nus_wide"


def build_parser(prog: str = "biam-extract-nus-wide") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="NUS-WIDE release (images, image lists, tags, ground truth) -> packed features "
                    "(VGG19 conv5_4 regions + fc7 scene), +1/-1 labels (925 seen tags, 81 concepts) and embeddings. "
                    "Resumable; several GPUs through torchrun.")
    parser.add_argument("--nus-root", required=True, metavar="DIR",
                        help="the unpacked release (Flickr/, ImageList/, NUS_WID_Tags/, ConceptsList/, Groundtruth/); "
                             "see datasets/NUS-WIDE/README.md")
    parser.add_argument("--splits", nargs="+", choices=sorted(SPLIT_FILES), default=["train", "test"],
                        help="splits to extract (default: train test)")
    add_label_embedding_arguments(
        parser,
        embeddings_help="released embedding pickle [tags (1000, 300), concepts (81, 300)] "
                        "(wiki_contexts/NUS_WIDE_pretrained_w2v_glove-wiki-gigaword-300)",
        glove_help="GloVe text file; multi-word labels are averaged")
    add_extraction_arguments(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None, prog: str = "biam-extract-nus-wide") -> int:
    """``biam-extract-nus-wide``; ``prog`` is the name its usage line shows (the feature_extraction/ script's own)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    root = Path(args.nus_root)

    def work() -> None:
        tags_path = root / "NUS_WID_Tags" / "TagList1k.txt"
        seen, concepts, seen_idx = nus_wide_label_names(tags_path, root / "ConceptsList" / "Concepts81.txt")
        tags_total = len(read_lines(tags_path))
        vec_seen, vec_unseen = load_label_embeddings(tags_path, seen_idx, seen, concepts, embeddings=args.embeddings,
                                                     glove=args.glove, glove_missing=args.glove_missing)
        # A rerun rewrites embeddings.npz only where none is there yet; other rows are refused.
        same = check_label_files(args.out, seen, concepts, np.concatenate([vec_seen, vec_unseen]), args.overwrite)
        for split in args.splits:
            run_split(build_split(root, split, tags_total, seen_idx, concepts, seen), args, TOOL)
        if comm.is_main_process() and not same:
            save_embeddings(args.out, vec_seen, vec_unseen)

    return run_extractor(TOOL, parser, args, work, errors=(RecordError,))


if __name__ == "__main__":
    sys.exit(main())
