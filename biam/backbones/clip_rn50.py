"""CLIP ResNet-50 (Radford et al., ICML 2021 "Learning Transferable Visual Models From Natural
Language Supervision"; open_clip's ``RN50``), the image encoder DualCoOp (NeurIPS 2022) builds on.

* input 224 x 224 (resized without a crop), CLIP's mean/std;
* regions: the last conv map before the attention pooling (``layer4``, stride 32) -> 2048 x 7 x 7;
* scene: the image embedding, CLIP's attention pooling of that map -> 1024 (the joint space of
  CLIP's text encoder, so ``clip_zeroshot`` scores it against CLIP label embeddings).

One input size is registered: 224, the size CLIP was trained at. At 448 the map would be 14 x 14
but the attention pooling's positional embedding (7 x 7 + 1) would have to be interpolated, so
the scene feature would no longer be CLIP's image embedding; a 7 x 7 grid is what BiAM then reads
(``BiAM`` takes the grid from the backbone).

Weights: an open_clip checkpoint file, ``TAG=FILE``, or online an open_clip tag of RN50 (see
:mod:`.open_clip_common`); ``--random-weights SEED`` for tests.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .open_clip_common import check_clip_weights, load_clip_model
from .registry import Backbone, PathLike, register_backbone

NAME, ARCH, LABEL = "clip_rn50", "RN50", "CLIP RN50"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's (open_clip.OPENAI_DATASET_MEAN)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def open_weights(weights: Optional[PathLike], random_seed: Optional[int], what: str):
    return load_clip_model(NAME, ARCH, LABEL, weights, random_seed, what)


def check_weights(weights: Optional[PathLike], random_seed: Optional[int], what: str) -> None:
    check_clip_weights(weights, random_seed, what, LABEL, ARCH)


def load_net(weights: Optional[PathLike], random_seed: Optional[int]) -> nn.Module:
    return open_weights(weights, random_seed, "feature extraction")[0]


class _Trunk(nn.Module):
    """Images (B, 3, 224, 224) -> layer4 map (B, 2048, 7, 7): the stem and four stages, no pooling."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        v = self.visual
        x = images.to(v.conv1.weight.dtype)
        return v.layer4(v.layer3(v.layer2(v.layer1(v.stem(x)))))


class _AttentionPoolScene(nn.Module):
    """Layer4 map (B, 2048, 7, 7) -> CLIP image embedding (B, 1024): CLIP's own attention pooling."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.attnpool = visual.attnpool

    @torch.no_grad()
    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.attnpool(fmap.to(self.attnpool.c_proj.weight.dtype))


def region_extractor(net: nn.Module) -> nn.Module:
    return _Trunk(net.visual)


def scene_head(net: nn.Module) -> nn.Module:
    return _AttentionPoolScene(net.visual)


BACKBONE = register_backbone(Backbone(
    name=NAME, input_size=224, grid=(7, 7), channels=2048, scene_dim=1024, scene_from_regions=False,
    weights_file="open_clip_pytorch_model.bin (RN50, tag openai)", load_net=load_net,
    region_extractor=region_extractor, scene_head=scene_head, mean=CLIP_MEAN, std=CLIP_STD, label=LABEL,
    open_weights=open_weights, check_weights=check_weights,
))
