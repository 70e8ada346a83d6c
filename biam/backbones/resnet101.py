"""ResNet-101 layer4 at 448 x 448 (He et al. 2016; torchvision's architecture).

* input 448 x 448 (resized without a crop), ImageNet mean/std;
* regions: the output of ``layer4`` (stride 32) -> 2048 x 14 x 14;
* scene: global average of that map -> 2048 (what the ImageNet classifier reads). It is stored
  at extraction, so training needs no scene head.

Weights: a torchvision ResNet-101 state-dict file, e.g. ``resnet101-cd907fc2.pth``
(``ResNet101_Weights.IMAGENET1K_V2``) or ``resnet101-63fe2227.pth`` (V1).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .registry import Backbone, PathLike, register_backbone
from .weights import load_torchvision_net

WEIGHTS_FILE = "resnet101-cd907fc2.pth"


def _build() -> nn.Module:
    from torchvision.models import resnet101

    return resnet101(weights=None)


def load_net(weights: Optional[PathLike], random_seed: Optional[int]) -> nn.Module:
    return load_torchvision_net(_build, weights, random_seed, "ResNet-101", WEIGHTS_FILE)


def region_extractor(net: nn.Module) -> nn.Module:
    # Everything up to layer4; avgpool and fc are left out.
    return nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)


class GlobalAveragePool(nn.Module):
    """(B, C, H, W) -> (B, C): the mean over all regions (ResNet's own avgpool + flatten)."""

    @torch.no_grad()
    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return fmap.float().mean(dim=(2, 3))


def scene_head(net: nn.Module) -> nn.Module:
    return GlobalAveragePool()


BACKBONE = register_backbone(Backbone(
    name="resnet101", input_size=448, grid=(14, 14), channels=2048, scene_dim=2048, scene_from_regions=False,
    weights_file=WEIGHTS_FILE, load_net=load_net, region_extractor=region_extractor, scene_head=scene_head,
))
