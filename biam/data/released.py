"""Readers of the released data layout (docs/data_format.md), with every record checked.

The released feature files hold one gzip-compressed HDF5 dataset per image and field
(``<name>-features``, ``<name>-labels``, ...). These readers turn them into records
``(name, features (512, 196) float32, labels (S+U,) int8)`` in the order the converter writes
them, and raise :class:`RecordError` naming the file, the image and the field for anything
missing or malformed. They are the inputs of the converters in the dataset files
(``biam/datasets/nus_wide.py``, ``openimages.py``) that ``biam-convert`` runs, not a training format.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import h5py
import numpy as np

from .safe_pickle import safe_load

__all__ = [
    "RecordError",
    "Record",
    "read_lines",
    "read_text",
    "not_utf8_where",
    "nus_wide_label_names",
    "read_img_names",
    "NusWideReader",
    "read_classes_trainable",
    "read_unseen_ids",
    "read_top400",
    "read_class_descriptions",
    "OpenImagesReader",
    "openimages_shard_files",
]

FEATURE_SHAPE = (512, 196)
Record = Tuple[str, np.ndarray, np.ndarray]  # (name, features (512, 196) float32, labels (S+U,) int8)


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


class RecordError(ValueError):
    """A record of the released layout is missing or malformed (message names file, image, field)."""


def _err(file, image, field, what) -> RecordError:
    return RecordError(f"{Path(file).name}: image {image!r}, field {field!r}: {what}")


def not_utf8_where(path: os.PathLike) -> str:
    """Where a file stops being UTF-8, as ``"line L: byte 0xXX"`` (reads it line by line; for
    error messages only)."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                return f"line {lineno}: byte 0x{raw[err.start]:02x}"
    return "a byte"


def read_text(path: os.PathLike) -> str:
    """The whole text file as str (UTF-8, a leading BOM dropped); ValueError naming the file,
    line and byte when it is not UTF-8."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: {not_utf8_where(path)} is not UTF-8 (label and list files are read as "
                         "UTF-8; convert the file, e.g. with iconv -t UTF-8)") from None


def read_lines(path: os.PathLike) -> List[str]:
    """Non-empty lines of a text label file, stripped (handles CRLF and a UTF-8 BOM).

    Raises ``FileNotFoundError`` naming the file; ``ValueError`` for an empty line between
    entries (which would shift every later label by one).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file not found: {path}")
    lines = [ln.strip() for ln in read_text(path).splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    for i, ln in enumerate(lines):
        if not ln:
            raise ValueError(f"{path}: line {i + 1} is empty (labels are one a line, no gaps)")
    return lines


def _check_unique(names: Sequence[str], source) -> None:
    seen = set()
    for i, n in enumerate(names):
        if n in seen:
            raise ValueError(f"{source}: label {n!r} (line {i + 1}) appears twice")
        seen.add(n)


def nus_wide_label_names(tags_path: os.PathLike, concepts_path: os.PathLike) -> Tuple[List[str], List[str], np.ndarray]:
    """Seen and unseen NUS-WIDE labels.

    Input: ``TagList1k.txt`` (T tags) and ``Concepts81.txt`` (U concepts). Output: seen names
    (the tags that are not concepts, in tag-file order; 925 for the release), unseen names (the
    concepts in file order; 81), and ``seen_tag_index`` (S,) int64, the rows of the tag list
    (and of the tag embedding matrix) that are seen.
    """
    tags = read_lines(tags_path)
    concepts = read_lines(concepts_path)
    _check_unique(tags, tags_path)
    _check_unique(concepts, concepts_path)
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


def _read(f: h5py.File, file, image: str, field: str, shape: tuple, kind: str) -> np.ndarray:
    key = f"{image}-{field}"
    if key not in f:
        raise _err(file, image, field, f"missing (no dataset '{key}')")
    ds = f[key]
    if not isinstance(ds, h5py.Dataset):
        raise _err(file, image, field, f"'{key}' is a group, not a dataset")
    if ds.shape != shape:
        raise _err(file, image, field, f"shape {ds.shape}, expected {shape}")
    try:
        arr = ds[()]
    except OSError as err:
        raise _err(file, image, field, f"unreadable (corrupt file?): {err}") from err
    return _check_array(arr, file, image, field, kind)


def _check_array(arr: np.ndarray, file, image: str, field: str, kind: str) -> np.ndarray:
    if kind == "features":
        if arr.dtype.kind != "f":
            raise _err(file, image, field, f"dtype {arr.dtype}, expected float32")
        arr = arr.astype(np.float32, copy=False)
        if not np.isfinite(arr).all():
            raise _err(file, image, field, "contains NaN or inf")
        return arr
    if arr.dtype.kind not in "iuf":
        raise _err(file, image, field, f"dtype {arr.dtype}, expected int8 labels")
    bad = ~np.isin(arr, (-1, 0, 1))
    if bad.any():
        raise _err(file, image, field, f"value {arr[bad][0]} at column {int(np.flatnonzero(bad)[0])}, expected -1, 0 or 1")
    return arr.astype(np.int8)


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
        feats = _read(f, self.path, name, "features", FEATURE_SHAPE, "features")
        if self.split == "train":
            seen = _read(f, self.path, name, "labels", (S,), "labels")
            unseen = _read(f, self.path, name, "labels_81", (U,), "labels")
            labels = np.concatenate([seen, unseen])
        else:
            labels = _read(f, self.path, name, "labels", (S + U,), "labels")
            if f"{name}-labels_81" in f:
                l81 = _read(f, self.path, name, "labels_81", (U,), "labels")
                if not np.array_equal(l81, labels[S:]):
                    col = int(np.flatnonzero(l81 != labels[S:])[0])
                    raise _err(self.path, name, "labels_81",
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


def read_classes_trainable(path: os.PathLike) -> List[str]:
    """The 7186 seen class ids (``/m/...``) of ``classes-trainable.txt``, in file order."""
    ids = read_lines(path)
    _check_unique(ids, path)
    return ids


def read_unseen_ids(path: os.PathLike) -> List[str]:
    """The 2594 unseen class ids of ``unseen_labels.pkl`` (a numpy array, read with safe_load)."""
    obj = safe_load(path)
    ids = [str(x) for x in np.asarray(obj).ravel().tolist()] if isinstance(obj, (np.ndarray, list)) else None
    if ids is None:
        raise ValueError(f"{path}: expected an array of class ids, found {type(obj).__name__}")
    _check_unique(ids, path)
    return ids


def read_top400(path: os.PathLike, num_unseen: Optional[int] = None) -> List[int]:
    """Indices into the unseen labels that are evaluated, one a line (file starts with a BOM)."""
    out = []
    for i, ln in enumerate(read_lines(path)):
        try:
            v = int(ln.split(",")[0])
        except ValueError:
            raise ValueError(f"{path}: line {i + 1}: {ln!r} is not an integer column index") from None
        if v < 0 or (num_unseen is not None and v >= num_unseen):
            raise ValueError(f"{path}: line {i + 1}: index {v} outside [0, {num_unseen})")
        out.append(v)
    if len(set(out)) != len(out):
        raise ValueError(f"{path}: an index appears twice")
    return out


def read_class_descriptions(path: os.PathLike) -> Dict[str, str]:
    """``class-descriptions.csv``: class id -> human-readable name."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class description file not found: {path}")
    out: Dict[str, str] = {}
    with io.StringIO(read_text(path), newline="") as fh:
        for i, row in enumerate(csv.reader(fh)):
            if not row:
                continue
            if len(row) < 2:
                raise ValueError(f"{path}: line {i + 1}: expected 'id,name', found {row!r}")
            out[row[0].strip()] = ",".join(row[1:]).strip()
    return out


def openimages_shard_files(folder: os.PathLike) -> List[Path]:
    """The ``*.h5`` training shards of a folder, sorted by file name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Open Images training shard folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix == ".h5" and p.is_file())
    if not files:
        raise FileNotFoundError(f"{folder}: no *.h5 training shards")
    return files


class OpenImagesReader:
    """Records of released Open Images feature files (training shards or the test file).

    Args:
        files: feature files, read in this order; images within a file in key order.
        num_seen: 7186; num_unseen: 2594 for the test file, or None for training shards (which
            hold only ``-seenlabels``; their label rows then have ``num_seen + unseen_pad``
            columns, the unseen part 0 = unknown).
        unseen_pad: unseen columns appended to training rows (so train and test rows agree).

    Image id = key part before the first '-'. A key of an unknown field, or an image lacking a
    field, is an error naming the file, image and field.
    """

    def __init__(self, files: Sequence[os.PathLike], *, num_seen: int, num_unseen: Optional[int], unseen_pad: int = 0):
        self.files = [Path(p) for p in files]
        self.num_seen = num_seen
        self.num_unseen = num_unseen
        self.unseen_pad = unseen_pad
        self.fields = ("features", "seenlabels") + (("unseenlabels",) if num_unseen is not None else ())
        self._index: Optional[List[Tuple[Path, List[str]]]] = None

    def index(self) -> List[Tuple[Path, List[str]]]:
        """[(file, [image ids in order])] for all files (keys are listed, nothing else is read)."""
        if self._index is None:
            from tqdm import tqdm

            out = []
            for path in tqdm(self.files, desc="index Open Images files", unit="file", disable=len(self.files) < 4):
                out.append((path, self._ids(path)))
            self._index = out
        return self._index

    def _ids(self, path: Path) -> List[str]:
        if not path.is_file():
            raise FileNotFoundError(f"Open Images feature file not found: {path}")
        try:
            with h5py.File(path, "r") as f:
                keys = list(f.keys())
        except OSError as err:
            raise RecordError(f"{path}: cannot open HDF5 file: {err}") from err
        fields_of: Dict[str, set] = {}
        for key in keys:
            image, sep, field = key.partition("-")
            if not sep or not image:
                raise _err(path, key, "<key>", "key is not '<id>-<field>'")
            if field not in self.fields:
                raise _err(path, image, field, f"unknown field (expected {', '.join(self.fields)})")
            fields_of.setdefault(image, set()).add(field)
        for image, have in fields_of.items():
            for field in self.fields:
                if field not in have:
                    raise _err(path, image, field, f"missing (no dataset '{image}-{field}')")
        # Keys come back sorted by name; keep that order (the same on every run).
        return list(fields_of)

    def __len__(self) -> int:
        return sum(len(ids) for _, ids in self.index())

    def records(self, start: int = 0) -> Iterator[Record]:
        """Yield ``(id, features (512, 196) float32, labels (S+U,) int8)`` from image ``start`` on."""
        pos = 0
        S = self.num_seen
        for path, ids in self.index():
            if pos + len(ids) <= start:
                pos += len(ids)
                continue
            skip = max(0, start - pos)
            pos += len(ids)
            with h5py.File(path, "r") as f:
                for image in ids[skip:]:
                    feats = _read(f, path, image, "features", FEATURE_SHAPE, "features")
                    seen = _read(f, path, image, "seenlabels", (S,), "labels")
                    if self.num_unseen is not None:
                        unseen = _read(f, path, image, "unseenlabels", (self.num_unseen,), "labels")
                    else:
                        unseen = np.zeros(self.unseen_pad, dtype=np.int8)
                    yield image, feats, np.concatenate([seen, unseen])
