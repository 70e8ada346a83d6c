"""A backbone's frozen feature pipeline: normalised images -> region and scene features.

Everything that turns pixels into features goes through :class:`FeatureExtractor`, so that the
feature extractors (``feature_extraction/``) and ``biam-predict`` compute exactly what the
released features hold (docs/data_format.md): the backbone's region extractor -> (B, C, rows,
cols), stored channel-major as (B, C, rows * cols), region index = row * cols + col; the scene
feature (B, scene_dim) through the backbone's frozen scene head. A backbone whose scene feature
needs more than the region map (CLIP ViT-B/16: the class token) has a region extractor that
returns the pair ``(map, scene)``; its scene head is then not used. Any grid the backbone states
(7 x 7 for CLIP RN50, 14 x 14 for the others) is checked and flattened the same way.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import nn

from ..backbones import Backbone, get_backbone, load_backbone

__all__ = ["FeatureExtractor", "build_extractor"]


class FeatureExtractor(nn.Module):
    """Region features and scene features of normalised images, for one registered backbone.

    Built from the backbone's network (torchvision's, or open_clip's CLIP model) (:func:`load_backbone`): ``body`` = its region
    extractor and ``scene_head`` = its scene head, so both come from the same weights (VGG19:
    ``vgg.features[:-1]`` and ``SceneHead.from_torchvision(vgg)``). Always in eval mode, no gradients.

    Input: images (B, 3, S, S) float32, ImageNet-normalised, S = the backbone's input size.
    Output: ``regions`` (B, C, rows * cols) float32 channel-major (region = row * cols + col) and
    ``scene`` (B, scene_dim) float32 (VGG19: (B, 512, 196) and (B, 4096)).
    """

    def __init__(self, net: nn.Module, backbone: Union[str, Backbone]):
        super().__init__()
        self.backbone = get_backbone(backbone) if isinstance(backbone, str) else backbone
        self.body = self.backbone.region_extractor(net)
        self.scene_head = self.backbone.scene_head(net)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "FeatureExtractor":
        # Frozen feature pipeline: never enter training mode.
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        bb = self.backbone
        size = bb.input_size
        if images.dim() != 4 or images.shape[1:] != (3, size, size):
            raise ValueError(f"FeatureExtractor ({bb.name}) expects (B, 3, {size}, {size}) images, "
                             f"got {tuple(images.shape)}")
        out = self.body(images)
        fmap, scene = out if isinstance(out, tuple) else (out, None)
        if fmap.shape[1:] != (bb.channels, *bb.grid):
            raise RuntimeError(f"backbone {bb.name}: its region extractor gave {tuple(fmap.shape[1:])}, "
                               f"its registry entry states {(bb.channels, *bb.grid)}")
        regions = fmap.flatten(2).float()
        scene = (self.scene_head(fmap) if scene is None else scene).float()
        if scene.shape[1:] != (bb.scene_dim,):
            raise RuntimeError(f"backbone {bb.name}: its scene feature has shape {tuple(scene.shape[1:])}, "
                               f"its registry entry states ({bb.scene_dim},)")
        return regions, scene


def build_extractor(name: str, weights: Optional[str], random_seed: Optional[int],
                    what: str) -> Tuple[FeatureExtractor, str]:
    """:func:`biam.backbones.load_backbone` then :class:`FeatureExtractor`; returns ``(extractor, source)``."""
    net, source = load_backbone(name, weights, random_seed, what=what)
    return FeatureExtractor(net, name), source

