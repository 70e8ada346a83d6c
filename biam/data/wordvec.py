"""Label embeddings: the one word-vector reader, and the embedding-matrix files we read and write.

Every label embedding of the package comes from here: training data (``extract_own.py``, the
NUS-WIDE and Open Images extractors with ``--glove``) and ``biam-predict`` embed labels through
:func:`label_embeddings`, so the same labels and file give the same matrix everywhere. Besides
the text files: the released embedding pickles (:func:`read_pickled_pair`) and our ``.npy`` /
``.npz`` matrices (:func:`save_embedding_array`, :func:`load_embedding_array`).

Two text formats are read, UTF-8, one word a line, values separated by single spaces:

* **GloVe** (``glove.6B.300d.txt``, ``glove.840B.300d.txt``): ``word v1 ... vd``, no header.
* **fastText / word2vec text** (``cc.en.300.vec``, ``wiki-news-300d-1M.vec``): a first line
  ``count dim``, then ``word v1 ... vd`` (fastText ends each line with a space; that is fine).

Files are streamed line by line and only the vectors of the words asked for are kept, so a
5 GB GloVe file needs memory for a few hundred vectors, not for the file. Reading stops early
once every word asked for has been found as written. Numbers are parsed only on the lines of
the words asked for; every line's field count is checked against the width, so a truncated or
mixed-width file is an error naming the file and line.

A label's embedding (:func:`label_embeddings`) is the mean of its words' vectors (the label is
split on spaces, ``_`` and ``-``: ``"ice_cream"`` -> ``ice``, ``cream``), then L2-normalised.
A word is looked up as written first, then lower-cased, then in any other case the file holds
(``"Paris"`` finds ``paris`` in the lower-cased GloVe 6B files; ``"dog"`` finds ``Dog`` in a
cased file that lacks ``dog``). Labels with a word the file lacks are one error listing all
of them, with the file.

Values are checked, not trusted: a non-finite value, a word vector whose norm does not fit in
float32 (finite but huge values; the norm is computed in float64) and a label whose mean vector
is zero are refused, naming the file, the label and the word (a float32 norm would overflow to
infinity and silently store an all-zero embedding).
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..utils.io import atomic_open
from ..utils.safe_pickle import safe_load

__all__ = [
    "WordVectorError",
    "OutOfVocabularyError",
    "FORMATS",
    "MISSING",
    "split_label",
    "label_words",
    "read_word_vectors",
    "label_embeddings",
    "build_from_glove",
    "normalize_rows",
    "read_pickled_pair",
    "save_embedding_array",
    "load_embedding_array",
]

# "auto": a first line of exactly two integers is a fastText/word2vec header, anything else is GloVe.
FORMATS = ("auto", "glove", "vec")
# Labels with a word the file lacks: an error, the mean of the known words, or (no word known) a zero row.
MISSING = ("error", "skip-word", "zero")
_F32_MAX = float(np.finfo(np.float32).max)

_SPLIT = re.compile(r"[\s_\-]+")


class WordVectorError(ValueError):
    """A word-vector file is missing, not UTF-8 or malformed (message names the file and line)."""


class OutOfVocabularyError(WordVectorError, KeyError):
    """Labels whose words the word-vector file lacks; ``.labels`` maps each label to its missing words.

    Also a KeyError: :func:`build_from_glove` documented a KeyError for missing words."""

    def __init__(self, message: str, labels: Dict[str, List[str]]):
        super().__init__(message)
        self.labels = labels

    def __str__(self) -> str:
        return str(self.args[0])


def split_label(label: str) -> List[str]:
    """Words of a label, case kept: split on whitespace, '_' and '-' ("Ice_cream" -> ["Ice", "cream"])."""
    return [w for w in _SPLIT.split(label) if w]


def label_words(label: str) -> List[str]:
    """Lower-case words of a label ("Ice_cream-Cone big" -> ["ice", "cream", "cone", "big"])."""
    return [w.lower() for w in split_label(label)]


def _is_int(s: str) -> bool:
    return s.isascii() and s.isdigit()


def _looks_numeric(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


class _Wanted:
    """The words asked for and what was found for them: exact hits, and the best other-case hit
    per lower-cased form (lower-case spelling preferred, then the first in file order)."""

    def __init__(self, words: Iterable[str]):
        self.exact = set(words)
        self.folded = {w.lower() for w in self.exact}
        self.found: Dict[str, np.ndarray] = {}
        self.by_fold: Dict[str, Tuple[int, np.ndarray]] = {}

    def wants(self, word: str) -> bool:
        return (word in self.exact and word not in self.found) or word.lower() in self.folded

    def add(self, word: str, vec: np.ndarray) -> None:
        if word in self.exact and word not in self.found:
            self.found[word] = vec
        fold = word.lower()
        if fold in self.folded:
            rank = 0 if word == fold else 1
            if fold not in self.by_fold or rank < self.by_fold[fold][0]:
                self.by_fold[fold] = (rank, vec)

    def done(self) -> bool:
        return len(self.found) == len(self.exact)

    def lookup(self, word: str) -> Optional[np.ndarray]:
        if word in self.found:
            return self.found[word]
        hit = self.by_fold.get(word.lower())
        return None if hit is None else hit[1]


def read_word_vectors(path: os.PathLike, words: Iterable[str], *, fmt: str = "auto",
                      progress: bool = True) -> Tuple[Dict[str, np.ndarray], int]:
    """Vectors of ``words`` from a GloVe or fastText ``.vec`` text file.

    Input: the file, the words wanted (case as written), ``fmt`` one of :data:`FORMATS`.
    Output: ``({word: (d,) float32}, d)`` holding every wanted word the file has, matched as
    written, else lower-cased, else in another case (the key is the word as asked). The first
    line of a word that occurs twice wins. Raises :class:`WordVectorError` naming the file and
    line for a line that is not UTF-8, has the wrong number of values, or (for a wanted word)
    values that are not finite numbers; for a ``.vec`` file whose header count disagrees with
    its lines (checked when the whole file was read).
    """
    from tqdm import tqdm

    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    path = Path(path)
    if not path.is_file():
        raise WordVectorError(f"word-vector file not found: {path}")
    wanted = _Wanted(words)
    dim: Optional[int] = None
    header_count: Optional[int] = None
    vectors = 0
    read_all = True
    size = path.stat().st_size
    try:
        fh = open(path, "rb")
    except OSError as err:
        raise WordVectorError(f"{path}: cannot read the word-vector file ({err.strerror or err})") from None
    with fh, tqdm(total=size, unit="B", unit_scale=True, desc=f"read {path.name}",
                                       disable=not progress or size < (64 << 20)) as bar:
        for lineno, raw in enumerate(fh, 1):
            bar.update(len(raw))
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise WordVectorError(f"{path}: line {lineno}: not UTF-8 ({err.reason} at byte {err.start})") from None
            if lineno == 1 and line.startswith("\ufeff"):
                line = line[1:]
            # fastText ends lines with " \n"; Windows copies end with "\r\n".
            line = line.rstrip("\r\n").rstrip(" ")
            if not line:
                continue
            parts = line.split(" ")
            if lineno == 1 and fmt != "glove":
                if len(parts) == 2 and _is_int(parts[0]) and _is_int(parts[1]) and int(parts[1]) > 0:
                    header_count, dim = int(parts[0]), int(parts[1])
                    continue
                if fmt == "vec":
                    raise WordVectorError(f"{path}: line 1: expected the .vec header 'count dim', found {line[:80]!r}")
            if dim is None:
                dim = len(parts) - 1
                if dim < 1:
                    raise WordVectorError(f"{path}: line {lineno}: a word without values ({line[:80]!r})")
            extra = len(parts) - 1 - dim
            # A few GloVe 840B words hold spaces, so a longer line is a spaced word -- unless the
            # extra leading fields are numbers: then the line has more values than the width.
            if extra < 0 or (extra > 0 and all(_looks_numeric(p) for p in parts[1:1 + extra])):
                raise WordVectorError(f"{path}: line {lineno}: {len(parts) - 1} values after the word "
                                      f"{parts[0]!r}, expected {dim} (the width of "
                                      f"{'the header' if header_count is not None else 'line 1'})")
            vectors += 1
            word = " ".join(parts[: 1 + extra])
            if wanted.wants(word):
                try:
                    with np.errstate(over="ignore"):  # a value past float32 becomes inf, refused below
                        vec = np.asarray(parts[1 + extra:], dtype=np.float32)
                except ValueError:
                    raise WordVectorError(f"{path}: line {lineno} (word {word!r}): values are not numbers") from None
                if not np.isfinite(vec).all():
                    raise WordVectorError(f"{path}: line {lineno} (word {word!r}): values are not finite")
                wanted.add(word, vec)
                if wanted.done():
                    read_all = False
                    break
    if dim is None:
        raise WordVectorError(f"{path}: no vectors in the file")
    if read_all and header_count is not None and header_count != vectors:
        raise WordVectorError(f"{path}: the header announces {header_count} vectors, the file holds {vectors} "
                              "(truncated download?)")
    out = {}
    for w in wanted.exact:
        vec = wanted.lookup(w)
        if vec is not None:
            out[w] = vec
    return out, dim


def _overflowing(vec: np.ndarray) -> Optional[float]:
    """The float64 norm of ``vec`` when it does not fit in float32, else None."""
    norm = float(np.linalg.norm(vec.astype(np.float64)))
    return norm if norm > _F32_MAX else None


def label_embeddings(labels: Sequence[str], path: os.PathLike, *, fmt: str = "auto", missing: str = "error",
                     normalize: bool = True, progress: bool = True) -> np.ndarray:
    """(C, d) float32 embeddings of ``labels`` from a word-vector file.

    Each label is split into words (:func:`split_label`), its row is the mean of their vectors
    (lookup as in :func:`read_word_vectors`), then L2-normalised (``normalize=False`` keeps the
    mean). ``missing`` (:data:`MISSING`): ``"error"`` raises :class:`OutOfVocabularyError`
    listing every label with a missing word (and which words); ``"skip-word"`` averages the
    words the file has (a label with none is still that error); ``"zero"`` averages the known
    words and gives a label with no known word a zero row, with a warning (it then scores the
    same for every image). Raises :class:`WordVectorError` naming the file, label and words for
    a label without words, a word vector whose norm overflows float32, or a zero mean vector.
    """
    if missing not in MISSING:
        raise ValueError(f"missing must be one of {MISSING}, got {missing!r}")
    words = []
    for label in labels:
        ws = split_label(label)
        if not ws:
            raise WordVectorError(f"label {label!r} has no words (it is empty or only '_', '-' and spaces)")
        words.append(ws)
    vectors, dim = read_word_vectors(path, {w for ws in words for w in ws}, fmt=fmt, progress=progress)
    lacking = {}
    for label, ws in zip(labels, words):
        miss = [w for w in ws if w not in vectors]
        if miss and (missing == "error" or len(miss) == len(ws) and missing == "skip-word"):
            lacking[label] = miss
    if lacking:
        listed = "; ".join(f"{label!r} (missing: {', '.join(m)})" if len(split_label(label)) > 1 else repr(label)
                           for label, m in lacking.items())
        fallback = "" if missing != "error" else ", or allow labels with missing words (missing 'skip-word' or 'zero')"
        raise OutOfVocabularyError(
            f"{path}: {len(lacking)} of {len(labels)} labels are not in the word-vector file (looked up as written, "
            f"lower-cased and in any case): {listed}. Rename these labels to words the file has, or use a larger "
            f"word-vector file{fallback}", lacking)
    out = np.zeros((len(labels), dim), dtype=np.float32)
    empty = []
    for i, (label, ws) in enumerate(zip(labels, words)):
        have = [w for w in ws if w in vectors]
        if not have:
            empty.append(label)
            continue
        for w in have:
            norm = _overflowing(vectors[w])
            if norm is not None:
                raise WordVectorError(f"{path}: label {label!r}: the vector of word {w!r} has norm {norm:.3g}, "
                                      "beyond float32 (finite but huge values); fix or replace the file")
        mean = np.mean([vectors[w] for w in have], axis=0)
        mean64 = np.mean([vectors[w].astype(np.float64) for w in have], axis=0)
        if not np.isfinite(mean).all():  # float32 sum overflowed although every vector fits
            mean = mean64.astype(np.float32)
        if not np.any(mean64):
            raise WordVectorError(f"{path}: label {label!r} gets a zero vector (word(s) {', '.join(map(repr, have))}: "
                                  "their vectors are zero or cancel); it would score the same for every image")
        out[i] = mean
    if empty:
        warnings.warn(f"{path}: label(s) {empty} have no known word; their embedding rows are zero", stacklevel=2)
    if normalize:
        known = [i for i, ws in enumerate(words) if any(w in vectors for w in ws)]  # zero rows stay zero
        out[known] = normalize_rows(out[known], str(path), [labels[i] for i in known])
    return out


def build_from_glove(label_names: Sequence[str], glove_txt_path: os.PathLike, *, missing: str = "error") -> np.ndarray:
    """(C, D) float32 raw (not normalised) label embeddings from a GloVe text file.

    The same path as :func:`label_embeddings` (``normalize=False``), with its older contract:
    a missing file is a FileNotFoundError, and missing words are one KeyError listing
    ``'label': words`` for every label (an :class:`OutOfVocabularyError`).
    """
    path = Path(glove_txt_path)
    if not path.is_file():
        raise FileNotFoundError(f"GloVe file not found: {path}")
    try:
        return label_embeddings(label_names, path, fmt="auto", missing=missing, normalize=False)
    except OutOfVocabularyError as err:
        listed = "; ".join(f"{k!r}: {', '.join(v)}" for k, v in err.labels.items())
        raise OutOfVocabularyError(f"{err} [{listed}]", err.labels) from None


def normalize_rows(vectors: np.ndarray, source: str, names: Sequence[str], *, allow_zero: bool = False) -> np.ndarray:
    """(C, D) rows divided by their L2 norms -> float32, refusing rows that would come out wrong.

    A non-finite row, a row whose norm does not fit in float32 (computed in float64) and (unless
    ``allow_zero``: they stay zero) a zero row raise :class:`WordVectorError` naming ``source``
    and the label ``names[i]``. Rows whose float32 norm is finite and non-zero are divided in
    float32 (bit for bit :func:`biam.data.packed.l2_normalize`); the others (norm past ~1e19 or
    below ~1e-19, where float32 squares overflow or underflow) in float64.
    """
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2 or len(names) != x.shape[0]:
        raise ValueError(f"{source}: expected ({len(names)}, D) embeddings, got {x.shape}")
    norm64 = np.linalg.norm(x.astype(np.float64), axis=1)
    for i in range(x.shape[0]):
        what = f"{source}: label {names[i]!r} (row {i})"
        if not np.isfinite(x[i]).all():
            raise WordVectorError(f"{what}: embedding values are not finite")
        if norm64[i] > _F32_MAX:
            raise WordVectorError(f"{what}: embedding norm {norm64[i]:.3g} is beyond float32 (finite but huge values)")
        if norm64[i] == 0 and not allow_zero:
            raise WordVectorError(f"{what}: the embedding is all zeros; the label would score the same for every image")
    with np.errstate(over="ignore", under="ignore"):
        norm32 = np.linalg.norm(x, axis=1)
    ok = np.isfinite(norm32) & (norm32 > 0)
    out = np.zeros_like(x)
    out[ok] = x[ok] / norm32[ok, None]
    far = ~ok & (norm64 > 0)
    out[far] = (x[far].astype(np.float64) / norm64[far, None]).astype(np.float32)
    return out


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
    expected row counts (None: any). Output: the two float32 matrices. Read with the restricted
    unpickler (:mod:`biam.utils.safe_pickle`).
    """
    obj = safe_load(path)
    if not isinstance(obj, (list, tuple)) or len(obj) != 2:
        raise ValueError(f"{path}: expected a list [{what[0]}, {what[1]}] of two arrays, found {type(obj).__name__}")
    first = _check_matrix(obj[0], rows[0], str(path), f"{what[0]} (item 0)")
    second = _check_matrix(obj[1], rows[1], str(path), f"{what[1]} (item 1)")
    if first.shape[1] != second.shape[1]:
        raise ValueError(f"{path}: {what[0]} dim {first.shape[1]} != {what[1]} dim {second.shape[1]}")
    return first, second


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
