"""Pieces shared by the trainer, the evaluator and the benchmark: device, precision, seeding,
label embeddings, scene features and batched inference."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import random
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..data.packed import PackedDataset, l2_normalize, load_embeddings
from ..utils import comm
from ..utils.precision import float32_or_wider

__all__ = [
    "derive_seed", "seed_everything", "autocast_context", "resolve_amp", "LabelSpace",
    "build_label_space", "build_scene_head", "run_inference",
]


def derive_seed(seed: int, *parts: int) -> int:
    """A 31-bit seed from the config seed and e.g. (epoch, rank), stable across runs and Pythons."""
    digest = hashlib.sha256(",".join(str(p) for p in (seed,) + parts).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_amp(amp: str, device: torch.device, dtype: str = "float32") -> Optional[torch.dtype]:
    """The autocast dtype for config ``AMP`` on ``device``; None means none (the weights' dtype,
    config ``DTYPE``; float64 runs without autocast)."""
    if dtype == "float64":
        return None
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


def autocast_context(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class LabelSpace:
    """Label names and L2-normalised embeddings of one packed dataset.

    ``seen`` (S, E) and ``unseen_eval`` (U, E) tensors; ``unseen_columns`` are the label columns
    (indices into the packed label matrix) of the evaluated unseen labels, so that a test batch's
    evaluated labels are ``labels[:, eval_columns]`` with seen columns first.
    """

    seen_names: list
    unseen_names: list
    seen: torch.Tensor
    unseen_eval: torch.Tensor
    eval_columns: torch.Tensor

    @property
    def num_seen(self) -> int:
        return self.seen.shape[0]

    @property
    def all_eval(self) -> torch.Tensor:
        """(S + U, E): seen then evaluated unseen embeddings, the GZSL label list."""
        return torch.cat([self.seen, self.unseen_eval], dim=0)


def build_label_space(dataset: PackedDataset, device: torch.device, embed_dim: int) -> LabelSpace:
    """Embeddings and evaluated columns from a packed dataset's manifest and embeddings file."""
    seen, unseen = load_embeddings(dataset.root)
    manifest = dataset.manifest
    seen_names = list(manifest["labels"]["seen"])
    unseen_names = list(manifest["labels"]["unseen"])
    for name, emb, names in (("seen", seen, seen_names), ("unseen", unseen, unseen_names)):
        if emb.ndim != 2 or emb.shape[0] != len(names):
            raise ValueError(
                f"{dataset.root}/embeddings.npz: '{name}' embeddings have shape {emb.shape} but the manifest "
                f"lists {len(names)} {name} labels"
            )
        if emb.shape[1] != embed_dim:
            raise ValueError(
                f"{dataset.root}/embeddings.npz: '{name}' embeddings are {emb.shape[1]}-d but MODEL.EMBED_DIM is "
                f"{embed_dim}; set MODEL.EMBED_DIM {emb.shape[1]} (a checkpoint must then have been trained with "
                f"that width too) or reconvert with {embed_dim}-d label embeddings"
            )
    unseen_eval = manifest.get("unseen_eval")
    if unseen_eval is None:
        unseen_eval = list(range(len(unseen_names)))
    unseen_eval = np.asarray(unseen_eval, dtype=np.int64)
    columns = np.concatenate([np.arange(len(seen_names)), len(seen_names) + unseen_eval])
    return LabelSpace(
        seen_names=seen_names,
        unseen_names=[unseen_names[i] for i in unseen_eval],
        seen=torch.from_numpy(l2_normalize(seen.astype(np.float32))).to(device),
        unseen_eval=torch.from_numpy(l2_normalize(unseen[unseen_eval].astype(np.float32))).to(device),
        eval_columns=torch.from_numpy(columns),
    )


def build_scene_head(spec: str, dataset: PackedDataset, device: torch.device) -> Optional[nn.Module]:
    """The frozen scene head, or None when the packed data already holds scene features.

    ``spec`` is config ``MODEL.SCENE_HEAD_WEIGHTS``: a state-dict file of the data's backbone or
    ``random:<seed>``. Only data of a backbone whose scene head runs on stored regions
    (``Backbone.stored_scene_head``; VGG19's pool5 -> fc6 -> fc7) may lack scene features; other
    backbones store theirs at extraction (``biam.backbones``).
    """
    if dataset.has_scene:
        return None
    bb = dataset.backbone
    if bb.stored_scene_head is None:
        raise ValueError(f"{dataset.root}: the packed data of backbone {dataset.backbone.name!r} has no scene "
                         "features; extract it again (its scene features are stored at extraction)")
    if not spec:
        raise FileNotFoundError(
            f"{dataset.root}: the packed data has no scene features, so the frozen {bb.label} head must run on the "
            f"fly; set MODEL.SCENE_HEAD_WEIGHTS to a torchvision {bb.name} state-dict file (for example "
            f"pretrained_weights/{bb.weights_file}, see pretrained_weights/README.md), or reconvert with "
            "biam-convert --vgg-weights FILE to store them once"
        )
    if spec.startswith("random:"):
        head = bb.stored_scene_head(None, int(spec.split(":", 1)[1]))
    else:
        head = _scene_head_from_file(spec, bb)
    return head.to(device)


def _scene_head_from_file(path: str, bb) -> nn.Module:
    """SceneHead.from_file with every failure as one message naming the file and the config key.

    torch's own refusal of a file holding code suggests ``weights_only=False``, which would run
    that code; the message here says what the file should be instead.
    """
    key = "MODEL.SCENE_HEAD_WEIGHTS"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{key} = {path}: file not found (a torchvision {bb.name} state-dict file, "
                                "see pretrained_weights/README.md)")
    try:
        return bb.stored_scene_head(path, None)
    except pickle.UnpicklingError as err:
        if "unsupported global" in str(err).lower():
            raise ValueError(f"{key} = {path}: refused: the file holds objects other than tensors (code could run "
                             f"when loading it); use a plain torchvision {bb.name} state dict, e.g. "
                             f"{bb.weights_file}") from None
        raise ValueError(f"{key} = {path}: not a torch state-dict file (truncated, another format, or objects "
                         f"other than tensors); use a plain torchvision {bb.name} state dict") from None
    except (KeyError, ValueError, RuntimeError, EOFError, OSError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        raise ValueError(f"{key} = {path}: not usable {bb.label} weights: {msg.replace(path + ': ', '')}") from None


def scene_features(batch: Dict[str, torch.Tensor], regions: torch.Tensor, head: Optional[nn.Module]) -> torch.Tensor:
    """Stored scene features when present, else the frozen head applied to the regions."""
    if "scene" in batch:
        return batch["scene"].to(regions.device, non_blocking=True).to(float32_or_wider(regions.dtype))
    with torch.no_grad():
        return head(regions)


@torch.no_grad()
def run_inference(
    model: nn.Module,
    batches: Iterable[Dict[str, torch.Tensor]],
    label_embeddings: torch.Tensor,
    label_columns: torch.Tensor,
    device: torch.device,
    amp_dtype: Optional[torch.dtype] = None,
    scene_head: Optional[nn.Module] = None,
    progress: Optional[Callable[[int], None]] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Score every image of ``batches`` against ``label_embeddings`` and gather over ranks.

    Args:
        batches: loader batches (see docs/architecture.md); each rank passes its own part.
        label_embeddings: (C, E) normalised embeddings on ``device``.
        label_columns: (C,) label-matrix columns matching the embeddings' rows.
    Returns:
        scores (N, C) float32 and labels (N, C) int8 on the CPU, rows in global image order
        (all ranks' parts, sorted by image index), identical on every rank.
    """
    was_training = model.training
    model.eval()
    scores, labels, index = [], [], []
    for batch in batches:
        regions = batch["regions"].to(device, non_blocking=True).float()
        scene = scene_features(batch, regions, scene_head)
        with autocast_context(device, amp_dtype):
            s = model(regions, label_embeddings, scene)
        scores.append(s.float())
        labels.append(batch["labels"][:, label_columns].to(device))
        index.append(batch["index"].to(device))
        if progress is not None:
            progress(regions.shape[0])
    model.train(was_training)
    num_labels = label_embeddings.shape[0]
    scores_t = torch.cat(scores) if scores else torch.empty((0, num_labels), device=device)
    labels_t = torch.cat(labels) if labels else torch.empty((0, num_labels), dtype=torch.int8, device=device)
    index_t = torch.cat(index) if index else torch.empty((0,), dtype=torch.long, device=device)
    if comm.get_world_size() > 1:
        scores_t = torch.cat(comm.all_gather_rows(scores_t))
        labels_t = torch.cat(comm.all_gather_rows(labels_t))
        index_t = torch.cat(comm.all_gather_rows(index_t))
    order = torch.argsort(index_t)
    return scores_t[order].cpu(), labels_t[order].cpu()
