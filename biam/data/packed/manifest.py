"""The packed format's manifest, embeddings file and shared names (see ``docs/data_format.md``)."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np

from ...backbones import DEFAULT_BACKBONE, Backbone, BackboneError, backbone_of_manifest, get_backbone
from ...utils.io import atomic_open

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
# A manifest lists labels and shards: Open Images' (7,586 labels, ~500 shards) is well under 1 MB.
MAX_MANIFEST_CHARS = 64 << 20

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
        text = path.read_text(encoding="utf-8")
        if len(text) > MAX_MANIFEST_CHARS:
            raise PackedFormatError(f"{path}: {len(text)} characters; a manifest holds at most {MAX_MANIFEST_CHARS}")
        manifest = json.loads(text, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as err:
        if isinstance(err, PackedFormatError):
            raise
        raise PackedFormatError(f"{path}: not valid JSON ({err})") from err
    except RecursionError:
        raise PackedFormatError(f"{path}: nested too deeply to be a manifest") from None
    _check_manifest(manifest, str(path))
    return manifest


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


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
    for side in ("seen", "unseen"):
        bad = next((x for x in labels[side] if not isinstance(x, str) or not x), None)
        need(bad is None and all(isinstance(x, str) and x for x in labels[side]), f"labels.{side}",
             f"expected non-empty label names (str), found {bad!r}")
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
    for name, arr in (("seen", seen), ("unseen", unseen)):
        _check_rows(arr, path, name, manifest["labels"][name] if manifest is not None else None)
    return seen, unseen


def _check_rows(arr: np.ndarray, path: Path, name: str, labels) -> None:
    """Every row finite with a representable norm (a NaN or inf row poisons every score): else
    an error naming the label. An all-zero row (what ``--glove-missing zero`` writes on purpose)
    scores the same for every image: a warning naming each such label."""
    if arr.ndim != 2:
        return
    with np.errstate(over="ignore", invalid="ignore"):
        norms = np.linalg.norm(arr.astype(np.float64), axis=1)
    bad = ~np.isfinite(arr).all(axis=1) | ~np.isfinite(norms)

    def label(i: int) -> str:
        return f"label {labels[i]!r}" if labels is not None and i < len(labels) else "label"

    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise PackedFormatError(f"{path}: array '{name}' row {i} ({label(i)}) is not finite "
                                f"({int(bad.sum())} such row(s)); re-create the embeddings for that label")
    zero = np.flatnonzero(norms == 0)
    if len(zero):
        shown = ", ".join(f"row {int(i)} ({label(int(i))})" for i in zero[:5])
        warnings.warn(f"{path}: array '{name}': {len(zero)} all-zero row(s): {shown}; such a label scores the "
                      "same for every image (no word vector was found for it?)", stacklevel=3)


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` (C, D) divided by their L2 norm (zero rows stay zero). Output float32 (C, D);
    a row too large for a float32 norm (past ~1.8e19) is normalised in float64."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(over="ignore"):  # checked below
        norm = np.linalg.norm(x, axis=-1, keepdims=True)
    if np.isfinite(norm).all():
        return x / np.maximum(norm, eps)
    # The float32 squares overflow past ~1.8e19 (the row would become zero); those rows in
    # float64. Other rows keep the float32 result bit for bit.
    wide = x.astype(np.float64)
    wide = (wide / np.maximum(np.linalg.norm(wide, axis=-1, keepdims=True), eps)).astype(np.float32)
    with np.errstate(invalid="ignore"):
        narrow = x / np.maximum(norm, eps)
    return np.where(np.isfinite(norm), narrow, wide)


def _short(value) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) < 80 else text[:77] + "..."


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
