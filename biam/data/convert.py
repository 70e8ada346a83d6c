"""``biam-convert``: the released per-key HDF5 layout -> the packed shard format.

Usage::

    biam-convert nus_wide   --src datasets/ --out packed/nus_wide [--vgg-weights vgg19.pth]
    biam-convert openimages --src datasets/ --out packed/openimages --train-dir DIR --test-h5 FILE

One subcommand per registered dataset with a released layout (:mod:`biam.datasets`,
``DatasetInfo.released``): its input files, their defaults and its conversion function live in
the dataset's own file; this module holds what every conversion shares.

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

import os
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence

import numpy as np

from . import released
from .packed import PackedDataset, PackedFormatError, PackedWriter

__all__ = ["convert_nus_wide", "convert_openimages", "resolve_scene_head", "NUS_WIDE_PATHS", "OPENIMAGES_PATHS"]


def __getattr__(name: str):
    # The per-dataset parts moved into the dataset files (biam/datasets/); imported on first
    # use, as those files import this module's shared helpers.
    if name in ("convert_nus_wide", "NUS_WIDE_PATHS"):
        from ..datasets import nus_wide

        return getattr(nus_wide, name)
    if name in ("convert_openimages", "OPENIMAGES_PATHS"):
        from ..datasets import openimages

        return getattr(openimages, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

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




if __name__ == "__main__":
    # `python -m biam.data.convert`: the same command as biam-convert (biam.cli.convert).
    from biam.cli.convert import main

    raise SystemExit(main())
