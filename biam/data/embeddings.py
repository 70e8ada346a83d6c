"""Label embeddings: the released pickles' shape, GloVe text files, and our .npy/.npz files.

Everything returns raw float32 rows; L2-normalising is done where they are used
(:func:`biam.data.packed.l2_normalize`). Nothing here writes a pickle.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..utils.io import atomic_open
from ..utils.safe_pickle import safe_load

__all__ = [
    "read_pickled_pair",
    "label_words",
    "build_from_glove",
    "save_embedding_array",
    "load_embedding_array",
]


def _check_matrix(arr, rows: Optional[int], source: str, what: str) -> np.ndarray:
    if not isinstance(arr, np.ndarray) or arr.ndim != 2 or arr.dtype.kind != "f":
        desc = f"{type(arr).__name__} {getattr(arr, 'shape', '')} {getattr(arr, 'dtype', '')}".strip()
        raise ValueError(f"{source}: {what}: expected a 2-d float array, found {desc}")
    if rows is not None and arr.shape[0] != rows:
        raise ValueError(f"{source}: {what}: {arr.shape[0]} rows, expected {rows}")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise ValueError(f"{source}: {what}: row {int(np.flatnonzero(bad)[0])} is not finite")
    return arr.astype(np.float32)


def read_pickled_pair(path: os.PathLike, what: Tuple[str, str], rows: Tuple[Optional[int], Optional[int]]):
    """A released embedding pickle holding a list of two matrices of the same width.

    ``what`` names the two items for messages (e.g. ("tags", "concepts")); ``rows`` are their
    expected row counts (None: any). Output: the two float32 matrices.
    """
    obj = safe_load(path)
    if not isinstance(obj, (list, tuple)) or len(obj) != 2:
        raise ValueError(f"{path}: expected a list [{what[0]}, {what[1]}] of two arrays, found {type(obj).__name__}")
    first = _check_matrix(obj[0], rows[0], str(path), f"{what[0]} (item 0)")
    second = _check_matrix(obj[1], rows[1], str(path), f"{what[1]} (item 1)")
    if first.shape[1] != second.shape[1]:
        raise ValueError(f"{path}: {what[0]} dim {first.shape[1]} != {what[1]} dim {second.shape[1]}")
    return first, second






_SPLIT = re.compile(r"[\s_\-]+")


def label_words(label: str) -> List[str]:
    """Lower-case words of a label: split on whitespace, '_' and '-' ("Ice_cream" -> ["ice", "cream"])."""
    return [w for w in _SPLIT.split(label.lower()) if w]


def _read_glove(path: Path, wanted: set) -> Tuple[Dict[str, np.ndarray], int]:
    """Vectors of the ``wanted`` words of a GloVe text file (one ``word v1 ... vD`` a line)."""
    from tqdm import tqdm

    found: Dict[str, np.ndarray] = {}
    dim = None
    size = path.stat().st_size
    with open(path, "rb") as fh, tqdm(total=size, unit="B", unit_scale=True, desc=f"read {path.name}",
                                       disable=size < (64 << 20)) as bar:
        for lineno, raw in enumerate(fh, 1):
            bar.update(len(raw))
            try:
                line = raw.decode("utf-8").rstrip("\n").rstrip("\r")
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}: line {lineno}: byte 0x{raw[err.start]:02x} is not UTF-8 "
                                 "(GloVe files are read as UTF-8)") from None
            if not line:
                continue
            # Words may contain spaces in some GloVe files, so take the last D fields as numbers.
            parts = line.split(" ")
            if dim is None:
                if lineno == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                    continue  # word2vec-style header "count dim"
                dim = len(parts) - 1
            if len(parts) < dim + 1:
                raise ValueError(f"{path}: line {lineno}: {len(parts) - 1} numbers, expected {dim}")
            word = " ".join(parts[: len(parts) - dim])
            if word in wanted and word not in found:
                try:
                    vec = np.asarray(parts[len(parts) - dim:], dtype=np.float32)
                except ValueError:
                    raise ValueError(f"{path}: line {lineno} (word {word!r}): not a vector of numbers") from None
                found[word] = vec
    if dim is None:
        raise ValueError(f"{path}: no vectors in file")
    return found, dim


def build_from_glove(label_names: Sequence[str], glove_txt_path: os.PathLike, *, missing: str = "error") -> np.ndarray:
    """(C, D) float32 label embeddings from a GloVe text file.

    A label's vector is the mean of its words' vectors (:func:`label_words`). ``missing``:
    ``"error"`` raises one ``KeyError`` listing every label with a word the file lacks;
    ``"skip-word"`` averages the words that are present (a label with none is still an error);
    ``"zero"`` averages present words and gives labels with no known word a zero row (such a
    label then scores the same for every image; listed in a warning).
    """
    import warnings

    if missing not in ("error", "zero", "skip-word"):
        raise ValueError(f"missing must be 'error', 'zero' or 'skip-word', got {missing!r}")
    path = Path(glove_txt_path)
    if not path.is_file():
        raise FileNotFoundError(f"GloVe file not found: {path}")
    words = [label_words(n) for n in label_names]
    for name, ws in zip(label_names, words):
        if not ws:
            raise ValueError(f"label {name!r} has no words")
    vectors, dim = _read_glove(path, {w for ws in words for w in ws})
    lacking = {name: [w for w in ws if w not in vectors] for name, ws in zip(label_names, words)}
    lacking = {k: v for k, v in lacking.items() if v}
    if lacking and missing == "error":
        listed = "; ".join(f"{k!r}: {', '.join(v)}" for k, v in lacking.items())
        raise KeyError(f"{path}: {len(lacking)} label(s) have words not in the file: {listed} "
                       "(use missing='skip-word' or 'zero' to fall back)")
    out = np.zeros((len(label_names), dim), dtype=np.float32)
    empty = []
    for i, (name, ws) in enumerate(zip(label_names, words)):
        have = [vectors[w] for w in ws if w in vectors]
        if have:
            out[i] = np.mean(have, axis=0)
        else:
            empty.append(name)
    if empty:
        if missing == "skip-word":
            raise KeyError(f"{path}: no word of label(s) {empty} is in the file (use missing='zero' for zero rows)")
        warnings.warn(f"{path}: label(s) {empty} have no known word; their embedding rows are zero", stacklevel=2)
    return out


def save_embedding_array(path: os.PathLike, arrays) -> Path:
    """Save one array (``.npy``) or a dict of named arrays (``.npz``) of float32; never a pickle."""
    path = Path(path)
    with atomic_open(path, "wb") as fh:
        if path.suffix == ".npy":
            np.save(fh, np.asarray(arrays, dtype=np.float32), allow_pickle=False)
        elif path.suffix == ".npz":
            if not isinstance(arrays, dict):
                raise TypeError(f"{path}: .npz needs a dict of named arrays")
            np.savez(fh, **{k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()})
        else:
            raise ValueError(f"{path}: use a .npy or .npz file name")
    return path


def load_embedding_array(path: os.PathLike, key: Optional[str] = None) -> np.ndarray:
    """Load a (C, D) float32 array from ``.npy``, or array ``key`` of an ``.npz`` (pickles refused)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embedding file not found: {path}")
    if path.suffix == ".npy":
        return _check_matrix(np.load(path, allow_pickle=False), None, str(path), "array")
    with np.load(path, allow_pickle=False) as data:
        if key is None:
            if len(data.files) != 1:
                raise KeyError(f"{path}: holds arrays {data.files}; say which one (key=...)")
            key = data.files[0]
        if key not in data.files:
            raise KeyError(f"{path}: no array {key!r} (has {data.files})")
        return _check_matrix(data[key], None, str(path), key)
