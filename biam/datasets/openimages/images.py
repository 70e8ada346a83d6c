"""Open Images v4 (2018_04) human-verified image labels -> sparse label rows for feature extraction.

Used by ``python feature_extraction/extract_openimages.py`` (``biam-extract-openimages``).
Labels: columns are the 7186 ``classes-trainable.txt`` ids (seen) then the 2594
``unseen_labels.pkl`` ids (unseen); an annotated (image, class) pair gets ``2 * Confidence - 1``
(+1 verified present, -1 verified absent), every other pair 0 (unknown). Repeated rows of one
(image, class) pair are merged; when they disagree the positive wins (one verifier saw the
class) and the conflict is counted in the summary. Classes in neither list are ignored and
counted. Images in the CSV without a file ``<images>/<ImageID>.jpg`` go to the unreadable report.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from ...data import wordvec as emb
from ...data.released import RecordError
from ...data.splits import SparseLabels
from ...utils.text import not_utf8_where
from .release import read_class_descriptions, read_openimages_embeddings

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


def read_annotations(path: Path, columns: dict) -> Tuple[List[str], SparseLabels, dict]:
    """Merge the human-verified image labels of one CSV into sparse label rows.

    Input: the CSV (header ``ImageID,Source,LabelName,Confidence``) and ``columns`` class id ->
    label column. Output: image ids in order of first appearance, their labels
    (:class:`biam.SparseLabels`, ``2 * Confidence - 1`` where annotated) and counts
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
    labels = SparseLabels(len(order), num_cols, np.cumsum(indptr), uniq % max(num_cols, 1), merged_max)
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


def load_label_embeddings(meta_dir: Path, seen: List[str], unseen: List[str], *, embeddings: Optional[str] = None,
                          glove: Optional[str] = None, glove_missing: str = "error",
                          class_descriptions: Optional[str] = None):
    """(seen (S, D), unseen (U, D)) float32 raw rows from the released pickle (``embeddings``) or a
    GloVe text file (``glove``: class names from ``class_descriptions``, by default
    ``meta_dir/class-descriptions.csv``, multi-word names averaged)."""
    if embeddings:
        return read_openimages_embeddings(embeddings, num_seen=len(seen), num_unseen=len(unseen))
    names = read_class_descriptions(class_descriptions or meta_dir / "class-descriptions.csv")
    missing = [c for c in seen + unseen if c not in names]
    if missing:
        raise KeyError(f"class-descriptions.csv has no name for {len(missing)} class id(s), e.g. {missing[:5]}")
    vectors = emb.build_from_glove([names[c] for c in seen + unseen], glove, missing=glove_missing)
    return vectors[: len(seen)], vectors[len(seen):]
