"""``biam-convert``: the released feature layout -> packed shards.

Usage::

    biam-convert nus_wide   --src datasets/ --out packed/nus_wide [--vgg-weights vgg19.pth]
    biam-convert openimages --src datasets/ --out packed/openimages --train-dir DIR --test-h5 FILE

One subcommand per registered dataset with a released layout (:mod:`biam.datasets`,
``DatasetInfo.released``): its input files, their defaults and its conversion function live in
the dataset's own folder; :mod:`biam.data.convert` holds what every conversion shares.

Every record is checked (shape, dtype, finite, labels in {-1, 0, 1}); the first bad one stops the
conversion with its file, image and field. The output is written shard by shard (bounded
memory); a killed conversion rerun with the same arguments keeps the complete shards listed in
the manifest (after checking their SHA-256), restarts the unfinished one and ends with files
identical to an uninterrupted run.

The output folder is the conversion's own: it must be new, empty, or hold a ``manifest.json``
this tool wrote, unless ``--overwrite``; even then only the files the conversion writes are
replaced and nothing else is deleted. The folder is locked for the whole run
(:class:`biam.utils.ownership.FolderLock`), so a second conversion there stops at once.

Scene features (the frozen VGG19 fc7 of each image, the paper's scene branch) are computed here
once: ``--vgg-weights FILE`` (a torchvision VGG19 state dict), else torchvision's cache when it
already holds ``vgg19-dcbb9e9d.pth`` (nothing is downloaded), else ``--scene-fallback random`` (a
seeded random head, recorded as such) or ``--no-scene`` (the trainer computes them on the fly).

Exit status: 0 done; 1 bad or missing input, or a refused --out folder; 2 bad options; 4 another
process is writing --out; 5 the system refused a write (disk full, permission: the file is named).
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..data.convert import SceneSetupError, resolve_scene_head
from ..data.packed import PackedFormatError
from ..data.released import RecordError
from ..datasets import get_dataset, list_datasets
from ..utils.safe_pickle import UnsafePickleError
from ..utils.ownership import BUSY_EXIT, FolderBusyError, FolderOwnershipError, claim_output
from ._errors import SYSTEM_EXIT, ExitOn, describe_os_error, run_main


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


def _parser() -> argparse.ArgumentParser:
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

    # One subcommand per registered dataset that has a released layout to convert.
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
    scene = []

    def load_scene_head() -> int:
        scene.extend(resolve_scene_head(args.vgg_weights, args.scene_fallback, args.no_scene, args.scene_seed))
        return 0

    status = run_main("biam-convert", load_scene_head, [ExitOn(SceneSetupError, 2, label=None)])
    if status:
        return status
    head, source = scene
    if head is not None:
        if args.device == "cuda" and not torch.cuda.is_available():
            print("biam-convert: --device cuda but no CUDA device is available", file=sys.stderr)
            return 2
        use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
        head = head.to("cuda" if use_cuda else "cpu")
    fn = layout.convert

    def body() -> int:
        # One writer per folder for the whole run; then the folder must be ours (its manifest) or
        # empty, unless --overwrite. Both stop here, before anything is read or written.
        with claim_output(out, args.overwrite, "biam-convert", argv):
            manifest = fn(src, out, paths=paths, splits=splits, shard_size=args.shard_size, dtype=args.dtype,
                          scene_head=head, scene_source=source, overwrite=args.overwrite, batch=args.batch)
        counts = ", ".join(f"{k}: {v['num_images']} images in {len(v['shards'])} shards"
                           for k, v in manifest["splits"].items())
        print(f"biam-convert: wrote {out} ({counts}; scene: {source or 'none'})")
        return 0

    return run_main("biam-convert", body, [
        ExitOn(FolderBusyError, BUSY_EXIT),
        ExitOn(FolderOwnershipError, 1),
        ExitOn(UnsafePickleError, 1, describe=lambda err: f"{err} (the file is not loaded)"),
        ExitOn((RecordError, PackedFormatError, FileNotFoundError, ValueError, KeyError,
                pickle.UnpicklingError), 1),
        # A disk or permission failure while writing: name the file the system names.
        ExitOn(OSError, SYSTEM_EXIT, "system error", describe=lambda err: describe_os_error(err) if err.filename
               else f"{out}: {describe_os_error(err)}"),
    ])


if __name__ == "__main__":
    sys.exit(main())
