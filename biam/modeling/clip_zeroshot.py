"""``clip_zeroshot``: CLIP's zero-shot classifier as a tagger (Radford et al., ICML 2021), nothing trained.

The score of label c for an image is the cosine of the image embedding (the scene feature of a
CLIP backbone: ``clip_rn50`` 1024-d, ``clip_vit_b16`` 512-d) and the label's CLIP text embedding
(``biam-embed-labels --clip``; the 80-template ensemble by default): ``cos(x_g, e_c)``. It ranks the
labels of an image as CLIP's zero-shot ImageNet classifier ranks classes, and is the "plain CLIP"
row beside BiAM and the methods after it (docs/methods.md).

Registered with ``trainable=False``: ``biam-train`` refuses it by name. The module has no weights;
``biam-evaluate`` reads it from a tiny checkpoint that records only the method, the backbone and the
width (:func:`write_checkpoint`, which ``biam-embed-labels --zeroshot-checkpoint FILE``
writes), so the evaluator, its folder naming and ``biam-compare`` treat it as any other run.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.io import atomic_open
from .registry import register_method

__all__ = ["ClipZeroShot", "CLIP_BACKBONES", "write_checkpoint"]

CLIP_BACKBONES = ("clip_rn50", "clip_vit_b16")


@register_method("clip_zeroshot", trainable=False)
class ClipZeroShot(nn.Module):
    """Cosine of the image embedding and the label embeddings.

    Args (keyword only): embed_dim (width of the label embeddings = the image embedding's),
    grid (rows, cols of the backbone's regions), backbone (its name, checked against checkpoints),
    channels (a region's width; region scores exist when it equals embed_dim, as for
    ``clip_vit_b16``'s MaskCLIP patch tokens).
    """

    def __init__(self, *, embed_dim: int, grid, backbone: str, channels: int):
        super().__init__()
        self.embed_dim, self.channels = int(embed_dim), int(channels)
        self.grid = (int(grid[0]), int(grid[1]))
        self.backbone = backbone
        self.topk = self.grid[0] * self.grid[1]  # biam-predict's region pooling: every region
        self._hparams = {"embed_dim": self.embed_dim, "backbone": backbone}

    @classmethod
    def from_config(cls, cfg: Any, backbone) -> "ClipZeroShot":
        """Reads MODEL.EMBED_DIM; the backbone must be a CLIP one whose image embedding has that width."""
        if backbone.name not in CLIP_BACKBONES:
            raise ValueError(f"MODEL.NAME clip_zeroshot scores CLIP image embeddings against CLIP text embeddings, but "
                             f"the features are backbone {backbone.name!r}'s; extract them with --backbone "
                             f"{' or '.join(CLIP_BACKBONES)}")
        if backbone.scene_dim != cfg.MODEL.EMBED_DIM:
            raise ValueError(f"MODEL.NAME clip_zeroshot: the {backbone.name} image embedding is {backbone.scene_dim}-d "
                             f"but MODEL.EMBED_DIM is {cfg.MODEL.EMBED_DIM}; embed the labels with biam-embed-labels "
                             f"--clip {backbone.name} and set MODEL.EMBED_DIM {backbone.scene_dim}")
        return cls(embed_dim=cfg.MODEL.EMBED_DIM, grid=backbone.grid, backbone=backbone.name,
                   channels=backbone.channels)

    def hparams(self) -> dict:
        return dict(self._hparams)

    def forward(self, regions: torch.Tensor, label_embeddings: torch.Tensor,
                scene: Optional[torch.Tensor]) -> torch.Tensor:
        """(B, C_r, R) unused, (L, E) label embeddings, (B, E) image embeddings -> (B, L) cosines."""
        if scene is None:
            raise ValueError("clip_zeroshot needs the stored scene feature (the CLIP image embedding)")
        if scene.shape[-1] != label_embeddings.shape[-1]:
            raise ValueError(f"clip_zeroshot: image embeddings are {scene.shape[-1]}-d, label embeddings "
                             f"{label_embeddings.shape[-1]}-d")
        x = F.normalize(scene.float(), dim=-1)
        return x @ F.normalize(label_embeddings.float(), dim=-1).t()

    def region_scores(self, regions: torch.Tensor, label_embeddings: torch.Tensor,
                      scene: Optional[torch.Tensor]) -> torch.Tensor:
        """(B, R, L): the image score on every region, so that biam-predict's top-k pooling gives
        exactly :meth:`forward`'s scores (the method scores images, not regions)."""
        scores = self.forward(regions, label_embeddings, scene)
        return scores.unsqueeze(1).expand(-1, self.topk, -1)

    def patch_scores(self, regions: torch.Tensor, label_embeddings: torch.Tensor) -> torch.Tensor:
        """(B, C_r, R) regions in the joint space (clip_vit_b16's MaskCLIP tokens) -> (B, R, L) cosines."""
        if self.channels != self.embed_dim:
            raise ValueError(f"clip_zeroshot: {self.backbone}'s regions ({self.channels}-d) are not in the "
                             f"{self.embed_dim}-d joint space: no patch scores (clip_vit_b16 has them)")
        r = F.normalize(regions.flatten(2).transpose(1, 2).float(), dim=-1)
        return r @ F.normalize(label_embeddings.float(), dim=-1).t()


def write_checkpoint(path: os.PathLike, backbone: str, embed_dim: int, label_encoder: Optional[str] = None) -> str:
    """Write the weight-less checkpoint ``biam-evaluate --checkpoint`` reads for clip_zeroshot.

    ``{"model": {}, "method": "clip_zeroshot", "model_hparams": {"embed_dim", "backbone"}}``
    (the layout of ``biam.engine.checkpoint.model_file``), plus ``"label_encoder"`` (the name of
    the text encoder it pairs with, :mod:`biam.data.label_encoders`) when given; returns ``path``.
    Written by ``biam-embed-labels --clip ... --zeroshot-checkpoint FILE``.
    """
    if backbone not in CLIP_BACKBONES:
        raise ValueError(f"clip_zeroshot runs on {', '.join(CLIP_BACKBONES)} features, not {backbone!r}")
    obj = {"model": {}, "method": "clip_zeroshot", "model_hparams": {"embed_dim": int(embed_dim), "backbone": backbone}}
    if label_encoder is not None:
        obj["label_encoder"] = str(label_encoder)
    with atomic_open(path, "wb") as fh:
        torch.save(obj, fh)
    return os.fspath(path)
