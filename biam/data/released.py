"""What every reader of a released per-key feature layout shares (docs/data_format.md).

The released feature files hold one gzip-compressed HDF5 dataset per image and field
(``<name>-features``, ``<name>-labels``, ...). The dataset folders' readers
(``biam/datasets/nus_wide/release.py``, ``biam/datasets/openimages/release.py``) turn them into
records ``(name, features (C, R) float32, labels (S+U,) int8)`` with the helpers here, which
raise :class:`RecordError` naming the file, the image and the field for anything missing or
malformed. They are the inputs of ``biam-convert``, not a training format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Tuple

import h5py
import numpy as np

from ..backbones import DEFAULT_BACKBONE, get_backbone

__all__ = ["FEATURE_SHAPE", "Record", "RecordError", "record_error", "read_field", "check_array", "check_unique"]

# The released features are the default backbone's regions (VGG19 conv5_4), channel-major.
FEATURE_SHAPE = (get_backbone(DEFAULT_BACKBONE).channels, get_backbone(DEFAULT_BACKBONE).num_regions)
Record = Tuple[str, np.ndarray, np.ndarray]  # (name, features FEATURE_SHAPE float32, labels (S+U,) int8)


class RecordError(ValueError):
    """A record of the released layout is missing or malformed (message names file, image, field)."""


def record_error(file, image, field, what) -> RecordError:
    """A :class:`RecordError` naming ``file`` (its base name), ``image`` and ``field``."""
    return RecordError(f"{Path(file).name}: image {image!r}, field {field!r}: {what}")


def check_unique(names: Sequence[str], source) -> None:
    """ValueError naming ``source`` and the line of the first label that appears twice."""
    seen = set()
    for i, n in enumerate(names):
        if n in seen:
            raise ValueError(f"{source}: label {n!r} (line {i + 1}) appears twice")
        seen.add(n)


def read_field(f: h5py.File, file, image: str, field: str, shape: tuple, kind: str) -> np.ndarray:
    """Dataset ``<image>-<field>`` of the open file ``f``, of ``shape``, checked by :func:`check_array`."""
    key = f"{image}-{field}"
    if key not in f:
        raise record_error(file, image, field, f"missing (no dataset '{key}')")
    ds = f[key]
    if not isinstance(ds, h5py.Dataset):
        raise record_error(file, image, field, f"'{key}' is a group, not a dataset")
    if ds.shape != shape:
        raise record_error(file, image, field, f"shape {ds.shape}, expected {shape}")
    try:
        arr = ds[()]
    except OSError as err:
        raise record_error(file, image, field, f"unreadable (corrupt file?): {err}") from err
    return check_array(arr, file, image, field, kind)


def check_array(arr: np.ndarray, file, image: str, field: str, kind: str) -> np.ndarray:
    """``kind`` "features": finite floats as float32; else labels in {-1, 0, 1} as int8."""
    if kind == "features":
        if arr.dtype.kind != "f":
            raise record_error(file, image, field, f"dtype {arr.dtype}, expected float32")
        arr = arr.astype(np.float32, copy=False)
        if not np.isfinite(arr).all():
            raise record_error(file, image, field, "contains NaN or inf")
        return arr
    if arr.dtype.kind not in "iuf":
        raise record_error(file, image, field, f"dtype {arr.dtype}, expected int8 labels")
    bad = ~np.isin(arr, (-1, 0, 1))
    if bad.any():
        raise record_error(file, image, field, f"value {arr[bad][0]} at column {int(np.flatnonzero(bad)[0])}, expected -1, 0 or 1")
    return arr.astype(np.int8)

