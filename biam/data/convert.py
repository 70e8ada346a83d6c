"""``biam-convert``: the released per-key HDF5 layout -> the packed shard format.

Usage::

    biam-convert nus_wide   --src datasets/ --out packed/nus_wide [--vgg-weights vgg19.pth]
    biam-convert openimages --src datasets/ --out packed/openimages --train-dir DIR --test-h5 FILE

Every record is checked (shape, dtype, finite, labels in {-1, 0, 1}); the first bad one stops the
conversion with its file, image and field. The output is written shard by shard (bounded
memory); a killed conversion rerun with the same arguments keeps the complete shards listed in
the manifest (after checking their SHA-256), restarts the unfinished one and ends with files
identical to an uninterrupted run.

The output folder is the conversion's own: it must be new, empty, or hold a ``manifest.json``
this tool wrote, unless ``--overwrite``; even then only the files the conversion writes are
replaced and nothing else is deleted. The folder is locked for the whole run
(:class:`biam.utils.ownership.FolderLock`), so a second conversion there stops at once.

Scene features (the frozen VGG19 fc7 of each image, the paper's scene branch) are computed here once:
``--vgg-weights FILE`` (a torchvision VGG19 state dict), else torchvision's cache when it
already holds ``vgg19-*.pth`` (nothing is downloaded), else ``--scene-fallback random`` (a seeded
random head, recorded as such) or ``--no-scene`` (the trainer computes them on the fly).
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence

import numpy as np

from . import released
from .embeddings import read_nus_wide_embeddings, read_openimages_embeddings
from ..utils.ownership import FolderBusyError, FolderLock, FolderOwnershipError, check_output_folder
from .packed import MANIFEST, PackedDataset, PackedFormatError, PackedWriter, save_embeddings
from .released import NUS_WIDE_LAYOUT
from .safe_pickle import UnsafePickleError

__all__ = ["convert_nus_wide", "convert_openimages", "resolve_scene_head", "NUS_WIDE_PATHS", "OPENIMAGES_PATHS"]

# Default locations relative to --src (the released ``datasets/`` folder).
NUS_WIDE_PATHS = dict(NUS_WIDE_LAYOUT)
OPENIMAGES_PATHS = {
    "classes": "OpenImages/2018_04/classes-trainable.txt",
    "unseen_ids": "OpenImages/2018_04/unseen_labels.pkl",
    "top400": "OpenImages/2018_04/top_400_unseen.csv",
    "descriptions": "OpenImages/2018_04/class-descriptions.csv",
    "embeddings": "OpenImages/wiki_contexts/OpenImage_w2v_context_window_10_glove-wiki-gigaword-300.pkl",
}
# Seconds to sleep after each shard; only for tests that kill a conversion midway.
SLOWDOWN_ENV = "BIAM_CONVERT_SLOWDOWN"


class SceneSetupError(RuntimeError):
    """No way to compute scene features was given (the message says how to provide one)."""


def resolve_scene_head(vgg_weights: Optional[str], fallback: Optional[str], no_scene: bool, seed: int = 0):
    """Pick the scene head. Output: ``(head or None, source string or None)``.

    Order: ``--no-scene`` -> (None, None); ``--vgg-weights FILE``; a ``vgg19-*.pth`` already in
    torchvision's cache (``torch.hub.get_dir()/checkpoints``; never downloaded);
    ``--scene-fallback random`` -> a seeded random head. Otherwise :class:`SceneSetupError`.
    """
    if no_scene:
        return None, None
    from biam.modeling.scene_head import SceneHead

    if vgg_weights:
        return _scene_head_from_file(vgg_weights), f"imagenet:{Path(vgg_weights).name}"
    import torch

    cache = Path(torch.hub.get_dir()) / "checkpoints"
    cached = sorted(cache.glob("vgg19-*.pth")) if cache.is_dir() else []
    cached = [p for p in cached if not p.name.startswith("vgg19_bn")]
    if cached:
        return _scene_head_from_file(str(cached[0])), f"imagenet:{cached[0].name}"
    if fallback == "random":
        return SceneHead.random(seed), f"random-seed-{seed}"
    raise SceneSetupError(
        "scene features need the ImageNet VGG19 weights and none were found: pass --vgg-weights FILE "
        "(a torchvision vgg19 state dict, e.g. vgg19-dcbb9e9d.pth from torchvision), or put that file in "
        f"{cache}, or use --scene-fallback random (synthetic data / tests only; recorded in the manifest), "
        "or --no-scene (the trainer then computes scene features on the fly)"
    )


def _scene_head_from_file(path: str):
    """SceneHead of a VGG19 state dict file; any refusal becomes one SceneSetupError naming it."""
    import pickle

    from biam.features import weights_error_message
    from biam.modeling.scene_head import SceneHead

    if not Path(path).is_file():
        raise SceneSetupError(f"--vgg-weights {path}: file not found")
    try:
        return SceneHead.from_file(path)
    except (pickle.UnpicklingError, RuntimeError, ValueError, KeyError, TypeError, EOFError, OSError) as err:
        cause = err.__cause__ if isinstance(err.__cause__, pickle.UnpicklingError) else err
        raise SceneSetupError(weights_error_message(path, cause)) from None


def _scene_fn(head) -> Optional[Callable[[np.ndarray], np.ndarray]]:
    """(n, 512, 196) regions -> (n, 4096) float32 scene features, on the head's device."""
    if head is None:
        return None
    import torch

    device = head.fc6.weight.device

    def run(regions: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return head(torch.from_numpy(regions).to(device)).float().cpu().numpy()

    return run


def _check_resume(writer: PackedWriter, names: Sequence[str], out: Path, split: str) -> None:
    """The images already packed must be the first ones of this source, in order."""
    done = writer.num_images
    if done > len(names):
        raise PackedFormatError(f"{out}: split '{split}' already holds {done} images but the source has {len(names)}; "
                                "use --overwrite or a fresh --out")
    if done:
        packed = PackedDataset(out, split, allow_incomplete=True)
        have = packed.names()
        packed.close()
        for i, (a, b) in enumerate(zip(have, names[:done])):
            if a != b:
                raise PackedFormatError(f"{out}: split '{split}' image {i} is {a!r} in the packed shards but {b!r} in "
                                        "the source; this is a different source: use --overwrite or a fresh --out")


def _convert_split(writer: PackedWriter, records: Callable[[int], Iterator[released.Record]], names: Sequence[str],
                   scene: Optional[Callable], batch: int, desc: str, out: Path) -> None:
    from tqdm import tqdm

    _check_resume(writer, names, out, writer.split)
    start = writer.num_images
    delay = float(os.environ.get(SLOWDOWN_ENV, "0") or 0)
    shards_before = len(writer.manifest["splits"][writer.split]["shards"])
    with tqdm(total=len(names), initial=start, desc=desc, unit="img") as bar:
        buf_names: List[str] = []
        buf_feats: List[np.ndarray] = []
        buf_labels: List[np.ndarray] = []

        def flush() -> None:
            regions = np.stack(buf_feats)
            writer.append(regions, np.stack(buf_labels), list(buf_names),
                          scene=scene(regions) if scene is not None else None)
            bar.update(len(buf_names))
            buf_names.clear(), buf_feats.clear(), buf_labels.clear()

        for i, (name, feats, labels) in enumerate(records(start)):
            if name != names[start + i]:
                raise released.RecordError(f"{desc}: image {start + i} is {name!r}, expected {names[start + i]!r}")
            buf_names.append(name)
            buf_feats.append(feats)
            buf_labels.append(labels)
            if len(buf_names) == batch:
                flush()
                if delay:
                    shards_now = len(writer.manifest["splits"][writer.split]["shards"])
                    if shards_now > shards_before:
                        shards_before = shards_now
                        time.sleep(delay)
        if buf_names:
            flush()
    writer.close()


def convert_nus_wide(src: Path, out: Path, *, paths: dict, splits: Sequence[str] = ("train", "test"),
                     shard_size: int = 1024, dtype: str = "float16", scene_head=None, scene_source: Optional[str] = None,
                     overwrite: bool = False, batch: int = 64) -> dict:
    """Convert NUS-WIDE. ``paths``: absolute file paths (keys of :data:`NUS_WIDE_PATHS`). Output: manifest."""
    seen, unseen, seen_tag_index = released.nus_wide_label_names(paths["tags"], paths["concepts"])
    seen_emb, unseen_emb = read_nus_wide_embeddings(paths["embeddings"], seen_tag_index, num_concepts=len(unseen))
    scene = _scene_fn(scene_head)
    manifest = None
    for k, split in enumerate(splits):
        names = released.read_img_names(paths[f"{split}_names"])
        reader = released.NusWideReader(paths[f"{split}_h5"], names, num_seen=len(seen), num_unseen=len(unseen), split=split)
        writer = PackedWriter(out, split, dataset="nus_wide", seen_labels=seen, unseen_labels=unseen, unseen_eval=None,
                              shard_size=shard_size, dtype=dtype, scene_source=scene_source, resume=not overwrite,
                              overwrite=overwrite)
        if k == 0:
            # After the writer has put down the manifest (the folder's record), never before it.
            save_embeddings(out, seen_emb, unseen_emb)
        _convert_split(writer, reader.records, names, scene, batch, f"nus_wide {split}", out)
        manifest = writer.manifest
    return manifest


def convert_openimages(src: Path, out: Path, *, paths: dict, splits: Sequence[str] = ("train", "test"),
                       shard_size: int = 1024, dtype: str = "float16", scene_head=None, scene_source: Optional[str] = None,
                       overwrite: bool = False, batch: int = 64) -> dict:
    """Convert Open Images. ``paths``: keys of :data:`OPENIMAGES_PATHS` plus ``train_dir``, ``test_h5``."""
    seen = released.read_classes_trainable(paths["classes"])
    unseen = released.read_unseen_ids(paths["unseen_ids"])
    top400 = released.read_top400(paths["top400"], num_unseen=len(unseen))
    seen_emb, unseen_emb = read_openimages_embeddings(paths["embeddings"], len(seen), len(unseen))
    extra = {}
    if paths.get("descriptions") and Path(paths["descriptions"]).is_file():
        desc = released.read_class_descriptions(paths["descriptions"])
        # An id without a description keeps its id as its name (listed, never silent).
        missing = [i for i in seen + unseen if i not in desc]
        if missing:
            print(f"note: {len(missing)} class id(s) have no description in {paths['descriptions']}, "
                  f"e.g. {missing[:3]}; their ids are used as names", file=sys.stderr)
        extra["label_descriptions"] = {"seen": [desc.get(i, i) for i in seen], "unseen": [desc.get(i, i) for i in unseen]}
    scene = _scene_fn(scene_head)
    manifest = None
    for k, split in enumerate(splits):
        if split == "train":
            if not paths.get("train_dir"):
                raise FileNotFoundError("Open Images: give the training shard folder with --train-dir")
            reader = released.OpenImagesReader(released.openimages_shard_files(paths["train_dir"]),
                                               num_seen=len(seen), num_unseen=None, unseen_pad=len(unseen))
        else:
            if not paths.get("test_h5"):
                raise FileNotFoundError("Open Images: give the test feature file with --test-h5")
            reader = released.OpenImagesReader([paths["test_h5"]], num_seen=len(seen), num_unseen=len(unseen))
        names = [i for _, ids in reader.index() for i in ids]
        if len(set(names)) != len(names):
            raise released.RecordError(f"Open Images {split}: an image id appears in more than one file")
        writer = PackedWriter(out, split, dataset="openimages", seen_labels=seen, unseen_labels=unseen, unseen_eval=top400,
                              shard_size=shard_size, dtype=dtype, scene_source=scene_source, resume=not overwrite,
                              overwrite=overwrite, extra=extra)
        if k == 0:
            save_embeddings(out, seen_emb, unseen_emb)  # after the manifest, the folder's record
        _convert_split(writer, reader.records, names, scene, batch, f"openimages {split}", out)
        manifest = writer.manifest
    return manifest


if __name__ == "__main__":
    # `python -m biam.data.convert`: the same command as biam-convert (biam.cli.convert).
    from biam.cli.convert import main

    raise SystemExit(main())
