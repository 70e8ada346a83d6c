"""VGG19 conv5_4, the published backbone (Simonyan & Zisserman 2015; the paper's features).

* input 224 x 224 (resized without a crop), ImageNet mean/std;
* regions: ``features[:-1]`` (conv5_4 after its ReLU, before the last max-pool) -> 512 x 14 x 14;
* scene: the frozen classifier head pool5 -> fc6 -> fc7 on those regions -> 4096
  (:class:`SceneHead`), so training can compute it from stored regions.

The published model computes its scene feature ``x_g`` by running the ImageNet VGG19 classifier
head on the stored region features: last max-pool (2x2, stride 2) -> flatten -> fc6 -> ReLU ->
fc7 -> ReLU, in eval mode. The head never trains, so it is run once per image (at conversion or
extraction) instead of at every step as the original did.
"""

from __future__ import annotations

from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .registry import Backbone, PathLike, register_backbone
from .weights import load_torchvision_net

__all__ = ["SceneHead", "vgg19_head_state_dict", "WEIGHTS_FILE", "BACKBONE"]

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
    # Same result as SceneHead.from_torchvision(net), minus the seconds of random init of a
    # 25088x4096 layer that is overwritten anyway: build on meta, then take net's fc6/fc7.
    with torch.device("meta"):
        head = SceneHead()
    head.load_state_dict(vgg19_head_state_dict(net.state_dict(), "torchvision vgg19"), assign=True)
    return head


# Keys of torchvision's VGG19 classifier that the head uses (fc6 and fc7).
_TV_KEYS = {
    "fc6.weight": "classifier.0.weight",
    "fc6.bias": "classifier.0.bias",
    "fc7.weight": "classifier.3.weight",
    "fc7.bias": "classifier.3.bias",
}


def vgg19_head_state_dict(vgg_state: Mapping[str, torch.Tensor], source: str = "<state dict>") -> dict:
    """Pick fc6/fc7 out of a torchvision VGG19 state dict.

    Accepts either a full VGG19 state dict (keys ``classifier.0.*`` and ``classifier.3.*``) or a
    SceneHead state dict (keys ``fc6.*``/``fc7.*``). Raises ``KeyError`` naming the missing keys
    and ``source`` (a file name, for the error message).
    """
    if all(k in vgg_state for k in _TV_KEYS):
        return {k: vgg_state[k] for k in _TV_KEYS}
    missing = [v for v in _TV_KEYS.values() if v not in vgg_state]
    if missing:
        raise KeyError(
            f"{source}: not a VGG19 state dict: missing {', '.join(missing)} "
            "(expected torchvision's vgg19 keys classifier.0.* and classifier.3.*)"
        )
    return {k: vgg_state[v] for k, v in _TV_KEYS.items()}


class SceneHead(nn.Module):
    """Frozen VGG19 pool5 -> fc6 -> fc7 head.

    Input: region features (B, 512, 196) or (B, 512, 14, 14), any float dtype (float16 stored
    features are cast to the weights' dtype after the max-pool).
    Output: scene features (B, 4096) in the weights' dtype (float32), or the autocast dtype
    when autocast is on. The module is always in eval mode, its parameters never require
    gradients and its forward records no graph: ``x_g`` is a constant input of BiAM.
    """

    def __init__(self, state_dict: Optional[Mapping[str, torch.Tensor]] = None, source: str = "<state dict>"):
        super().__init__()
        self.fc6 = nn.Linear(512 * 7 * 7, 4096)
        self.fc7 = nn.Linear(4096, 4096)
        if state_dict is not None:
            head = vgg19_head_state_dict(state_dict, source)
            shapes = {k: tuple(v.shape) for k, v in head.items()}
            expected = {k: tuple(v.shape) for k, v in self.state_dict().items()}
            if shapes != expected:
                raise ValueError(f"{source}: VGG19 head shapes {shapes} differ from {expected}")
            self.load_state_dict(head)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "SceneHead":
        # Frozen by design: the published head runs without dropout, so never leave eval mode.
        return super().train(False)

    @classmethod
    def from_torchvision(cls, vgg: nn.Module) -> "SceneHead":
        """Build from a ``torchvision.models.vgg19`` instance (its weights are copied)."""
        return cls(vgg.state_dict(), source="torchvision vgg19")

    @classmethod
    def from_file(cls, path: str) -> "SceneHead":
        """Build from a saved VGG19 (or SceneHead) state dict, loaded with ``weights_only=True``."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise FileNotFoundError(f"VGG19 weights file not found: {path}") from None
        except (RuntimeError, EOFError, ValueError) as err:
            raise RuntimeError(f"{path}: cannot read VGG19 weights ({err})") from err
        if not isinstance(state, Mapping):
            raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
        return cls(state, source=path)

    @classmethod
    def random(cls, seed: int = 0) -> "SceneHead":
        """A seeded random head (torchvision's VGG init: N(0, 0.01) weights, zero bias).

        Only for synthetic data and tests on machines without ImageNet weights; anything it
        computes is recorded as such in the packed manifest.
        """
        gen = torch.Generator().manual_seed(seed)
        head = cls()
        with torch.no_grad():
            for fc in (head.fc6, head.fc7):
                fc.weight.copy_(torch.randn(fc.weight.shape, generator=gen) * 0.01)
                fc.bias.zero_()
        return head

    @torch.no_grad()
    def forward(self, regions: torch.Tensor) -> torch.Tensor:
        """(B, 512, 196) or (B, 512, 14, 14) conv5_4 features -> (B, 4096) fc7 features."""
        if regions.dim() == 3 and regions.shape[1:] == (512, 196):
            regions = regions.reshape(regions.shape[0], 512, 14, 14)
        if regions.dim() != 4 or regions.shape[1:] != (512, 14, 14):
            raise ValueError(f"SceneHead expects (B, 512, 14, 14) or (B, 512, 196), got {tuple(regions.shape)}")
        x = F.max_pool2d(regions, kernel_size=2, stride=2).flatten(1)
        # float16 stored features meet float32 weights here; autocast (if on) recasts as it likes.
        x = F.relu(self.fc6(x.to(self.fc6.weight.dtype)))
        return F.relu(self.fc7(x))


def stored_scene_head(weights: Optional[PathLike], random_seed: Optional[int]) -> nn.Module:
    """The scene head alone, for stored regions: from a VGG19 state-dict file, or seeded random."""
    if weights is not None:
        return SceneHead.from_file(str(weights))
    return SceneHead.random(int(random_seed or 0))


BACKBONE = register_backbone(Backbone(
    name="vgg19", input_size=224, grid=(14, 14), channels=512, scene_dim=4096, scene_from_regions=True,
    weights_file=WEIGHTS_FILE, load_net=load_net, region_extractor=region_extractor, scene_head=scene_head,
    stored_scene_head=stored_scene_head, label="VGG19",
))
