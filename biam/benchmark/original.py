"""The original's way of working, rebuilt from the original release's code: its input pipeline
(random batches of names, key-by-key reads of the per-key gzip layout), its (B, C, C) ranking
loss, its training step (frozen VGG19 scene head recomputed every step, float32, eager,
published attention, Adam), its per-label metric loops and its test pass."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Dict, Sequence

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from .common import OI_SEEN, Ctx, nus_matrix, seen_embeddings, sync
from ..backbones.vgg19 import SceneHead
from ..evaluation import reference as ref
from ..modeling import BiAM


class ReleasedBatches:
    """The original's input pipeline: random batches of names, key-by-key reads, stacked.

    Args:
        path: a released NUS-WIDE feature file; names: its image names.
        batch: images per batch; seed: order of the random batches; label_field: ``labels``.
    Iterating yields ``(regions (B, 512, 196) float32, labels (B, L) int8)`` tensors, cycling
    over fresh random permutations for as long as asked.
    """
    def __init__(self, path: os.PathLike, names: Sequence[str], batch: int, seed: int = 0, label_field: str = "labels",
                 shuffle: bool = True):
        self.file = h5py.File(path, "r")
        self.names = list(names)
        self.batch = batch
        self.rng = np.random.default_rng(seed)
        self.label_field = label_field
        self.shuffle = shuffle

    def __iter__(self):
        while True:
            order = self.rng.permutation(len(self.names)) if self.shuffle else np.arange(len(self.names))
            for i in range(0, len(order), self.batch):
                names = [self.names[j] for j in order[i:i + self.batch]]
                feats = np.stack([self.file[f"{n}-features"][()] for n in names])
                labels = np.stack([self.file[f"{n}-{self.label_field}"][()] for n in names])
                yield torch.from_numpy(feats), torch.from_numpy(labels)

    def close(self) -> None:
        self.file.close()


def published_ranking_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The published code's loss formulation, with its (B, C, C) tensors.

    scores (B, C) float, labels (B, C) in {-1, 0, +1} -> scalar: columns that are zero in the
    whole batch and images without a positive are left out; per image, the sum of
    max(0, 1 + s_n - s_p) over (positive p, negative n) pairs over the number of pairs that
    contribute (+1e-8); mean over images.
    """
    cols = (labels != 0).any(dim=0)
    s, y = scores[:, cols], labels[:, cols]
    keep = (y > 0).any(dim=1)
    s, y = s[keep], y[keep]
    pos = (y > 0).to(s.dtype)
    neg = (y < 0).to(s.dtype)
    # [b, p, n] = 1 + s_n - s_p, kept only where p is a positive and n a negative of image b.
    hinge = F.relu(1.0 + s[:, None, :] - s[:, :, None]) * (pos[:, :, None] * neg[:, None, :])
    per_image = hinge.sum(dim=(1, 2)) / ((hinge > 0).sum(dim=(1, 2)).to(s.dtype) + 1e-8)
    return per_image.mean()


def original_trainer(ctx: Ctx, batch: int, openimages: bool = False):
    """Step function (returns images) of the original's training loop, on the NUS-WIDE-shaped
    released file or, with ``openimages``, the Open Images-shaped one."""
    device = ctx.device
    torch.manual_seed(0)
    model = BiAM(attention="published").to(device).train()
    # Default-initialised weights: the values do not change the time, SceneHead.random's
    # seeded draw of 120M numbers would only slow the set-up.
    head = SceneHead().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), weight_decay=5e-4)
    if openimages:
        emb = seen_embeddings(device, OI_SEEN)
        src = ReleasedBatches(Path(ctx.data["released"]) / "openimages_train.h5", ctx.data["oi_ids"], batch, seed=0,
                              label_field="seenlabels")
    else:
        emb = seen_embeddings(device)
        src = ReleasedBatches(Path(ctx.data["released"]) / "nus_wide_train.h5", ctx.data["train_names"], batch, seed=0)
    it = iter(src)

    def step() -> int:
        regions, labels = next(it)
        regions, labels = regions.to(device), labels.to(device)
        keep = (labels > 0).any(dim=1)
        regions, labels = regions[keep], labels[keep]
        scene = head(regions)  # recomputed from the regions at every step, as published
        scores = model(regions, emb, scene)
        loss = published_ranking_loss(scores, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return int(regions.shape[0])

    return step


def original_metrics(s_np: np.ndarray, y_np: np.ndarray, ks: Sequence[int], loop_cols: int,
                     f1_rows: int) -> Dict[str, Any]:
    """The published loops: per-label AP on ``loop_cols`` columns and per-image F1@K on
    ``f1_rows`` images, each extrapolated linearly to the whole (N, C) matrix when smaller."""
    n, c = s_np.shape
    cols, rows = min(loop_cols, c), min(f1_rows, n)
    t0 = time.perf_counter()
    ap = ref.published_loop_average_precision(s_np[:, :cols], y_np[:, :cols])
    loop_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    f1 = {k: ref.published_loop_f1_at_k(s_np[:rows], y_np[:rows], k) for k in ks}
    f1_s = time.perf_counter() - t0
    return {"loop_columns": cols, "columns": c, "f1_rows": rows, "rows": n, "ap_loop_seconds": loop_s,
            "f1_loop_seconds": f1_s, "seconds": loop_s * c / cols + f1_s * n / rows,
            "extrapolated": cols < c or rows < n, "mAP_on_loop_columns": float(np.mean(ap)),
            **{f"F1@{k}_on_loop_rows": v[0] for k, v in f1.items()}}


def original_testpass(ctx: Ctx, emb: torch.Tensor) -> Dict[str, Any]:
    """The original's test pass: released reads of the test file, the scene head per batch,
    published attention, then the per-label loops; extrapolated when the mode asks for more test
    images than the released file holds."""
    s = ctx.sizes
    device = ctx.device
    model = BiAM(attention="published").to(device).eval()
    head = SceneHead().to(device)
    names = ctx.data["test_names"]
    src = ReleasedBatches(Path(ctx.data["released"]) / "nus_wide_test.h5", names, 32, shuffle=False)
    # The original's batches: measured on up to released_test images, cycled when asked for more.
    n_images = min(s.test_images, len(names))
    scores, labels = [], []
    t0 = time.perf_counter()
    with torch.no_grad():
        it = iter(src)
        while sum(x.shape[0] for x in scores) < n_images:
            regions, lab = next(it)
            regions = regions.to(device)
            scores.append(model(regions, emb, head(regions)).cpu())
            labels.append(lab)
    sync(device)
    read_score_s = time.perf_counter() - t0
    src.close()
    per_image = read_score_s / sum(x.shape[0] for x in scores)  # images read, whole batches
    total_images = s.test_images
    sc, lb = torch.cat(scores)[:n_images], torch.cat(labels)[:n_images]
    if total_images <= n_images:
        m = original_metrics(sc.numpy(), lb.numpy(), (3, 5), sc.shape[1], sc.shape[0])
    else:
        # More test images than the released file holds (the CUDA mode's full test split):
        # reading and scoring scale per image, and the loops cost what they cost on a
        # full-size matrix: time them on its column / row subsets and scale.
        big_s, big_y = nus_matrix(total_images, seed=7)
        m = original_metrics(big_s.numpy(), big_y.numpy(), (3, 5), s.eval_nus_loop_cols, s.eval_nus_f1_rows)
    metric_s, extrapolated = m["seconds"], m["extrapolated"]
    seconds = per_image * total_images + metric_s
    out = {"images": total_images, "measured_images": n_images, "read_score_seconds": read_score_s,
           "metric_seconds": metric_s, "seconds": seconds, "images_per_s": total_images / seconds,
           "extrapolated": extrapolated or total_images != n_images}
    if device.type == "cuda":
        out["max_memory_allocated"] = torch.cuda.max_memory_allocated(device)
    return out
