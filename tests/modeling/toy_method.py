"""A method in one file: what a user's ``my_method.py`` would hold (docs/architecture.md, "Adding a method").

The module, its ``from_config`` and its loss, registered as ``MODEL.NAME toy``. Nothing else in
the package is edited for it; importing this file registers it.

The toy: every region is mapped linearly into the label-embedding space and scored against each
label (a dot product); the image score is the mean over regions, i.e. the linear map of the mean
region. The loss is a binary cross-entropy on the annotated labels (+1 / -1; 0 ignored).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from biam.modeling import register_method


def toy_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """scores (B, C), labels (B, C) int8 in {-1, 0, 1} -> scalar: BCE over the +1 / -1 entries."""
    annotated = (labels != 0).to(scores.dtype)
    per_entry = F.binary_cross_entropy_with_logits(scores, (labels > 0).to(scores.dtype), reduction="none")
    return (per_entry * annotated).sum() / annotated.sum().clamp(min=1.0)


@register_method("toy", loss=toy_loss)
class ToyMethod(nn.Module):
    """Linear map of each region into the embedding space; image score = mean region score.

    Args (keyword only): feature_dim (channels of a region), embed_dim (label embeddings),
    grid (rows, cols of the backbone's regions), backbone (its name, recorded in checkpoints).
    """

    def __init__(self, *, feature_dim: int, embed_dim: int, grid, backbone: str):
        super().__init__()
        self.grid = (int(grid[0]), int(grid[1]))
        self.backbone = backbone  # checked against a checkpoint's (biam.engine.checkpoint.check_backbone)
        # biam-predict scores an image by the mean of its top-k region scores: all regions here.
        self.topk = self.grid[0] * self.grid[1]
        self.proj = nn.Linear(feature_dim, embed_dim)
        self._hparams = {"feature_dim": int(feature_dim), "embed_dim": int(embed_dim), "backbone": backbone}

    @classmethod
    def from_config(cls, cfg: Any, backbone) -> "ToyMethod":
        return cls(feature_dim=cfg.MODEL.FEATURE_DIM or backbone.channels, embed_dim=cfg.MODEL.EMBED_DIM,
                   grid=backbone.grid, backbone=backbone.name)

    def hparams(self) -> dict:
        return dict(self._hparams)

    def region_scores(self, regions: torch.Tensor, label_embeddings: torch.Tensor, scene: torch.Tensor) -> torch.Tensor:
        """regions (B, feature_dim, R) or (B, feature_dim, rows, cols) -> (B, R, C)."""
        x = regions.flatten(2).transpose(1, 2).to(self.proj.weight.dtype)  # (B, R, feature_dim)
        return self.proj(x) @ label_embeddings.to(x.dtype).t()

    def forward(self, regions: torch.Tensor, label_embeddings: torch.Tensor, scene: torch.Tensor) -> torch.Tensor:
        """(B, feature_dim, R), (C, embed_dim), (B, scene_dim) -> scores (B, C) (scene unused)."""
        return self.region_scores(regions, label_embeddings, scene).mean(dim=1)
