"""The learning rate of every epoch as a pure function of the epoch, and the scheduler that applies it.

Epochs are counted from 1 over the whole run. With warm-up W, E training epochs and F
fine-tuning epochs (``recipe_lr``):

    e <= W:          lr * e / W                                       (lr/3, 2lr/3, lr for W = 3)
    W < e <= E:      floor + (lr - floor) * (1 + cos(pi * (e - W - 1) / (E - W))) / 2
    E < e <= E + F:  the constant fine-tuning rate

This is the rate the original release's optimiser used in each epoch: its
GradualWarmupScheduler(multiplier 1, total_epoch W) over CosineAnnealingLR(T_max E - W,
eta_min floor), on PyTorch 1.1 and stepped once before training and once per epoch, runs the
peak rate twice (epochs W and W + 1) and so starts the cosine one epoch late; the last training
epoch runs just above the floor (5.009e-4 for the NUS-WIDE recipe, never at it). The rates its
log prints (``get_lr()``) are not always these. ``tests/engine/test_schedule.py`` checks all 40
NUS-WIDE epochs, through the trainer, against the rates replayed from that scheduler.

``EpochLR`` applies ``recipe_lr`` to an optimiser. Its only state is the number of epochs it
has stepped, so a resumed run gets the rate of its epoch from the config, whatever the
checkpoint's schedule object held.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict

import torch

__all__ = ["RecipeRates", "recipe_lr", "lr_at_epoch", "EpochLR", "build_scheduler"]


@dataclass(frozen=True)
class RecipeRates:
    """The schedule's numbers (SOLVER.*): rates in absolute units, epochs counted from 1."""

    base_lr: float
    warmup_epochs: int
    total_epochs: int
    min_lr: float
    cosine: bool = True
    finetune_lr: float = 0.0

    def __call__(self, epoch: int) -> float:
        return recipe_lr(epoch, **self.__dict__)


def recipe_lr(epoch: int, *, base_lr: float, warmup_epochs: int, total_epochs: int, min_lr: float,
              cosine: bool = True, finetune_lr: float = 0.0) -> float:
    """Learning rate used during 1-based ``epoch`` of the whole run (training, then fine-tuning).

    Args:
        epoch: >= 1; epochs after ``total_epochs`` are fine-tuning epochs.
        base_lr: the peak rate. warmup_epochs: W >= 0. total_epochs: E >= W, training epochs.
        min_lr: the cosine's floor. cosine: False for a constant rate after warm-up.
        finetune_lr: the rate of every fine-tuning epoch.
    Returns:
        The rate as a Python float.
    """
    if epoch < 1:
        raise ValueError(f"epochs are counted from 1, got {epoch}")
    if epoch > total_epochs:
        return float(finetune_lr)
    if epoch <= warmup_epochs:
        return base_lr * epoch / warmup_epochs
    if not cosine:
        return float(base_lr)
    # The cosine starts one epoch after the warm-up ends (see the module docstring).
    t = (epoch - warmup_epochs - 1) / (total_epochs - warmup_epochs)
    return min_lr + (base_lr - min_lr) * (1.0 + math.cos(math.pi * t)) / 2.0


def lr_at_epoch(epoch: int, warmup_epochs: int, total_epochs: int, base_lr: float, min_lr: float,
                cosine: bool = True) -> float:
    """Rate of training epoch ``epoch`` (1-based); past ``total_epochs`` it stays at the last one."""
    return recipe_lr(min(max(epoch, 1), total_epochs), base_lr=base_lr, warmup_epochs=warmup_epochs,
                     total_epochs=total_epochs, min_lr=min_lr, cosine=cosine)


class EpochLR(torch.optim.lr_scheduler.LRScheduler):
    """Sets every parameter group's rate to ``rates(first_epoch + steps taken)``.

    Built before epoch ``first_epoch`` (it sets that epoch's rate at once) and stepped once after
    each epoch. ``state_dict`` holds only the step count (and reads the ``last_epoch`` of the
    LambdaLR state that older checkpoints hold), so the rates always come from the config.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, rates: RecipeRates, first_epoch: int = 1):
        self.rates = rates
        self.first_epoch = int(first_epoch)
        super().__init__(optimizer)

    def epoch(self) -> int:
        """The 1-based epoch whose rate the optimiser holds now."""
        return self.first_epoch + self.last_epoch

    def get_lr(self):
        return [self.rates(self.epoch()) for _ in self.optimizer.param_groups]

    def state_dict(self) -> Dict[str, Any]:
        return {"last_epoch": self.last_epoch, "first_epoch": self.first_epoch}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.last_epoch = int(state_dict["last_epoch"])
        self.first_epoch = int(state_dict.get("first_epoch", self.first_epoch))
        lrs = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = lrs


def build_scheduler(optimizer: torch.optim.Optimizer, *, warmup_epochs: int, total_epochs: int,
                    base_lr: float, min_lr: float, cosine: bool = True, finetune_lr: float = 0.0,
                    first_epoch: int = 1) -> EpochLR:
    """An ``EpochLR`` following ``recipe_lr`` from ``first_epoch`` on, stepped once per epoch."""
    rates = RecipeRates(base_lr=float(base_lr), warmup_epochs=int(warmup_epochs), total_epochs=int(total_epochs),
                        min_lr=float(min_lr), cosine=bool(cosine), finetune_lr=float(finetune_lr))
    return EpochLR(optimizer, rates, first_epoch=first_epoch)
