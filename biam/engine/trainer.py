"""``biam-train``: the paper's training recipe on packed features, on one process or many.

Epochs are numbered globally: 1..SOLVER.MAX_EPOCHS train on the first DATA.TRAIN_FRACTION of the
training split with the warm-up + cosine schedule, validating on the rest from EVAL.START_EPOCH
every EVAL.PERIOD epochs and keeping the best model (by EVAL.SELECT_METRIC on the seen labels);
then MAX_EPOCHS+1..MAX_EPOCHS+FINETUNE_EPOCHS fine-tune that best model on all training images
at SOLVER.FINETUNE_LR, evaluating on the test split after each. A checkpoint is written after
every epoch; ``--resume`` continues from the last complete one.

Launch: ``biam-train --config-file configs/nus_wide.yaml`` or
``torchrun --nproc_per_node=4 -m biam.cli.train --config-file ...``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch import nn

from ..config import dump_cfg
from ..data.loader import build_loader
from ..data.packed import PackedDataset, resolve_backbone
from ..data.resident import fits_on_device, image_bytes
from ..datasets import check_manifest_dataset, get_dataset
from ..evaluation import average_precision, f1_at_k
from ..modeling import build_model, get_method
from ..utils import comm
from ..utils.dist_bn import convert_to_global_bn
from ..utils.io import atomic_open, write_json
from ..utils.ownership import FolderBusyError, FolderLock, FolderOwnershipError, check_output_folder
from ..utils.logging import JsonlWriter, setup_logger
from . import checkpoint as ckpt
from .evaluator import evaluate_split, format_result
from .run_record import (
    RECORD, RUN_FILES, RunMismatchError, _now, command_line, config_changes, new_record, parse_saved_config,
    result_hash,
)
from .runtime import (
    autocast_context, build_label_space, build_scene_head, derive_seed, resolve_amp, run_inference, scene_features,
    seed_everything,
)
from .schedule import build_scheduler

__all__ = ["Trainer", "TrainingDiverged"]


class TrainingDiverged(RuntimeError):
    """A batch's loss was NaN, infinite or above SOLVER.MAX_LOSS and SOLVER.BAD_LOSS is 'stop'."""


def in_memory_mode(setting: str, world_size: int = 1, on_device: bool = False):
    """Config ``DATA.IN_MEMORY`` -> the loader's ``in_memory`` argument.

    ``on_device``: the split fits on the training device of every rank with room for training
    (:meth:`Trainer.resident_fits`), so "auto" holds it there ("device"). Otherwise "auto" means
    RAM for one process only: every rank would hold its own copy of the whole split in the
    machine's one RAM (its batches change every epoch), so with several it stays on disk.
    """
    if setting == "device" or (setting == "auto" and on_device):
        return "device"
    if setting == "auto" and world_size > 1:
        return False
    return {"auto": "auto", "on": True, "off": False}[setting]


class Trainer:
    """One training run: built from a frozen config, driven by ``run()``."""

    def __init__(self, cfg, resume: Optional[str] = None, overwrite: bool = False):
        """``resume``: None (a new run), "last" (this run's newest checkpoint) or a checkpoint
        file; ``overwrite``: let a new run write beside files it did not write (see
        :meth:`prepare_output`). Raises FolderBusyError / FolderOwnershipError / RunMismatchError
        before anything is written when the output folder may not be used."""
        self.cfg = cfg
        self.method = get_method(cfg.MODEL.NAME)
        if not self.method.trainable:
            raise ValueError(f"MODEL.NAME = {cfg.MODEL.NAME!r}: this method is registered for evaluation and "
                             "prediction only (no loss to train); use biam-evaluate or biam-predict with it")
        self.device = comm.init_distributed(cfg.DEVICE)
        self.rank, self.world = comm.get_rank(), comm.get_world_size()
        self.out_dir = cfg.OUTPUT_DIR
        self.ckpt_dir = os.path.join(self.out_dir, "checkpoints")
        self.lock: Optional[FolderLock] = None
        self.record: Dict[str, Any] = {}
        try:
            self._init(resume, overwrite)
        except BaseException:
            self.close()
            raise

    def _init(self, resume: Optional[str], overwrite: bool) -> None:
        cfg = self.cfg
        notes = self._shared_outcome(lambda: self.prepare_output(resume, overwrite))
        if self.world > 1:
            self.record = comm.broadcast_object(self.record)  # every rank takes rank 0's decisions
        if comm.is_main_process():
            os.makedirs(self.ckpt_dir, exist_ok=True)
            dump_cfg(cfg, os.path.join(self.out_dir, "config.yaml"))
        comm.barrier()
        self.logger = setup_logger(self.out_dir)
        for line in notes:
            self.logger.info(line)
        self.jsonl = JsonlWriter(os.path.join(self.out_dir, "metrics.jsonl"))
        self.tb = self.open_tensorboard()
        self.amp_dtype = resolve_amp(cfg.AMP, self.device, cfg.DTYPE)
        self.dtype = torch.float64 if cfg.DTYPE == "float64" else torch.float32  # weights and steps
        seed_everything(derive_seed(cfg.SEED, 0, self.rank))

        self.build_data()
        self.model = self.build_model()
        self.optimizer, self.scheduler = self.build_optimizer(finetune=False)
        # Bad steps are skipped through torch.amp.GradScaler, PyTorch's public API for skipping a
        # step whose gradients are not finite (on the device, for the fused Adam). Under float16
        # autocast it is the usual dynamic loss scale; otherwise its scale stays 1, and scaling
        # by 1 changes no bit, so it does nothing but the skip.
        self.dynamic_scale = self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, init_scale=2.0 ** 16 if self.dynamic_scale else 1.0)
        self.start_epoch = 1
        self.phase = "train"
        self.best = {"metric": -math.inf, "epoch": 0}
        self.history: List[Dict[str, Any]] = []
        self.bad_batches = 0
        # Steps whose bad-batch verdict is still on the device (see train_step), and the count
        # of skipped steps of the current epoch.
        self.pending: List[Dict[str, Any]] = []
        self.skipped_in_epoch = 0
        if resume is not None:
            self.resume(resume)
        self.write_record()

    def open_tensorboard(self):
        """A SummaryWriter for OUTPUT_DIR/tb on rank 0 when ``tensorboard`` is installed, else None."""
        if not comm.is_main_process():
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package
        except ImportError:
            self.logger.info("tensorboard is not installed: no event files (pip install 'biam[tb]' to get them)")
            return None
        path = os.path.join(self.out_dir, "tb")
        self.logger.info(f"TensorBoard event files in {path}")
        return SummaryWriter(path)

    def write_tensorboard(self, record: Dict[str, Any]) -> None:
        """One epoch's loss, learning rate, images/s and validation/test metrics, at step = epoch."""
        if self.tb is None:
            return
        epoch = record["epoch"]
        for key in ("loss", "lr", "images_per_s"):
            if key in record:
                self.tb.add_scalar(f"train/{key}", record[key], epoch)
        for split in ("val", "test"):
            for tag, value in _scalars(record.get(split), split):
                self.tb.add_scalar(tag, value, epoch)
        self.tb.flush()

    def _shared_outcome(self, fn):
        """Run ``fn`` on rank 0 and give every rank its result, or raise its error everywhere
        (a refusal on rank 0 alone would leave the other ranks waiting at the next barrier)."""
        result, error = None, None
        if comm.is_main_process():
            try:
                result = fn()
            except (FolderBusyError, FolderOwnershipError, RunMismatchError, ckpt.CheckpointError) as err:
                error = err
        if self.world > 1:
            shared = comm.broadcast_object((result, None if error is None else (type(error).__name__, str(error))))
            result, remote = shared
            if error is None and remote is not None:
                kinds = {c.__name__: c for c in (FolderBusyError, FolderOwnershipError, RunMismatchError,
                                                  ckpt.CheckpointError)}
                error = kinds[remote[0]](remote[1])
        if error is not None:
            raise error
        return result

    def prepare_output(self, resume: Optional[str], overwrite: bool) -> List[str]:
        """Rank 0: lock OUTPUT_DIR and decide whether this run may write there (see docs/training.md).

        * A new run takes a new or empty folder, or the folder of a run that never saved a
          checkpoint. A folder holding a run record or any other file is refused unless
          ``overwrite``; then the run writes its own file names only and its record lists only
          its own checkpoints, so nothing of the earlier run is pruned or resumed.
        * ``--resume`` needs the folder's record (or, for a folder written before records
          existed, only training-run files); :meth:`check_resume` checks the checkpoint and config.
        Returns lines to log once the logger exists.
        """
        cfg = self.cfg
        self.lock = FolderLock(self.out_dir, "biam-train " + " ".join(sys.argv[1:])).acquire()
        notes: List[str] = []
        ignore = RUN_FILES if resume is not None else ()
        try:
            record = check_output_folder(self.out_dir, record=RECORD, overwrite=overwrite, ignore=ignore)
        except FolderOwnershipError as err:
            if os.path.isdir(self.ckpt_dir) and resume is None:
                # A run written before run records existed: say how to continue it.
                raise FolderOwnershipError(f"{err}. If it is an earlier biam-train run, continue it with --resume") from None
            raise
        if record is not None and (record.get("tool") != "biam-train" or not isinstance(record.get("checkpoints"), list)):
            raise FolderOwnershipError(f"{os.path.join(self.out_dir, RECORD)}: not a biam-train run record; "
                                       "choose another OUTPUT_DIR")
        if resume is None:
            if record is not None and (record["checkpoints"] or os.path.exists(os.path.join(self.out_dir, "model_best.pth"))):
                if not overwrite:
                    raise FolderOwnershipError(
                        f"OUTPUT_DIR {self.out_dir} holds the run started {record.get('started', '?')} "
                        f"({record.get('command', '?')}), with checkpoints {', '.join(record['checkpoints']) or 'none'}. "
                        "Pass --resume to continue that run, choose another OUTPUT_DIR for a new one, or pass "
                        "--overwrite to start a new run there (it replaces files of the same names; the earlier "
                        "run's other checkpoints stay, and are never pruned or resumed)")
                notes.append(f"--overwrite: starting a new run in {self.out_dir} over the run started "
                             f"{record.get('started', '?')}")
            elif record is not None:
                notes.append(f"{self.out_dir}: the earlier run there saved no checkpoint; starting a new run")
            for name in ("metrics.jsonl", "log.txt"):
                # A new run's log and per-epoch lines start empty, never appended to another run's.
                if os.path.isfile(os.path.join(self.out_dir, name)):
                    os.remove(os.path.join(self.out_dir, name))
            self.record = new_record(cfg)
            self.write_record()
        else:
            # Written once the checkpoint and the config are accepted (nothing is written before).
            self.record = record if record is not None else dict(new_record(cfg), _legacy=True)
            notes += self.check_resume(resume)
        return notes

    def write_record(self) -> None:
        """Rank 0: rewrite OUTPUT_DIR/run.json (after the start and after each checkpoint)."""
        if comm.is_main_process() and self.record:
            write_json(os.path.join(self.out_dir, RECORD), {k: v for k, v in self.record.items() if not k.startswith("_")})

    def close(self) -> None:
        """Release OUTPUT_DIR's lock (also done when ``run()`` returns)."""
        tb = self.__dict__.get("tb")
        if tb is not None:
            tb.close()
            self.tb = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        # A Trainer dropped without close() (an in-process caller) must not keep its folder locked.
        lock = self.__dict__.get("lock")
        if lock is not None:
            lock.release()

    # ------------------------------------------------------------------ set-up
    def build_data(self) -> None:
        cfg = self.cfg
        self.train_set = PackedDataset(cfg.DATA.ROOT, cfg.DATA.TRAIN_SPLIT)
        self.test_set = PackedDataset(cfg.DATA.ROOT, cfg.DATA.TEST_SPLIT)
        if cfg.DATA.VERIFY_CHECKSUMS:
            self.train_set.verify()
            self.test_set.verify()
        self.labels = build_label_space(self.train_set, self.device, cfg.MODEL.EMBED_DIM)
        self.scene_head = build_scene_head(cfg.MODEL.SCENE_HEAD_WEIGHTS, self.train_set, self.device)
        if self.scene_head is not None:
            self.scene_head.to(self.dtype)
        n = len(self.train_set)
        if n == 0:
            raise ValueError(f"{cfg.DATA.ROOT}: split '{cfg.DATA.TRAIN_SPLIT}' has no images")
        all_idx = np.arange(n)
        positives = None
        if cfg.DATA.MAX_POSITIVES > 0:
            positives = self.train_set.count_positives()
            all_idx = all_idx[positives <= cfg.DATA.MAX_POSITIVES]
            self.logger.info(f"dropped {n - len(all_idx)} training images with more than {cfg.DATA.MAX_POSITIVES} positive labels")
        cut = int(round(len(all_idx) * cfg.DATA.TRAIN_FRACTION))
        self.all_train_idx = all_idx
        self.train_idx = all_idx[:cut]
        self.val_idx = all_idx[cut:]
        if len(self.train_idx) == 0:
            raise ValueError(
                f"{cfg.DATA.ROOT}: split '{cfg.DATA.TRAIN_SPLIT}' has {n} images; DATA.MAX_POSITIVES "
                f"{cfg.DATA.MAX_POSITIVES} keeps {len(all_idx)}; DATA.TRAIN_FRACTION {cfg.DATA.TRAIN_FRACTION} "
                "keeps 0 for training (raise DATA.TRAIN_FRACTION)")
        self.check_label_counts()
        self.check_positive_labels(positives)
        self.train_loader = None  # built when a phase starts (it may load its images into RAM)
        self.logger.info(
            f"data {cfg.DATA.ROOT}: {len(self.train_idx)} training, {len(self.val_idx)} validation, "
            f"{len(self.test_set)} test images; {self.labels.num_seen} seen and "
            f"{self.labels.unseen_eval.shape[0]} evaluated unseen labels; scene features "
            f"{'stored' if self.scene_head is None else 'computed on the fly'}"
        )

    def check_label_counts(self) -> None:
        """Fail before training, not after an epoch, when the packed data is not ``DATA.DATASET``'s
        (the manifest's dataset name) or a K of its protocol exceeds a label count."""
        cfg = self.cfg
        protocol = check_manifest_dataset(cfg.DATA.DATASET, self.train_set.manifest,
                                          os.path.join(cfg.DATA.ROOT, "manifest.json")).protocol
        ks = protocol.ks
        unseen = self.labels.unseen_eval.shape[0]
        if unseen < max(ks):
            raise ValueError(f"{cfg.DATA.ROOT}: {unseen} evaluated unseen labels, but the {cfg.DATA.DATASET} protocol "
                             f"reports P/R/F1 at K = {', '.join(map(str, ks))}, which needs at least {max(ks)}")
        vks = protocol.validation_ks
        if len(self.val_idx) and self.labels.num_seen < max(vks):
            raise ValueError(f"{cfg.DATA.ROOT}: validation reports {' and '.join(f'F1@{k}' for k in vks)} on the "
                             f"seen labels, which needs at least {max(vks)} of them (the manifest lists "
                             f"{self.labels.num_seen})")

    def check_positive_labels(self, positives: Optional[np.ndarray] = None) -> None:
        """Fail before training when no training image has a positive seen label.

        Such images are dropped from every batch (they add nothing to the ranking loss), so the
        run would "train" to loss 0 on nothing. ``positives``: per-image counts when already
        computed; else the shards are read one at a time until a positive is found.
        """
        cfg = self.cfg
        if positives is None:
            ds = self.train_set
            wanted = np.zeros(len(ds), dtype=bool)
            wanted[self.train_idx] = True
            for s in range(len(ds.shards)):
                a, b = int(ds.shard_offsets[s]), int(ds.shard_offsets[s + 1])
                if not wanted[a:b].any():
                    continue
                lab = ds.read_slice(a, b, fields=["labels"])["labels"][:, :self.labels.num_seen]
                if ((lab == 1).any(axis=1) & wanted[a:b]).any():
                    return
            found = 0
        else:
            found = int((positives[self.train_idx] > 0).sum())
        if found == 0:
            raise ValueError(
                f"{cfg.DATA.ROOT}: split '{cfg.DATA.TRAIN_SPLIT}': none of the {len(self.train_idx)} training images "
                f"has a positive (+1) label among the {self.labels.num_seen} seen labels, so there is nothing to learn "
                "(the ranking loss needs a positive seen label); check the split's labels, or that the seen/unseen "
                "label lists of the conversion are the right way round")

    def loader(self, dataset: PackedDataset, indices, *, shuffle: bool, batch_size: int, in_memory=False):
        cfg = self.cfg
        resident = in_memory == "device"
        return build_loader(
            dataset, batch_size=batch_size, shuffle=shuffle, seed=cfg.SEED, indices=indices,
            rank=self.rank, world_size=self.world, num_workers=cfg.DATA.NUM_WORKERS,
            sampling=cfg.DATA.SAMPLING, block_size=cfg.DATA.BLOCK_SIZE, in_memory=in_memory,
            pin_memory=self.device.type == "cuda" and not resident,
            float32=self.device.type != "cuda",  # a GPU gets the stored float16 and converts it itself
            # Resident batches are gathered on the device without the images that have no positive
            # seen label (train_step drops those; here it need not read labels back to do so).
            device=self.device if resident else None, require_positive=self.labels.num_seen if resident else 0,
        )

    def resident_fits(self, indices) -> bool:
        """Whether ``DATA.IN_MEMORY auto`` holds these training images on the device: a CUDA
        device where they fit with room for training (:func:`biam.data.resident.fits_on_device`),
        on every rank (one all-reduce), so that all ranks read their batches the same way."""
        if self.cfg.DATA.IN_MEMORY != "auto" or self.device.type != "cuda":
            return False
        fits = fits_on_device(image_bytes(self.train_set) * len(indices), self.device)
        if self.world > 1:
            fits = comm.all_reduce_sum(torch.tensor(0.0 if fits else 1.0, device=self.device)).item() == 0
        return fits

    def phase_loader(self):
        """The shuffling loader of the current phase: the training part, or all training images."""
        indices = self.train_idx if self.phase == "train" else self.all_train_idx
        if self.train_loader is None or self.train_loader_phase != self.phase:
            self.train_loader = None  # release the previous phase's in-memory copy first
            mode = in_memory_mode(self.cfg.DATA.IN_MEMORY, self.world, self.resident_fits(indices))
            self.train_loader = self.loader(self.train_set, indices, shuffle=True, batch_size=self.cfg.SOLVER.BATCH_SIZE,
                                            in_memory=mode)
            self.train_loader_phase = self.phase
            where = self.train_loader.where
            if where != "disk":
                place = f"on {self.device}" if where == "device" else "in RAM"
                self.logger.info(f"{len(indices)} training images held {place} "
                                 f"({self.train_loader.memory_bytes() / 2**30:.2f} GiB)")
        return self.train_loader

    def build_model(self) -> nn.Module:
        """The model as trained (maybe inside DDP and torch.compile); sets ``self.raw_model`` to
        the bare BiAM inside them, the one that is saved, loaded and evaluated."""
        cfg = self.cfg
        model = build_model(cfg, resolve_backbone(cfg.MODEL.BACKBONE, cfg.DATA.ROOT))
        if cfg.MODEL.WEIGHTS:
            ckpt.load_model_weights(model, cfg.MODEL.WEIGHTS)
            self.logger.info(f"initialised from {cfg.MODEL.WEIGHTS}")
        model.to(self.device, self.dtype)
        if cfg.CHANNELS_LAST and self.device.type == "cuda":
            model.to(memory_format=torch.channels_last)
        if self.world > 1:
            if cfg.DIST_BN == "sync":
                # nn.SyncBatchNorm is CUDA-only; GlobalBatchNorm2d computes the same on gloo.
                if self.device.type == "cuda":
                    model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
                else:
                    model = convert_to_global_bn(model)
        self.raw_model = model  # the wrappers below share its parameters
        if self.world > 1:
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            )
        compile_on = cfg.COMPILE == "on" or (cfg.COMPILE == "auto" and self.device.type == "cuda")
        if compile_on:
            model = torch.compile(model)
        return model

    def build_optimizer(self, finetune: bool):
        s = self.cfg.SOLVER
        lr = s.FINETUNE_LR if finetune else s.BASE_LR
        params = [p for p in self.model.parameters() if p.requires_grad]
        kwargs = dict(lr=lr, betas=tuple(s.BETAS), weight_decay=s.WEIGHT_DECAY)
        if s.FUSED_ADAM and self.device.type in ("cuda", "cpu"):
            # One kernel for the whole update instead of one per tensor; it also takes the
            # on-device skip flag that lets train_step run without waiting on the device.
            kwargs["fused"] = True
        elif not s.FUSED_ADAM:
            kwargs["foreach"] = False  # the per-parameter loop of the original's PyTorch
        optimizer = torch.optim.Adam(params, **kwargs)
        # One rate function for the whole run (biam/engine/schedule.py): the fine-tuning phase's
        # fresh optimiser starts at epoch MAX_EPOCHS + 1 of it.
        scheduler = build_scheduler(
            optimizer, warmup_epochs=s.WARMUP_EPOCHS, total_epochs=s.MAX_EPOCHS, base_lr=s.BASE_LR,
            min_lr=s.MIN_LR, cosine=s.SCHEDULE == "cosine", finetune_lr=s.FINETUNE_LR,
            first_epoch=s.MAX_EPOCHS + 1 if finetune else 1,
        )
        return optimizer, scheduler

    # ------------------------------------------------------------------ state
    def state_dict(self, epoch: int) -> Dict[str, Any]:
        return {
            **ckpt.model_file(self.raw_model),  # model, method, model_hparams
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": ckpt.rng_state(),
            "epoch": epoch,
            "phase": self.phase,
            "best": dict(self.best),
            "history": list(self.history),
            "bad_batches": self.bad_batches,
            "config": self.cfg.dump(),
            "run_id": self.record.get("run_id"),
        }

    def save(self, epoch: int) -> None:
        if comm.is_main_process():
            # Pruning deletes only names this run's record lists (never another run's files).
            path = ckpt.save_checkpoint(self.ckpt_dir, epoch, self.state_dict(epoch), keep=self.cfg.KEEP_CHECKPOINTS,
                                        owned=self.record["checkpoints"])
            self.write_record()
            self.logger.info(f"saved {path}")
        comm.barrier()

    def check_resume(self, resume: str) -> List[str]:
        """Rank 0, before anything is written: choose the checkpoint and check it is this run's.

        ``resume``: "last" (the newest checkpoint the run record lists) or a file. Refuses
        (RunMismatchError) a checkpoint of another run and a config that differs from the saved
        one in a key that changes the result, listing each key with both values; raises
        CheckpointError naming the file and the field for missing or mistyped fields. Returns
        the allowed changes as lines to log; keeps the loaded state for :meth:`resume`.
        """
        record_path = os.path.join(self.out_dir, RECORD)
        legacy = bool(self.record.get("_legacy"))
        if resume not in ("", "last"):
            path = resume
            if not os.path.isfile(path):
                raise ckpt.CheckpointError(f"--resume: checkpoint not found: {path}")
        elif legacy:
            path = ckpt.latest_checkpoint(self.ckpt_dir)  # a folder from before run records
        else:
            path = ckpt.latest_owned(self.ckpt_dir, self.record["checkpoints"])
        self._resume_path, self._resume_state = path, None
        record_config = None if legacy else self.record.get("config")
        if path is None:
            if record_config is None:
                return []
            return self._check_config(parse_saved_config(record_config, record_path), record_path, 0, "train")
        state = ckpt.load_checkpoint(path)
        ckpt.check_training_state(state, path)
        run_id = state.get("run_id")
        if run_id is not None and not legacy and run_id != self.record.get("run_id"):
            raise RunMismatchError(
                f"--resume {path}: this checkpoint belongs to run {run_id}, but OUTPUT_DIR {self.out_dir} holds run "
                f"{self.record.get('run_id')} (started {self.record.get('started', '?')}); resume it in its own "
                "OUTPUT_DIR, or give a new OUTPUT_DIR to continue it there")
        if "config" in state:
            saved, source = parse_saved_config(state["config"], path), path
        elif record_config is not None:
            saved, source = parse_saved_config(record_config, record_path), record_path
        else:
            raise RunMismatchError(f"{path}: the checkpoint holds no config, so --resume cannot check it is the same "
                                   "run; start a new run with MODEL.WEIGHTS to use its weights")
        allowed = self._check_config(saved, source, int(state["epoch"]), state["phase"])
        if run_id is not None:
            self.record["run_id"] = run_id  # a run continued in a new folder stays the same run
        name = os.path.basename(path)
        if os.path.dirname(os.path.abspath(path)) == os.path.abspath(self.ckpt_dir) and name not in self.record["checkpoints"]:
            self.record["checkpoints"].append(name)  # adopted: a folder from before run records
        self._resume_state = state
        return allowed

    def resume(self, resume: str) -> None:
        """Load the checkpoint :meth:`check_resume` accepted on rank 0 (every rank loads the same file)."""
        path = comm.broadcast_object(getattr(self, "_resume_path", None))
        if path is None:
            self.logger.info(f"--resume: no checkpoint of this run in {self.ckpt_dir}; starting from scratch")
            return
        if not os.path.isfile(path):
            raise ckpt.CheckpointError(
                f"rank {self.rank}: {path} (chosen by rank 0) is not visible here; to resume on several "
                "machines, OUTPUT_DIR must be on a file system that every machine sees")
        state = getattr(self, "_resume_state", None)
        self._resume_state = None
        if state is None:
            state = ckpt.load_checkpoint(path)
            ckpt.check_training_state(state, path)
        ckpt.load_model_weights(self.raw_model, path)
        if state["phase"] == "finetune":
            self.phase = "finetune"
            self.optimizer, self.scheduler = self.build_optimizer(finetune=True)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.dynamic_scale:  # a fixed scale of 1 has no state to restore
                self.scaler.load_state_dict(state["scaler"])
            if "rng" in state:
                ckpt.set_rng_state(state["rng"])
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as err:
            raise ckpt.CheckpointError(f"{path}: the optimiser, scheduler, scaler or RNG state does not fit this "
                                       f"run ({type(err).__name__}: {err})") from None
        self.best = dict(state["best"])
        self.history = list(state.get("history", []))
        self.bad_batches = int(state.get("bad_batches", 0))
        self.start_epoch = int(state["epoch"]) + 1
        if comm.is_main_process():
            self._trim_jsonl(int(state["epoch"]))
        self.logger.info(f"resumed from {path} (epoch {state['epoch']}, phase {self.phase})")

    def _trim_jsonl(self, epoch: int) -> None:
        """Drop this run's metrics.jsonl lines of epochs after the resumed checkpoint (they are
        run again) and a half-written last line, so each epoch appears once."""
        path = os.path.join(self.out_dir, "metrics.jsonl")
        if not os.path.isfile(path):
            return
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
        keep = []
        for line in lines:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("epoch"), int) and rec["epoch"] <= epoch:
                keep.append(line)
        if len(keep) != len(lines):
            with atomic_open(path, "w") as f:
                f.write("".join(k + "\n" for k in keep))
            self.logger.info(f"{path}: dropped {len(lines) - len(keep)} line(s) after epoch {epoch} (run again now)")

    def _check_config(self, saved: Dict[str, Any], source: str, epoch: int, phase: str) -> List[str]:
        refused, allowed = config_changes(saved, self.cfg, epoch=epoch, phase=phase)
        if refused:
            raise RunMismatchError(
                f"--resume: the config differs from the run's ({source}) in keys that change the result:\n  "
                + "\n  ".join(refused)
                + "\nGive the run's own config (its config.yaml) to continue it, or start a new run in another OUTPUT_DIR")
        self.record.pop("_legacy", None)
        self.record.setdefault("resumes", []).append({"started": _now(), "command": command_line(), "from_epoch": epoch,
                                                      "changed": allowed})
        self.record["config"] = self.cfg.dump()
        self.record["config_sha256"] = result_hash(self.cfg)
        return [f"--resume: changed {line}" for line in allowed]

    # ------------------------------------------------------------------ epochs
    def train_one_epoch(self, epoch: int) -> Dict[str, Any]:
        """One pass over the phase's images; returns the epoch's mean loss, learning rate and speed."""
        cfg = self.cfg
        # Per-(epoch, rank) seeds make dropout and the batch order a function of the epoch, so a
        # run resumed from epoch k's checkpoint repeats exactly what an uninterrupted run does.
        seed_everything(derive_seed(cfg.SEED, epoch, self.rank))
        loader = self.phase_loader()
        loader.set_epoch(epoch)
        self.model.train()
        lr = self.optimizer.param_groups[0]["lr"]
        seen_emb = self.labels.seen
        num_seen = self.labels.num_seen
        total_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        steps, images = 0, 0
        self.skipped_in_epoch = 0
        # Every rank gets a share (maybe empty) of every global batch, so all ranks run the
        # same steps and join every collective: no DDP Join is needed for uneven data.
        num_batches = len(loader)
        if cfg.MAX_STEPS_PER_EPOCH:
            num_batches = min(num_batches, cfg.MAX_STEPS_PER_EPOCH)
        bar = _progress(total=num_batches, desc=f"epoch {epoch} [{self.phase}]")
        start = time.perf_counter()
        for batch in loader:
            if steps >= num_batches:
                break
            loss, n = self.train_step(batch, seen_emb, num_seen, epoch, steps)
            steps += 1
            images += n
            if loss is not None:
                total_loss += loss  # 0 for a step whose verdict is pending and turns out bad
            if steps % self.CHECK_EVERY == 0 or steps == num_batches:
                self.check_pending()
                if bar is not None:
                    elapsed = time.perf_counter() - start
                    good = max(steps - self.skipped_in_epoch, 1)
                    # Under DDP rank 0's loss is its part of the global mean (see train_step).
                    bar.set_postfix(loss=f"{total_loss.item() / good:.4f}", lr=f"{lr:.2e}",
                                    img_s=f"{images * self.world / max(elapsed, 1e-9):.0f}")
            if bar is not None:
                bar.update(1)
        self.check_pending()
        if bar is not None:
            bar.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - start
        # Skipped steps are the same on every rank (the decision follows all-reduced values).
        skipped = self.skipped_in_epoch
        good_steps = steps - skipped
        # Each rank's step losses are its parts of the global batch means: their sum over
        # ranks is the sum of the global means. Images are the kept images of all ranks.
        stats = torch.tensor([total_loss.item(), float(images)], dtype=torch.float64)
        if self.world > 1:
            stats = comm.all_reduce_sum(stats.to(self.device)).cpu()
        self.bad_batches += skipped
        return {
            "loss": stats[0].item() / max(good_steps, 1),
            "lr": lr,
            "images": int(stats[1].item()),
            "images_per_s": stats[1].item() / max(elapsed, 1e-9),
            "seconds": elapsed,
            "skipped_batches": skipped,
        }

    def train_step(self, batch: Dict[str, torch.Tensor], seen_emb: torch.Tensor, num_seen: int, epoch: int, step: int):
        """Forward, loss, backward, update.

        ``batch`` is this rank's share of a global batch (0 rows allowed under DDP). Returns
        (loss, images): the detached float64 loss (under DDP this rank's part of the global
        batch's mean loss, so the ranks' parts sum to it), or None for a step known to be
        skipped (one process, no image kept); ``images`` is the number of images this rank kept.
        A bad step is skipped on the device; its verdict is read later (``check_pending``, every
        ``CHECK_EVERY`` steps), its returned loss is 0, and ``skipped_in_epoch`` counts it then.
        """
        cfg = self.cfg
        labels = batch["labels"][:, :num_seen]
        # Images without a positive seen label add nothing to the ranking loss; as published,
        # they are dropped before the forward so batch-norm statistics match too. A resident
        # batch (labels on the device) comes without them and says so in its host-side "keep".
        keep = batch["keep"] if "keep" in batch else (labels > 0).any(dim=1)
        n_kept = int(keep.sum())  # on the host: no device sync
        if n_kept < len(keep):
            batch = {k: v[keep] for k, v in batch.items()}
            labels = labels[keep]
        self.optimizer.zero_grad(set_to_none=True)
        global_kept = None
        if self.world > 1:
            # The gradient must be the mean over the kept images of the whole global batch, as
            # one process computes it; DDP averages the ranks equally, so each rank weights its
            # mean by W * kept here / kept in all. One all-reduce of a count, left on the device.
            global_kept = comm.all_reduce_sum(torch.full((), float(n_kept), device=self.device))
        elif n_kept == 0:
            self.skipped_in_epoch += 1  # nothing to learn from: one process skips the step
            return None, 0
        # A rank that keeps nothing still runs the (empty) forward and backward: DDP's gradient
        # all-reduce and synchronised batch norm need every rank in every collective.
        regions = batch["regions"].to(self.device, non_blocking=True).to(self.dtype)
        labels = labels.to(self.device, non_blocking=True)
        if cfg.CHANNELS_LAST and self.device.type == "cuda":
            regions = regions.reshape(regions.shape[0], regions.shape[1], 14, 14).contiguous(memory_format=torch.channels_last)
        scene = scene_features(batch, regions, self.scene_head)
        with autocast_context(self.device, self.amp_dtype):
            scores = self.model(regions, seen_emb, scene)
        if n_kept:
            loss = self.method.loss(scores, labels)
        else:
            loss = scores.sum() * 0.0  # zero gradients, but through the whole model
        empty = None
        if global_kept is not None:
            part = n_kept / global_kept.clamp(min=1.0)
            loss = loss * part  # this rank's part of the global mean (what is reported)
            empty = global_kept == 0  # no rank kept an image: skip the step, as one process does
            objective = loss * self.world
        else:
            objective = loss
        n = n_kept
        # A bad loss (NaN, inf, or above MAX_LOSS) turns this rank's gradients into NaN through a
        # constant factor. DDP's all-reduce carries the NaN to every rank, so every rank's scaler
        # skips the same step.
        bad = (~torch.isfinite(loss)) | (loss > cfg.SOLVER.MAX_LOSS)
        factor = torch.where(bad, torch.full_like(loss, float("nan")), torch.ones_like(loss))
        self.scaler.scale(objective * factor).backward()
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if not grads:
            return loss.detach().double(), n
        if empty is not None:
            # With no image on any rank the gradients are sums over no rows, zeros: mark them
            # (every rank knows) so that the scaler skips the step, as one process skips it.
            grads[0].add_(torch.where(empty, float("nan"), 0.0))
        self.scaler.unscale_(self.optimizer)
        # Our own copy of the verdict, left on the device (the scaler's is private to it).
        found_inf = ~torch.isfinite(torch.nn.utils.get_total_norm(grads))
        # With non-finite gradients the scaler leaves weights, Adam moments and step counts as
        # they were; the fused Adam reads that verdict on the device, so no step waits for it.
        self.scaler.step(self.optimizer)
        self.scaler.update(None if self.dynamic_scale else 1.0)
        self.pending.append({"found_inf": found_inf, "bad": bad,
                             "empty": empty if empty is not None else torch.zeros_like(bad),
                             "loss": loss.detach(), "index": batch["index"], "epoch": epoch, "step": step})
        if len(self.pending) >= 4 * self.CHECK_EVERY:
            self.check_pending()  # bounded, for callers that drive train_step themselves
        return torch.where(found_inf, torch.zeros_like(loss), loss.detach()).double(), n

    # Steps between reads of the bad-step verdicts (one device sync, and under DDP one
    # all-reduce, each).
    CHECK_EVERY = 20

    def check_pending(self) -> int:
        """Read the verdicts of the steps since the last read (one sync); count skipped steps,
        report bad batches.

        Every rank calls it at the same steps. Returns the number of those steps that were
        skipped. Raises TrainingDiverged for the first bad batch when SOLVER.BAD_LOSS is "stop".
        """
        if not self.pending:
            return 0
        pending, self.pending = self.pending, []
        flags = torch.stack([torch.stack([p["found_inf"], p["bad"], p["empty"]]) for p in pending]).float()
        if self.world > 1:
            # Which steps were bad on some rank: every rank then names the same steps, and under
            # float16 tells another rank's bad batch from an ordinary overflow.
            anywhere = comm.all_reduce_sum(flags[:, 1].clone()) > 0
        else:
            anywhere = flags[:, 1] > 0
        rows = torch.cat([flags > 0, anywhere[:, None]], dim=1).cpu().tolist()
        skipped = 0
        for p, (found_inf, here, empty, bad_somewhere) in zip(pending, rows):
            if not found_inf:
                continue
            skipped += 1
            self.skipped_in_epoch += 1
            if empty:  # no image on any rank: skipped as one process skips it, not a bad batch
                continue
            if self.dynamic_scale and not bad_somewhere:
                continue  # float16 overflow: the scaler skipped the step and lowered its scale
            self.handle_bad_batch(p["loss"], p["index"], p["epoch"], p["step"], here=here,
                                  elsewhere=bad_somewhere and not here)
        return skipped

    def handle_bad_batch(self, loss: torch.Tensor, index: torch.Tensor, epoch: int, step: int, here: bool,
                         elsewhere: bool = False) -> None:
        """Log and go on (SOLVER.BAD_LOSS skip) or raise TrainingDiverged naming the images (stop).

        ``here``: this rank's loss was bad; ``elsewhere``: another rank's was; neither: the loss
        was fine but the gradients were not finite.
        """
        if elsewhere:
            what = f"epoch {epoch} step {step}: the loss of another rank's batch is NaN, infinite or above SOLVER.MAX_LOSS"
        else:
            names = ", ".join(self.image_names(index))
            problem = ("is NaN, infinite or above SOLVER.MAX_LOSS " f"{self.cfg.SOLVER.MAX_LOSS}" if here
                       else "is finite but the gradients are not")
            what = f"epoch {epoch} step {step}: loss {loss.item()} {problem}; batch images: {names}"
        if self.cfg.SOLVER.BAD_LOSS == "skip":
            self.logger.warning(what + " (skipped)")
            return
        last = ckpt.latest_owned(self.ckpt_dir, self.record.get("checkpoints", []))  # this run's, not another's
        raise TrainingDiverged(
            f"{what}. Last good checkpoint: {last or 'none'} (continue with --resume, or set "
            "SOLVER.BAD_LOSS skip to skip such batches)"
        )

    def image_names(self, index: torch.Tensor) -> List[str]:
        """Names of training images by global index (read only when a batch must be reported)."""
        names = []
        for i in index.tolist():
            names.append(str(self.train_set.read_slice(i, i + 1, fields=["names"])["names"][0]))
        return names

    def validate(self) -> Dict[str, float]:
        """Metrics on the seen labels of the held-out part of the training split."""
        loader = self.loader(self.train_set, self.val_idx, shuffle=False, batch_size=self.cfg.EVAL.BATCH_SIZE)
        columns = torch.arange(self.labels.num_seen)
        scores, labels = run_inference(
            self.raw_model, loader, self.labels.seen, columns, self.device, self.amp_dtype, self.scene_head,
        )
        result = {"mAP": float(average_precision(scores, labels).mean())}
        for k in get_dataset(self.cfg.DATA.DATASET).protocol.validation_ks:
            f1, p, r = f1_at_k(scores, labels, k)
            result.update({f"P@{k}": p, f"R@{k}": r, f"F1@{k}": f1})
        return result

    def test(self) -> Dict[str, Any]:
        result = evaluate_split(
            self.raw_model, self.test_set, self.labels, self.cfg, self.device, self.amp_dtype, self.scene_head,
            loader_fn=lambda ds, bs: self.loader(ds, None, shuffle=False, batch_size=bs),
        )
        self.logger.info("test split:\n" + format_result(result, self.cfg))
        out = result.to_dict()
        if result.chance is not None:
            out["chance"] = result.chance.to_dict()
        return out

    # ------------------------------------------------------------------ driver
    def enter_finetune(self) -> None:
        """Switch to fine-tuning: the best validated weights, a fresh optimiser at FINETUNE_LR."""
        best_path = os.path.join(self.out_dir, "model_best.pth")
        if len(self.val_idx) and self.best["epoch"] > 0:
            if comm.is_main_process():
                ckpt.load_model_weights(self.raw_model, best_path)
            # Rank 0 alone wrote the file, maybe on a disk the other machines do not see.
            comm.broadcast_module_state(self.raw_model)
            self.logger.info(f"fine-tuning from {best_path} (epoch {self.best['epoch']}, "
                             f"{self.cfg.EVAL.SELECT_METRIC} {self.best['metric']:.4f})")
        self.phase = "finetune"
        self.optimizer, self.scheduler = self.build_optimizer(finetune=True)

    def run(self) -> Dict[str, Any]:
        cfg = self.cfg
        E, F = cfg.SOLVER.MAX_EPOCHS, cfg.SOLVER.FINETUNE_EPOCHS
        last_test: Optional[Dict[str, Any]] = None
        for epoch in range(self.start_epoch, E + F + 1):
            if epoch > E and self.phase == "train":
                self.enter_finetune()
            record: Dict[str, Any] = {"epoch": epoch, "phase": self.phase}
            record.update(self.train_one_epoch(epoch))
            with warnings.catch_warnings():
                # An epoch whose every batch was skipped never called optimizer.step(); the
                # schedule still advances with the epoch, which is what PyTorch warns about.
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
                self.scheduler.step()
            if self.phase == "train" and self.should_validate(epoch):
                val = self.validate()
                record["val"] = val
                metric = val[cfg.EVAL.SELECT_METRIC]
                # A tie goes to the later epoch, as in the original (>=).
                if metric >= self.best["metric"]:
                    self.best = {"metric": metric, "epoch": epoch}
                    if comm.is_main_process():
                        ckpt.atomic_torch_save(ckpt.model_file(self.raw_model), os.path.join(self.out_dir, "model_best.pth"))
            if self.phase == "finetune" and cfg.EVAL.TEST_AFTER_FINETUNE:
                last_test = record["test"] = self.test()
            self.log_epoch(record)
            self.write_tensorboard(record)
            self.history.append({k: v for k, v in record.items() if k in ("epoch", "phase", "loss", "lr", "val", "images_per_s")})
            self.save(epoch)
            if comm.is_main_process() and cfg.PLOT_CURVE:
                plot_curve(self.history, os.path.join(self.out_dir, "curve.png"), cfg.EVAL.SELECT_METRIC)
        if last_test is None:
            last_test = self.test()
            self.write_tensorboard({"epoch": E + F, "test": last_test})
        if comm.is_main_process():
            write_json(os.path.join(self.out_dir, "metrics.json"), last_test)
        self.close()
        return last_test

    def should_validate(self, epoch: int) -> bool:
        e = self.cfg.EVAL
        if not len(self.val_idx):
            return False
        last = epoch == self.cfg.SOLVER.MAX_EPOCHS
        return (epoch >= e.START_EPOCH and (epoch - e.START_EPOCH) % e.PERIOD == 0) or (last and self.best["epoch"] == 0)

    def log_epoch(self, record: Dict[str, Any]) -> None:
        msg = (f"epoch {record['epoch']} [{record['phase']}] loss {record['loss']:.4f} lr {record['lr']:.3e} "
               f"{record['images_per_s']:.0f} img/s ({record['seconds']:.1f} s)")
        if record.get("skipped_batches"):
            msg += f", {record['skipped_batches']} bad batches skipped"
        if "val" in record:
            msg += " | val (seen) " + " ".join(f"{k} {100 * v:.2f}" for k, v in record["val"].items())
        self.logger.info(msg)
        self.jsonl.write(record)


def _scalars(tree: Any, prefix: str):
    """(tag, number) for every number in a nested dict of metrics, tags joined with '/'."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _scalars(value, f"{prefix}/{key}")
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool) and math.isfinite(tree):
        yield prefix, float(tree)


def _progress(total: int, desc: str):
    if not comm.is_main_process():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


def plot_curve(history: List[Dict[str, Any]], path: str, metric: str) -> None:
    """Training loss and validation metric per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(epochs, [h["loss"] for h in history], "o-", color="tab:blue", label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("ranking loss", color="tab:blue")
    val = [(h["epoch"], h["val"][metric]) for h in history if "val" in h]
    if val:
        ax2 = ax.twinx()
        ax2.plot([e for e, _ in val], [100 * v for _, v in val], "s--", color="tab:red", label=f"val {metric}")
        ax2.set_ylabel(f"validation {metric} (seen, %)", color="tab:red")
    ax.set_title("BiAM training curve")
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
