"""PackedWriter: one split of a packed dataset written shard by shard, resumably."""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import warnings
from pathlib import Path
from typing import Dict, Optional, Sequence

import h5py
import numpy as np

from ...backbones import DEFAULT_BACKBONE, backbone_of_manifest, get_backbone
from ...utils.io import refuse_link, sha256_file
from .manifest import (CHUNK_IMAGES, EMBEDDINGS, FEATURE_DTYPES, FORMAT_VERSION, MANIFEST, PackedFormatError, PathLike,
                       _fsync_dir, _short, _valid_split, _write_manifest, read_manifest, shard_filename)

def _check_room(path: Path, nbytes: int) -> None:
    """Raise OSError (ENOSPC / EFBIG, naming ``path``) when a shard of about ``nbytes`` cannot be
    written: HDF5 crashes the process on a write that fails midway, so the room is checked first."""
    need = int(nbytes * 1.05) + (1 << 20)  # HDF5's metadata and chunk index
    try:
        st = os.statvfs(path.parent)
        free = st.f_bavail * st.f_frsize
    except OSError:
        free = None
    if free is not None and free < need:
        raise OSError(errno.ENOSPC, f"No space left on device (the shard needs about {need >> 20} MB, "
                      f"{free >> 20} MB free)", str(path))
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and limit < need:
        raise OSError(errno.EFBIG, f"File too large (the shard needs about {need >> 20} MB, the file-size limit "
                      f"is {limit} bytes)", str(path))


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
        for file in (final, tmp):
            refuse_link(file, "a shard this command writes")
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
        _check_room(tmp, regions.nbytes + labels.nbytes + sum(self._buffer["scene"][i].nbytes
                                                              for i in range(len(self._buffer["scene"])))
                    + sum(len(x.encode("utf-8")) + 16 for x in names))
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # ours (listed as being written, or allowed by --overwrite); a link was refused above
        # Created exclusively and no-follow first, so HDF5 opens the file made here, never a link's target.
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644))
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
        refuse_link(final, "a shard this command writes")
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
