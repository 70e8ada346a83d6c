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

import contextlib
import ctypes
import datetime as _dt
import json
import os
import sys
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..data.packed import PackedDataset
from ..datasets import check_manifest_dataset, get_dataset
from ..evaluation import chance_level, evaluate
from ..utils import comm
from ..utils.io import ensure_subfolder, refuse_link, sha256_file, write_json
from ..utils.ownership import LOCK_NAME, FolderLock, FolderOwnershipError, check_output_folder
from .checkpoint import CheckpointError
from .runtime import LabelSpace, run_inference

__all__ = [
    "evaluate_split", "format_result", "protocol_for", "combine_tasks", "evaluation_folder", "EVAL_RECORD",
    "EvaluationFolder",
]

# The record that marks an evaluation folder as biam-evaluate's own.
EVAL_RECORD = "evaluation.json"


def evaluation_folder(cfg) -> str:
    """``OUTPUT_DIR/eval/<TEST_SPLIT>-<stem of MODEL.WEIGHTS>``: one folder per split and weights file
    (a second file of the same name but other content gets ``...-<sha256[:12]>``, see
    :class:`EvaluationFolder`)."""
    stem = os.path.splitext(os.path.basename(cfg.MODEL.WEIGHTS.rstrip("/")))[0] or "weights"
    return os.path.join(cfg.OUTPUT_DIR, "eval", f"{cfg.DATA.TEST_SPLIT}-{stem}")


# The files an evaluation folder holds besides its record (the record is renamed in last).
EVAL_FILES = ("config.yaml", "log.txt", "metrics.json")


class EvaluationFolder:
    """Rank 0's evaluation folder: written into a new folder, renamed into place when complete.

    ``open()`` chooses the folder (:func:`evaluation_folder`, unless that one holds an
    evaluation of *other* weights content: then ``<name>-<sha256[:12]>``), locks it, checks it holds only an earlier evaluation's files (or
    ``overwrite``) and returns a new staging folder ``eval/.<name>.new`` to write into.
    ``commit()`` puts the staged folder in place (an atomic exchange where the system has one;
    with ``--overwrite`` beside other files, file by file with the record last), so a failed or
    killed evaluation leaves the earlier one exactly as it was. Raises FolderOwnershipError /
    FolderBusyError / LinkRefusedError before anything is written.
    """

    def __init__(self, cfg, overwrite: bool = False):
        self.cfg, self.overwrite = cfg, overwrite
        self.lock: Optional[FolderLock] = None
        self.stage: Optional[str] = None
        self.final = evaluation_folder(cfg)
        self.merge = False
        self.created = False

    def open(self) -> str:
        cfg = self.cfg
        if os.path.exists(cfg.OUTPUT_DIR) and not os.path.isdir(cfg.OUTPUT_DIR):
            raise FolderOwnershipError(f"OUTPUT_DIR {cfg.OUTPUT_DIR} is a file, not a folder; choose a folder path")
        if not os.path.isfile(cfg.MODEL.WEIGHTS):
            raise CheckpointError(f"checkpoint not found: {cfg.MODEL.WEIGHTS}")
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        eval_dir = ensure_subfolder(os.path.join(cfg.OUTPUT_DIR, "eval"))
        self.sha256 = sha256_file(cfg.MODEL.WEIGHTS)
        base = os.path.basename(self.final)
        name = base if self._same_weights(os.path.join(eval_dir, base)) else f"{base}-{self.sha256[:12]}"
        self.final = os.path.join(eval_dir, name)
        refuse_link(self.final, "the evaluation folder")
        self.created = not os.path.exists(self.final)
        # The lock lives in the folder it guards; the staged folder that replaces it holds none,
        # so the lock file goes with the earlier evaluation and is removed with it.
        self.lock = FolderLock(self.final, "biam-evaluate " + " ".join(sys.argv[1:])).acquire()
        try:
            if os.path.isdir(self.final):
                record = check_output_folder(self.final, record=EVAL_RECORD, overwrite=self.overwrite)
                if record is not None and record.get("tool") != "biam-evaluate":
                    raise FolderOwnershipError(f"{os.path.join(self.final, EVAL_RECORD)}: not a biam-evaluate "
                                               "record; choose another OUTPUT_DIR")
                own = {LOCK_NAME, EVAL_RECORD, *EVAL_FILES}
                self.merge = any(e not in own for e in os.listdir(self.final))  # --overwrite beside other files
            stage = os.path.join(eval_dir, f".{name}.new")
            _remove_stage(stage)  # a killed evaluation's staging folder (this command's own names only)
            os.mkdir(stage)
            self.stage = stage
            started = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
            self.record = {
                "tool": "biam-evaluate", "weights": os.path.abspath(cfg.MODEL.WEIGHTS), "weights_sha256": self.sha256,
                "data_root": os.path.abspath(cfg.DATA.ROOT), "split": cfg.DATA.TEST_SPLIT,
                "command": " ".join(sys.argv), "started": started, "files": list(EVAL_FILES),
            }
        except BaseException:
            self.abort()
            raise
        return stage

    def _same_weights(self, folder: str) -> bool:
        """True when ``folder`` is free, or holds an evaluation of these weights' content."""
        path = os.path.join(folder, EVAL_RECORD)
        if os.path.islink(folder) or not os.path.isfile(path) or os.path.islink(path):
            return True  # free, or not an evaluation: the ownership check names the problem
        try:
            with open(path, encoding="utf-8") as f:
                record = json.load(f)
        except (OSError, ValueError):
            return True
        if not isinstance(record, dict):
            return True
        if "weights_sha256" in record:
            return record["weights_sha256"] == self.sha256
        return record.get("weights") == os.path.abspath(self.cfg.MODEL.WEIGHTS)  # recorded before content hashes

    def commit(self) -> str:
        """Put the staged evaluation in place (record last). Returns the final folder."""
        write_json(os.path.join(self.stage, EVAL_RECORD), self.record)
        if not os.path.isdir(self.final):
            os.rename(self.stage, self.final)
        elif self.merge or not _exchange(self.stage, self.final):
            for name in (*EVAL_FILES, EVAL_RECORD):  # the record last: it names a complete evaluation
                if os.path.exists(os.path.join(self.stage, name)):
                    refuse_link(os.path.join(self.final, name))
                    os.replace(os.path.join(self.stage, name), os.path.join(self.final, name))
        _remove_stage(self.stage)  # after an exchange it holds the earlier evaluation
        self.stage = None
        return self.final

    def abort(self) -> None:
        """Drop the staging folder (a failed evaluation) and release the lock; the earlier one stays."""
        if self.stage is not None:
            _remove_stage(self.stage)
            self.stage = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None
            if self.created:
                with contextlib.suppress(OSError):
                    os.rmdir(self.final)  # made empty for the lock by a failed first evaluation


def _remove_stage(stage: str) -> None:
    if os.path.islink(stage):
        raise FolderOwnershipError(f"{stage}: a symbolic link where biam-evaluate stages its folder; remove it")
    if not os.path.isdir(stage):
        return
    for name in (*EVAL_FILES, EVAL_RECORD, LOCK_NAME, *(f"{n}.tmp" for n in (*EVAL_FILES, EVAL_RECORD))):
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(stage, name))
    try:
        os.rmdir(stage)
    except OSError:
        raise FolderOwnershipError(f"{stage}: biam-evaluate's staging folder holds files it did not write "
                                   f"({', '.join(sorted(os.listdir(stage))[:5])}); move them away") from None


def _exchange(a: str, b: str) -> bool:
    """Swap two folders in one step (Linux renameat2 RENAME_EXCHANGE); False where unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    return False


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
