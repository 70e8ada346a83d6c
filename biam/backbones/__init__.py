"""Registry of image backbones: one file per backbone, looked up by name.

A backbone states what it produces (input size, region grid, channels, scene-feature width)
and how to build its frozen parts from a weights file (or seeded random weights for tests):

* the *region extractor*: images (B, 3, S, S) -> feature map (B, channels, rows, cols);
* the *scene head*: feature map -> scene feature (B, scene_dim).

Adding a backbone is one file in this folder that builds a :class:`Backbone` and passes it to
:func:`register_backbone`, plus its import at the bottom of this module. The packed manifest
records the backbone (``backbone`` field, see docs/data_format.md); data written before that
field existed is VGG19 (:data:`DEFAULT_BACKBONE`).

Functions: :func:`register_backbone`, :func:`get_backbone`, :func:`list_backbones`,
:func:`backbone_of_manifest`.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

__all__ = [
    "Backbone", "DEFAULT_BACKBONE", "register_backbone", "get_backbone", "list_backbones",
    "backbone_of_manifest", "resolve_backbone", "load_torchvision_net", "BackboneError",
]

DEFAULT_BACKBONE = "vgg19"
PathLike = Union[str, os.PathLike]


class BackboneError(ValueError):
    """An unknown backbone name, or a manifest/checkpoint whose backbone fields do not fit."""


@dataclass(frozen=True)
class Backbone:
    """What one backbone produces and how to build it.

    Attributes:
        name: registry key, recorded in manifests and checkpoints (``"vgg19"``).
        input_size: side of the square input images in pixels (resized without a crop).
        grid: (rows, cols) of the region feature map; regions are stored row-major.
        channels: channels of a region feature.
        scene_dim: width of the scene feature.
        scene_from_regions: True when the scene head computes the scene feature from the stored
            regions (so training can run it when the packed data holds none); False when it needs
            more than the regions and is therefore always stored at extraction.
        weights_file: the usual name of its ImageNet state-dict file (for messages).
        load_net: ``(weights path or None, random seed or None) -> torchvision network``; see
            :func:`load_torchvision_net`.
        region_extractor: ``net -> nn.Module`` images (B, 3, S, S) -> (B, channels, rows, cols).
        scene_head: ``net -> nn.Module`` feature map (B, channels, rows, cols) -> (B, scene_dim).
    """

    name: str
    input_size: int
    grid: Tuple[int, int]
    channels: int
    scene_dim: int
    scene_from_regions: bool
    weights_file: str
    load_net: Callable[[Optional[PathLike], Optional[int]], nn.Module] = field(repr=False, compare=False)
    region_extractor: Callable[[nn.Module], nn.Module] = field(repr=False, compare=False)
    scene_head: Callable[[nn.Module], nn.Module] = field(repr=False, compare=False)

    @property
    def num_regions(self) -> int:
        return self.grid[0] * self.grid[1]

    def manifest_fields(self) -> dict:
        """The ``backbone`` field of a packed manifest: name, input size, grid, channels, scene dim."""
        return {"name": self.name, "input_size": self.input_size, "grid": list(self.grid),
                "channels": self.channels, "scene_dim": self.scene_dim}


_REGISTRY: Dict[str, Backbone] = {}


def register_backbone(backbone: Backbone) -> Backbone:
    """Add ``backbone`` to the registry under its name (a second one of that name is an error)."""
    if backbone.name in _REGISTRY:
        raise BackboneError(f"backbone {backbone.name!r} is registered twice")
    _REGISTRY[backbone.name] = backbone
    return backbone


def list_backbones() -> List[str]:
    """Registered backbone names, sorted."""
    return sorted(_REGISTRY)


def get_backbone(name: str) -> Backbone:
    """The registered backbone ``name``; raises :class:`BackboneError` listing the known names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise BackboneError(f"unknown backbone {name!r}; registered: {', '.join(list_backbones())}") from None


def backbone_of_manifest(manifest: Mapping, source: str = "manifest.json") -> Backbone:
    """The backbone a packed manifest records; one without a ``backbone`` field is VGG19.

    Raises :class:`BackboneError` naming ``source`` when the name is unknown or the recorded grid,
    channels or scene width differ from the registered backbone's.
    """
    rec = manifest.get("backbone")
    if rec is None:
        return get_backbone(DEFAULT_BACKBONE)
    if not isinstance(rec, Mapping) or not isinstance(rec.get("name"), str):
        raise BackboneError(f"{source}: field 'backbone': expected {{'name': str, 'grid': [rows, cols], "
                            f"'channels': int, 'scene_dim': int}}, found {rec!r:.80}")
    try:
        bb = get_backbone(rec["name"])
    except BackboneError as err:
        raise BackboneError(f"{source}: field 'backbone.name': {err}") from None
    want = bb.manifest_fields()
    for key in ("input_size", "grid", "channels", "scene_dim"):
        if key in rec and rec[key] != want[key]:
            raise BackboneError(f"{source}: field 'backbone.{key}': {rec[key]!r}, but backbone {bb.name!r} "
                                f"has {want[key]!r}")
    return bb


def resolve_backbone(name: str, data_root: Optional[PathLike] = None) -> Backbone:
    """The backbone a model must be built for (config ``MODEL.BACKBONE`` and ``DATA.ROOT``).

    Args:
        name: a registered name, or "" for "whatever the data records".
        data_root: a packed dataset folder; its manifest (when present) says which backbone made
            the features (none recorded: VGG19).
    Returns: the :class:`Backbone`; VGG19 when ``name`` is "" and there is no manifest.
    Raises: :class:`BackboneError` naming both when ``name`` differs from the data's backbone.
    """
    recorded = None
    if data_root:
        path = Path(data_root) / "manifest.json"
        if path.is_file():
            from ..data.packed import read_manifest

            recorded = backbone_of_manifest(read_manifest(data_root), str(path))
    if not name:
        return recorded or get_backbone(DEFAULT_BACKBONE)
    chosen = get_backbone(name)
    if recorded is not None and recorded.name != chosen.name:
        raise BackboneError(f"MODEL.BACKBONE = {chosen.name!r}, but the features in {data_root} were made by backbone "
                            f"{recorded.name!r} (manifest.json field 'backbone'); set MODEL.BACKBONE {recorded.name} "
                            f"(or \"\" to follow the data), or extract the features with --backbone {chosen.name}")
    return chosen


def load_torchvision_net(build: Callable[[], nn.Module], weights: Optional[PathLike], random_seed: Optional[int],
                         name: str, weights_file: str) -> nn.Module:
    """A torchvision network in eval mode with frozen parameters, from a state-dict file or seeded.

    Args:
        build: makes the architecture with random init (e.g. ``lambda: resnet101(weights=None)``).
        weights: a state-dict file (loaded with ``weights_only=True``), or None for random weights.
        random_seed: seed of the random init; only used when ``weights`` is None.
        name, weights_file: the backbone's name and usual file name, for messages.
    Raises:
        FileNotFoundError for a missing file; ValueError naming the file when it is not a plain
        state dict of this architecture. Nothing is ever downloaded.
    """
    if weights is None:
        if random_seed is None:
            raise ValueError(f"{name}: give a weights file ({weights_file}) or a random seed")
        # torchvision initialises from the global generator: seeding it makes the net reproducible.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(random_seed))
            net = build()
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"{name} weights file not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as err:
            from ..features import weights_error_message

            raise ValueError(weights_error_message(path, err, what=name, filename=weights_file)) from None
        if not isinstance(state, dict):
            raise ValueError(f"{path}: expected a {name} state dict, found {type(state).__name__}")
        # Built on the meta device: the random init would be overwritten anyway.
        with torch.device("meta"):
            net = build()
        try:
            net.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as err:
            raise ValueError(f"{path}: not a torchvision {name} state dict ({err})") from err
    net.requires_grad_(False)
    return net.eval()


# The registered backbones: one module each.
from . import vgg19 as _vgg19  # noqa: E402,F401
from . import resnet101 as _resnet101  # noqa: E402,F401
