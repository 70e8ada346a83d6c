"""``fast0tag``: Fast0Tag (Zhang, Gong & Shah, CVPR 2016, "Fast Zero-shot Image Tagging").

An image's feature is mapped by a small network into the word-embedding space, giving one
"principal direction" ``f(x)``; the tags are ranked by the inner product ``<f(x), e_c>`` with the
label embeddings, so a new tag costs one embedding. It is the baseline of the BiAM and LESA
tables. Here ``x`` is the scene feature of the data's backbone (VGG19 fc7 4096, as the paper's
VGG features; ResNet-101 2048; CLIP image embeddings 1024/512) and ``f`` two fully connected
layers, ``scene_dim -> MODEL.JOINT_DIM -> MODEL.EMBED_DIM`` with a ReLU between (the paper's
network is the same two-layer shape on top of the CNN feature).

Loss (:func:`fast0tag_loss`): the paper's pairwise ranking loss, RankNet's logistic loss over
every (positive, negative) pair of an image, ``log(1 + exp(<f, e_n> - <f, e_p>))``; averaged over
the pairs of an image and over images (the paper sums; the mean only rescales the learning rate).
Unannotated entries (label 0) are in no pair.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_method

__all__ = ["Fast0Tag", "fast0tag_loss"]


def fast0tag_loss(scores: torch.Tensor, labels: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """scores (B, C), labels (B, C) int8 in {-1, 0, 1} -> scalar: mean pairwise logistic ranking loss.

    Images without a positive or a negative add nothing. Computed ``chunk`` images at a time, so
    the (chunk, C, C) pair tensor stays small for C = 925 or 7186 labels.
    """
    s = scores.float()
    pos, neg = labels > 0, labels < 0
    total, count = s.new_zeros(()), 0
    for i in range(0, s.shape[0], chunk):
        sc, p, n = s[i:i + chunk], pos[i:i + chunk], neg[i:i + chunk]
        pairs = p.unsqueeze(2) & n.unsqueeze(1)  # (b, C_pos, C_neg)
        per_pair = F.softplus(sc.unsqueeze(1) - sc.unsqueeze(2))  # [b, j, k] = log(1 + exp(s_k - s_j))
        num = pairs.sum(dim=(1, 2))
        keep = num > 0
        if keep.any():
            total = total + ((per_pair * pairs).sum(dim=(1, 2))[keep] / num[keep]).sum()
            count += int(keep.sum())
    return total / max(count, 1)


@register_method("fast0tag", loss=fast0tag_loss)
class Fast0Tag(nn.Module):
    """Two fully connected layers from the scene feature to the label-embedding space.

    Args (keyword only): scene_dim (input width), hidden_dim (MODEL.JOINT_DIM), embed_dim
    (MODEL.EMBED_DIM), grid and backbone (recorded; the regions are not used).
    """

    def __init__(self, *, scene_dim: int, hidden_dim: int, embed_dim: int, grid, backbone: str):
        super().__init__()
        self.grid = (int(grid[0]), int(grid[1]))
        self.backbone = backbone
        self.topk = self.grid[0] * self.grid[1]
        self.net = nn.Sequential(nn.Linear(scene_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, embed_dim))
        self._hparams = {"scene_dim": int(scene_dim), "hidden_dim": int(hidden_dim), "embed_dim": int(embed_dim),
                         "backbone": backbone}

    @classmethod
    def from_config(cls, cfg: Any, backbone) -> "Fast0Tag":
        """Reads MODEL.SCENE_DIM (0: the backbone's), MODEL.JOINT_DIM, MODEL.EMBED_DIM."""
        m = cfg.MODEL
        return cls(scene_dim=m.SCENE_DIM or backbone.scene_dim, hidden_dim=m.JOINT_DIM, embed_dim=m.EMBED_DIM,
                   grid=backbone.grid, backbone=backbone.name)

    def hparams(self) -> dict:
        return dict(self._hparams)

    def direction(self, scene: torch.Tensor) -> torch.Tensor:
        """(B, scene_dim) -> (B, embed_dim): the image's principal direction f(x)."""
        return self.net(scene.to(self.net[0].weight.dtype))

    def forward(self, regions: torch.Tensor, label_embeddings: torch.Tensor,
                scene: Optional[torch.Tensor]) -> torch.Tensor:
        """(B, C_r, R) unused, (L, E), (B, scene_dim) -> (B, L) inner products <f(x), e_c>."""
        if scene is None:
            raise ValueError("fast0tag needs the scene feature (stored, or MODEL.SCENE_HEAD_WEIGHTS for VGG19 data)")
        f = self.direction(scene)
        return f @ label_embeddings.to(f.dtype).t()

    def region_scores(self, regions: torch.Tensor, label_embeddings: torch.Tensor,
                      scene: Optional[torch.Tensor]) -> torch.Tensor:
        """(B, R, L): the image score on every region (Fast0Tag scores images, not regions), so that
        biam-predict's top-k pooling gives exactly :meth:`forward`'s scores."""
        scores = self.forward(regions, label_embeddings, scene)
        return scores.unsqueeze(1).expand(-1, self.topk, -1)
