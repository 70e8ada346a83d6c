"""``biam-train``: the paper's training recipe on packed features, on one process or many.

Epochs are numbered globally: 1..SOLVER.MAX_EPOCHS train on the first DATA.TRAIN_FRACTION of the
training split with the warm-up + cosine schedule, validating on the rest from EVAL.START_EPOCH
every EVAL.PERIOD epochs and keeping the best model (by EVAL.SELECT_METRIC on the seen labels);
then MAX_EPOCHS+1..MAX_EPOCHS+FINETUNE_EPOCHS fine-tune that best model on all training images
at SOLVER.FINETUNE_LR, evaluating on the test split after each. A checkpoint is written after
every epoch; ``--resume`` continues from the last complete one. The loss is the method's
(``MODEL.NAME``, :mod:`biam.modeling.registry`).

The pieces: :mod:`.run_folder` (OUTPUT_DIR, run record, resume checks), :mod:`.train_data`
(splits, data checks, loaders), :mod:`.setup` (model, DDP, compile, optimiser),
:mod:`.step_guard` (bad steps skipped on the device), :mod:`.writers` (log, JSON lines,
TensorBoard, progress bar, curve).

Launch: ``biam-train --config-file configs/nus_wide.yaml`` or
``torchrun --nproc_per_node=4 -m biam.cli.train --config-file ...``.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from typing import Any, Dict, List, Optional

import torch

from ..config import dump_cfg
from ..data.label_encoders import data_label_encoder
from ..data.packed import PackedDataset, resolve_backbone
from ..datasets import get_dataset
from ..evaluation import average_precision, f1_at_k
from ..modeling import get_method
from ..utils import comm
from ..utils.io import ensure_subfolder, write_json
from ..utils.logging import JsonlWriter, setup_logger
from . import checkpoint as ckpt
from . import train_data, writers
from .evaluator import evaluate_split, format_result
from .run_folder import RunFolder, shared_outcome
from .runtime import autocast_context, derive_seed, resolve_amp, run_inference, scene_features, seed_everything
from .setup import build_optimizer, build_training_model, channels_last_on
from .step_guard import StepGuard, TrainingDiverged, bad_batch_message, poison_bad_loss
from .train_data import in_memory_mode

__all__ = ["Trainer", "TrainingDiverged", "in_memory_mode"]


class Trainer:
    """One training run: built from a frozen config, driven by ``run()``."""

    # Steps between reads of the bad-step verdicts (StepGuard.CHECK_EVERY).
    CHECK_EVERY = StepGuard.CHECK_EVERY

    def __init__(self, cfg, resume: Optional[str] = None, overwrite: bool = False):
        """``resume``: None (a new run), "last" (this run's newest checkpoint) or a checkpoint
        file; ``overwrite``: let a new run write beside files it did not write (see
        :meth:`RunFolder.prepare`). Raises FolderBusyError / FolderOwnershipError / RunMismatchError
        before anything is written when the output folder may not be used, and ValueError for a
        method registered without a loss."""
        self.cfg = cfg
        self.method = get_method(cfg.MODEL.NAME)
        if not self.method.trainable:
            raise ValueError(f"MODEL.NAME = {cfg.MODEL.NAME!r}: this method is registered for evaluation and "
                             "prediction only (no loss to train); use biam-evaluate or biam-predict with it")
        self.device = comm.init_distributed(cfg.DEVICE)
        self.rank, self.world = comm.get_rank(), comm.get_world_size()
        self.folder = RunFolder(cfg)
        self.out_dir, self.ckpt_dir = self.folder.out_dir, self.folder.ckpt_dir
        self.tb = None
        try:
            self._init(resume, overwrite)
        except BaseException:
            self.close()
            raise

    def _init(self, resume: Optional[str], overwrite: bool) -> None:
        cfg = self.cfg
        notes = shared_outcome(lambda: self.folder.prepare(resume, overwrite), self.world)
        if self.world > 1:
            self.record = comm.broadcast_object(self.record)  # every rank takes rank 0's decisions
        if comm.is_main_process():
            ensure_subfolder(self.ckpt_dir)  # never a link or a file at checkpoints/
            dump_cfg(cfg, os.path.join(self.out_dir, "config.yaml"))
        comm.barrier()
        self.logger = setup_logger(self.out_dir)
        for line in notes:
            self.logger.info(line)
        self.jsonl = JsonlWriter(os.path.join(self.out_dir, "metrics.jsonl"))
        self.tb = writers.open_tensorboard(self.out_dir, self.logger)
        self.amp_dtype = resolve_amp(cfg.AMP, self.device, cfg.DTYPE)
        self.dtype = torch.float64 if cfg.DTYPE == "float64" else torch.float32  # weights and steps
        seed_everything(derive_seed(cfg.SEED, 0, self.rank))

        self.build_data()
        # Recorded in every checkpoint: weights fit only label embeddings of this encoder.
        self.label_encoder = data_label_encoder(cfg.DATA.ROOT)
        self.backbone = resolve_backbone(cfg.MODEL.BACKBONE, cfg.DATA.ROOT)
        self.channels_last = channels_last_on(cfg, self.device)
        self.model, self.raw_model = build_training_model(cfg, self.backbone, self.device, self.dtype, self.world,
                                                          self.logger)
        self.optimizer, self.scheduler = self.build_optimizer(finetune=False)
        # Bad steps are skipped through torch.amp.GradScaler, PyTorch's public API for skipping a
        # step whose gradients are not finite (on the device, for the fused Adam). Under float16
        # autocast it is the usual dynamic loss scale; otherwise its scale stays 1, and scaling
        # by 1 changes no bit, so it does nothing but the skip.
        self.dynamic_scale = self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, init_scale=2.0 ** 16 if self.dynamic_scale else 1.0)
        self.guard = StepGuard(self.world, self.dynamic_scale)
        self.start_epoch, self.phase = 1, "train"
        self.best = {"metric": -math.inf, "epoch": 0}
        self.history: List[Dict[str, Any]] = []
        self.bad_batches = 0
        self.skipped_in_epoch = 0  # skipped steps of the current epoch, counted when their verdict is read
        if resume is not None:
            self.resume()
        self.folder.write_record()

    @property
    def record(self) -> Dict[str, Any]:
        """The run record (OUTPUT_DIR/run.json)."""
        return self.folder.record

    @record.setter
    def record(self, value: Dict[str, Any]) -> None:
        self.folder.record = value

    @property
    def pending(self) -> List[Dict[str, Any]]:
        """Steps whose bad-step verdict is still on the device."""
        return self.guard.pending

    def close(self) -> None:
        """Release OUTPUT_DIR's lock (also done when ``run()`` returns)."""
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        self.folder.release()

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        # A Trainer dropped without close() (an in-process caller) must not keep its folder locked.
        folder = self.__dict__.get("folder")
        if folder is not None:
            folder.release()

    # ------------------------------------------------------------------ set-up
    def build_data(self) -> None:
        """The splits and the train/validation cut, checked (:func:`train_data.build_train_data`)."""
        data = train_data.build_train_data(self.cfg, self.device, self.dtype, self.logger)
        self.train_set, self.test_set, self.labels, self.scene_head = data.train_set, data.test_set, data.labels, \
            data.scene_head
        self.all_train_idx, self.train_idx, self.val_idx = data.all_train_idx, data.train_idx, data.val_idx
        self.train_loader = None  # built when a phase starts (it may load its images into RAM)

    def loader(self, dataset: PackedDataset, indices, *, shuffle: bool, batch_size: int, in_memory=False):
        return train_data.make_loader(self.cfg, dataset, indices, shuffle=shuffle, batch_size=batch_size,
                                      device=self.device, num_seen=self.labels.num_seen, in_memory=in_memory)

    def phase_loader(self):
        """The shuffling loader of the current phase: the training part, or all training images."""
        indices = self.train_idx if self.phase == "train" else self.all_train_idx
        if self.train_loader is None or self.train_loader_phase != self.phase:
            self.train_loader = None  # release the previous phase's in-memory copy first
            fits = train_data.resident_fits(self.cfg, self.train_set, indices, self.device)
            self.train_loader = self.loader(self.train_set, indices, shuffle=True, batch_size=self.cfg.SOLVER.BATCH_SIZE,
                                            in_memory=in_memory_mode(self.cfg.DATA.IN_MEMORY, self.world, fits))
            self.train_loader_phase = self.phase
            where = self.train_loader.where
            if where != "disk":
                place = f"on {self.device}" if where == "device" else "in RAM"
                self.logger.info(f"{len(indices)} training images held {place} "
                                 f"({self.train_loader.memory_bytes() / 2**30:.2f} GiB)")
        return self.train_loader

    def build_optimizer(self, finetune: bool):
        return build_optimizer(self.cfg, self.model, self.device, finetune)

    # ------------------------------------------------------------------ state
    def state_dict(self, epoch: int) -> Dict[str, Any]:
        return {
            **ckpt.model_file(self.raw_model, self.label_encoder),  # model, method, model_hparams, label_encoder
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
            self.folder.write_record()
            self.logger.info(f"saved {path}")
        comm.barrier()

    def resume(self) -> None:
        """Load the checkpoint rank 0 accepted (:meth:`RunFolder.check_resume`); every rank loads the same file."""
        path = comm.broadcast_object(self.folder.resume_path)
        if path is None:
            self.logger.info(f"--resume: no checkpoint of this run in {self.ckpt_dir}; starting from scratch")
            return
        if not os.path.isfile(path):
            raise ckpt.CheckpointError(
                f"rank {self.rank}: {path} (chosen by rank 0) is not visible here; to resume on several "
                "machines, OUTPUT_DIR must be on a file system that every machine sees")
        state, self.folder.resume_state = self.folder.resume_state, None
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
            writers.trim_jsonl(os.path.join(self.out_dir, "metrics.jsonl"), int(state["epoch"]), self.logger)
        self.logger.info(f"resumed from {path} (epoch {state['epoch']}, phase {self.phase})")

    # ------------------------------------------------------------------ driver
    def run(self) -> Dict[str, Any]:
        """Every epoch from ``start_epoch`` (training, then fine-tuning); returns the last test result."""
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
                record["val"] = self.validate()
                self.keep_if_best(epoch, record["val"][cfg.EVAL.SELECT_METRIC])
            if self.phase == "finetune" and cfg.EVAL.TEST_AFTER_FINETUNE:
                last_test = record["test"] = self.test()
            writers.log_epoch(self.logger, self.jsonl, record)
            writers.write_tensorboard(self.tb, record)
            self.history.append({k: v for k, v in record.items() if k in ("epoch", "phase", "loss", "lr", "val", "images_per_s")})
            self.save(epoch)
            if comm.is_main_process() and cfg.PLOT_CURVE:
                writers.plot_curve(self.history, os.path.join(self.out_dir, "curve.png"), cfg.EVAL.SELECT_METRIC)
        if last_test is None:
            last_test = self.test()
            writers.write_tensorboard(self.tb, {"epoch": E + F, "test": last_test})
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

    def keep_if_best(self, epoch: int, metric: float) -> None:
        """Save model_best.pth when ``metric`` is the best so far; a tie goes to the later epoch,
        as in the original (>=)."""
        if metric >= self.best["metric"]:
            self.best = {"metric": metric, "epoch": epoch}
            if comm.is_main_process():
                ckpt.atomic_torch_save(ckpt.model_file(self.raw_model, self.label_encoder), os.path.join(self.out_dir, "model_best.pth"))

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
        """The dataset's protocol on the test split (as biam-evaluate), logged."""
        result = evaluate_split(
            self.raw_model, self.test_set, self.labels, self.cfg, self.device, self.amp_dtype, self.scene_head,
            loader_fn=lambda ds, bs: self.loader(ds, None, shuffle=False, batch_size=bs),
        )
        self.logger.info("test split:\n" + format_result(result, self.cfg))
        out = result.to_dict()
        if result.chance is not None:
            out["chance"] = result.chance.to_dict()
        return out

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
        total_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        steps, images, self.skipped_in_epoch = 0, 0, 0
        # Every rank gets a share (maybe empty) of every global batch, so all ranks run the
        # same steps and join every collective: no DDP Join is needed for uneven data.
        num_batches = min(len(loader), cfg.MAX_STEPS_PER_EPOCH or len(loader))
        bar = writers.progress_bar(total=num_batches, desc=f"epoch {epoch} [{self.phase}]")
        start = time.perf_counter()
        for batch in loader:
            if steps >= num_batches:
                break
            loss, n = self.train_step(batch, self.labels.seen, self.labels.num_seen, epoch, steps)
            steps, images = steps + 1, images + n
            if loss is not None:
                total_loss += loss  # 0 for a step whose verdict is pending and turns out bad
            if steps % self.CHECK_EVERY == 0 or steps == num_batches:
                self.check_pending()
                if bar is not None:
                    # Under DDP rank 0's loss is its part of the global mean (see train_step).
                    bar.set_postfix(loss=f"{total_loss.item() / max(steps - self.skipped_in_epoch, 1):.4f}",
                                    lr=f"{lr:.2e}",
                                    img_s=f"{images * self.world / max(time.perf_counter() - start, 1e-9):.0f}")
            if bar is not None:
                bar.update(1)
        self.check_pending()
        if bar is not None:
            bar.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - start
        # Skipped steps are the same on every rank (the decision follows all-reduced values).
        # Each rank's step losses are its parts of the global batch means: their sum over ranks
        # is the sum of the global means. Images are the kept images of all ranks.
        stats = torch.tensor([total_loss.item(), float(images)], dtype=torch.float64)
        if self.world > 1:
            stats = comm.all_reduce_sum(stats.to(self.device)).cpu()
        self.bad_batches += self.skipped_in_epoch
        return {"loss": stats[0].item() / max(steps - self.skipped_in_epoch, 1), "lr": lr,
                "images": int(stats[1].item()), "images_per_s": stats[1].item() / max(elapsed, 1e-9),
                "seconds": elapsed, "skipped_batches": self.skipped_in_epoch}

    def train_step(self, batch: Dict[str, torch.Tensor], seen_emb: torch.Tensor, num_seen: int, epoch: int, step: int):
        """Forward, the method's loss, backward, update.

        ``batch`` is this rank's share of a global batch (0 rows allowed under DDP). Returns
        (loss, images): the detached float64 loss (under DDP this rank's part of the global
        batch's mean loss, so the ranks' parts sum to it), or None for a step known to be
        skipped (one process, no image kept); ``images`` is the number of images this rank kept.
        A bad step is skipped on the device; its verdict is read later (``check_pending``, every
        ``CHECK_EVERY`` steps), its returned loss is 0, and ``skipped_in_epoch`` counts it then.
        """
        batch, labels, n_kept = self.keep_labelled(batch, num_seen)
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
        scores = self.forward(batch, seen_emb)
        loss = self.method.loss(scores, labels.to(self.device, non_blocking=True)) if n_kept else scores.sum() * 0.0
        objective, empty = loss, None
        if global_kept is not None:
            loss = loss * (n_kept / global_kept.clamp(min=1.0))  # this rank's part of the global mean (reported)
            empty = global_kept == 0  # no rank kept an image: skip the step, as one process does
            objective = loss * self.world
        bad, factor = poison_bad_loss(loss, self.cfg.SOLVER.MAX_LOSS)
        self.scaler.scale(objective * factor).backward()
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if not grads:
            return loss.detach().double(), n_kept
        if empty is not None:
            # With no image on any rank the gradients are sums over no rows, zeros: mark them
            # (every rank knows) so that the scaler skips the step, as one process skips it.
            grads[0].add_(torch.where(empty, float("nan"), 0.0))
        self.scaler.unscale_(self.optimizer)
        # Our own copy of the verdict, left on the device (the scaler's is private to it). With
        # non-finite gradients the scaler leaves weights, Adam moments and step counts as they
        # were; the fused Adam reads that verdict on the device, so no step waits for it.
        found_inf = ~torch.isfinite(torch.nn.utils.get_total_norm(grads))
        self.scaler.step(self.optimizer)
        self.scaler.update(None if self.dynamic_scale else 1.0)
        self.guard.add(found_inf=found_inf, bad=bad, empty=empty, loss=loss, index=batch["index"], epoch=epoch, step=step)
        if self.guard.overdue:
            self.check_pending()  # bounded, for callers that drive train_step themselves
        return torch.where(found_inf, torch.zeros_like(loss), loss.detach()).double(), n_kept

    def keep_labelled(self, batch: Dict[str, torch.Tensor], num_seen: int):
        """``(batch, seen labels, images kept)`` without the images that have no positive seen label.

        They add nothing to the ranking loss; as published, they are dropped before the forward
        so batch-norm statistics match too. A resident batch (labels on the device) comes without
        them and says so in its host-side "keep"."""
        labels = batch["labels"][:, :num_seen]
        keep = batch["keep"] if "keep" in batch else (labels > 0).any(dim=1)
        n_kept = int(keep.sum())  # on the host: no device sync
        if n_kept < len(keep):
            batch = {k: v[keep] for k, v in batch.items()}
            labels = labels[keep]
        return batch, labels, n_kept

    def forward(self, batch: Dict[str, torch.Tensor], seen_emb: torch.Tensor) -> torch.Tensor:
        """Scores (B, S) of a batch on the training device, in the run's dtype and autocast."""
        regions = batch["regions"].to(self.device, non_blocking=True).to(self.dtype)
        if self.channels_last:
            rows, cols = self.backbone.grid
            regions = regions.reshape(regions.shape[0], regions.shape[1], rows, cols).contiguous(
                memory_format=torch.channels_last)
        scene = scene_features(batch, regions, self.scene_head)
        with autocast_context(self.device, self.amp_dtype):
            return self.model(regions, seen_emb, scene)

    def check_pending(self) -> int:
        """Read the verdicts of the steps since the last read (one sync); count skipped steps,
        report bad batches.

        Every rank calls it at the same steps. Returns the number of those steps that were
        skipped. Raises TrainingDiverged for the first bad batch when SOLVER.BAD_LOSS is "stop".
        """
        skipped, bad_steps = self.guard.read()
        self.skipped_in_epoch += skipped
        for bad in bad_steps:
            self.handle_bad_batch(bad)
        return skipped

    def handle_bad_batch(self, bad) -> None:
        """Log and go on (SOLVER.BAD_LOSS skip) or raise TrainingDiverged naming the images (stop)."""
        what = bad_batch_message(bad, [] if bad.elsewhere else self.image_names(bad.index), self.cfg.SOLVER.MAX_LOSS)
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
        return [str(self.train_set.read_slice(i, i + 1, fields=["names"])["names"][0]) for i in index.tolist()]

