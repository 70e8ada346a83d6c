"""Image backbones as plug-ins: one file per backbone, looked up by name.

A backbone states what it produces (input size, region grid, channels, scene-feature width,
input normalisation) and how to build its frozen parts from a weights file (or seeded random
weights for tests):

* the *region extractor*: images (B, 3, S, S) -> feature map (B, channels, rows, cols);
* the *scene head*: feature map -> scene feature (B, scene_dim).

Adding a backbone is one file in this folder that builds a :class:`Backbone` and passes it to
:func:`register_backbone`, plus its import at the bottom of this module (``registry.py`` holds
the registry, ``weights.py`` the weight loading every backbone shares).
"""

from .registry import (
    DEFAULT_BACKBONE,
    Backbone,
    BackboneError,
    PathLike,
    backbone_of_manifest,
    get_backbone,
    list_backbones,
    register_backbone,
)
from .weights import (
    WeightsNotFoundError,
    check_weights_available,
    load_backbone,
    load_torchvision_net,
    missing_weights_message,
    torchvision_cache_file,
    weights_error_message,
)

# The registered backbones: one module each.
from . import vgg19 as _vgg19  # noqa: E402,F401  (isort: skip)
from . import resnet101 as _resnet101  # noqa: E402,F401  (isort: skip)
# CLIP (open_clip, the optional [clip] extra; imported only when one is built).
from . import clip_rn50 as _clip_rn50  # noqa: E402,F401  (isort: skip)
from . import clip_vit_b16 as _clip_vit_b16  # noqa: E402,F401  (isort: skip)

__all__ = [
    "Backbone", "BackboneError", "DEFAULT_BACKBONE", "PathLike", "WeightsNotFoundError", "backbone_of_manifest",
    "check_weights_available", "get_backbone", "list_backbones", "load_backbone", "load_torchvision_net",
    "missing_weights_message", "register_backbone", "torchvision_cache_file", "weights_error_message",
]
