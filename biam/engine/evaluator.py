"""``biam-evaluate``: the protocol of ``DATA.DATASET`` (:mod:`biam.datasets`) on the test split.

Loads a training checkpoint or a published plain ``state_dict`` (``MODEL.WEIGHTS``), scores the
test split in batches (each rank its own part under torchrun), prints the paper's table and
writes its own folder ``OUTPUT_DIR/eval/<TEST_SPLIT>-<weights file stem>/`` (see
:func:`evaluation_folder`): ``metrics.json`` as ``{"zsl": {...}, "gzsl": {...}}`` with
fractions, ``config.yaml``, ``log.txt`` and the record ``evaluation.json``. It never writes over
a training run's files, so OUTPUT_DIR may be the run's own folder.
With ``EVAL.GZSL_WEIGHTS`` (``--gzsl-checkpoint``) the GZSL row comes from a second file, as the
original Open Images evaluation takes ZSL from ``model_best_zsl.pth`` and GZSL from
``model_best_gzsl.pth``; one file of ours serves both when the key is empty.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..config import ConfigError, add_config_arguments, dump_cfg, load_cfg
from ..data.packed import PackedDataset, PackedFormatError
from ..datasets import check_manifest_dataset, get_dataset
from ..evaluation import chance_level, evaluate
from ..modeling import build_model
from ..utils import comm
from ..utils.io import write_json
from ..utils.ownership import FolderBusyError, FolderLock, FolderOwnershipError, check_output_folder
from ..utils.logging import setup_logger
from . import checkpoint as ckpt
from .runtime import LabelSpace, build_label_space, build_scene_head, resolve_amp, run_inference

__all__ = [
    "evaluate_split", "format_result", "main", "protocol_for", "combine_tasks", "evaluation_folder", "EVAL_RECORD",
]

# The record that marks an evaluation folder as biam-evaluate's own.
EVAL_RECORD = "evaluation.json"


def evaluation_folder(cfg) -> str:
    """``OUTPUT_DIR/eval/<TEST_SPLIT>-<stem of MODEL.WEIGHTS>``: one folder per split and weights file."""
    stem = os.path.splitext(os.path.basename(cfg.MODEL.WEIGHTS.rstrip("/")))[0] or "weights"
    return os.path.join(cfg.OUTPUT_DIR, "eval", f"{cfg.DATA.TEST_SPLIT}-{stem}")


def prepare_evaluation_folder(cfg, overwrite: bool = False) -> "tuple[str, FolderLock]":
    """Rank 0: lock the evaluation folder and check it holds only an earlier evaluation's files.

    Returns ``(folder, lock)``. Raises FolderOwnershipError (OUTPUT_DIR a file, not writable,
    or the folder holding files biam-evaluate did not write, without ``overwrite``) or
    FolderBusyError (another evaluation of the same weights and split is writing there).
    """
    if os.path.exists(cfg.OUTPUT_DIR) and not os.path.isdir(cfg.OUTPUT_DIR):
        raise FolderOwnershipError(f"OUTPUT_DIR {cfg.OUTPUT_DIR} is a file, not a folder; choose a folder path")
    folder = evaluation_folder(cfg)
    lock = FolderLock(folder, "biam-evaluate " + " ".join(sys.argv[1:])).acquire()
    try:
        record = check_output_folder(folder, record=EVAL_RECORD, overwrite=overwrite)
        if record is not None and record.get("tool") != "biam-evaluate":
            raise FolderOwnershipError(f"{os.path.join(folder, EVAL_RECORD)}: not a biam-evaluate record; "
                                       "choose another OUTPUT_DIR")
        write_json(os.path.join(folder, EVAL_RECORD), {
            "tool": "biam-evaluate", "weights": os.path.abspath(cfg.MODEL.WEIGHTS), "data_root": cfg.DATA.ROOT,
            "split": cfg.DATA.TEST_SPLIT, "command": " ".join(sys.argv),
            "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "files": ["config.yaml", "log.txt", "metrics.json"],
        })
    except BaseException:
        lock.release()
        raise
    return folder, lock


def protocol_for(cfg) -> Callable[..., Any]:
    """``fn(scores, labels, num_seen) -> EvalResult``: the protocol of ``DATA.DATASET``'s registry
    entry with the config's options bound (``EVAL.PUBLISHED_OPENIMAGES_AP`` for a protocol with a
    published pooled AP)."""
    protocol = get_dataset(cfg.DATA.DATASET).protocol
    return lambda scores, labels, num_seen: evaluate(
        scores, labels, protocol, num_seen=num_seen, published_ap=cfg.EVAL.PUBLISHED_OPENIMAGES_AP)


def evaluate_split(
    model: nn.Module,
    dataset: PackedDataset,
    labels: LabelSpace,
    cfg,
    device: torch.device,
    amp_dtype: Optional[torch.dtype],
    scene_head,
    loader_fn: Callable[[PackedDataset, int], Any],
):
    """Score ``dataset`` with ``model`` over the GZSL label list and run the protocol.

    Returns the protocol's result object (``.to_dict()`` gives the metrics.json structure).
    Raises ValueError when the packed data's manifest names another dataset than ``DATA.DATASET``.
    """
    check_manifest_dataset(cfg.DATA.DATASET, dataset.manifest, os.path.join(str(dataset.root), "manifest.json"))
    loader = loader_fn(dataset, cfg.EVAL.BATCH_SIZE)
    bar = None
    if comm.is_main_process():
        from tqdm import tqdm

        bar = tqdm(total=len(dataset), desc="scoring test images", unit="img", leave=False, file=sys.stderr)
    scores, label_matrix = run_inference(
        model, loader, labels.all_eval, labels.eval_columns, device, amp_dtype, scene_head,
        progress=(lambda n: bar.update(n * comm.get_world_size())) if bar is not None else None,
    )
    if bar is not None:
        bar.close()
    protocol = protocol_for(cfg)
    # Metrics run where the scores are cheapest to sort: the GPU when there is one.
    metric_device = device if device.type == "cuda" else torch.device("cpu")
    result = protocol(scores.to(metric_device), label_matrix.to(metric_device), labels.num_seen)
    if cfg.EVAL.REPORT_CHANCE:
        # Expected metrics of random scores, computed exactly from the labels (no sampling noise).
        result.chance = chance_level(label_matrix, dataset=cfg.DATA.DATASET, num_seen=labels.num_seen, ks=result.ks)
    return result


def combine_tasks(zsl_result, gzsl_result):
    """One result with the ZSL row of ``zsl_result`` and the GZSL row of ``gzsl_result``.

    Both are protocol results of the same test split (two weight files); the chance level,
    computed from the labels alone, is the same for both and is kept from ``zsl_result``.
    """
    from dataclasses import replace

    return replace(
        zsl_result,
        metrics={"zsl": zsl_result.metrics["zsl"], "gzsl": gzsl_result.metrics["gzsl"]},
        per_label_ap={task: r.per_label_ap[task] for task, r in (("zsl", zsl_result), ("gzsl", gzsl_result))
                      if task in r.per_label_ap},
    )


def format_result(result, cfg) -> str:
    """The paper's table, with the chance level rows (expected metrics of random scores) when computed."""
    return result.format_table(chance=result.chance)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="biam-evaluate",
        description="Evaluate a BiAM checkpoint (ours or a published state_dict) on the test split with the "
                    "protocol of DATA.DATASET; prints the paper's table and writes metrics.json, config.yaml and "
                    "log.txt into its own folder OUTPUT_DIR/eval/<TEST_SPLIT>-<checkpoint name>/ (never over a "
                    "training run's files). A second evaluation of the same checkpoint and split stops at once.",
    )
    add_config_arguments(parser)
    parser.add_argument("--checkpoint", default="", metavar="FILE",
                        help="weights to evaluate (overrides MODEL.WEIGHTS): a training checkpoint or a published state_dict")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into an evaluation folder that holds files biam-evaluate did not write (only "
                             "its own metrics.json, config.yaml, log.txt and evaluation.json are replaced)")
    parser.add_argument("--gzsl-checkpoint", default="", metavar="FILE",
                        help="weights for the GZSL row only (overrides EVAL.GZSL_WEIGHTS); the ZSL row then comes "
                             "from --checkpoint, as the original Open Images evaluation uses model_best_zsl.pth and "
                             "model_best_gzsl.pth")
    # Options may come before, between or after the KEY VALUE overrides.
    return parser.parse_intermixed_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_cfg(args.config_file or None, args.opts, freeze=False)
    except ConfigError as err:
        print(f"biam-evaluate: config error: {err}", file=sys.stderr)
        return 2
    if args.checkpoint:
        cfg.MODEL.WEIGHTS = args.checkpoint
    if args.gzsl_checkpoint:
        cfg.EVAL.GZSL_WEIGHTS = args.gzsl_checkpoint
    cfg.freeze()
    if not cfg.MODEL.WEIGHTS:
        print("biam-evaluate: no weights given: pass --checkpoint FILE or MODEL.WEIGHTS FILE "
              "(published checkpoints: see pretrained_weights/README.md)", file=sys.stderr)
        return 2
    lock = None
    try:
        device = comm.init_distributed(cfg.DEVICE)
        out_dir = evaluation_folder(cfg)
        refusal = None
        if comm.is_main_process():
            try:
                out_dir, lock = prepare_evaluation_folder(cfg, overwrite=args.overwrite)
                dump_cfg(cfg, os.path.join(out_dir, "config.yaml"))
                if os.path.isfile(os.path.join(out_dir, "log.txt")):
                    os.remove(os.path.join(out_dir, "log.txt"))  # this evaluation's log, not appended to the last
            except (FolderBusyError, FolderOwnershipError) as err:
                refusal = err
        # Every rank stops when rank 0 may not write (else the others would wait for it).
        shared = comm.broadcast_object(None if refusal is None else (isinstance(refusal, FolderBusyError), str(refusal)))
        if shared is not None:
            raise refusal if refusal is not None else (FolderBusyError if shared[0] else FolderOwnershipError)(shared[1])
        logger = setup_logger(out_dir)
        dataset = PackedDataset(cfg.DATA.ROOT, cfg.DATA.TEST_SPLIT)
        if cfg.DATA.VERIFY_CHECKSUMS:
            dataset.verify()
        labels = build_label_space(dataset, device, cfg.MODEL.EMBED_DIM)
        scene_head = build_scene_head(cfg.MODEL.SCENE_HEAD_WEIGHTS, dataset, device)
        from ..data.loader import build_loader

        def evaluate_weights(path: str):
            model = build_model(cfg)
            ckpt.load_model_weights(model, path)
            model.to(device).eval()
            return evaluate_split(
                model, dataset, labels, cfg, device, resolve_amp(cfg.AMP, device), scene_head,
                loader_fn=lambda ds, bs: build_loader(
                    ds, batch_size=bs, shuffle=False, rank=comm.get_rank(), world_size=comm.get_world_size(),
                    num_workers=cfg.DATA.NUM_WORKERS, pin_memory=device.type == "cuda", float32=device.type != "cuda"),
            )

        gzsl_weights = cfg.EVAL.GZSL_WEIGHTS
        if gzsl_weights and not os.path.isfile(gzsl_weights):
            raise ckpt.CheckpointError(f"EVAL.GZSL_WEIGHTS: checkpoint not found: {gzsl_weights}")
        result = evaluate_weights(cfg.MODEL.WEIGHTS)
        source = cfg.MODEL.WEIGHTS
        if gzsl_weights:
            result = combine_tasks(result, evaluate_weights(gzsl_weights))
            source = f"ZSL: {cfg.MODEL.WEIGHTS}, GZSL: {gzsl_weights}"
        logger.info(f"{source} on {cfg.DATA.ROOT} [{cfg.DATA.TEST_SPLIT}]:\n" + format_result(result, cfg))
        if comm.is_main_process():
            out = os.path.join(out_dir, "metrics.json")
            payload = result.to_dict()
            if result.chance is not None:
                payload["chance"] = result.chance.to_dict()
            write_json(out, payload)
            logger.info(f"wrote {out}")
    except FolderBusyError as err:
        print(f"biam-evaluate: error: {err}", file=sys.stderr)
        return 4
    except (ckpt.CheckpointError, PackedFormatError, FileNotFoundError, ValueError, FolderOwnershipError) as err:
        print(f"biam-evaluate: error: {err}", file=sys.stderr)
        return 1
    finally:
        if lock is not None:
            lock.release()
        comm.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
