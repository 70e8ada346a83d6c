"""The Open Images v4 (2018_04) release as users hold it (docs/data_format.md), read with every
record checked: the class lists, the evaluated unseen columns, the class names, the per-key HDF5
feature files (training shards and the test file), the released label-embedding pickle and the
published SHA-256 of the release files (:data:`KNOWN_FILES`).
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import h5py
import numpy as np

from ...data.checksums import KnownFile
from ...data.wordvec import read_pickled_pair
from ...data.released import FEATURE_SHAPE, Record, RecordError, check_unique, read_field, record_error
from ...utils.safe_pickle import safe_load
from ...utils.text import read_lines, read_text

__all__ = ["KNOWN_FILES", "read_classes_trainable", "read_unseen_ids", "read_top400", "read_class_descriptions",
           "openimages_shard_files", "OpenImagesReader", "read_openimages_embeddings"]

def read_classes_trainable(path: os.PathLike) -> List[str]:
    """The 7186 seen class ids (``/m/...``) of ``classes-trainable.txt``, in file order."""
    ids = read_lines(path)
    check_unique(ids, path)
    return ids


def read_unseen_ids(path: os.PathLike) -> List[str]:
    """The 2594 unseen class ids of ``unseen_labels.pkl`` (a numpy array, read with safe_load)."""
    obj = safe_load(path)
    ids = [str(x) for x in np.asarray(obj).ravel().tolist()] if isinstance(obj, (np.ndarray, list)) else None
    if ids is None:
        raise ValueError(f"{path}: expected an array of class ids, found {type(obj).__name__}")
    check_unique(ids, path)
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
                raise record_error(path, key, "<key>", "key is not '<id>-<field>'")
            if field not in self.fields:
                raise record_error(path, image, field, f"unknown field (expected {', '.join(self.fields)})")
            fields_of.setdefault(image, set()).add(field)
        for image, have in fields_of.items():
            for field in self.fields:
                if field not in have:
                    raise record_error(path, image, field, f"missing (no dataset '{image}-{field}')")
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
                    feats = read_field(f, path, image, "features", FEATURE_SHAPE, "features")
                    seen = read_field(f, path, image, "seenlabels", (S,), "labels")
                    if self.num_unseen is not None:
                        unseen = read_field(f, path, image, "unseenlabels", (self.num_unseen,), "labels")
                    else:
                        unseen = np.zeros(self.unseen_pad, dtype=np.int8)
                    yield image, feats, np.concatenate([seen, unseen])



def read_openimages_embeddings(path: os.PathLike, num_seen: Optional[int] = None,
                               num_unseen: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """The released Open Images embedding pickle ``[seen (7186, D), unseen (2594, D)]`` -> float32 pair."""
    return read_pickled_pair(path, ("seen", "unseen"), (num_seen, num_unseen))



# SHA-256 and size of the release files, relative to the datasets/ folder, computed from the
# files of the original release (``biam-checksums --root datasets``; docs/reliability.md).
KNOWN_FILES = {
    "OpenImages/2018_04/class-descriptions.csv": KnownFile(
        "6301d51a91632a2199060d3a0c8cd70904c95863f6867a5a7c4d24a031ee4062", 475854, "Open Images class names"),
    "OpenImages/2018_04/classes-trainable.txt": KnownFile(
        "07284fc58eae2c080fa26484cb523c562e27b5ba5958d31f2b0c30af694f4598", 71460, "Open Images 7186 seen classes"),
    "OpenImages/2018_04/top_400_unseen.csv": KnownFile(
        "cc9c8c78bb3fdc465bc5ec1c41f2eb59aa93345b890ad31027b9d6848e9453ff", 2187,
        "Open Images evaluated unseen columns"),
    "OpenImages/2018_04/unseen_labels.pkl": KnownFile(
        "ae47468824f22deab1ea59a00d259fa043c66a544a0cca8b75f1d90e95960d56", 48847,
        "Open Images 2594 unseen classes (pickle)"),
}
