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

import argparse
import os
import pickle
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence

import numpy as np

from . import released
from ..utils.ownership import FolderBusyError, FolderLock, FolderOwnershipError, check_output_folder
from .packed import MANIFEST, PackedDataset, PackedFormatError, PackedWriter
from .safe_pickle import UnsafePickleError

__all__ = ["main", "convert_nus_wide", "convert_openimages", "resolve_scene_head", "NUS_WIDE_PATHS", "OPENIMAGES_PATHS"]


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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


def _parser() -> argparse.ArgumentParser:
    from ..datasets import get_dataset, list_datasets

    p = argparse.ArgumentParser(prog="biam-convert", description="Convert the released BiAM feature layout to packed shards.")
    sub = p.add_subparsers(dest="dataset", required=True)

    def common(sp):
        sp.add_argument("--src", required=True, help="the released datasets/ folder; file defaults are relative to it")
        sp.add_argument("--out", required=True,
                        help="output folder of the packed dataset: new, empty, or one this tool wrote (its "
                             "manifest.json); locked while the conversion runs (a second one there stops at once)")
        sp.add_argument("--splits", default="train,test", help="comma-separated splits to convert (default train,test)")
        sp.add_argument("--shard-size", type=_positive_int, default=1024, help="images per shard (default 1024)")
        sp.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="stored feature dtype")
        sp.add_argument("--vgg-weights", help="torchvision VGG19 state dict for the scene features")
        sp.add_argument("--scene-fallback", choices=("random",), help="seeded random VGG19 head if no weights (recorded)")
        sp.add_argument("--scene-seed", type=int, default=0, help="seed of --scene-fallback random")
        sp.add_argument("--no-scene", action="store_true", help="store no scene features (trainer computes them)")
        sp.add_argument("--overwrite", action="store_true",
                        help="start the given splits over instead of resuming them, and allow an --out folder "
                             "that holds files this tool did not record; only the files this command writes "
                             "(manifest.json, embeddings.npz, <split>-NNNNN.h5) are replaced, nothing else is "
                             "deleted (see docs/data_format.md)")
        sp.add_argument("--batch", type=_positive_int, default=64,
                        help="images per scene-feature batch (default 64; at least 1)")
        sp.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the scene head runs (auto: a GPU when present; on a CPU the head, "
                             "not the reading, bounds the conversion speed)")
        sp.add_argument("--embeddings", help="label embedding pickle")

    for name in list_datasets():
        layout = get_dataset(name).released
        if layout is None:  # made by a feature extractor only
            continue
        sp = sub.add_parser(name, help=layout.help)
        common(sp)
        for key, (flag, text) in layout.extra_flags.items():
            sp.add_argument(flag, dest=key, help=text)
        for key, flag in layout.path_flags.items():
            sp.add_argument(flag, dest=key, help=f"default: <src>/{layout.paths[key]}")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point ``biam-convert``. Returns the exit status."""
    from ..datasets import get_dataset

    args = _parser().parse_args(argv)
    src, out = Path(args.src), Path(args.out)
    if not src.is_dir():
        print(f"biam-convert: error: --src {src}: folder not found (the released datasets/ folder)", file=sys.stderr)
        return 1
    layout = get_dataset(args.dataset).released
    paths = {k: str(getattr(args, k, None) or (src / v)) for k, v in layout.paths.items()}
    paths.update({k: getattr(args, k) for k in layout.extra_flags})
    splits = [s for s in args.splits.split(",") if s]
    bad = [s for s in splits if s not in ("train", "test")]
    if bad:
        print(f"biam-convert: unknown split(s) {bad}; use train and/or test", file=sys.stderr)
        return 2
    try:
        head, source = resolve_scene_head(args.vgg_weights, args.scene_fallback, args.no_scene, args.scene_seed)
    except SceneSetupError as err:
        print(f"biam-convert: {err}", file=sys.stderr)
        return 2
    if head is not None:
        import torch

        if args.device == "cuda" and not torch.cuda.is_available():
            print("biam-convert: --device cuda but no CUDA device is available", file=sys.stderr)
            return 2
        use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
        head = head.to("cuda" if use_cuda else "cpu")
    fn = layout.convert
    try:
        # One writer per folder for the whole run; then the folder must be ours (its manifest) or
        # empty, unless --overwrite. Both stop here, before anything is read or written.
        with FolderLock(str(out), "biam-convert " + " ".join(argv if argv is not None else sys.argv[1:])):
            check_output_folder(str(out), record=MANIFEST, overwrite=args.overwrite)
            manifest = fn(src, out, paths=paths, splits=splits, shard_size=args.shard_size, dtype=args.dtype,
                          scene_head=head, scene_source=source, overwrite=args.overwrite, batch=args.batch)
    except (FolderBusyError, FolderOwnershipError) as err:
        print(f"biam-convert: error: {err}", file=sys.stderr)
        return 1
    except UnsafePickleError as err:
        print(f"biam-convert: error: {err} (the file is not loaded)", file=sys.stderr)
        return 1
    except (released.RecordError, PackedFormatError, FileNotFoundError, ValueError, KeyError,
            pickle.UnpicklingError) as err:
        print(f"biam-convert: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        # A disk or permission failure while writing: name the file the system names.
        print(f"biam-convert: error: {err.filename or out}: {err.strerror or err}", file=sys.stderr)
        return 1
    counts = ", ".join(f"{k}: {v['num_images']} images in {len(v['shards'])} shards" for k, v in manifest["splits"].items())
    print(f"biam-convert: wrote {out} ({counts}; scene: {source or 'none'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
