"""Every configuration key of the project, with its default and its allowed values.

Build order (``load_cfg``): these defaults, then the YAML file, then ``KEY VALUE`` pairs from
the command line, then checks across keys (``check_cfg``), then freeze. Unknown keys and values
of the wrong type are errors. The resolved config is written beside every run's outputs.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import yaml
from yacs.config import CfgNode as CN

from ..backbones import get_backbone, list_backbones
from ..datasets import get_dataset, list_datasets
from ..modeling import list_methods
from ..utils.io import atomic_open
from ..utils.yaml_safe import MAX_BYTES, load_yaml_mapping

_C = CN()

# ------------------------------------------------------------------------------------------- #
# Model options
# ------------------------------------------------------------------------------------------- #
_C.MODEL = CN()

# Method, a name registered in biam.modeling (list_methods()): "biam" (the paper's model and
# ranking loss) or one you register (docs/architecture.md, "Adding a method")
_C.MODEL.NAME = "biam"

# Width D_c of the attention blocks (positive int; published: 256)
_C.MODEL.CHANNEL_DIM = 256

# Attention heads of the region block (positive int dividing CHANNEL_DIM; published NUS-WIDE: 8,
# published Open Images scripts: 16)
_C.MODEL.HEADS = 8

# Number of top region scores averaged into an image score (1..the backbone's regions, rows x
# cols of its grid; checked when the model is built for the data's backbone; published: 6)
_C.MODEL.TOPK = 6

# Width of the label embeddings (positive int; GloVe: 300)
_C.MODEL.EMBED_DIM = 300

# Backbone that made the features (biam.backbones): "" (default) = the one the packed data at
# DATA.ROOT records in its manifest (data without that field, or no data: "vgg19"); or a
# registered name ("vgg19", "resnet101"), which must then match the data's
_C.MODEL.BACKBONE = ""

# Channels of the region features: 0 (default) = the backbone's (VGG19 conv5_4: 512,
# ResNet-101 layer4: 2048), or a positive int (e.g. synthetic features of another width)
_C.MODEL.FEATURE_DIM = 0

# Width of the joint visual-semantic space (positive int; published: 512)
_C.MODEL.JOINT_DIM = 512

# Width of the scene feature: 0 (default) = the backbone's (VGG19 fc7: 4096, ResNet-101 pooled
# layer4: 2048), or a positive int
_C.MODEL.SCENE_DIM = 0

# Dropout on attention weights and after w_o (float in [0, 1); published: 0.1)
_C.MODEL.ATTN_DROPOUT = 0.1

# Dropout on the scene feature before w_g (float in [0, 1); published: 0.2)
_C.MODEL.SCENE_DROPOUT = 0.2

# Attention kernel: "fused" (scaled_dot_product_attention) or "published" (explicit softmax
# with the published zero-score quirk; see docs/model.md)
_C.MODEL.ATTENTION = "fused"

# Weights to start from: "" (random init) or a checkpoint / published state_dict file
_C.MODEL.WEIGHTS = ""

# Frozen VGG19 weights for the scene head when the packed data has no scene features:
# "" (fail with instructions if needed), a file with torchvision vgg19 state dict, or
# "random:<seed>" (seeded random head; only meaningful for synthetic data)
_C.MODEL.SCENE_HEAD_WEIGHTS = ""

# ------------------------------------------------------------------------------------------- #
# Data options
# ------------------------------------------------------------------------------------------- #
_C.DATA = CN()

# Dataset, a name registered in biam.datasets (list_datasets()): "nus_wide", "openimages",
# "own" (your own tagged images, docs/own_data.md) or one you register; it decides the
# evaluation protocol (K values, rows, mAP variants) and must equal the packed data's
# manifest "dataset" field
_C.DATA.DATASET = "nus_wide"

# Directory of the packed dataset written by biam-convert (holds manifest.json)
_C.DATA.ROOT = "datasets/NUS-WIDE/packed"

# Name of the training split inside DATA.ROOT
_C.DATA.TRAIN_SPLIT = "train"

# Name of the test split inside DATA.ROOT
_C.DATA.TEST_SPLIT = "test"

# Fraction of the training split (in name order) used for training before fine-tuning; the
# rest is the validation set (float in (0, 1]; published NUS-WIDE: 0.8; 1.0 disables validation)
_C.DATA.TRAIN_FRACTION = 0.8

# Drop training images with more positive labels than this (int; 0 = keep all;
# published Open Images: 40)
_C.DATA.MAX_POSITIVES = 0

# How training batches are drawn (see docs/data_format.md, "Reading batches"):
# "shuffle": a new uniform random permutation of the training images every epoch, cut into
#   batches: every image once per epoch, each batch a uniformly random set of images;
# "randperm": as published: every batch an independent uniform draw of BATCH_SIZE distinct
#   images (randperm per batch), ceil(images / BATCH_SIZE) batches per epoch;
# "blocks": shuffled blocks of BLOCK_SIZE consecutive images (long reads for slow random
#   access; batches then hold few Flickr-query folders, as the images are stored in that order)
_C.DATA.SAMPLING = "shuffle"

# Images per block of SAMPLING "blocks", read as one contiguous slice; a batch mixes
# BATCH_SIZE / BLOCK_SIZE blocks from random places of the split (positive int; keep the
# batch size a multiple of it; unused by the other SAMPLING modes)
_C.DATA.BLOCK_SIZE = 8

# DataLoader worker processes per rank (int >= 0)
_C.DATA.NUM_WORKERS = 2

# Where the training images are held ("auto", "device", "on", "off"). "device": copied once onto
# the training device (a GPU's memory; RAM on a CPU run) and every batch gathered there, with no
# host-to-device copy per step (error if they cannot fit); "on": copied once into RAM (error if
# they cannot fit); "off": read from the packed files every epoch; "auto": "device" on CUDA when
# they fit in free GPU memory with a quarter of the card (at least 4 GiB) left for training, on
# every rank; else "on" when they take under half the free RAM and there is one process (each
# rank would hold a copy); else "off". Every choice gives the same batches and results.
_C.DATA.IN_MEMORY = "auto"

# Check shard SHA-256 checksums against the manifest before training (bool)
_C.DATA.VERIFY_CHECKSUMS = False

# ------------------------------------------------------------------------------------------- #
# Optimiser and schedule
# ------------------------------------------------------------------------------------------- #
_C.SOLVER = CN()

# Peak learning rate (positive float; published NUS-WIDE: 1e-3, Open Images: 1e-4)
_C.SOLVER.BASE_LR = 1e-3

# Adam betas (two floats in [0, 1))
_C.SOLVER.BETAS = (0.9, 0.999)

# Weight decay, added to the gradient as in torch.optim.Adam (float >= 0; published: 5e-4)
_C.SOLVER.WEIGHT_DECAY = 5e-4

# Images per step on each process (positive int; published: 32 on one GPU)
_C.SOLVER.BATCH_SIZE = 32

# Training epochs before fine-tuning (positive int; published NUS-WIDE: 40, Open Images: 10)
_C.SOLVER.MAX_EPOCHS = 40

# Linear warm-up epochs: lr * e / WARMUP_EPOCHS in epoch e = 1..WARMUP_EPOCHS (int >= 0)
_C.SOLVER.WARMUP_EPOCHS = 3

# Schedule after warm-up: "cosine" (anneal to MIN_LR over the remaining epochs) or "constant"
_C.SOLVER.SCHEDULE = "cosine"

# Floor of the cosine schedule (float >= 0; published NUS-WIDE: 5e-4)
_C.SOLVER.MIN_LR = 5e-4

# Fine-tuning epochs on all training images after model selection (int >= 0; published: 5)
_C.SOLVER.FINETUNE_EPOCHS = 5

# Learning rate of the fine-tuning epochs (positive float; published: 3.33e-4)
_C.SOLVER.FINETUNE_LR = 3.33e-4

# Adam implementation: True = the fused kernel (one kernel for all parameters; lets a step run
# without waiting on the device), False = PyTorch's per-parameter loop (foreach off), the
# implementation of the original's PyTorch 1.1; same update up to float rounding (docs/fidelity.md)
_C.SOLVER.FUSED_ADAM = True

# What to do with a batch whose loss is NaN/inf or above MAX_LOSS: "stop" (keep the last good
# checkpoint and name the batch's images) or "skip" (count, report and go on)
_C.SOLVER.BAD_LOSS = "stop"

# A loss above this is treated as exploding (positive float)
_C.SOLVER.MAX_LOSS = 1e4

# ------------------------------------------------------------------------------------------- #
# Validation and evaluation
# ------------------------------------------------------------------------------------------- #
_C.EVAL = CN()

# First epoch with a validation pass (int >= 1; published: 4)
_C.EVAL.START_EPOCH = 4

# Validate every this many epochs from START_EPOCH (positive int; published: 2)
_C.EVAL.PERIOD = 2

# Metric used to select the checkpoint to fine-tune, on the seen labels of the validation
# images: "F1@5" (published), "F1@3", "mAP", "P@3", "P@5", "R@3" or "R@5" (the K are the
# dataset protocol's validation K: 3 and 5 for the built-in datasets)
_C.EVAL.SELECT_METRIC = "F1@5"

# Images per inference batch (positive int)
_C.EVAL.BATCH_SIZE = 256

# Evaluate on the test split after each fine-tuning epoch (bool; published: True)
_C.EVAL.TEST_AFTER_FINETUNE = True

# Also print the chance level: the protocol's expected metrics for uniformly random scores,
# computed exactly from the labels (bool)
_C.EVAL.REPORT_CHANCE = False

# Also report the published (pooled) Open Images AP beside the true per-label mAP, plain and
# weighted by +1 images (the paper's table; docs/metrics.md) (bool)
_C.EVAL.PUBLISHED_OPENIMAGES_AP = False

# biam-evaluate only: a second weights file for the GZSL row ("" = MODEL.WEIGHTS serves ZSL and
# GZSL; a file = every row of this file and of MODEL.WEIGHTS, then the summary with ZSL from
# MODEL.WEIGHTS and GZSL from this file, as the original Open Images evaluation runs
# model_best_gzsl.pth and model_best_zsl.pth)
_C.EVAL.GZSL_WEIGHTS = ""

# ------------------------------------------------------------------------------------------- #
# Runtime
# ------------------------------------------------------------------------------------------- #
# Directory of the run's outputs: run.json (the run record), config.yaml, log.txt, metrics.jsonl,
# checkpoints/ (a path; a new run refuses a folder holding another run or other files, see
# docs/training.md; biam-evaluate writes OUTPUT_DIR/eval/<TEST_SPLIT>-<weights name>/)
_C.OUTPUT_DIR = "output/run"

# Random seed (int in 0..2**32-1; published: 3483)
_C.SEED = 3483

# Device: "auto" (CUDA when present), "cuda" or "cpu"
_C.DEVICE = "auto"

# Mixed precision: "auto" (bf16 autocast on CUDA, off on CPU), "bf16", "fp16" or "off"
_C.AMP = "auto"

# Float dtype of the weights and of every training step: "float32", or "float64" (2-4x slower,
# no autocast: AMP must be "auto" or "off"). float64 is for numerical checks: in float32, rounding
# amplified by Adam's per-element normalisation hides differences below ~1e-3 between two runs
# that compute the same steps in another order (docs/distributed.md)
_C.DTYPE = "float32"

# Compile the model with torch.compile: "auto" (on for CUDA, off on CPU), "on", "off"
_C.COMPILE = "auto"

# Channels-last memory format of the model and its input regions: "auto" (on CUDA, where it
# speeds up convolutions; off on the CPU), "on" (on every device, the CPU included), "off".
# Earlier configs' True / False read as "auto" / "off"
_C.CHANNELS_LAST = "auto"

# Batch norm across processes: "per-rank" (as the original's single process) or "sync"
_C.DIST_BN = "per-rank"

# Keep only this many most recent epoch checkpoints besides the best (int >= 1)
_C.KEEP_CHECKPOINTS = 3

# End each epoch after this many optimizer steps (int; 0 = full epochs; for smoke tests)
_C.MAX_STEPS_PER_EPOCH = 0

# Plot the training curve (loss and validation metric per epoch) to OUTPUT_DIR/curve.png (bool)
_C.PLOT_CURVE = True


@dataclass(frozen=True)
class KeyRule:
    """What a key may hold beyond its yacs type (its comment above says it in words).

    ``allowed``: its values; ``bound``: "positive" or "non_negative"; ``free_on_resume``: why a
    resumed run may change it (it does not change the weights a run ends with, on one device
    type; :func:`biam.engine.run_record.config_changes`), "" when it changes the result.
    """

    allowed: Tuple[str, ...] = ()
    bound: str = ""
    free_on_resume: str = ""


# The one table of key rules: read by check_cfg, by the resume comparison (FREE_ON_RESUME) and by
# the tests that hold the comments above and docs/training.md to it. Registry-backed keys
# (DATA.DATASET, MODEL.NAME, MODEL.BACKBONE) take their values from the registries in check_cfg.
KEY_RULES: Dict[str, KeyRule] = {
    "MODEL.CHANNEL_DIM": KeyRule(bound="positive"),
    "MODEL.HEADS": KeyRule(bound="positive"),
    "MODEL.EMBED_DIM": KeyRule(bound="positive"),
    "MODEL.FEATURE_DIM": KeyRule(bound="non_negative"),
    "MODEL.JOINT_DIM": KeyRule(bound="positive"),
    "MODEL.SCENE_DIM": KeyRule(bound="non_negative"),
    "MODEL.ATTENTION": KeyRule(allowed=("fused", "published")),
    "DATA.MAX_POSITIVES": KeyRule(bound="non_negative"),
    "DATA.SAMPLING": KeyRule(allowed=("shuffle", "randperm", "blocks")),
    "DATA.BLOCK_SIZE": KeyRule(bound="positive"),
    "DATA.NUM_WORKERS": KeyRule(bound="non_negative", free_on_resume="loader processes"),
    "DATA.IN_MEMORY": KeyRule(allowed=("auto", "device", "on", "off"),
                              free_on_resume="where the training images are held (disk, RAM or device: the same batches)"),
    "DATA.VERIFY_CHECKSUMS": KeyRule(free_on_resume="an extra check of the shards"),
    "SOLVER.BASE_LR": KeyRule(bound="positive"),
    "SOLVER.WEIGHT_DECAY": KeyRule(bound="non_negative"),
    "SOLVER.BATCH_SIZE": KeyRule(bound="positive"),
    "SOLVER.MAX_EPOCHS": KeyRule(bound="positive"),
    "SOLVER.WARMUP_EPOCHS": KeyRule(bound="non_negative"),
    "SOLVER.SCHEDULE": KeyRule(allowed=("cosine", "constant")),
    "SOLVER.MIN_LR": KeyRule(bound="non_negative"),
    "SOLVER.FINETUNE_EPOCHS": KeyRule(bound="non_negative"),
    "SOLVER.FINETUNE_LR": KeyRule(bound="positive"),
    # What happens to a batch already known to be bad: the message of a run stopped on one
    # tells the user to resume with these changed.
    "SOLVER.BAD_LOSS": KeyRule(allowed=("stop", "skip"), free_on_resume="what is done with a bad batch"),
    "SOLVER.MAX_LOSS": KeyRule(bound="positive", free_on_resume="the loss above which a batch is bad"),
    "EVAL.START_EPOCH": KeyRule(bound="positive"),
    "EVAL.PERIOD": KeyRule(bound="positive"),
    "EVAL.BATCH_SIZE": KeyRule(bound="positive", free_on_resume="inference batch size (scores are per image)"),
    "EVAL.TEST_AFTER_FINETUNE": KeyRule(
        free_on_resume="test reports after fine-tuning epochs (the weights are the same)"),
    "EVAL.REPORT_CHANCE": KeyRule(free_on_resume="an extra report"),
    "EVAL.PUBLISHED_OPENIMAGES_AP": KeyRule(free_on_resume="an extra report"),
    "OUTPUT_DIR": KeyRule(free_on_resume="where the outputs go"),
    "DEVICE": KeyRule(allowed=("auto", "cuda", "cpu"),
                      free_on_resume="the device (numerics differ only by the device's rounding)"),
    "AMP": KeyRule(allowed=("auto", "bf16", "fp16", "off")),
    "DTYPE": KeyRule(allowed=("float32", "float64")),
    "COMPILE": KeyRule(allowed=("auto", "on", "off"), free_on_resume="torch.compile on or off (same maths)"),
    "CHANNELS_LAST": KeyRule(allowed=("auto", "on", "off"), free_on_resume="memory layout (same maths)"),
    "DIST_BN": KeyRule(allowed=("per-rank", "sync")),
    "KEEP_CHECKPOINTS": KeyRule(bound="positive", free_on_resume="how many checkpoints are kept"),
    "MAX_STEPS_PER_EPOCH": KeyRule(bound="non_negative"),
    "PLOT_CURVE": KeyRule(free_on_resume="the curve plot"),
}

# Keys a resumed run may change, with the reason (biam.engine.run_record reads it as FREE_KEYS).
FREE_ON_RESUME: Dict[str, str] = {k: r.free_on_resume for k, r in KEY_RULES.items() if r.free_on_resume}


# Values earlier versions wrote, translated when a config is loaded: CHANNELS_LAST was a bool
# (True: on CUDA), and run folders and checkpoints of those versions hold it.
_LEGACY_VALUES = {"CHANNELS_LAST": {True: "auto", False: "off"}}


def _upgrade_legacy(loaded: CN) -> None:
    for key, table in _LEGACY_VALUES.items():
        *parents, leaf = key.split(".")
        node = loaded
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(leaf), bool):
            node[leaf] = table[node[leaf]]


def get_cfg_defaults() -> CN:
    """A fresh, unfrozen copy of the defaults."""
    return _C.clone()


class ConfigError(ValueError):
    """A config file, override or combination of keys that cannot be used."""


def _get(cfg: CN, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def check_cfg(cfg: CN) -> None:
    """Checks across keys; raises ``ConfigError`` naming the key and the allowed values."""
    checks = [(k, r.allowed) for k, r in KEY_RULES.items() if r.allowed]
    checks += [("DATA.DATASET", tuple(list_datasets())), ("MODEL.NAME", tuple(list_methods()))]
    for key, allowed in checks:
        if _get(cfg, key) not in allowed:
            raise ConfigError(f"{key} = {_get(cfg, key)!r}; allowed values: {', '.join(map(repr, allowed))}")
    for key, rule in KEY_RULES.items():
        value = _get(cfg, key)
        if rule.bound in ("positive", "non_negative") and not math.isfinite(value):
            # inf passes "> 0" and would train on nothing but NaN.
            raise ConfigError(f"{key} = {value!r}; must be a finite number")
        if rule.bound == "positive" and not value > 0:
            raise ConfigError(f"{key} = {value!r}; must be positive")
        if rule.bound == "non_negative" and value < 0:
            raise ConfigError(f"{key} = {value!r}; must be >= 0")
    m, s, e, d = cfg.MODEL, cfg.SOLVER, cfg.EVAL, cfg.DATA
    for key, value in (("DATA.TRAIN_SPLIT", d.TRAIN_SPLIT), ("DATA.TEST_SPLIT", d.TEST_SPLIT)):
        # Split names become file and folder names (eval/<split>-...): no path in them.
        if not value or any(c in value for c in "/\\-\0") or value.startswith(".") or not value.isprintable():
            raise ConfigError(f"{key} = {value!r}; a split name holds no '/', '\\', '-', control character "
                              "or leading '.' (train, test, ...)")
    if not 0 <= cfg.SEED < 2**32:
        # numpy seeds (the loaders' shuffles) are unsigned 32-bit values.
        raise ConfigError(f"SEED = {cfg.SEED!r}; must be an int in 0..{2**32 - 1}")
    if cfg.DTYPE == "float64" and cfg.AMP not in ("auto", "off"):
        raise ConfigError(f"DTYPE = 'float64' runs without autocast; AMP = {cfg.AMP!r} must be 'auto' or 'off'")
    if m.CHANNEL_DIM % m.HEADS:
        raise ConfigError(f"MODEL.CHANNEL_DIM = {m.CHANNEL_DIM} is not divisible by MODEL.HEADS = {m.HEADS}")
    if m.BACKBONE and m.BACKBONE not in list_backbones():
        raise ConfigError(f"MODEL.BACKBONE = {m.BACKBONE!r}; allowed values: '' (the data's), "
                          + ", ".join(map(repr, list_backbones())))
    # The backbone is known here only when named; else the data's decides (checked again when the
    # model is built for it), and no registered backbone has more regions than the largest.
    names = [m.BACKBONE] if m.BACKBONE else list_backbones()
    regions = max(get_backbone(n).num_regions for n in names)
    if not 1 <= m.TOPK <= regions:
        where = f"backbone {m.BACKBONE} has" if m.BACKBONE else "the registered backbones have at most"
        raise ConfigError(f"MODEL.TOPK = {m.TOPK}; must be in 1..{regions} ({where} {regions} regions)")
    for key, value in (("MODEL.ATTN_DROPOUT", m.ATTN_DROPOUT), ("MODEL.SCENE_DROPOUT", m.SCENE_DROPOUT)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{key} = {value!r}; must be in [0, 1)")
    if not 0.0 < d.TRAIN_FRACTION <= 1.0:
        raise ConfigError(f"DATA.TRAIN_FRACTION = {d.TRAIN_FRACTION!r}; must be in (0, 1]")
    if len(s.BETAS) != 2 or not all(0.0 <= b < 1.0 for b in s.BETAS):
        raise ConfigError(f"SOLVER.BETAS = {s.BETAS!r}; must be two floats in [0, 1)")
    if s.WARMUP_EPOCHS > s.MAX_EPOCHS:
        raise ConfigError(f"SOLVER.WARMUP_EPOCHS = {s.WARMUP_EPOCHS} exceeds SOLVER.MAX_EPOCHS = {s.MAX_EPOCHS}")
    if s.SCHEDULE == "cosine" and s.MIN_LR > s.BASE_LR:
        raise ConfigError(f"SOLVER.MIN_LR = {s.MIN_LR} exceeds SOLVER.BASE_LR = {s.BASE_LR}")
    vks = get_dataset(d.DATASET).protocol.validation_ks
    metrics = [f"{name}@{k}" for k in sorted(vks, reverse=True) for name in ("F1", "P", "R")] + ["mAP"]
    if e.SELECT_METRIC not in metrics:
        raise ConfigError(f"EVAL.SELECT_METRIC = {e.SELECT_METRIC!r}; allowed values for DATA.DATASET "
                          f"{d.DATASET!r}: {', '.join(map(repr, metrics))}")
    if m.SCENE_HEAD_WEIGHTS.startswith("random:"):
        seed = m.SCENE_HEAD_WEIGHTS.split(":", 1)[1]
        if not seed.isdigit():
            raise ConfigError(f"MODEL.SCENE_HEAD_WEIGHTS = {m.SCENE_HEAD_WEIGHTS!r}; use 'random:<int seed>'")


def load_cfg(config_file: Optional[str] = None, opts: Sequence[str] = (), freeze: bool = True) -> CN:
    """Defaults <- YAML file <- ``KEY VALUE`` overrides, then checks, then freeze.

    Args:
        config_file: a YAML file (parsed with yaml.safe_load by yacs, never executed) or None.
        opts: a flat list ``[KEY1, VALUE1, KEY2, VALUE2, ...]`` from the command line.
    Raises:
        ConfigError: for a missing file, an unknown key, a value of the wrong type, an odd
            number of override tokens, or a failed cross-key check.
    """
    cfg = get_cfg_defaults()
    if config_file:
        if not os.path.isfile(config_file):
            raise ConfigError(f"config file not found: {config_file}")
        if config_file.endswith(".py"):
            raise ConfigError(f"{config_file}: Python config files are not accepted (configs are parsed, never run)")
        try:
            # Plain data only: no aliases, no key set twice, a mapping (biam.utils.yaml_safe).
            with open(config_file, encoding="utf-8") as f:
                loaded = CN(load_yaml_mapping(f.read(MAX_BYTES + 1)))
            _upgrade_legacy(loaded)
            cfg.merge_from_other_cfg(loaded)
        except UnicodeDecodeError as err:
            raise ConfigError(f"{config_file}: not UTF-8 text ({err})") from None
        except yaml.YAMLError as err:
            # Also what a !!python/... tag gives: yacs parses with yaml.safe_load, which refuses it.
            raise ConfigError(f"{config_file}: not a plain YAML config ({err}); configs are parsed, never run") from None
        except KeyError as err:
            raise ConfigError(f"{config_file}: unknown config key {err}") from None
        except ValueError as err:
            raise ConfigError(f"{config_file}: {err}") from None
    opts = list(opts)
    if len(opts) % 2:
        raise ConfigError(f"overrides must be KEY VALUE pairs, got an odd number of tokens: {opts}")
    for key, value in zip(opts[0::2], opts[1::2]):
        if key in _LEGACY_VALUES and value in ("True", "False"):
            value = _LEGACY_VALUES[key][value == "True"]
        try:
            cfg.merge_from_list([key, value])
        except (KeyError, AssertionError) as err:
            raise ConfigError(f"override {key}: unknown config key ({err})") from None
        except ValueError as err:
            raise ConfigError(f"override {key} {value}: {err}") from None
    check_cfg(cfg)
    if freeze:
        cfg.freeze()
    return cfg


def add_config_arguments(parser) -> None:
    """``--config-file FILE`` and trailing ``KEY VALUE`` overrides for an argparse parser."""
    parser.add_argument("--config-file", default="", metavar="FILE", help="YAML config file (see configs/)")
    parser.add_argument(
        "opts", nargs="*", default=[], metavar="KEY VALUE",
        help="config overrides, e.g. SOLVER.BASE_LR 1e-4 OUTPUT_DIR output/x (keys: biam/config/defaults.py)",
    )


def dump_cfg(cfg: CN, path: str) -> None:
    """Write the resolved config as YAML (atomically) beside the run's outputs."""
    with atomic_open(path, "w") as f:
        f.write(cfg.dump())
