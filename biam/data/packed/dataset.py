"""PackedDataset: one split of a packed dataset read by global image index."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import h5py
import numpy as np

from ...backbones import backbone_of_manifest
from ...utils.io import sha256_file
from .manifest import MANIFEST, READ_CACHE_BYTES, PackedFormatError, PathLike, read_manifest

class PackedDataset:
    """Read one split of a packed dataset by global image index.

    Attributes: ``manifest``, ``backbone`` (the :class:`biam.backbones.Backbone` that made the
    features; VGG19 when the manifest has no ``backbone`` field), its ``channels``, ``grid``,
    ``num_regions`` and ``scene_dim``, ``seen_labels``/``unseen_labels`` (lists of names),
    ``unseen_eval`` (int64 indices into the unseen labels), ``num_seen``, ``num_unseen``,
    ``has_scene``, ``feature_dtype``, ``shard_offsets`` ((num_shards + 1,) int64: shard i holds
    images ``shard_offsets[i]:shard_offsets[i+1]``). ``len()`` is the number of images.

    HDF5 handles open lazily and are reopened after a fork, so one dataset object can be handed
    to several DataLoader workers (each opens its own). The split must be complete unless
    ``allow_incomplete=True``.

    ``check=True`` (default) runs :meth:`check` at once: every shard is opened and compared with
    the manifest (split and dataset it was written for, image count, shapes, dtypes) and its
    labels are checked to lie in {-1, 0, 1}, so a replaced or damaged shard is named, with the
    image, before any training starts. It reads the labels once (NUS-WIDE: 0.3 GB, about a
    second); the full SHA-256 of every byte stays :meth:`verify`.
    """

    def __init__(self, root: PathLike, split: str, *, allow_incomplete: bool = False, check: bool = True):
        self.root = Path(root)
        self.split = split
        self.manifest = read_manifest(self.root)
        splits = self.manifest["splits"]
        if split not in splits:
            raise PackedFormatError(f"{self.root / MANIFEST}: no split '{split}' (has {sorted(splits)})")
        entry = splits[split]
        if not entry.get("complete") and not allow_incomplete:
            raise PackedFormatError(
                f"{self.root / MANIFEST}: split '{split}' is incomplete ({entry['num_images']} images in "
                f"{len(entry['shards'])} shards so far); rerun biam-convert to finish it"
            )
        self.shards = entry["shards"]
        self.seen_labels = list(self.manifest["labels"]["seen"])
        self.unseen_labels = list(self.manifest["labels"]["unseen"])
        self.num_seen = len(self.seen_labels)
        self.num_unseen = len(self.unseen_labels)
        ue = self.manifest.get("unseen_eval")
        self.unseen_eval = np.arange(self.num_unseen, dtype=np.int64) if ue is None else np.asarray(ue, dtype=np.int64)
        self.has_scene = bool(self.manifest["scene"]["present"])
        self.backbone = backbone_of_manifest(self.manifest, str(self.root / MANIFEST))
        self.channels, self.grid = self.backbone.channels, self.backbone.grid
        self.num_regions, self.scene_dim = self.backbone.num_regions, self.backbone.scene_dim
        self.feature_dtype = np.dtype(self.manifest["feature_dtype"])
        counts = [s["num_images"] for s in self.shards]
        self.shard_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._handles: Dict[int, h5py.File] = {}
        self._dsets: Dict[int, Dict[str, h5py.Dataset]] = {}
        self._pid = os.getpid()
        if check:
            self.check()

    def check(self) -> None:
        """Cheap check of every shard against the manifest; raises :class:`PackedFormatError`
        naming the shard (and for labels the image, its index and the column).

        Checked: the file opens as HDF5; its ``split``/``dataset`` attributes (written since
        shards carry them; older shards without them are accepted) equal the manifest's; every
        field has the shape (image count) and dtype the manifest implies; every label is -1, 0
        or 1 (one vectorised pass over the labels). Shards are closed afterwards.
        """
        for i, shard in enumerate(self.shards):
            f = self._open_checked(i)
            try:
                labels = f["labels"]
                path = self.root / shard["file"]
                step = max(1, (64 << 20) // max(1, labels.shape[1]))  # read at most 64 MB at a time
                for a in range(0, labels.shape[0], step):
                    try:
                        block = labels[a:a + step]
                    except OSError as err:
                        raise PackedFormatError(f"{path}: field 'labels': read failed for images {a}:{a + step} "
                                                f"(corrupt? reconvert it): {err}") from err
                    if block.size and (block.min() < -1 or block.max() > 1):
                        r, c = (int(x) for x in np.argwhere((block < -1) | (block > 1))[0])
                        name = f["names"].asstr()[a + r] if "names" in f else "?"
                        column = (f"seen label {self.seen_labels[c]!r}" if c < self.num_seen
                                  else f"unseen label {self.unseen_labels[c - self.num_seen]!r}")
                        raise PackedFormatError(
                            f"{path}: image {name!r} (image {a + r} of the shard, {int(self.shard_offsets[i]) + a + r} "
                            f"of split '{self.split}'), field 'labels': value {int(block[r, c])} at column {c} "
                            f"({column}), expected -1, 0 or 1 (corrupt shard; reconvert it)")
            finally:
                f.close()

    def __len__(self) -> int:
        return int(self.shard_offsets[-1])

    @property
    def num_labels(self) -> int:
        return self.num_seen + self.num_unseen

    def __getstate__(self):
        # Open HDF5 handles must never cross a process boundary; workers reopen their own.
        state = dict(self.__dict__)
        state["_handles"] = {}
        state["_dsets"] = {}
        return state

    def close(self) -> None:
        """Close the open shard files of this process."""
        for f in self._handles.values():
            f.close()
        self._handles = {}
        self._dsets = {}

    def __del__(self):
        if getattr(self, "_pid", None) == os.getpid():
            try:
                self.close()
            except (OSError, ValueError, TypeError):  # interpreter shutdown: h5py may be half gone
                pass

    def _shard(self, i: int) -> h5py.File:
        if self._pid != os.getpid():
            # Forked child: the parent's handles are unusable here; drop them without closing.
            self._handles = {}
            self._dsets = {}
            self._pid = os.getpid()
        f = self._handles.get(i)
        if f is None:
            f = self._open_checked(i)
            self._handles[i] = f
            # Dataset objects are looked up once: h5py's name lookup costs ~0.4 ms per read.
            self._dsets[i] = {k: f[k] for k in ("regions", "scene", "labels", "names") if k in f}
        return f

    def _open_checked(self, i: int) -> h5py.File:
        shard = self.shards[i]
        path = self.root / shard["file"]
        if not path.is_file():
            raise PackedFormatError(f"{path}: shard listed in the manifest is missing")
        try:
            f = h5py.File(path, "r", rdcc_nbytes=READ_CACHE_BYTES)
        except OSError as err:
            raise PackedFormatError(f"{path}: cannot open shard (truncated or corrupt? run verify()): {err}") from err
        n = shard["num_images"]
        for attr, expected in (("split", self.split), ("dataset", self.manifest.get("dataset"))):
            got = f.attrs.get(attr)
            if isinstance(got, bytes):
                got = got.decode("utf-8", "replace")
            if got is not None and got != expected:
                f.close()
                raise PackedFormatError(
                    f"{path}: this shard was written for {attr} {got!r} but the manifest lists it under "
                    f"{attr} {expected!r} (a shard copied over another?); restore the right file or reconvert")
        want = {"regions": ((n, self.channels, self.num_regions), self.feature_dtype),
                "labels": ((n, self.num_labels), np.dtype(np.int8)), "names": ((n,), None)}
        if self.has_scene:
            want["scene"] = ((n, self.scene_dim), self.feature_dtype)
        for field, (shape, dtype) in want.items():
            if field not in f:
                f.close()
                raise PackedFormatError(f"{path}: field '{field}' missing")
            ds = f[field]
            if ds.shape != shape or (dtype is not None and ds.dtype != dtype):
                msg = (f"{path}: field '{field}': shape {ds.shape} dtype {ds.dtype}, "
                       f"manifest implies shape {shape} dtype {dtype}")
                f.close()
                raise PackedFormatError(msg)
        return f

    def locate(self, index: int) -> tuple:
        """Global image index -> (shard number, index within the shard)."""
        if not 0 <= index < len(self):
            raise IndexError(f"image index {index} out of range [0, {len(self)}) of split '{self.split}'")
        s = int(np.searchsorted(self.shard_offsets, index, side="right") - 1)
        return s, index - int(self.shard_offsets[s])

    def read_slice(self, start: int, stop: int, fields: Optional[Iterable[str]] = None) -> Dict[str, np.ndarray]:
        """Images ``start:stop`` (may span shards) as numpy arrays in stored dtypes.

        Output dict: ``regions`` (n, channels, num_regions) (VGG19: (n, 512, 196)), ``scene``
        (n, scene_dim) if present, ``labels``
        (n, S+U) int8, ``names`` (n,) object array of str, ``index`` (n,) int64. ``fields``
        restricts what is read (``index`` is always returned).
        """
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"slice {start}:{stop} out of range [0, {len(self)}] of split '{self.split}'")
        fields = list(fields) if fields is not None else (
            ["regions", "scene", "labels", "names"] if self.has_scene else ["regions", "labels", "names"])
        if "scene" in fields and not self.has_scene:
            raise KeyError(f"split '{self.split}' of {self.root} holds no scene features (manifest scene.present is false)")
        parts: Dict[str, List[np.ndarray]] = {k: [] for k in fields}
        pos = start
        while pos < stop:
            s, local = self.locate(pos)
            end = min(stop, int(self.shard_offsets[s + 1]))
            f = self._shard(s)
            for k in fields:
                try:
                    if k == "names":
                        parts[k].append(np.array(f[k].asstr()[local:local + end - pos], dtype=object))
                    else:
                        parts[k].append(f[k][local:local + end - pos])
                except OSError as err:
                    raise PackedFormatError(f"{self.root / self.shards[s]['file']}: field '{k}': read failed "
                                            f"for images {pos}:{end} (corrupt? run verify()): {err}") from err
            pos = end
        out = {k: (np.concatenate(v) if v else self._empty(k)) for k, v in parts.items()}
        out["index"] = np.arange(start, stop, dtype=np.int64)
        return out

    def read_into(self, start: int, stop: int, out: Dict[str, np.ndarray], fields: Sequence[str]) -> None:
        """Read images ``start:stop`` of ``fields`` straight into ``out[field]`` (C-contiguous
        arrays of ``stop - start`` rows in the stored dtypes), without intermediate copies."""
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"slice {start}:{stop} out of range [0, {len(self)}] of split '{self.split}'")
        pos = start
        while pos < stop:
            s, local = self.locate(pos)
            end = min(stop, int(self.shard_offsets[s + 1]))
            self._shard(s)
            dsets = self._dsets[s]
            for k in fields:
                dest = out[k][pos - start:end - start]
                try:
                    # Low-level read of a hyperslab into the caller's contiguous rows: skips
                    # h5py's per-call selection machinery (most of the cost of a small slice).
                    ds = dsets[k]
                    fspace = ds.id.get_space()
                    fspace.select_hyperslab((local,) + (0,) * (dest.ndim - 1), dest.shape)
                    ds.id.read(h5py.h5s.create_simple(dest.shape), fspace, dest)
                except OSError as err:
                    raise PackedFormatError(f"{self.root / self.shards[s]['file']}: field '{k}': read failed "
                                            f"for images {pos}:{end} (corrupt? run verify()): {err}") from err
            pos = end

    def _empty(self, field: str) -> np.ndarray:
        shapes = {"regions": ((0, self.channels, self.num_regions), self.feature_dtype),
                  "scene": ((0, self.scene_dim), self.feature_dtype),
                  "labels": ((0, self.num_labels), np.int8), "names": ((0,), object)}
        shape, dtype = shapes[field]
        return np.empty(shape, dtype=dtype)

    def names(self) -> List[str]:
        """All image names of the split, in order."""
        out: List[str] = []
        for s in range(len(self.shards)):
            out.extend(self._shard(s)["names"].asstr()[:].tolist())
        return out

    def labels(self, start: int = 0, stop: Optional[int] = None) -> np.ndarray:
        """Label rows ``start:stop`` (n, S+U) int8 (reads only the labels datasets)."""
        stop = len(self) if stop is None else stop
        return self.read_slice(start, stop, fields=["labels"])["labels"]

    def count_positives(self, columns: Optional[np.ndarray] = None) -> np.ndarray:
        """Number of +1 labels of every image (N,) int64, over ``columns`` (default: seen labels).

        Streams shard by shard (the trainer's "> 40 positives" filter needs it for ~1.7M images).
        """
        columns = np.arange(self.num_seen) if columns is None else np.asarray(columns)
        out = np.empty(len(self), dtype=np.int64)
        for s in range(len(self.shards)):
            a, b = int(self.shard_offsets[s]), int(self.shard_offsets[s + 1])
            lab = self.read_slice(a, b, fields=["labels"])["labels"]
            out[a:b] = (lab[:, columns] == 1).sum(axis=1)
        return out

    def verify(self, progress: bool = True) -> None:
        """Check every shard's SHA-256 against the manifest; raise naming the first bad shard."""
        from tqdm import tqdm

        for shard in tqdm(self.shards, desc=f"verify {self.split}", unit="shard", disable=not progress):
            path = self.root / shard["file"]
            if not path.is_file():
                raise PackedFormatError(f"{path}: shard listed in the manifest is missing")
            digest = sha256_file(path)
            if digest != shard["sha256"]:
                raise PackedFormatError(f"{path}: sha256 {digest} differs from the manifest's {shard['sha256']} "
                                        "(file changed or corrupt; reconvert it with biam-convert)")
