"""The packed dataset format: a few large HDF5 shards per split, read in contiguous slices.

Layout of a packed dataset directory (see ``docs/data_format.md`` for the full description)::

    <root>/manifest.json           what is there: labels, dtype, backbone, scene source, shards + sha256
    <root>/embeddings.npz          "seen" (S, 300) and "unseen" (U, 300) float32, raw rows
    <root>/<split>-00000.h5, ...   shards; datasets regions, scene (optional), labels, names

:class:`PackedWriter` writes one split shard by shard. Each shard goes to a temporary name, is
fsynced and renamed, and only then listed in the manifest (itself replaced atomically), so a
killed writer leaves only complete, listed shards plus at most one temporary file, and a rerun
continues after the last listed shard. :class:`PackedDataset` reads a split by global image index.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Union

import h5py
import numpy as np

from ..backbones import DEFAULT_BACKBONE, Backbone, BackboneError, backbone_of_manifest, get_backbone
from ..utils.io import atomic_open, sha256_file

__all__ = [
    "FORMAT_VERSION",
    "PackedFormatError",
    "PackedWriter",
    "resolve_backbone",
    "PackedDataset",
    "read_manifest",
    "save_embeddings",
    "load_embeddings",
    "l2_normalize",
    "shard_filename",
    "sha256_file",
]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings.npz"
# Images per HDF5 chunk: a float16 regions chunk is 16 * 512 * 196 * 2 B = 3.2 MB. Readers keep
# the chunk cache (1 MB) smaller than that, so HDF5 reads just the requested images of a chunk
# straight from the file instead of pulling whole chunks through the cache (measured: 0.36 ms
# per random 8-image slice, against 4.2 ms with 12.8 MB chunks going through a 32 MB cache).
CHUNK_IMAGES = 16
READ_CACHE_BYTES = 1 << 20
FEATURE_DTYPES = ("float16", "float32")

PathLike = Union[str, os.PathLike]


class PackedFormatError(ValueError):
    """A packed dataset (manifest, shard or embedding file) is missing, corrupt or inconsistent."""


def shard_filename(split: str, index: int) -> str:
    """File name of shard ``index`` of ``split``: ``<split>-00000.h5``."""
    return f"{split}-{index:05d}.h5"


def _fsync_dir(path: Path) -> None:
    # The rename is durable only once the directory entry itself is flushed.
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_open(path, "wb", fsync=True) as fh:
        fh.write(data)
    _fsync_dir(path.parent)


def read_manifest(root: PathLike) -> dict:
    """Read and check ``<root>/manifest.json``. Output: the manifest dict.

    Raises :class:`PackedFormatError` (naming the file and field) for a missing, unparsable or
    inconsistent manifest.
    """
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise PackedFormatError(f"{path}: manifest not found (is {root} a packed dataset? see biam-convert)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PackedFormatError(f"{path}: not valid JSON ({err})") from err
    _check_manifest(manifest, str(path))
    return manifest


def _check_manifest(m: dict, source: str) -> None:
    def need(cond: bool, field: str, what: str) -> None:
        if not cond:
            raise PackedFormatError(f"{source}: field '{field}': {what}")

    need(isinstance(m, dict), "<root>", "expected a JSON object")
    emb = m.get("embeddings", EMBEDDINGS)
    need(_inside(emb), "embeddings", f"{emb!r}: expected a file name relative to the dataset folder "
         "(no absolute path, no '..')")
    need(m.get("format_version") == FORMAT_VERSION, "format_version",
         f"{m.get('format_version')!r}, this code reads version {FORMAT_VERSION}")
    labels = m.get("labels")
    need(isinstance(labels, dict) and isinstance(labels.get("seen"), list) and isinstance(labels.get("unseen"), list),
         "labels", "expected {'seen': [...], 'unseen': [...]}")
    n_unseen = len(labels["unseen"])
    ue = m.get("unseen_eval")
    if ue is not None:
        need(isinstance(ue, list) and all(isinstance(i, int) and 0 <= i < n_unseen for i in ue),
             "unseen_eval", f"expected a list of indices in [0, {n_unseen})")
        need(len(set(ue)) == len(ue), "unseen_eval", "indices repeat")
    need(m.get("feature_dtype") in FEATURE_DTYPES, "feature_dtype", f"{m.get('feature_dtype')!r} not in {FEATURE_DTYPES}")
    scene = m.get("scene")
    need(isinstance(scene, dict) and isinstance(scene.get("present"), bool), "scene", "expected {'present': bool, 'source': ...}")
    try:
        backbone = backbone_of_manifest(m, source)
    except BackboneError as err:
        raise PackedFormatError(str(err)) from None
    need(scene["present"] or backbone.scene_from_regions, "scene.present",
         f"false, but backbone {backbone.name!r} stores its scene features at extraction (they cannot be "
         "computed from the regions)")
    splits = m.get("splits")
    need(isinstance(splits, dict), "splits", "expected an object")
    for name, entry in splits.items():
        need(_valid_split(name), f"splits.{name}", "split names hold no '/', '\\', '-' and no leading '.'")
        need(isinstance(entry, dict) and isinstance(entry.get("shards"), list), f"splits.{name}", "expected {'shards': [...]}")
        writing = entry.get("writing")
        need(writing is None or writing == shard_filename(name, len(entry["shards"])), f"splits.{name}.writing",
             f"{writing!r}: expected the next shard's name {shard_filename(name, len(entry['shards']))!r} or null")
        total = 0
        for i, shard in enumerate(entry["shards"]):
            f = f"splits.{name}.shards[{i}]"
            need(isinstance(shard, dict) and shard.get("file") == shard_filename(name, i), f,
                 f"expected file {shard_filename(name, i)!r}, found {shard.get('file') if isinstance(shard, dict) else shard!r}")
            need(isinstance(shard.get("num_images"), int) and shard["num_images"] > 0, f + ".num_images", "expected a positive int")
            need(isinstance(shard.get("sha256"), str) and len(shard["sha256"]) == 64, f + ".sha256", "expected 64 hex digits")
            total += shard["num_images"]
        need(entry.get("num_images") == total, f"splits.{name}.num_images",
             f"{entry.get('num_images')!r} differs from the sum over its shards ({total})")


def _valid_split(split) -> bool:
    return isinstance(split, str) and bool(split) and not any(c in split for c in "/-\\") and not split.startswith(".")


def _inside(rel) -> bool:
    """True for a relative path that stays inside the folder it is relative to."""
    if not isinstance(rel, str) or not rel or "\0" in rel:
        return False
    parts = rel.replace("\\", "/").split("/")
    return not os.path.isabs(rel) and not rel.startswith(("/", "\\")) and ".." not in parts and ":" not in parts[0]


def _write_manifest(root: Path, manifest: dict) -> None:
    _check_manifest(manifest, str(root / MANIFEST))
    _atomic_write_bytes(root / MANIFEST, (json.dumps(manifest, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))


def save_embeddings(root: PathLike, seen: np.ndarray, unseen: np.ndarray) -> Path:
    """Write ``<root>/embeddings.npz`` with arrays "seen" (S, D) and "unseen" (U, D), float32.

    Rows are stored raw (not normalised). Written to a temporary name and renamed.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    seen = np.asarray(seen, dtype=np.float32)
    unseen = np.asarray(unseen, dtype=np.float32)
    for name, arr in (("seen", seen), ("unseen", unseen)):
        if arr.ndim != 2 or not np.isfinite(arr).all():
            raise ValueError(f"embeddings '{name}': expected a finite 2-d array, got shape {arr.shape}")
    if seen.shape[1] != unseen.shape[1]:
        raise ValueError(f"embeddings: seen dim {seen.shape[1]} != unseen dim {unseen.shape[1]}")
    path = root / EMBEDDINGS
    with atomic_open(path, "wb", fsync=True) as fh:
        _write_npz(fh, {"seen": seen, "unseen": unseen})
    return path


def _write_npz(fh, arrays: Dict[str, np.ndarray]) -> None:
    """An uncompressed .npz (readable by ``np.load``) with fixed member timestamps.

    ``np.savez`` stamps members with the current time; fixed stamps make the same arrays give
    the same bytes, so a rerun conversion is byte-identical to the first.
    """
    import io
    import zipfile

    with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def load_embeddings(root: PathLike, manifest: Optional[dict] = None) -> tuple:
    """Load ``(seen (S, D), unseen (U, D))`` float32 raw rows of a packed dataset.

    When the manifest is available, the row counts are checked against its label lists.
    L2-normalising is the model side's job (see :func:`l2_normalize`).
    """
    root = Path(root)
    if manifest is None and (root / MANIFEST).is_file():
        manifest = read_manifest(root)
    path = root / (manifest.get("embeddings", EMBEDDINGS) if manifest else EMBEDDINGS)
    if not path.is_file():
        raise PackedFormatError(f"{path}: embedding file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("seen", "unseen") if k not in z.files]
            if missing:
                raise PackedFormatError(f"{path}: missing array(s) {missing}")
            seen, unseen = z["seen"].astype(np.float32), z["unseen"].astype(np.float32)
    except (OSError, ValueError) as err:
        if isinstance(err, PackedFormatError):
            raise
        raise PackedFormatError(f"{path}: cannot read embeddings ({err})") from err
    if manifest is not None:
        for name, arr in (("seen", seen), ("unseen", unseen)):
            want = len(manifest["labels"][name])
            if arr.ndim != 2 or arr.shape[0] != want:
                raise PackedFormatError(f"{path}: array '{name}' has shape {arr.shape}, manifest lists {want} {name} labels")
    return seen, unseen


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` (C, D) divided by their L2 norm (zero rows stay zero). Output float32 (C, D)."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, eps)


class PackedWriter:
    """Write one split of a packed dataset, shard by shard, resumably.

    Args:
        root: output directory (created if needed).
        split: split name (``train``, ``test``, ...; no '/' or '-').
        dataset: dataset name recorded in the manifest (``nus_wide``, ``openimages``, ...).
        seen_labels, unseen_labels: label names; a label row has ``S + U`` columns, seen first.
        unseen_eval: indices into ``unseen_labels`` that are evaluated (None: all).
        shard_size: images per shard (the last one may hold fewer).
        dtype: stored feature dtype, ``"float16"`` or ``"float32"``.
        scene_source: where the scene features come from (e.g. ``"imagenet:vgg19.pth"``,
            ``"random-seed-0"``), or None when shards hold no ``scene`` dataset.
        compression: None (default, fastest reads) or an h5py filter name such as ``"lzf"``.
        resume: keep the complete shards a previous run listed (their checksums are verified);
            False starts the split over (its listed shards are deleted: the manifest says they
            are this tool's files).
        overwrite: a file at a shard name this writer is about to write that the manifest does
            not list (someone else's) is replaced; without it that is an error naming the file.
        extra: more manifest fields (e.g. the source files), merged at the top level.
        backbone: name of the registered backbone (:mod:`biam.backbones`) that made the features
            (default ``"vgg19"``); it fixes the shapes of ``regions`` and ``scene`` and is
            recorded in the manifest's ``backbone`` field.

    Use :meth:`append` (buffers up to one shard) and :meth:`close` (writes the rest and marks
    the split complete). ``num_images`` tells a resuming caller how many images are already
    stored, so that it skips them. Only one writer may work on a root at a time (the commands
    hold :class:`biam.utils.ownership.FolderLock` on it).

    Files: the writer deletes only shards its manifest lists (when it starts a split over or
    finds one changed) and the one shard the manifest says it was writing when it was killed
    (``splits.<split>.writing``, recorded before that file is created). Nothing else in the
    folder is touched.
    """

    def __init__(
        self,
        root: PathLike,
        split: str,
        *,
        dataset: str,
        seen_labels: Sequence[str],
        unseen_labels: Sequence[str],
        unseen_eval: Optional[Sequence[int]] = None,
        shard_size: int = 4096,
        dtype: str = "float16",
        scene_source: Optional[str] = None,
        compression: Optional[str] = None,
        resume: bool = True,
        overwrite: bool = False,
        extra: Optional[dict] = None,
        backbone: str = DEFAULT_BACKBONE,
    ):
        if not _valid_split(split):
            raise ValueError(f"split name {split!r}: must be non-empty without '/', '-' or a leading '.'")
        if dtype not in FEATURE_DTYPES:
            raise ValueError(f"dtype {dtype!r}: expected one of {FEATURE_DTYPES}")
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.split = split
        self.shard_size = int(shard_size)
        self.dtype = dtype
        self.compression = compression
        self.num_seen = len(seen_labels)
        self.num_unseen = len(unseen_labels)
        self.has_scene = scene_source is not None
        self.overwrite = bool(overwrite)
        self.dataset = dataset
        bb = get_backbone(backbone)
        self.channels, self.num_regions, self.scene_dim = bb.channels, bb.num_regions, bb.scene_dim
        header = {
            "format_version": FORMAT_VERSION,
            "dataset": dataset,
            "labels": {"seen": list(seen_labels), "unseen": list(unseen_labels)},
            "unseen_eval": None if unseen_eval is None else [int(i) for i in unseen_eval],
            "embeddings": EMBEDDINGS,
            "feature_dtype": dtype,
            "scene": {"present": self.has_scene, "source": scene_source},
            "backbone": bb.manifest_fields(),
        }
        if extra:
            header.update(extra)
        path = self.root / MANIFEST
        if path.is_file():
            manifest = read_manifest(self.root)
            # Data written before manifests recorded the backbone is VGG19's.
            existing_backbone = backbone_of_manifest(manifest, str(path)).manifest_fields()
            for key in ("dataset", "labels", "unseen_eval", "feature_dtype", "scene", "backbone"):
                if (existing_backbone if key == "backbone" else manifest.get(key)) != header[key]:
                    raise PackedFormatError(
                        f"{path}: field '{key}' of the existing packed dataset differs from this conversion "
                        f"(existing {_short(existing_backbone if key == 'backbone' else manifest.get(key))}, "
                        f"new {_short(header[key])}); "
                        "write to a fresh output directory (--overwrite does not mix two datasets in one folder)"
                    )
            manifest.update({k: v for k, v in header.items() if k not in manifest})
        else:
            manifest = dict(header, splits={})
        old = manifest["splits"].get(split)
        self.manifest = manifest
        if old is not None:
            # A shard the killed run was writing (recorded before it was created) is ours: remove it.
            self._remove_pending(old)
        if old is not None and resume:
            if old.get("shard_size") != self.shard_size:
                raise PackedFormatError(
                    f"{path}: split '{split}' was written with shard_size {old.get('shard_size')}, "
                    f"now {self.shard_size}; use the same --shard-size to resume, or --overwrite to start it over"
                )
            entry = self._keep_verified(old)
        else:
            entry = {"num_images": 0, "complete": False, "shard_size": self.shard_size, "shards": []}
        dropped = [s["file"] for s in (old or {}).get("shards", [])[len(entry["shards"]):]]
        entry["complete"] = False
        manifest["splits"][split] = entry
        # Listed shards that will not be kept are this tool's own files (the manifest says so).
        for name in dropped:
            with contextlib.suppress(FileNotFoundError):
                (self.root / name).unlink()
        _write_manifest(self.root, manifest)
        self._buffer: Dict[str, list] = {"regions": [], "scene": [], "labels": [], "names": []}
        self._buffered = 0

    @property
    def num_images(self) -> int:
        """Images stored in complete shards (a resuming caller skips this many)."""
        return self.manifest["splits"][self.split]["num_images"]

    @property
    def complete(self) -> bool:
        """True once :meth:`close` has finished the split (a rerun has nothing to do)."""
        return bool(self.manifest["splits"][self.split].get("complete"))

    def _keep_verified(self, entry: dict) -> dict:
        kept = []
        for shard in entry["shards"]:
            file = self.root / shard["file"]
            if not file.is_file():
                warnings.warn(f"{file}: listed in the manifest but missing; it and later shards will be rewritten", stacklevel=2)
                break
            digest = sha256_file(file)
            if digest != shard["sha256"]:
                warnings.warn(f"{file}: sha256 {digest[:12]}... differs from the manifest's "
                              f"{shard['sha256'][:12]}...; it and later shards will be rewritten", stacklevel=2)
                break
            kept.append(shard)
        if len(kept) < len(entry["shards"]) and entry.get("complete"):
            entry["complete"] = False
        entry = dict(entry, shards=kept, num_images=sum(s["num_images"] for s in kept))
        return entry

    def _remove_pending(self, entry: dict) -> None:
        name = entry.pop("writing", None)
        if name:
            for file in (self.root / name, self.root / (name + ".tmp")):
                with contextlib.suppress(FileNotFoundError):
                    file.unlink()

    def append(self, regions: np.ndarray, labels: np.ndarray, names: Sequence[str],
               scene: Optional[np.ndarray] = None) -> None:
        """Add images in order: regions (n, C, R) (VGG19: (n, 512, 196)), labels (n, S+U) int8 in
        {-1,0,1}, names (n,), scene (n, scene_dim) (VGG19: 4096) iff the writer was made with a
        ``scene_source``; C, R and scene_dim are the backbone's. Writes full shards as they fill."""
        regions = np.asarray(regions)
        labels = np.asarray(labels)
        n = len(names)
        self._check_batch(regions, labels, names, scene)
        start = 0
        while start < n:
            take = min(n - start, self.shard_size - self._buffered)
            sl = slice(start, start + take)
            self._buffer["regions"].append(regions[sl].astype(self.dtype, copy=False))
            self._buffer["labels"].append(labels[sl].astype(np.int8, copy=False))
            self._buffer["names"].extend(str(x) for x in names[sl])
            if self.has_scene:
                self._buffer["scene"].append(np.asarray(scene)[sl].astype(self.dtype, copy=False))
            self._buffered += take
            start += take
            if self._buffered == self.shard_size:
                self._flush()

    def _check_batch(self, regions, labels, names, scene) -> None:
        n = len(names)
        where = f"{self.split} (images {self.num_images + self._buffered}..)"
        if regions.shape != (n, self.channels, self.num_regions):
            raise ValueError(f"{where}: field 'regions': shape {regions.shape}, expected ({n}, {self.channels}, {self.num_regions})")
        if labels.shape != (n, self.num_seen + self.num_unseen):
            raise ValueError(f"{where}: field 'labels': shape {labels.shape}, expected ({n}, {self.num_seen + self.num_unseen})")
        if self.has_scene:
            if scene is None or np.asarray(scene).shape != (n, self.scene_dim):
                got = None if scene is None else np.asarray(scene).shape
                raise ValueError(f"{where}: field 'scene': shape {got}, expected ({n}, {self.scene_dim})")
        elif scene is not None:
            raise ValueError(f"{where}: field 'scene' given but the writer was made without a scene_source")
        # float16 overflows to inf above 65504: check after the cast the shard will really store.
        for field, arr in (("regions", regions), ("scene", scene)):
            if arr is None:
                continue
            with np.errstate(over="ignore"):  # overflow is what this check reports, by image
                stored = np.asarray(arr).astype(self.dtype, copy=False)
            bad = ~np.isfinite(stored).reshape(n, -1).all(axis=1)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise ValueError(f"{where}: image {names[i]!r}, field '{field}': not finite as {self.dtype}")
        bad = ~np.isin(labels, (-1, 0, 1)).all(axis=1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{where}: image {names[i]!r}, field 'labels': values outside {{-1, 0, 1}}")
        for name in names:
            if not isinstance(name, str) or not name or "/" in name:
                raise ValueError(f"{where}: image {name!r}, field 'names': expected a non-empty str without '/'")

    def _flush(self) -> None:
        if self._buffered == 0:
            return
        entry = self.manifest["splits"][self.split]
        index = len(entry["shards"])
        final = self.root / shard_filename(self.split, index)
        tmp = final.with_name(final.name + ".tmp")
        if not self.overwrite:
            for file in (final, tmp):
                if os.path.lexists(file):
                    raise PackedFormatError(
                        f"{file}: a file of this name is in the output folder but the manifest does not list it "
                        "(not written by this tool, or by a run that was not recorded); move it away, or pass "
                        "--overwrite to replace it")
        # Recorded before the file exists: a killed run's half-written shard is known to be ours.
        entry["writing"] = final.name
        _write_manifest(self.root, self.manifest)
        n = self._buffered
        regions = np.concatenate(self._buffer["regions"])
        labels = np.concatenate(self._buffer["labels"])
        names = self._buffer["names"]
        chunk = min(CHUNK_IMAGES, n)
        kw = {"compression": self.compression} if self.compression else {}
        # track_times=False keeps HDF5 from storing timestamps, so equal data gives equal bytes
        # (an interrupted-and-resumed conversion has the same checksums as a straight one).
        with h5py.File(tmp, "w", track_order=False) as f:
            # What the shard is, checked by readers against the manifest that lists it (a shard
            # of another split or dataset copied over this one is refused at open).
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["dataset"] = self.dataset
            f.attrs["split"] = self.split
            f.create_dataset("regions", data=regions, chunks=(chunk, self.channels, self.num_regions), track_times=False, **kw)
            if self.has_scene:
                scene = np.concatenate(self._buffer["scene"])
                f.create_dataset("scene", data=scene, chunks=(chunk, self.scene_dim), track_times=False, **kw)
            f.create_dataset("labels", data=labels, chunks=(chunk, labels.shape[1]), track_times=False, **kw)
            f.create_dataset("names", data=np.array(names, dtype=object), dtype=h5py.string_dtype("utf-8"),
                             track_times=False)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        digest = sha256_file(tmp)
        os.replace(tmp, final)
        _fsync_dir(self.root)
        entry["shards"].append({"file": final.name, "num_images": n, "sha256": digest})
        entry["num_images"] += n
        entry.pop("writing", None)
        _write_manifest(self.root, self.manifest)
        self._buffer = {"regions": [], "scene": [], "labels": [], "names": []}
        self._buffered = 0

    def close(self) -> dict:
        """Write the last (partial) shard, mark the split complete. Output: the manifest dict."""
        self._flush()
        entry = self.manifest["splits"][self.split]
        entry["complete"] = True
        _write_manifest(self.root, self.manifest)
        return self.manifest


def _short(value) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) < 80 else text[:77] + "..."


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


def resolve_backbone(name: str, data_root: Optional[PathLike] = None) -> Backbone:
    """The backbone a model must be built for (config ``MODEL.BACKBONE`` and ``DATA.ROOT``).

    Args:
        name: a registered name, or "" for "whatever the data records".
        data_root: a packed dataset folder; its manifest (when present) says which backbone made
            the features (none recorded: VGG19).
    Returns: the :class:`Backbone`; VGG19 when ``name`` is "" and there is no manifest.
    Raises: :class:`BackboneError` naming both when ``name`` differs from the data's backbone.
    """
    recorded = None
    if data_root:
        path = Path(data_root) / MANIFEST
        if path.is_file():
            recorded = backbone_of_manifest(read_manifest(data_root), str(path))
    if not name:
        return recorded or get_backbone(DEFAULT_BACKBONE)
    chosen = get_backbone(name)
    if recorded is not None and recorded.name != chosen.name:
        raise BackboneError(f"MODEL.BACKBONE = {chosen.name!r}, but the features in {data_root} were made by backbone "
                            f"{recorded.name!r} (manifest.json field 'backbone'); set MODEL.BACKBONE {recorded.name} "
                            f"(or \"\" to follow the data), or extract the features with --backbone {chosen.name}")
    return chosen

