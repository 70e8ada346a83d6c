"""The method registry: a method is one file holding its module, its ``from_config`` and its loss.

A method module maps ``forward(regions (B, channels, R), label_embeddings (C, E), scene (B, scene_dim))
-> scores (B, C)``. Its file registers it under a name (config ``MODEL.NAME``)::

    @register_method("mine", loss=my_loss)
    class Mine(nn.Module):
        @classmethod
        def from_config(cls, cfg, backbone) -> "Mine": ...

``build_model(cfg, backbone)`` builds the method ``MODEL.NAME`` names; ``biam-train`` calls its
loss ``loss(scores (B, C), labels (B, C) int8 in {-1, 0, 1}) -> scalar``. A method registered
with ``trainable=False`` (or without a loss) is for evaluation and prediction only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Union

import torch
from torch import nn

from ..backbones import DEFAULT_BACKBONE, Backbone, get_backbone

__all__ = ["Method", "UnknownMethodError", "register_method", "get_method", "list_methods", "unregister_method",
           "build_model", "method_of", "DEFAULT_METHOD"]

# The method of configs without MODEL.NAME and of checkpoints without a "method" field.
DEFAULT_METHOD = "biam"

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class UnknownMethodError(ValueError):
    """A method name that is not registered."""


@dataclass(frozen=True)
class Method:
    """One registered method.

    Attributes:
        name: the registry key (config ``MODEL.NAME``, the ``method`` field of checkpoints).
        build: ``(cfg, backbone: Backbone) -> nn.Module``, usually the class's ``from_config``.
        loss: ``(scores (B, C), labels (B, C) int8 in {-1, 0, 1}) -> scalar tensor``; None when the
            method has nothing to train.
        trainable: False for a method that is only evaluated or used for prediction
            (``biam-train`` refuses it by name); always False without a loss.
    """

    name: str
    build: Callable[[Any, Backbone], nn.Module]
    loss: Optional[LossFn] = None
    trainable: bool = True

    def __post_init__(self):
        if self.loss is None:
            object.__setattr__(self, "trainable", False)


_REGISTRY: Dict[str, Method] = {}


def register_method(name: str, *, loss: Optional[LossFn] = None, trainable: bool = True):
    """Class decorator: register ``cls`` (with a classmethod ``from_config(cfg, backbone)``) as ``name``.

    Sets ``cls.method_name = name`` (what checkpoints record). A name already registered is a
    ValueError. Returns the class unchanged otherwise.
    """
    def decorate(cls):
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} is already registered")
        if not callable(getattr(cls, "from_config", None)):
            raise TypeError(f"method {name!r}: {cls.__name__} has no classmethod from_config(cfg, backbone)")
        cls.method_name = name
        _REGISTRY[name] = Method(name=name, build=cls.from_config, loss=loss, trainable=trainable)
        return cls

    return decorate


def unregister_method(name: str) -> None:
    """Remove a registered method (tests and interactive sessions); unknown names are an error."""
    get_method(name)
    del _REGISTRY[name]


def get_method(name: str) -> Method:
    """The registered method ``name``; :class:`UnknownMethodError` lists the registered ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownMethodError(
            f"unknown method {name!r}; registered methods: {', '.join(map(repr, list_methods()))}") from None


def list_methods() -> List[str]:
    """Names of the registered methods, in registration order."""
    return list(_REGISTRY)


def method_of(model: nn.Module) -> Optional[str]:
    """The registered name of ``model``'s method, or None for a module no method registered."""
    return getattr(model, "method_name", None)


def build_model(cfg: Any, backbone: Union[Backbone, str, None] = None) -> nn.Module:
    """Build the method ``cfg.MODEL.NAME`` names (the only place that reads ``cfg.MODEL``).

    ``backbone``: a ``biam.backbones.Backbone`` or its name, or None for the one
    ``MODEL.BACKBONE`` names (VGG19 when ""). Callers that train or evaluate on packed data pass
    the data's backbone (:func:`biam.data.packed.resolve_backbone`). Its grid and widths shape the
    model.
    """
    if backbone is None:
        backbone = get_backbone(cfg.MODEL.BACKBONE or DEFAULT_BACKBONE)
    elif isinstance(backbone, str):
        backbone = get_backbone(backbone)
    return get_method(cfg.MODEL.NAME).build(cfg, backbone)
