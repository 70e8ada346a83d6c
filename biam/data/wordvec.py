"""Word-vector text files -> label embeddings, for datasets of your own.

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
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "WordVectorError",
    "OutOfVocabularyError",
    "FORMATS",
    "split_label",
    "read_word_vectors",
    "label_embeddings",
]

# "auto": a first line of exactly two integers is a fastText/word2vec header, anything else is GloVe.
FORMATS = ("auto", "glove", "vec")

_SPLIT = re.compile(r"[\s_\-]+")


class WordVectorError(ValueError):
    """A word-vector file is missing, not UTF-8 or malformed (message names the file and line)."""


class OutOfVocabularyError(WordVectorError):
    """Labels whose words the word-vector file lacks; ``.labels`` maps each label to its missing words."""

    def __init__(self, message: str, labels: Dict[str, List[str]]):
        super().__init__(message)
        self.labels = labels


def split_label(label: str) -> List[str]:
    """Words of a label, case kept: split on whitespace, '_' and '-' ("Ice_cream" -> ["Ice", "cream"])."""
    return [w for w in _SPLIT.split(label) if w]


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


def label_embeddings(labels: Sequence[str], path: os.PathLike, *, fmt: str = "auto",
                     normalize: bool = True, progress: bool = True) -> np.ndarray:
    """(C, d) float32 embeddings of ``labels`` from a word-vector file.

    Each label is split into words (:func:`split_label`), its row is the mean of their vectors
    (lookup as in :func:`read_word_vectors`), then L2-normalised (``normalize=False`` keeps the
    mean). Raises :class:`OutOfVocabularyError` listing every label with a missing word (and
    which words), and :class:`WordVectorError` for a label without words or whose mean vector
    is zero.
    """
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
        if miss:
            lacking[label] = miss
    if lacking:
        listed = "; ".join(f"{label!r} (missing: {', '.join(m)})" if len(split_label(label)) > 1 else repr(label)
                           for label, m in lacking.items())
        raise OutOfVocabularyError(
            f"{path}: {len(lacking)} of {len(labels)} labels are not in the word-vector file (looked up as written, "
            f"lower-cased and in any case): {listed}. Rename these labels to words the file has, or use a larger "
            "word-vector file", lacking)
    out = np.empty((len(labels), dim), dtype=np.float32)
    for i, ws in enumerate(words):
        out[i] = np.mean([vectors[w] for w in ws], axis=0)
    norms = np.linalg.norm(out, axis=1)
    if (norms == 0).any():
        zero = [labels[i] for i in np.flatnonzero(norms == 0)]
        raise WordVectorError(f"{path}: label(s) {zero} get a zero vector (their words' vectors cancel or are zero)")
    if normalize:
        out /= norms[:, None]
    return out
