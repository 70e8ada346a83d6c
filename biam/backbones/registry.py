"""The backbone registry: what each backbone produces, looked up by name.

A backbone states its input size, region grid, channels and scene-feature width and how to
build its frozen parts; nothing outside a backbone's own file assumes any of these. The packed
manifest records the backbone (``backbone`` field, docs/data_format.md); data written before that
field existed is VGG19 (:data:`DEFAULT_BACKBONE`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Tuple, Union

from torch import nn

__all__ = ["Backbone", "BackboneError", "DEFAULT_BACKBONE", "PathLike", "register_backbone", "get_backbone",
           "list_backbones", "backbone_of_manifest"]

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
        stored_scene_head: for a backbone whose scene head runs on stored regions
            (``scene_from_regions``): ``(weights file or None, random seed or None) -> nn.Module``
            taking regions (B, channels, rows * cols) to (B, scene_dim); None otherwise.
        mean, std: the per-channel normalisation of its input images (RGB in [0, 1]).
        label: its name in messages (default: ``name``).
        open_weights: for a backbone whose weights are not a torchvision state dict (the CLIP
            backbones, built by open_clip): ``(weights or None, random seed or None, tool) ->
            (net, source)``, used by :func:`biam.backbones.load_backbone` instead of ``load_net``
            and torchvision's cache; None: the torchvision way.
        check_weights: with ``open_weights``: ``(weights, random seed, tool) -> None``, raising
            what ``open_weights`` would (used by :func:`biam.backbones.check_weights_available`).
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
    stored_scene_head: Optional[Callable[[Optional[PathLike], Optional[int]], nn.Module]] = field(
        default=None, repr=False, compare=False)
    mean: Tuple[float, float, float] = (0.485, 0.456, 0.406)  # ImageNet's
    std: Tuple[float, float, float] = (0.229, 0.224, 0.225)
    label: str = ""
    open_weights: Optional[Callable[[Optional[PathLike], Optional[int], str], Tuple[nn.Module, str]]] = field(
        default=None, repr=False, compare=False)
    check_weights: Optional[Callable[[Optional[PathLike], Optional[int], str], None]] = field(
        default=None, repr=False, compare=False)

    def __post_init__(self):
        if not self.label:
            object.__setattr__(self, "label", self.name)

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

