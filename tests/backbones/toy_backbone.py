"""A backbone in one file with a 7 x 7 grid: what a user's ``my_backbone.py`` would hold.

A tiny conv net (3 stride-2 convs: 56 x 56 images -> 8 x 7 x 7 regions) and a pooled scene
feature (8), stored at extraction. Importing this file registers it as ``toy7``; nothing in
``biam/`` names its grid.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from biam.backbones import Backbone, register_backbone

NAME = "toy7"
GRID = (7, 7)
CHANNELS = 8


class TinyNet(nn.Module):
    """(B, 3, 56, 56) -> (B, 8, 7, 7)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(8, CHANNELS, 3, stride=2, padding=1), nn.ReLU(),
        )


class MeanPool(nn.Module):
    @torch.no_grad()
    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return fmap.float().mean(dim=(2, 3))


def load_net(weights: Optional[str], random_seed: Optional[int]) -> nn.Module:
    if weights is not None:
        raise ValueError(f"{NAME}: a test backbone; only seeded random weights")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(random_seed or 0))
        net = TinyNet()
    return net.eval().requires_grad_(False)


def register() -> Backbone:
    """Register ``toy7`` (once per process) and return it."""
    from biam.backbones import get_backbone, list_backbones

    if NAME in list_backbones():
        return get_backbone(NAME)
    return register_backbone(Backbone(
        name=NAME, input_size=56, grid=GRID, channels=CHANNELS, scene_dim=CHANNELS, scene_from_regions=False,
        weights_file="toy7.pth", load_net=load_net, region_extractor=lambda net: net.features,
        scene_head=lambda net: MeanPool(),
    ))


BACKBONE = register()
