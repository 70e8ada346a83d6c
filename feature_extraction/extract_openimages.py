"""Open Images v4 (2018_04) images + human-verified labels -> packed features, labels, embeddings.

    python feature_extraction/extract_openimages.py --split test \
        --meta-dir datasets/OpenImages/2018_04 --images datasets/OpenImages/test \
        --embeddings datasets/OpenImages/wiki_contexts/OpenImage_w2v_context_window_10_glove-wiki-gigaword-300.pkl \
        --out datasets/OpenImages/packed [--weights pretrained_weights/vgg19-dcbb9e9d.pth]

Several GPUs: ``torchrun --nproc_per_node 8 feature_extraction/extract_openimages.py ...``.

Labels: columns are the 7186 ``classes-trainable.txt`` ids (seen) then the 2594
``unseen_labels.pkl`` ids (unseen); an annotated (image, class) pair gets ``2 * Confidence - 1``
(+1 verified present, -1 verified absent), every other pair 0 (unknown). Repeated rows of one
(image, class) pair are merged; when they disagree the positive wins (one verifier saw the
class) and the conflict is counted in the summary. Classes in neither list are ignored and
counted. Images in the CSV without a file ``<images>/<ImageID>.jpg`` go to the unreadable report.
"""

from __future__ import annotations

import argparse
import pickle
import csv
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

try:
    import biam  # noqa: F401
except ImportError:
    # Run from a checkout without `pip install -e .`: the package lives one folder up.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from biam import features  # noqa: E402
from biam.data import embeddings as emb  # noqa: E402
from biam.data.packed import PackedFormatError, save_embeddings  # noqa: E402
from biam.data.released import (RecordError, not_utf8_where, read_class_descriptions,  # noqa: E402
                                read_classes_trainable, read_top400, read_unseen_ids)
from biam.utils import comm  # noqa: E402
from biam.utils.ownership import FolderBusyError, FolderOwnershipError  # noqa: E402

TOOL = "extract_openimages"
SPLITS = ("train", "validation", "test")
CONFIDENCE = {"0": 0, "1": 1, "0.0": 0, "1.0": 1}


def annotation_csv(meta_dir: Path, split: str) -> Path:
    """``<split>/<split>-annotations-human-imagelabels.csv`` as the release names it, or
    ``<split>/annotations-human-imagelabels.csv``."""
    for name in (f"{split}-annotations-human-imagelabels.csv", "annotations-human-imagelabels.csv"):
        if (meta_dir / split / name).is_file():
            return meta_dir / split / name
    raise FileNotFoundError(f"{meta_dir / split}: no {split}-annotations-human-imagelabels.csv "
                            "(or annotations-human-imagelabels.csv); pass --csv FILE")


def read_annotations(path: Path, columns: dict) -> Tuple[List[str], features.SparseLabels, dict]:
    """Merge the human-verified image labels of one CSV into sparse label rows.

    Input: the CSV (header ``ImageID,Source,LabelName,Confidence``) and ``columns`` class id ->
    label column. Output: image ids in order of first appearance, their labels
    (:class:`biam.features.SparseLabels`, ``2 * Confidence - 1`` where annotated) and counts
    ``{"rows", "ignored_rows", "ignored_classes", "duplicates", "conflicts"}``.
    """
    from tqdm import tqdm

    if not path.is_file():
        raise FileNotFoundError(f"annotation CSV not found: {path}")
    order: dict = {}
    img_idx, col_idx, vals = [], [], []
    ignored_classes: dict = {}  # class id -> rows ignored
    with open(path, encoding="utf-8-sig", newline="") as fh, \
            tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=f"read {path.name}", leave=False) as bar:
        reader = csv.reader(fh)
        try:
            _read_rows(path, reader, bar, columns, order, img_idx, col_idx, vals, ignored_classes)
        except UnicodeDecodeError:
            raise RecordError(f"{path}: {not_utf8_where(path)} is not UTF-8 (the annotation CSV is read as UTF-8)") from None
    ignored_rows = sum(ignored_classes.values())
    num_cols = max(columns.values()) + 1 if columns else 0
    key = np.asarray(img_idx, dtype=np.int64) * num_cols + np.asarray(col_idx, dtype=np.int64)
    v = np.asarray(vals, dtype=np.int8)
    # One entry per (image, column); np.unique sorts keys, i.e. by image then column (CSR order).
    uniq, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    merged_max = np.full(len(uniq), -1, dtype=np.int8)
    np.maximum.at(merged_max, inverse, v)  # positive wins
    merged_min = np.ones(len(uniq), dtype=np.int8)
    np.minimum.at(merged_min, inverse, v)
    stats = {"rows": len(vals) + ignored_rows, "ignored_rows": ignored_rows, "ignored_classes": len(ignored_classes),
             "duplicates": int((counts > 1).sum()), "conflicts": int((merged_max != merged_min).sum())}
    rows = uniq // max(num_cols, 1)
    indptr = np.zeros(len(order) + 1, dtype=np.int64)
    np.add.at(indptr, rows + 1, 1)
    labels = features.SparseLabels(len(order), num_cols, np.cumsum(indptr), uniq % max(num_cols, 1), merged_max)
    return list(order), labels, stats


def _read_rows(path: Path, reader, bar, columns: dict, order: dict, img_idx: list, col_idx: list, vals: list,
               ignored_classes: dict) -> None:
    """The rows of :func:`read_annotations`' CSV into its lists (split out so that a decoding
    error anywhere in the stream is reported with the file and line)."""
    header = next(reader, None)
    need = ("ImageID", "LabelName", "Confidence")
    if header is None or any(h not in header for h in need):
        raise RecordError(f"{path}: header {header!r} lacks one of {need}")
    ci, cl, cc = (header.index(h) for h in need)
    for lineno, row in enumerate(reader, 2):
        bar.update(sum(len(x) for x in row) + len(row))
        if not row:
            continue
        if len(row) != len(header):
            raise RecordError(f"{path}: line {lineno}: {len(row)} fields, the header has {len(header)}")
        image, label, conf = row[ci].strip(), row[cl].strip(), row[cc].strip()
        if not image or "/" in image:
            raise RecordError(f"{path}: line {lineno}: field 'ImageID' {image!r} is empty or holds '/'")
        if conf not in CONFIDENCE:
            raise RecordError(f"{path}: line {lineno}, image {image!r}: field 'Confidence' is {conf!r}, expected 0 or 1")
        i = order.setdefault(image, len(order))
        col = columns.get(label)
        if col is None:
            ignored_classes[label] = ignored_classes.get(label, 0) + 1
            continue
        img_idx.append(i)
        col_idx.append(col)
        vals.append(2 * CONFIDENCE[conf] - 1)


def load_label_embeddings(args, meta_dir: Path, seen: List[str], unseen: List[str]):
    """(seen (S, D), unseen (U, D)) float32 raw rows from the released pickle or a GloVe file
    (GloVe: class names from class-descriptions.csv, multi-word names averaged)."""
    if args.embeddings:
        return emb.read_openimages_embeddings(args.embeddings, num_seen=len(seen), num_unseen=len(unseen))
    names = read_class_descriptions(args.class_descriptions or meta_dir / "class-descriptions.csv")
    missing = [c for c in seen + unseen if c not in names]
    if missing:
        raise KeyError(f"class-descriptions.csv has no name for {len(missing)} class id(s), e.g. {missing[:5]}")
    vectors = emb.build_from_glove([names[c] for c in seen + unseen], args.glove, missing=args.glove_missing)
    return vectors[: len(seen)], vectors[len(seen):]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="extract_openimages.py",
        description="Open Images v4 (2018_04) images and human-verified labels -> packed features "
                    "(VGG19 conv5_4 regions + fc7 scene), labels in {-1, 0, +1} (7186 seen, 2594 unseen) and "
                    "embeddings. Resumable; several GPUs through torchrun.")
    parser.add_argument("--split", required=True, choices=SPLITS, help="which split's CSV and images to extract")
    parser.add_argument("--meta-dir", required=True, metavar="DIR",
                        help="the 2018_04 folder: classes-trainable.txt, unseen_labels.pkl, top_400_unseen.csv, "
                             "<split>/<split>-annotations-human-imagelabels.csv (see feature_extraction/README.md)")
    parser.add_argument("--images", required=True, metavar="DIR", help="folder of the split's images, <ImageID>.jpg")
    parser.add_argument("--csv", default=None, metavar="FILE", help="annotation CSV (default: found in --meta-dir/<split>/)")
    features.add_label_embedding_arguments(
        parser,
        embeddings_help="released embedding pickle [seen (7186, 300), unseen (2594, 300)]",
        glove_help="GloVe text file; class names from class-descriptions.csv, multi-word names averaged")
    parser.add_argument("--class-descriptions", default=None, metavar="FILE",
                        help="id -> name CSV for --glove (default: --meta-dir/class-descriptions.csv)")
    features.add_extraction_arguments(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    features.check_extraction_arguments(parser, args)
    meta = Path(args.meta_dir)
    try:
        features.check_weights_available(args.weights, args.random_weights, TOOL, backbone=args.backbone)
        # Rank 0 takes --out (lock + ownership check) before joining the others: a refusal exits
        # at once, and torchrun then stops the other ranks.
        with features.claim_output(args.out, args.overwrite, TOOL):
            # Join torchrun's process group first (long timeout: ranks may finish hours apart on resume).
            comm.init_distributed(args.device, timeout_minutes=24 * 60)
            seen = read_classes_trainable(meta / "classes-trainable.txt")
            unseen = read_unseen_ids(meta / "unseen_labels.pkl")
            unseen_eval = read_top400(meta / "top_400_unseen.csv", num_unseen=len(unseen))
            overlap = set(seen) & set(unseen)
            if overlap:
                raise ValueError(f"{meta}: {len(overlap)} class id(s) are both seen and unseen, e.g. {sorted(overlap)[:3]}")
            vec_seen, vec_unseen = load_label_embeddings(args, meta, seen, unseen)
            csv_path = Path(args.csv) if args.csv else annotation_csv(meta, args.split)
            columns = {c: i for i, c in enumerate(seen + unseen)}
            ids, labels, stats = read_annotations(csv_path, columns)
            if comm.is_main_process():
                print(f"{TOOL}: {csv_path}: {stats['rows']} rows, {len(ids)} images; {stats['duplicates']} repeated "
                      f"(image, class) pairs merged, {stats['conflicts']} of them conflicting (positive wins); "
                      f"{stats['ignored_rows']} rows of {stats['ignored_classes']} classes outside both label lists ignored")
            images = Path(args.images)
            spec = features.SplitSpec(
                split=args.split, dataset="openimages", paths=[str(images / f"{i}.jpg") for i in ids], names=ids,
                labels=labels, seen=seen, unseen=unseen, unseen_eval=unseen_eval,
                extra={"source": {"tool": "feature_extraction/extract_openimages.py", "meta_dir": str(meta)}},
            )
            summary = features.run_split(spec, args, TOOL)
            if comm.is_main_process():
                save_embeddings(args.out, vec_seen, vec_unseen)
                if not summary["skipped_complete"]:
                    print(f"{TOOL}: label conflicts (positive kept): {stats['conflicts']}")
    except (features.WeightsNotFoundError, FileNotFoundError, RecordError, PackedFormatError, KeyError, ValueError,
            FolderBusyError, FolderOwnershipError, pickle.UnpicklingError) as err:
        print(f"{TOOL}: error: {err}", file=sys.stderr)
        return 2
    finally:
        comm.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
