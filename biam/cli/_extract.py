"""The run skeleton and exit codes the three feature extractors share (``extract_nus_wide``,
``extract_openimages``, ``extract_own``)."""

from __future__ import annotations

import argparse
import contextlib
import pickle
from pathlib import Path
from typing import Callable, Optional, Sequence, Type

import numpy as np

from ..backbones import (DEFAULT_BACKBONE, WeightsNotFoundError, check_weights_available, get_backbone,
                         list_backbones, torchvision_cache_file)
from ..data.packed import PackedFormatError, load_embeddings, read_manifest
from ..data.splits import SplitSpec
from ..extraction import extract_split
from ..utils import comm
from ..utils.ownership import BUSY_EXIT, FolderBusyError, FolderOwnershipError, claim_output
from ._errors import ExitOn, run_main, system_error

__all__ = ["INPUT_ERRORS", "run_extractor", "check_label_files", "run_split", "add_extraction_arguments", "add_label_embedding_arguments",
           "add_weight_arguments", "add_backbone_argument", "check_extraction_arguments"]

# Bad or missing input, weights or --out folder: one line naming the file, exit status 2
# (another process writing --out: 4, as every command; the system refusing a write: 5).
INPUT_ERRORS = (WeightsNotFoundError, FileNotFoundError, PackedFormatError, KeyError, ValueError,
                FolderOwnershipError, pickle.UnpicklingError)


def run_extractor(tool: str, parser: argparse.ArgumentParser, args: argparse.Namespace, work: Callable[[], None],
                  errors: Sequence[Type[BaseException]] = (), claim_before_joining: bool = True) -> int:
    """Run one extraction command -> its exit status (0 done, 2 bad input, see INPUT_ERRORS; 4 --out
    held by another process; 5 the system refused a write).

    Checks the shared extraction arguments (a usage error exits through ``parser``), then the
    weights. With ``claim_before_joining``, rank 0 takes ``args.out`` (lock and
    ownership, :func:`biam.utils.ownership.claim_output`) before joining torchrun's process group, so a
    refusal exits at once and torchrun stops the other ranks; otherwise ``work`` takes it itself
    once it has checked its inputs. ``errors``: the tool's own bad-input exceptions (exit 2 too).
    """

    check_extraction_arguments(parser, args)

    def body() -> int:
        check_weights_available(args.weights, args.random_weights, tool, backbone=args.backbone)
        claim = claim_output(args.out, args.overwrite, tool) if claim_before_joining else contextlib.nullcontext()
        with claim:
            # Long timeout: ranks may finish hours apart when an extraction resumes.
            comm.init_distributed(args.device, timeout_minutes=24 * 60)
            work()
        return 0

    return run_main(tool, body, (ExitOn(FolderBusyError, BUSY_EXIT), ExitOn(tuple(errors) + INPUT_ERRORS, 2),
                                 system_error()), cleanup=comm.destroy)


def check_label_files(out, seen, unseen, vectors, overwrite: bool, labels_file: Optional[str] = None,
                      dataset: Optional[str] = None) -> bool:
    """Before a rerun on ``out``: do its ``embeddings.npz`` (and ``labels_file``) already hold these
    rows and labels? True: nothing to rewrite; False: none there yet (or ``overwrite``). Rows
    for other labels, in another order, or from other word vectors are refused (PackedFormatError
    naming the difference), so every embedding row keeps belonging to its label."""
    root = Path(out)
    if overwrite or not (root / "manifest.json").is_file():
        return False
    names = list(seen) + list(unseen)
    manifest = read_manifest(root)
    if dataset is not None and manifest.get("dataset") != dataset:
        raise PackedFormatError(f"{root / 'manifest.json'}: --out holds a packed dataset of {manifest.get('dataset')!r}, "
                                f"this run writes {dataset!r}; nothing was changed. Use a new --out folder")
    if labels_file is not None and (root / labels_file).is_file():
        there = (root / labels_file).read_text(encoding="utf-8").splitlines()
        if there != names:
            i = next((i for i, (a, b) in enumerate(zip(there, names)) if a != b), min(len(there), len(names)))
            raise PackedFormatError(
                f"{root / labels_file}: lists other labels or another order than this run (line {i + 1}: "
                f"{there[i] if i < len(there) else 'none'!r} there, {names[i] if i < len(names) else 'none'!r} now); "
                "nothing was changed. Use a new --out folder, or --overwrite to start this one over")
    if not (root / "embeddings.npz").is_file():
        return False
    old_seen, old_unseen = load_embeddings(root, manifest)
    for side, old, new, labels in (("seen", old_seen, vectors[: len(seen)], seen),
                                   ("unseen", old_unseen, vectors[len(seen):], unseen)):
        new = np.asarray(new, dtype=np.float32)
        if old.shape != new.shape:
            raise PackedFormatError(f"{root / 'embeddings.npz'}: array '{side}' has shape {old.shape}, this run's "
                                    f"{new.shape}; nothing was changed. Use a new --out folder, or --overwrite")
        differ = np.flatnonzero(~(old == new).all(axis=1))
        if len(differ):
            i = int(differ[0])
            raise PackedFormatError(
                f"{root / 'embeddings.npz'}: array '{side}' row {i} (label {labels[i]!r}) differs from this run's "
                f"({len(differ)} row(s) differ: other word vectors or labels?); nothing was changed. Use a new "
                "--out folder, or --overwrite to rewrite the embeddings")
    return True


def add_label_embedding_arguments(parser, embeddings_help: str, glove_help: str) -> None:
    """``--embeddings PICKLE`` or ``--glove FILE.txt`` (one required), and ``--glove-missing``."""
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--embeddings", metavar="PICKLE", help=embeddings_help)
    group.add_argument("--glove", metavar="FILE.txt", help=glove_help)
    parser.add_argument("--glove-missing", choices=("error", "skip-word", "zero"), default="error",
                        help="labels with words the GloVe file lacks: error (default), average the known words, "
                             "or a zero row")


def add_weight_arguments(parser, weights_flag: str = "--weights", random_flag: str = "--random-weights") -> None:
    """Add ``--weights FILE`` and ``--random-weights SEED`` (or other spellings) to an argparse parser."""
    default = get_backbone(DEFAULT_BACKBONE)
    parser.add_argument(weights_flag, default=None, metavar="FILE",
                        help=f"the backbone's ImageNet state dict ({default.label}: {default.weights_file}); default: "
                             f"torchvision's cache ({torchvision_cache_file(default.weights_file).parent}). CLIP "
                             "backbones: an open_clip checkpoint FILE, TAG=FILE, or online an open_clip TAG such as "
                             "openai (docs/methods.md)")
    parser.add_argument(random_flag, type=int, default=None, metavar="SEED",
                        help="use seeded random backbone weights instead (tests and smoke runs only; recorded in the "
                             "manifest)")


def add_backbone_argument(parser) -> None:
    """Add ``--backbone NAME`` (a registered backbone, default vgg19) to an argparse parser."""
    parser.add_argument("--backbone", choices=list_backbones(), default=DEFAULT_BACKBONE,
                        help="feature extractor (default vgg19: conv5_4 at 224x224, 512 x 14 x 14 regions, fc7 scene "
                             "feature, as the released features; resnet101: layer4 at 448x448, 2048 x 14 x 14, pooled "
                             "scene feature; clip_rn50: CLIP RN50 layer4 at 224x224, 2048 x 7 x 7, image embedding; "
                             "clip_vit_b16: CLIP ViT-B/16 patch tokens in the joint space, 512 x 14 x 14, image "
                             "embedding); recorded in the manifest, see docs/own_data.md and docs/methods.md")


def add_extraction_arguments(parser) -> None:
    """Options shared by the feature extractors: output, weights, batching, sharding, device."""
    parser.add_argument("--out", required=True, metavar="DIR", help="packed dataset directory to write (manifest.json, shards)")
    add_backbone_argument(parser)
    add_weight_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per forward pass (default 32)")
    parser.add_argument("--workers", type=int, default=4, metavar="N",
                        help="DataLoader worker processes decoding images (default 4; 0 = in the main process)")
    parser.add_argument("--shard-size", type=int, default=4096, metavar="N",
                        help="images per shard file (default 4096); a resumed run must use the same value")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16",
                        help="stored feature dtype (default float16, as the trainer reads it)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                        help="auto: this rank's GPU when there is one (default)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start the split over instead of resuming / skipping a complete one, and allow an "
                             "--out folder holding files this tool did not record; only the files this command "
                             "writes (manifest.json, embeddings.npz, <split>-NNNNN.h5, unreadable-<split>.tsv) "
                             "are replaced, nothing else is deleted")


def check_extraction_arguments(parser, args) -> None:
    """Reject impossible values of :func:`add_extraction_arguments` options via ``parser.error``."""
    for flag, value, low in (("--batch-size", args.batch_size, 1), ("--workers", args.workers, 0),
                             ("--shard-size", args.shard_size, 1)):
        if value < low:
            parser.error(f"{flag} must be >= {low}, got {value}")
    if args.weights is not None and args.random_weights is not None:
        parser.error("give either --weights FILE or --random-weights SEED, not both")


def run_split(spec: SplitSpec, args: argparse.Namespace, tool: str) -> dict:
    """:func:`extract_split` with the options of :func:`add_extraction_arguments`."""
    return extract_split(spec, args.out, weights=args.weights, random_seed=args.random_weights,
                         batch_size=args.batch_size, num_workers=args.workers, shard_size=args.shard_size,
                         dtype=args.dtype, device=args.device, overwrite=args.overwrite, tool=tool,
                         backbone=args.backbone)

