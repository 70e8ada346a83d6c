"""VGG19 conv5_4, the published backbone (Simonyan & Zisserman 2015; the paper's features).

* input 224 x 224 (resized without a crop), ImageNet mean/std;
* regions: ``features[:-1]`` (conv5_4 after its ReLU, before the last max-pool) -> 512 x 14 x 14;
* scene: the frozen classifier head pool5 -> fc6 -> fc7 on those regions -> 4096
  (:class:`biam.modeling.SceneHead`), so training can compute it from stored regions.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from . import Backbone, PathLike, load_torchvision_net, register_backbone

WEIGHTS_FILE = "vgg19-dcbb9e9d.pth"  # torchvision's name; "dcbb9e9d" = first hex digits of its SHA-256


def _build() -> nn.Module:
    from torchvision.models import vgg19

    return vgg19(weights=None)


def load_net(weights: Optional[PathLike], random_seed: Optional[int]) -> nn.Module:
    return load_torchvision_net(_build, weights, random_seed, "VGG19", WEIGHTS_FILE)


def region_extractor(net: nn.Module) -> nn.Module:
    # features[:-1] drops the last max-pool: conv5_4 after its ReLU, 14x14 for a 224 input.
    return net.features[:-1]


def scene_head(net: nn.Module) -> nn.Module:
    from ..modeling.scene_head import SceneHead, vgg19_head_state_dict

    # Same result as SceneHead.from_torchvision(net), minus the seconds of random init of a
    # 25088x4096 layer that is overwritten anyway: build on meta, then take net's fc6/fc7.
    with torch.device("meta"):
        head = SceneHead()
    head.load_state_dict(vgg19_head_state_dict(net.state_dict(), "torchvision vgg19"), assign=True)
    return head


BACKBONE = register_backbone(Backbone(
    name="vgg19", input_size=224, grid=(14, 14), channels=512, scene_dim=4096, scene_from_regions=True,
    weights_file=WEIGHTS_FILE, load_net=load_net, region_extractor=region_extractor, scene_head=scene_head,
))
