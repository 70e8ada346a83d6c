"""``python feature_extraction/extract_openimages.py``: Open Images v4 (2018_04) images + human-verified
labels -> packed features, labels, embeddings.

    python feature_extraction/extract_openimages.py --split test \
        --meta-dir datasets/OpenImages/2018_04 --images datasets/OpenImages/test \
        --embeddings datasets/OpenImages/wiki_contexts/OpenImage_w2v_context_window_10_glove-wiki-gigaword-300.pkl \
        --out datasets/OpenImages/packed [--weights pretrained_weights/vgg19-dcbb9e9d.pth]

Several GPUs: ``torchrun --nproc_per_node 8 feature_extraction/extract_openimages.py ...``. How
labels are read and merged: :mod:`biam.datasets.openimages.images`.

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
from ..data.splits import SplitSpec
from ..datasets.openimages.images import SPLITS, annotation_csv, load_label_embeddings, read_annotations
from ..datasets.openimages.release import read_classes_trainable, read_top400, read_unseen_ids
from ..utils import comm
from ._extract import (add_extraction_arguments, add_label_embedding_arguments, check_label_files, run_extractor,
                       run_split)

TOOL = "extract_openimages"


def build_parser(prog: str = "biam-extract-openimages") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Open Images v4 (2018_04) images and human-verified labels -> packed features "
                    "(VGG19 conv5_4 regions + fc7 scene), labels in {-1, 0, +1} (7186 seen, 2594 unseen) and "
                    "embeddings. Resumable; several GPUs through torchrun.")
    parser.add_argument("--split", required=True, choices=SPLITS, help="which split's CSV and images to extract")
    parser.add_argument("--meta-dir", required=True, metavar="DIR",
                        help="the 2018_04 folder: classes-trainable.txt, unseen_labels.pkl, top_400_unseen.csv, "
                             "<split>/<split>-annotations-human-imagelabels.csv (see feature_extraction/README.md)")
    parser.add_argument("--images", required=True, metavar="DIR", help="folder of the split's images, <ImageID>.jpg")
    parser.add_argument("--csv", default=None, metavar="FILE", help="annotation CSV (default: found in --meta-dir/<split>/)")
    add_label_embedding_arguments(
        parser,
        embeddings_help="released embedding pickle [seen (7186, 300), unseen (2594, 300)]",
        glove_help="GloVe text file; class names from class-descriptions.csv, multi-word names averaged")
    parser.add_argument("--class-descriptions", default=None, metavar="FILE",
                        help="id -> name CSV for --glove (default: --meta-dir/class-descriptions.csv)")
    add_extraction_arguments(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None, prog: str = "biam-extract-openimages") -> int:
    """``biam-extract-openimages``; ``prog`` is the name its usage line shows (the feature_extraction/ script's own)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    meta = Path(args.meta_dir)

    def work() -> None:
        seen = read_classes_trainable(meta / "classes-trainable.txt")
        unseen = read_unseen_ids(meta / "unseen_labels.pkl")
        unseen_eval = read_top400(meta / "top_400_unseen.csv", num_unseen=len(unseen))
        overlap = set(seen) & set(unseen)
        if overlap:
            raise ValueError(f"{meta}: {len(overlap)} class id(s) are both seen and unseen, e.g. {sorted(overlap)[:3]}")
        vec_seen, vec_unseen = load_label_embeddings(meta, seen, unseen, embeddings=args.embeddings, glove=args.glove,
                                                     glove_missing=args.glove_missing,
                                                     class_descriptions=args.class_descriptions)
        csv_path = Path(args.csv) if args.csv else annotation_csv(meta, args.split)
        columns = {c: i for i, c in enumerate(seen + unseen)}
        ids, labels, stats = read_annotations(csv_path, columns)
        if comm.is_main_process():
            print(f"{TOOL}: {csv_path}: {stats['rows']} rows, {len(ids)} images; {stats['duplicates']} repeated "
                  f"(image, class) pairs merged, {stats['conflicts']} of them conflicting (positive wins); "
                  f"{stats['ignored_rows']} rows of {stats['ignored_classes']} classes outside both label lists ignored")
        images = Path(args.images)
        spec = SplitSpec(
            split=args.split, dataset="openimages", paths=[str(images / f"{i}.jpg") for i in ids], names=ids,
            labels=labels, seen=seen, unseen=unseen, unseen_eval=unseen_eval,
            extra={"source": {"tool": "feature_extraction/extract_openimages.py", "meta_dir": str(meta)}},
        )
        # A rerun rewrites embeddings.npz only where none is there yet; other rows are refused.
        same = check_label_files(args.out, seen, unseen, np.concatenate([vec_seen, vec_unseen]), args.overwrite)
        summary = run_split(spec, args, TOOL)
        if comm.is_main_process() and not same:
            save_embeddings(args.out, vec_seen, vec_unseen)
            if not summary["skipped_complete"]:
                print(f"{TOOL}: label conflicts (positive kept): {stats['conflicts']}")

    return run_extractor(TOOL, parser, args, work, errors=(RecordError,))


if __name__ == "__main__":
    sys.exit(main())
