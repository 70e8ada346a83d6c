"""What every ``biam-convert`` conversion shares (the command is :mod:`biam.cli.convert`): the
scene head of the released features' backbone, the resume check, and the loop that writes a
released reader's records into packed shards with their scene features.
"""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..backbones import DEFAULT_BACKBONE, get_backbone, torchvision_cache_file, weights_error_message
from . import released
from .packed import PackedDataset, PackedFormatError, PackedWriter

__all__ = ["SceneSetupError", "resolve_scene_head", "scene_fn", "check_resume", "convert_split", "SLOWDOWN_ENV"]


# Seconds to sleep after each shard; only for tests that kill a conversion midway.
SLOWDOWN_ENV = "BIAM_CONVERT_SLOWDOWN"


class SceneSetupError(RuntimeError):
    """No way to compute scene features was given (the message says how to provide one)."""


def resolve_scene_head(vgg_weights: Optional[str], fallback: Optional[str], no_scene: bool, seed: int = 0):
    """Pick the scene head of the released features' backbone (the default, VGG19).

    Output: ``(head or None, source string or None)``. Order: ``--no-scene`` -> (None, None);
    ``--vgg-weights FILE``; the backbone's weights file already in torchvision's cache
    (``torch.hub.get_dir()/checkpoints``; never downloaded); ``--scene-fallback random`` -> a
    seeded random head. Otherwise :class:`SceneSetupError`.
    """
    if no_scene:
        return None, None
    bb = get_backbone(DEFAULT_BACKBONE)
    if vgg_weights:
        return _scene_head_from_file(vgg_weights, bb), f"imagenet:{Path(vgg_weights).name}"
    cached = torchvision_cache_file(bb.weights_file)
    if cached.is_file():
        return _scene_head_from_file(str(cached), bb), f"imagenet:{cached.name}"
    if fallback == "random":
        return bb.stored_scene_head(None, seed), f"random-seed-{seed}"
    raise SceneSetupError(
        f"scene features need the ImageNet {bb.label} weights and none were found: pass --vgg-weights FILE "
        f"(a torchvision {bb.name} state dict, e.g. {bb.weights_file} from torchvision), or put that file in "
        f"{cached.parent}, or use --scene-fallback random (synthetic data / tests only; recorded in the manifest), "
        "or --no-scene (the trainer then computes scene features on the fly)"
    )


def _scene_head_from_file(path: str, bb):
    """The backbone's stored-region scene head from a state dict file; any refusal becomes one
    SceneSetupError naming it."""
    if not Path(path).is_file():
        raise SceneSetupError(f"--vgg-weights {path}: file not found")
    try:
        return bb.stored_scene_head(path, None)
    except (pickle.UnpicklingError, RuntimeError, ValueError, KeyError, TypeError, EOFError, OSError) as err:
        cause = err.__cause__ if isinstance(err.__cause__, pickle.UnpicklingError) else err
        raise SceneSetupError(weights_error_message(path, cause, bb.label, bb.weights_file)) from None


def scene_fn(head) -> Optional[Callable[[np.ndarray], np.ndarray]]:
    """(n, C, R) regions -> (n, scene_dim) float32 scene features, on the head's device."""
    if head is None:
        return None
    device = next(head.parameters()).device

    def run(regions: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return head(torch.from_numpy(regions).to(device)).float().cpu().numpy()

    return run


def check_resume(writer: PackedWriter, names: Sequence[str], out: Path, split: str) -> None:
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


def convert_split(writer: PackedWriter, records: Callable[[int], Iterator[released.Record]], names: Sequence[str],
                   scene: Optional[Callable], batch: int, desc: str, out: Path) -> None:
    """Write the records of ``records(start)`` into ``writer`` from where it stopped, ``batch``
    images at a time with their scene features; the names must be ``names``, in order."""
    check_resume(writer, names, out, writer.split)
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
