"""A training run's data: the packed splits, the train/validation cut, the checks before
training, and the loaders (where the training images are held: disk, RAM or the device)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from ..data.loader import build_loader
from ..data.packed import PackedDataset
from ..data.resident import fits_on_device, image_bytes
from ..datasets import check_manifest_dataset
from ..utils import comm
from .runtime import LabelSpace, build_label_space, build_scene_head

__all__ = ["TrainData", "build_train_data", "check_label_counts", "check_positive_labels", "make_loader",
           "resident_fits", "in_memory_mode"]


@dataclass
class TrainData:
    """The splits of one run: ``all_train_idx`` (the training split after DATA.MAX_POSITIVES)
    cut by DATA.TRAIN_FRACTION into ``train_idx`` and ``val_idx`` (image indices)."""

    train_set: PackedDataset
    test_set: PackedDataset
    labels: LabelSpace
    scene_head: Optional[nn.Module]
    all_train_idx: np.ndarray
    train_idx: np.ndarray
    val_idx: np.ndarray


def build_train_data(cfg, device: torch.device, dtype: torch.dtype, logger) -> TrainData:
    """Open the splits, cut train/validation and check the data before any epoch runs."""
    train_set = PackedDataset(cfg.DATA.ROOT, cfg.DATA.TRAIN_SPLIT)
    test_set = PackedDataset(cfg.DATA.ROOT, cfg.DATA.TEST_SPLIT)
    if cfg.DATA.VERIFY_CHECKSUMS:
        train_set.verify()
        test_set.verify()
    labels = build_label_space(train_set, device, cfg.MODEL.EMBED_DIM)
    scene_head = build_scene_head(cfg.MODEL.SCENE_HEAD_WEIGHTS, train_set, device)
    if scene_head is not None:
        scene_head.to(dtype)
    n = len(train_set)
    if n == 0:
        raise ValueError(f"{cfg.DATA.ROOT}: split '{cfg.DATA.TRAIN_SPLIT}' has no images")
    all_idx = np.arange(n)
    positives = None
    if cfg.DATA.MAX_POSITIVES > 0:
        positives = train_set.count_positives()
        all_idx = all_idx[positives <= cfg.DATA.MAX_POSITIVES]
        logger.info(f"dropped {n - len(all_idx)} training images with more than {cfg.DATA.MAX_POSITIVES} positive labels")
    cut = int(round(len(all_idx) * cfg.DATA.TRAIN_FRACTION))
    data = TrainData(train_set, test_set, labels, scene_head, all_idx, all_idx[:cut], all_idx[cut:])
    if len(data.train_idx) == 0:
        raise ValueError(
            f"{cfg.DATA.ROOT}: split '{cfg.DATA.TRAIN_SPLIT}' has {n} images; DATA.MAX_POSITIVES "
            f"{cfg.DATA.MAX_POSITIVES} keeps {len(all_idx)}; DATA.TRAIN_FRACTION {cfg.DATA.TRAIN_FRACTION} "
            "keeps 0 for training (raise DATA.TRAIN_FRACTION)")
    check_label_counts(cfg, data)
    check_positive_labels(cfg, data, positives)
    logger.info(
        f"data {cfg.DATA.ROOT}: {len(data.train_idx)} training, {len(data.val_idx)} validation, "
        f"{len(test_set)} test images; {labels.num_seen} seen and "
        f"{labels.unseen_eval.shape[0]} evaluated unseen labels; scene features "
        f"{'stored' if scene_head is None else 'computed on the fly'}"
    )
    return data


def check_label_counts(cfg, data: TrainData) -> None:
    """Fail before training, not after an epoch, when the packed data is not ``DATA.DATASET``'s
    (the manifest's dataset name) or a K of its protocol exceeds a label count."""
    protocol = check_manifest_dataset(cfg.DATA.DATASET, data.train_set.manifest,
                                      os.path.join(cfg.DATA.ROOT, "manifest.json")).protocol
    ks = protocol.ks
    unseen = data.labels.unseen_eval.shape[0]
    if unseen < max(ks):
        raise ValueError(f"{cfg.DATA.ROOT}: {unseen} evaluated unseen labels, but the {cfg.DATA.DATASET} protocol "
                         f"reports P/R/F1 at K = {', '.join(map(str, ks))}, which needs at least {max(ks)}")
    vks = protocol.validation_ks
    if len(data.val_idx) and data.labels.num_seen < max(vks):
        raise ValueError(f"{cfg.DATA.ROOT}: validation reports {' and '.join(f'F1@{k}' for k in vks)} on the "
                         f"seen labels, which needs at least {max(vks)} of them (the manifest lists "
                         f"{data.labels.num_seen})")


def check_positive_labels(cfg, data: TrainData, positives: Optional[np.ndarray] = None) -> None:
    """Fail before training when no training image has a positive seen label.

    Such images are dropped from every batch (they add nothing to the ranking loss), so the
    run would "train" to loss 0 on nothing. ``positives``: per-image counts when already
    computed; else the shards are read one at a time until a positive is found.
    """
    num_seen = data.labels.num_seen
    if positives is None:
        ds = data.train_set
        wanted = np.zeros(len(ds), dtype=bool)
        wanted[data.train_idx] = True
        for s in range(len(ds.shards)):
            a, b = int(ds.shard_offsets[s]), int(ds.shard_offsets[s + 1])
            if not wanted[a:b].any():
                continue
            lab = ds.read_slice(a, b, fields=["labels"])["labels"][:, :num_seen]
            if ((lab == 1).any(axis=1) & wanted[a:b]).any():
                return
        found = 0
    else:
        found = int((positives[data.train_idx] > 0).sum())
    if found == 0:
        raise ValueError(
            f"{cfg.DATA.ROOT}: split '{cfg.DATA.TRAIN_SPLIT}': none of the {len(data.train_idx)} training images "
            f"has a positive (+1) label among the {num_seen} seen labels, so there is nothing to learn "
            "(the ranking loss needs a positive seen label); check the split's labels, or that the seen/unseen "
            "label lists of the conversion are the right way round")


def make_loader(cfg, dataset: PackedDataset, indices, *, shuffle: bool, batch_size: int, device: torch.device,
                num_seen: int, in_memory: Any = False):
    """A loader of this rank's part of ``indices`` of ``dataset`` (``in_memory``: see
    :func:`in_memory_mode`; "device" gathers batches on ``device``, without the images that have
    no positive among the first ``num_seen`` labels)."""
    resident = in_memory == "device"
    return build_loader(
        dataset, batch_size=batch_size, shuffle=shuffle, seed=cfg.SEED, indices=indices,
        rank=comm.get_rank(), world_size=comm.get_world_size(), num_workers=cfg.DATA.NUM_WORKERS,
        sampling=cfg.DATA.SAMPLING, block_size=cfg.DATA.BLOCK_SIZE, in_memory=in_memory,
        pin_memory=device.type == "cuda" and not resident,
        float32=device.type != "cuda",  # a GPU gets the stored float16 and converts it itself
        # Resident batches are gathered on the device without the images that have no positive
        # seen label (train_step drops those; here it need not read labels back to do so).
        device=device if resident else None, require_positive=num_seen if resident else 0,
    )


def resident_fits(cfg, dataset: PackedDataset, indices, device: torch.device) -> bool:
    """Whether ``DATA.IN_MEMORY auto`` holds these training images on the device: a CUDA
    device where they fit with room for training (:func:`biam.data.resident.fits_on_device`),
    on every rank (one all-reduce), so that all ranks read their batches the same way."""
    if cfg.DATA.IN_MEMORY != "auto" or device.type != "cuda":
        return False
    fits = fits_on_device(image_bytes(dataset) * len(indices), device)
    if comm.get_world_size() > 1:
        fits = comm.all_reduce_sum(torch.tensor(0.0 if fits else 1.0, device=device)).item() == 0
    return fits


def in_memory_mode(setting: str, world_size: int = 1, on_device: bool = False):
    """Config ``DATA.IN_MEMORY`` -> the loader's ``in_memory`` argument.

    ``on_device``: the split fits on the training device of every rank with room for training
    (:func:`resident_fits`), so "auto" holds it there ("device"). Otherwise "auto" means
    RAM for one process only: every rank would hold its own copy of the whole split in the
    machine's one RAM (its batches change every epoch), so with several it stays on disk.
    """
    if setting == "device" or (setting == "auto" and on_device):
        return "device"
    if setting == "auto" and world_size > 1:
        return False
    return {"auto": "auto", "on": True, "off": False}[setting]
