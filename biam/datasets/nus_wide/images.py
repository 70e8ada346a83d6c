"""The NUS-WIDE image release (image lists, tags, ground truth) -> split specs for feature extraction.

Used by ``python feature_extraction/extract_nus_wide.py`` (``biam-extract-nus-wide``).
The expected release layout is described in datasets/NUS-WIDE/README.md. Labels are +1/-1 in
the 925 + 81 column order: seen = the tags of TagList1k.txt that are not concepts, in tag-file
order (from Train_Tags1k.dat / Test_Tags1k.dat), then the 81 concepts of Concepts81.txt in file
order (from the ground-truth files Labels_<concept>_<Split>.txt).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ...data import wordvec as emb
from ...data.released import RecordError
from ...data.splits import SplitSpec
from ...utils.text import read_lines
from .release import read_nus_wide_embeddings

SPLIT_FILES = {"train": ("TrainImagelist.txt", "Train_Tags1k.dat", "Train"),
               "test": ("TestImagelist.txt", "Test_Tags1k.dat", "Test")}
# The ground-truth archive unpacks to Groundtruth/TrainTestLabels; a flattened copy is accepted too.
GROUNDTRUTH_DIRS = ("Groundtruth/TrainTestLabels", "TrainTestLabels")


def parse_image_list(path: Path, flickr: Path) -> Tuple[List[str], List[str]]:
    """``ImageList/<Split>Imagelist.txt`` -> (image files, image names), one per line in order.

    Lines look like ``actor\\0001_2124494179.jpg`` (backslashes as in the release; a full
    ``C:\\...\\Flickr\\actor\\...`` path is cut after its last ``Flickr`` part). The file is
    ``flickr/actor/0001_2124494179.jpg``; the name is the relative path with '/' -> '_'
    (``actor_0001_2124494179.jpg``), as in the released feature files.
    """
    paths, names = [], []
    for lineno, line in enumerate(read_lines(path), 1):
        parts = [p for p in line.replace("\\", "/").split("/") if p]
        if "Flickr" in parts:
            parts = parts[len(parts) - parts[::-1].index("Flickr"):]
        if not parts or any(p in (".", "..") for p in parts):
            raise RecordError(f"{path}: line {lineno}: field 'image path' {line!r} is not a relative image path")
        paths.append(str(flickr.joinpath(*parts)))
        names.append("_".join(parts))
    return paths, names


def read_binary_matrix(path: Path, rows: int, cols: int, names: Sequence[str]) -> np.ndarray:
    """A 0/1 text matrix (one image per line, values separated by tabs/spaces) -> (rows, cols) int8.

    Errors name the file, the line, the image and the field (column) at fault.
    """
    from tqdm import tqdm

    if not path.is_file():
        raise FileNotFoundError(f"tag matrix not found: {path}")
    out = np.empty((rows, cols), dtype=np.int8)
    n = 0
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(tqdm(fh, total=rows, desc=f"read {path.name}", unit="row", leave=False), 1):
            # Values are single digits: dropping the separators leaves one byte per column.
            digits = raw.translate(None, b" \t\r\n")
            if not digits:
                continue
            if n >= rows:
                raise RecordError(f"{path}: more than {rows} rows (the image list has {rows} images)")
            row = np.frombuffer(digits, dtype=np.uint8).astype(np.int16) - ord("0")
            if len(row) != cols or not np.isin(row, (0, 1)).all():
                bad = int(np.flatnonzero(~np.isin(row, (0, 1)))[0]) if len(row) == cols else None
                raise RecordError(
                    f"{path}: line {lineno}, image {names[n]!r}: "
                    + (f"{len(raw.split())} values, expected {cols} (one per tag)" if bad is None
                       else f"field 'tag {bad}' is {raw.split()[bad].decode(errors='replace')!r}, expected 0 or 1"))
            out[n] = row
            n += 1
    if n != rows:
        raise RecordError(f"{path}: {n} rows, the image list has {rows} images")
    return out


def read_concept_column(path: Path, rows: int, names: Sequence[str]) -> np.ndarray:
    """``Labels_<concept>_<Split>.txt`` (one 0/1 a line) -> (rows,) int8."""
    if not path.is_file():
        raise FileNotFoundError(f"ground-truth file not found: {path}")
    lines = read_lines(path)
    if len(lines) != rows:
        raise RecordError(f"{path}: {len(lines)} lines, the image list has {rows} images")
    out = np.empty(rows, dtype=np.int8)
    for i, v in enumerate(lines):
        if v not in ("0", "1"):
            raise RecordError(f"{path}: line {i + 1}, image {names[i]!r}: field 'label' is {v!r}, expected 0 or 1")
        out[i] = int(v)
    return out


def groundtruth_dir(root: Path) -> Path:
    for rel in GROUNDTRUTH_DIRS:
        if (root / rel).is_dir():
            return root / rel
    raise FileNotFoundError(f"{root}: no ground-truth folder ({' or '.join(GROUNDTRUTH_DIRS)}); "
                            "see datasets/NUS-WIDE/README.md")


def build_split(root: Path, split: str, tags_total: int, seen_idx: np.ndarray, concepts: List[str],
                seen: List[str]) -> SplitSpec:
    """Image files, names and (N, S + U) int8 +1/-1 labels of one split of the release."""
    list_file, tag_file, suffix = SPLIT_FILES[split]
    paths, names = parse_image_list(root / "ImageList" / list_file, root / "Flickr")
    n = len(names)
    tags = read_binary_matrix(root / "NUS_WID_Tags" / tag_file, n, tags_total, names)
    gt = groundtruth_dir(root)
    unseen = np.stack([read_concept_column(gt / f"Labels_{c}_{suffix}.txt", n, names) for c in concepts], axis=1)
    labels = np.concatenate([tags[:, seen_idx], unseen], axis=1).astype(np.int8) * 2 - 1
    return SplitSpec(
        split=split, dataset="nus_wide", paths=paths, names=names, labels=labels, seen=seen, unseen=concepts,
        extra={"source": {"tool": "feature_extraction/extract_nus_wide.py", "nus_root": str(root)}},
    )


def load_label_embeddings(tags_path: Path, seen_idx: np.ndarray, seen: List[str], concepts: List[str], *,
                          embeddings: Optional[str] = None, glove: Optional[str] = None, glove_missing: str = "error"):
    """(seen (S, D), unseen (U, D)) float32 raw rows from the released pickle (``embeddings``) or
    a GloVe text file (``glove``; ``glove_missing`` as :func:`biam.data.wordvec.build_from_glove`)."""
    if embeddings:
        return read_nus_wide_embeddings(embeddings, seen_idx, num_tags=len(read_lines(tags_path)),
                                        num_concepts=len(concepts))
    vectors = emb.build_from_glove(seen + concepts, glove, missing=glove_missing)
    return vectors[: len(seen)], vectors[len(seen):]
