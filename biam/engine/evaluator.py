"""``biam-evaluate``: the protocol of ``DATA.DATASET`` (:mod:`biam.datasets`) on the test split.

Loads a training checkpoint or a published plain ``state_dict`` (``MODEL.WEIGHTS``), scores the
test split in batches (each rank its own part under torchrun), prints the paper's table and
writes its own folder ``OUTPUT_DIR/eval/<TEST_SPLIT>-<weights file stem>/`` (see
:func:`evaluation_folder`): ``metrics.json`` as ``{"zsl": {...}, "gzsl": {...}}`` (and "seen"
for a protocol with that task, as Open Images) with fractions, ``config.yaml``, ``log.txt`` and
the record ``evaluation.json``. It never writes over a training run's files, so OUTPUT_DIR may be
the run's own folder.
With ``EVAL.GZSL_WEIGHTS`` (``--gzsl-checkpoint``) a second file is evaluated too, as the
original Open Images evaluation runs ``model_best_gzsl.pth`` and then ``model_best_zsl.pth``:
every row of each file is printed and kept in metrics.json under "files" (GZSL file first), and
the summary takes ZSL from ``MODEL.WEIGHTS`` and GZSL from the second file (:func:`combine_tasks`);
one file of ours serves both when the key is empty.
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..data.packed import PackedDataset
from ..datasets import check_manifest_dataset, get_dataset
from ..evaluation import chance_level, evaluate
from ..utils import comm
from ..utils.io import write_json
from ..utils.ownership import FolderLock, FolderOwnershipError, check_output_folder
from .runtime import LabelSpace, run_inference

__all__ = [
    "evaluate_split", "format_result", "protocol_for", "combine_tasks", "evaluation_folder", "EVAL_RECORD",
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
        result.chance = chance_level(label_matrix, get_dataset(cfg.DATA.DATASET).protocol, num_seen=labels.num_seen,
                                     ks=result.ks)
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
