"""Set-up of a training run's model and optimiser: the method's module on the device, batch
norm across ranks (SyncBN / GlobalBatchNorm2d), DDP, torch.compile, Adam and the schedule."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from ..backbones import Backbone
from ..modeling import build_model
from ..utils.dist_bn import convert_to_global_bn
from . import checkpoint as ckpt
from .schedule import build_scheduler

__all__ = ["channels_last_on", "build_training_model", "build_optimizer"]


def channels_last_on(cfg, device: torch.device) -> bool:
    """Whether the run uses channels-last memory format: CHANNELS_LAST "auto" on CUDA, "on" on
    every device (the CPU too), "off" never."""
    return cfg.CHANNELS_LAST == "on" or (cfg.CHANNELS_LAST == "auto" and device.type == "cuda")


def build_training_model(cfg, backbone: Backbone, device: torch.device, dtype: torch.dtype, world: int,
                         logger) -> Tuple[nn.Module, nn.Module]:
    """``(model as trained, bare model)``: the method ``MODEL.NAME`` for ``backbone``'s features
    (from ``MODEL.WEIGHTS`` when set), maybe inside DDP and torch.compile. The bare module shares
    the parameters; it is the one that is saved, loaded and evaluated."""
    model = build_model(cfg, backbone)
    if cfg.MODEL.WEIGHTS:
        ckpt.load_model_weights(model, cfg.MODEL.WEIGHTS, data_root=cfg.DATA.ROOT)
        logger.info(f"initialised from {cfg.MODEL.WEIGHTS}")
    model.to(device, dtype)
    if channels_last_on(cfg, device):
        model.to(memory_format=torch.channels_last)
    if world > 1 and cfg.DIST_BN == "sync":
        # nn.SyncBatchNorm is CUDA-only; GlobalBatchNorm2d computes the same on gloo.
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model) if device.type == "cuda" else convert_to_global_bn(model)
    raw_model = model  # the wrappers below share its parameters
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.COMPILE == "on" or (cfg.COMPILE == "auto" and device.type == "cuda"):
        model = torch.compile(model)
    return model, raw_model


def build_optimizer(cfg, model: nn.Module, device: torch.device, finetune: bool):
    """``(Adam, scheduler)`` of the training phase (BASE_LR) or the fine-tuning phase (FINETUNE_LR)."""
    s = cfg.SOLVER
    lr = s.FINETUNE_LR if finetune else s.BASE_LR
    params = [p for p in model.parameters() if p.requires_grad]
    kwargs = dict(lr=lr, betas=tuple(s.BETAS), weight_decay=s.WEIGHT_DECAY)
    if s.FUSED_ADAM and device.type in ("cuda", "cpu"):
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
