"""The published learning-rate curve as a pure function of the epoch, driven by LambdaLR.

Epochs are counted from 1. With warm-up W and E training epochs:
    e <= W:  lr * e / W                                      (lr/3, 2lr/3, lr for W = 3)
    e >  W:  floor + (lr - floor) * (1 + cos(pi * (e - W) / (E - W))) / 2
so the last epoch runs at the floor. This is the curve of the published GradualWarmupScheduler
+ CosineAnnealingLR pair, built from PyTorch's own LambdaLR so it is saved and restored with
the checkpoint (the factor is a picklable object, and its state is its four numbers).
"""

from __future__ import annotations

import math

import torch

__all__ = ["WarmupCosine", "lr_at_epoch", "build_scheduler"]


class WarmupCosine:
    """Multiplicative LR factor for 0-based scheduler step ``i`` (= epoch ``i + 1``)."""

    def __init__(self, warmup_epochs: int, total_epochs: int, base_lr: float, min_lr: float, cosine: bool = True):
        self.warmup_epochs = int(warmup_epochs)
        self.total_epochs = int(total_epochs)
        self.base_lr = float(base_lr)
        self.min_lr = float(min_lr)
        self.cosine = bool(cosine)

    def __call__(self, step: int) -> float:
        return lr_at_epoch(step + 1, self.warmup_epochs, self.total_epochs, self.base_lr, self.min_lr, self.cosine) / self.base_lr


def lr_at_epoch(epoch: int, warmup_epochs: int, total_epochs: int, base_lr: float, min_lr: float, cosine: bool = True) -> float:
    """Learning rate of 1-based ``epoch``; epochs past the end stay at the last value."""
    epoch = min(max(epoch, 1), total_epochs)
    if epoch <= warmup_epochs:
        return base_lr * epoch / warmup_epochs
    if not cosine:
        return base_lr
    span = total_epochs - warmup_epochs
    t = (epoch - warmup_epochs) / span
    return min_lr + (base_lr - min_lr) * (1.0 + math.cos(math.pi * t)) / 2.0


def build_scheduler(optimizer: torch.optim.Optimizer, *, warmup_epochs: int, total_epochs: int,
                    base_lr: float, min_lr: float, cosine: bool = True) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per epoch, after the epoch, following ``lr_at_epoch``."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(warmup_epochs, total_epochs, base_lr, min_lr, cosine)
    )
