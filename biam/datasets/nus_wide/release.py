"""The NUS-WIDE release as users hold it (docs/data_format.md), read with every record checked.

* where the release puts its files (:data:`NUS_WIDE_LAYOUT`, relative to its ``datasets/``
  folder; the converter's defaults and the synthetic writer both use this one table);
* the label lists (925 seen tags = TagList1k.txt minus the 81 concepts, then the concepts);
* the image-order pickles and the per-key HDF5 feature files (:class:`NusWideReader`);
* the released label-embedding pickle;
* the published SHA-256 of the release files (:data:`KNOWN_FILES`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import h5py
import numpy as np

from ...data.checksums import KnownFile
from ...data.wordvec import read_pickled_pair
from ...data.released import FEATURE_SHAPE, Record, RecordError, check_unique, read_field, record_error
from ...utils.safe_pickle import safe_load
from ...utils.text import read_lines

__all__ = ["NUS_WIDE_LAYOUT", "KNOWN_FILES", "nus_wide_label_names", "read_img_names", "NusWideReader",
           "read_nus_wide_embeddings"]

# Where the release puts the NUS-WIDE files, relative to its datasets/ folder.
# The converter's defaults and the synthetic writer both use this one table.
NUS_WIDE_LAYOUT = {
    "train_h5": "NUS-WIDE/features/nus_wide_train.h5",
    "test_h5": "NUS-WIDE/features/nus_wide_test.h5",
    "train_names": "NUS-WIDE/img_names.pkl",
    "test_names": "NUS-WIDE/test_img_names.pkl",
    "tags": "NUS-WIDE/NUS_WID_Tags/TagList1k.txt",
    "concepts": "NUS-WIDE/ConceptsList/Concepts81.txt",
    "embeddings": "NUS-WIDE/wiki_contexts/NUS_WIDE_pretrained_w2v_glove-wiki-gigaword-300",
}


def nus_wide_label_names(tags_path: os.PathLike, concepts_path: os.PathLike) -> Tuple[List[str], List[str], np.ndarray]:
    """Seen and unseen NUS-WIDE labels.

    Input: ``TagList1k.txt`` (T tags) and ``Concepts81.txt`` (U concepts). Output: seen names
    (the tags that are not concepts, in tag-file order; 925 for the release), unseen names (the
    concepts in file order; 81), and ``seen_tag_index`` (S,) int64, the rows of the tag list
    (and of the tag embedding matrix) that are seen.
    """
    tags = read_lines(tags_path)
    concepts = read_lines(concepts_path)
    check_unique(tags, tags_path)
    check_unique(concepts, concepts_path)
    cset = set(concepts)
    seen_idx = np.array([i for i, t in enumerate(tags) if t not in cset], dtype=np.int64)
    return [tags[i] for i in seen_idx], list(concepts), seen_idx


def read_img_names(path: os.PathLike) -> List[str]:
    """Image names from a released name pickle ``{'img_names': [...]}`` (read with safe_load)."""
    obj = safe_load(path)
    if not isinstance(obj, dict) or "img_names" not in obj:
        raise ValueError(f"{path}: expected a dict with key 'img_names', found {type(obj).__name__}"
                         + (f" with keys {sorted(obj)[:5]}" if isinstance(obj, dict) else ""))
    names = list(obj["img_names"])
    for i, n in enumerate(names):
        if not isinstance(n, str) or not n or "/" in n:
            raise ValueError(f"{path}: img_names[{i}] = {n!r}: expected a non-empty str without '/'")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"{path}: image name {dup!r} appears more than once")
    return names


class NusWideReader:
    """Records of one released NUS-WIDE feature file, in the order of its name pickle.

    Args:
        h5_path: ``nus_wide_train.h5`` or ``nus_wide_test.h5``.
        names: the image names in order (from :func:`read_img_names`).
        num_seen, num_unseen: S and U (925 and 81 for the release).
        split: ``"train"`` (labels = ``-labels`` (S) then ``-labels_81`` (U)) or ``"test"``
            (labels = ``-labels`` (S+U); its unseen part must equal ``-labels_81`` when present).

    ``len()`` is the number of images; :meth:`records` yields ``(name, features (512, 196)
    float32, labels (S+U,) int8)`` from image ``start`` on.
    """

    def __init__(self, h5_path: os.PathLike, names: Sequence[str], *, num_seen: int, num_unseen: int, split: str):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.path = Path(h5_path)
        if not self.path.is_file():
            raise FileNotFoundError(f"NUS-WIDE feature file not found: {self.path}")
        self.names = list(names)
        self.num_seen = num_seen
        self.num_unseen = num_unseen
        self.split = split

    def __len__(self) -> int:
        return len(self.names)

    def read(self, f: h5py.File, name: str) -> Record:
        """One checked record of the open file ``f``."""
        S, U = self.num_seen, self.num_unseen
        feats = read_field(f, self.path, name, "features", FEATURE_SHAPE, "features")
        if self.split == "train":
            seen = read_field(f, self.path, name, "labels", (S,), "labels")
            unseen = read_field(f, self.path, name, "labels_81", (U,), "labels")
            labels = np.concatenate([seen, unseen])
        else:
            labels = read_field(f, self.path, name, "labels", (S + U,), "labels")
            if f"{name}-labels_81" in f:
                l81 = read_field(f, self.path, name, "labels_81", (U,), "labels")
                if not np.array_equal(l81, labels[S:]):
                    col = int(np.flatnonzero(l81 != labels[S:])[0])
                    raise record_error(self.path, name, "labels_81",
                               f"unseen column {col} is {l81[col]} but '-labels' column {S + col} is {labels[S + col]}")
        return name, feats, labels

    def records(self, start: int = 0) -> Iterator[Record]:
        try:
            f = h5py.File(self.path, "r")
        except OSError as err:
            raise RecordError(f"{self.path}: cannot open HDF5 file: {err}") from err
        with f:
            for name in self.names[start:]:
                yield self.read(f, name)



def read_nus_wide_embeddings(path: os.PathLike, seen_tag_index: np.ndarray, num_tags: Optional[int] = None,
                             num_concepts: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """The released NUS-WIDE embedding pickle ``[tags (T, D), concepts (U, D)]``.

    Input: the pickle path; ``seen_tag_index`` (S,) rows of the tag matrix that are seen (from
    :func:`nus_wide_label_names`); optional expected T and U.
    Output: ``(seen (S, D), unseen (U, D))`` float32, raw rows.
    """
    tags, concepts = read_pickled_pair(path, ("tags", "concepts"), (num_tags, num_concepts))
    seen_tag_index = np.asarray(seen_tag_index, dtype=np.int64)
    if len(seen_tag_index) and seen_tag_index.max() >= len(tags):
        raise ValueError(f"{path}: tag matrix has {len(tags)} rows, the tag list needs {seen_tag_index.max() + 1}")
    return tags[seen_tag_index], concepts



# SHA-256 and size of the release files, relative to the datasets/ folder, computed from the
# files of the original release (``biam-checksums --root datasets``; docs/reliability.md).
KNOWN_FILES = {
    "NUS-WIDE/NUS_WID_Tags/TagList1k.txt": KnownFile(
        "fc676bfd97f4319a227b0ccf2996b76d7403fc180ff529e6851d53c02997670b", 8121, "NUS-WIDE 1000 tags"),
    "NUS-WIDE/ConceptsList/Concepts81.txt": KnownFile(
        "439aff2804e6104a53b7f9e4a7d634ed6e6303733d8a482260b240769ae9bf42", 612, "NUS-WIDE 81 concepts"),
    "NUS-WIDE/wiki_contexts/NUS_WIDE_pretrained_w2v_glove-wiki-gigaword-300": KnownFile(
        "ccedb1c497736aff7d0d7b6cdd40e0dd2c0ffb2b6fc24bac1c41542aa7c8f376", 1297409,
        "NUS-WIDE label embeddings (pickle)"),
    "NUS-WIDE/test_img_names.pkl": KnownFile(
        "2d491db983948cfde03fdb0ce83aaba779138f9fea280cc64a34fa5337e8731a", 3936532,
        "NUS-WIDE test image order (pickle)"),
}
