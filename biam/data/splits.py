"""What a feature extractor is asked to write for one split: image files, names and label rows
(:class:`SplitSpec`), the label rows kept sparse where they would not fit dense
(:class:`SparseLabels`). Built by the dataset folders' image-release readers
(``biam/datasets/*/images.py``, ``annotations.py``) and read by :mod:`biam.extraction`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

__all__ = ["SparseLabels", "SplitSpec"]


class SparseLabels:
    """Label rows kept sparse (Open Images train: 1.7M images x 9780 labels would be 17 GB dense).

    Args: ``num_images``, ``num_labels``; ``indptr`` (N + 1,) int64 and ``cols`` (nnz,) int64,
    ``vals`` (nnz,) int8 in CSR order (image i's entries at ``indptr[i]:indptr[i+1]``).
    ``labels[idx]`` with an int array ``idx`` (n,) gives dense int8 rows (n, num_labels), 0 where
    nothing is stored.
    """

    def __init__(self, num_images: int, num_labels: int, indptr, cols, vals):
        self.shape = (int(num_images), int(num_labels))
        self.indptr = np.asarray(indptr, dtype=np.int64)
        self.cols = np.asarray(cols, dtype=np.int64)
        self.vals = np.asarray(vals, dtype=np.int8)
        if self.indptr.shape != (num_images + 1,) or self.indptr[-1] != len(self.cols) or len(self.cols) != len(self.vals):
            raise ValueError("SparseLabels: indptr/cols/vals do not describe a CSR matrix")

    def __getitem__(self, idx):
        idx = np.atleast_1d(np.asarray(idx, dtype=np.int64))
        out = np.zeros((len(idx), self.shape[1]), dtype=np.int8)
        for r, i in enumerate(idx):
            a, b = self.indptr[i], self.indptr[i + 1]
            out[r, self.cols[a:b]] = self.vals[a:b]
        return out


@dataclass
class SplitSpec:
    """What to extract for one split.

    ``paths`` (N,) image files; ``names`` (N,) unique image names without '/'; ``labels``
    (N, S + U) int8 in {-1, 0, +1}, seen columns first: a numpy array or any object with
    ``.shape`` whose ``labels[int64 index array]`` gives dense rows (e.g. :class:`SparseLabels`); ``seen``/``unseen`` label names;
    ``unseen_eval`` evaluated unseen indices (None: all); ``dataset`` manifest dataset name;
    ``extra`` more manifest fields (sources of the labels).
    """

    split: str
    dataset: str
    paths: Sequence[str]
    names: Sequence[str]
    labels: "object"
    seen: Sequence[str]
    unseen: Sequence[str]
    unseen_eval: Optional[Sequence[int]] = None
    extra: Optional[dict] = None

    def check(self) -> None:
        n = len(self.paths)
        shape = tuple(self.labels.shape)
        if len(self.names) != n or shape != (n, len(self.seen) + len(self.unseen)):
            raise ValueError(f"split '{self.split}': {n} paths, {len(self.names)} names, labels of shape "
                             f"{shape}; expected ({n}, {len(self.seen) + len(self.unseen)})")
        seen_names = {}
        for i, name in enumerate(self.names):
            if not name or "/" in name:
                raise ValueError(f"split '{self.split}': image {self.paths[i]}: field 'name' {name!r} is empty or holds '/'")
            if name in seen_names:
                raise ValueError(f"split '{self.split}': image name {name!r} occurs twice "
                                 f"({self.paths[seen_names[name]]} and {self.paths[i]})")
            seen_names[name] = i

