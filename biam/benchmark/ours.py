"""Our way of working, as the benchmark drives it: a real Trainer on the packed data, the
largest-batch search, our metrics, and our test pass (packed loader, run_inference)."""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List

import numpy as np
import torch

from .common import NUM_SEEN, NUM_UNSEEN, Ctx, timed
from ..config import get_cfg_defaults
from ..data.loader import build_loader
from ..data.packed import PackedDataset
from ..engine.runtime import autocast_context, resolve_amp, run_inference
from ..engine.trainer import Trainer
from ..evaluation import average_precision, f1_at_ks
from ..modeling import BiAM, ranking_loss


def our_trainer(ctx: Ctx, batch: int, compile_model: bool, fraction: float = 1.0, openimages: bool = False):
    """A real :class:`biam.engine.trainer.Trainer` on the packed data (its own train_step)."""
    device = ctx.device
    cfg = get_cfg_defaults()
    cfg.DATA.ROOT = ctx.data["packed_oi" if openimages else "packed"]
    cfg.DATA.DATASET = "openimages" if openimages else "nus_wide"
    cfg.DATA.TRAIN_FRACTION = fraction
    cfg.DATA.IN_MEMORY = "off"  # read from the packed files, as a dataset larger than RAM would
    cfg.DATA.NUM_WORKERS = 0 if device.type == "cpu" else min(8, max(2, (os.cpu_count() or 2) - 2))
    cfg.SOLVER.BATCH_SIZE = batch
    cfg.DEVICE = device.type
    cfg.AMP = "auto"  # bf16 on CUDA; float32 on the CPU (no bf16 speed-up on most CPUs)
    cfg.COMPILE = "on" if compile_model else "off"
    cfg.PLOT_CURVE = False
    cfg.OUTPUT_DIR = str(ctx.work_dir / f"trainer-{'oi-' if openimages else ''}{os.getpid()}")
    cfg.freeze()
    trainer = Trainer(cfg)
    return trainer


def _is_out_of_memory(err: BaseException) -> bool:
    # Compiled code may surface an allocator failure as a plain RuntimeError.
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def largest_batch(trainer, device: torch.device, start: int, limit: int, budget_s: float = 60.0) -> Dict[str, Any]:
    """Doubling search (start, 2 x start, ... up to limit) for the largest training batch that
    fits, and images/s of the trainer's model (compiled, autocast as configured) at each size.

    Inputs are random tensors already on the device, so the figures are compute throughput
    without reading. The search stops at the first out-of-memory error, or before a new size
    once ``budget_s`` seconds are spent (recompiles for new shapes can be slow): the result
    says which.
    """
    model, opt = trainer.model, trainer.optimizer
    emb = trainer.labels.seen
    four_d = trainer.channels_last  # as the trainer feeds it
    bb = trainer.backbone
    (rows, cols), channels = bb.grid, trainer.raw_model.feature_dim if hasattr(trainer.raw_model, "feature_dim") else bb.channels
    scene_dim = trainer.raw_model.scene_dim if hasattr(trainer.raw_model, "scene_dim") else bb.scene_dim
    tried: List[Dict[str, Any]] = []
    b = start
    stopped = f"reached the search limit {limit}"
    t0 = time.perf_counter()
    while b <= limit:
        if time.perf_counter() - t0 > budget_s:
            stopped = f"time budget {budget_s:g} s spent before batch {b}"
            break
        try:
            if four_d:
                x = torch.rand(b, channels, rows, cols, device=device).contiguous(memory_format=torch.channels_last)
            else:
                x = torch.rand(b, channels, rows * cols, device=device)
            scene = torch.rand(b, scene_dim, device=device)
            y = torch.where(torch.rand(b, emb.shape[0], device=device) < 0.02, 1, -1).to(torch.int8)
            y[:, 0] = 1

            def step(x=x, scene=scene, y=y) -> None:
                opt.zero_grad(set_to_none=True)
                with autocast_context(device, trainer.amp_dtype):
                    scores = model(x, emb, scene)
                ranking_loss(scores.float(), y).backward()
                opt.step()

            first = timed(step, device)  # a new size may recompile: reported apart
            dt = timed(lambda: [step() for _ in range(5)], device)
            tried.append({"batch": b, "images_per_s": 5 * b / dt, "first_step_seconds": first})
        except (RuntimeError, torch.OutOfMemoryError) as err:
            if not _is_out_of_memory(err):
                raise
            stopped = f"out of memory at batch {b}"
            break
        finally:
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        b *= 2
    last = tried[-1] if tried else {"batch": None, "images_per_s": None}
    # On a CPU the rate per image can fall as the batch grows: the fastest size is kept apart.
    best = max(tried, key=lambda t: t["images_per_s"]) if tried else {"batch": None, "images_per_s": None}
    return {"batch": last["batch"], "images_per_s": last["images_per_s"], "best_batch": best["batch"],
            "best_images_per_s": best["images_per_s"], "tried": tried, "stopped": stopped,
            "note": "device-resident inputs (no reading); each new size may recompile (first step apart)"}


def ours_metrics(scores, labels, ks, row_mask=None) -> Dict[str, Any]:
    ap = average_precision(scores, labels, row_mask=row_mask)
    f1 = f1_at_ks(scores, labels, ks, row_mask=row_mask)
    return {"mAP": float(ap.mean()), **{f"F1@{k}": v[0] for k, v in f1.items()}}


def our_testpass(ctx: Ctx, emb: torch.Tensor) -> Dict[str, Any]:
    """Our test pass: the packed test loader, run_inference (AMP auto), our metrics."""
    s = ctx.sizes
    device = ctx.device

    model = BiAM(attention="fused").to(device).eval()
    amp = resolve_amp("auto", device)
    ds = PackedDataset(ctx.data["packed"], "test")
    n_images = min(s.test_images, len(ds))
    workers = 0 if device.type == "cpu" else min(8, max(2, (os.cpu_count() or 2) - 2))
    loader = build_loader(ds, batch_size=s.test_batch, shuffle=False, indices=np.arange(n_images),
                          num_workers=workers, pin_memory=device.type == "cuda", float32=device.type != "cuda")
    columns = torch.arange(NUM_SEEN + NUM_UNSEEN)
    # One short warm-up batch (kernel selection), not timed.
    run_inference(model, [next(iter(build_loader(ds, batch_size=8, shuffle=False, indices=np.arange(8))))],
                  emb, columns, device, amp)
    result: Dict[str, Any] = {}

    def work() -> None:
        sc, lb = run_inference(model, loader, emb, columns, device, amp)
        metric_dev = device
        result.update(ours_metrics(sc.to(metric_dev), lb.to(metric_dev), (3, 5)))

    dt = timed(work, device)
    out = {"images": n_images, "seconds": dt, "images_per_s": n_images / dt, "extrapolated": False}
    if device.type == "cuda":
        out["max_memory_allocated"] = torch.cuda.max_memory_allocated(device)
    return out
