"""Backbone weights: from a local state-dict file (``weights_only=True``), torchvision's cache, or
seeded random init for tests. Nothing is ever downloaded; a missing file is an error that says
how to provide one (pretrained_weights/README.md).
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Callable, Optional, Tuple

import torch
from torch import nn

from ..utils.io import sha256_file
from .registry import Backbone, PathLike, get_backbone

__all__ = ["WeightsNotFoundError", "load_torchvision_net", "torchvision_cache_file", "missing_weights_message",
           "load_backbone", "weights_error_message", "check_weights_available"]


class WeightsNotFoundError(RuntimeError):
    """No backbone weights were given and torchvision's cache holds none (message says what to do)."""


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



def torchvision_cache_file(filename: str) -> Path:
    """Where torchvision keeps (and looks for) the ImageNet weights file ``filename`` here."""
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def missing_weights_message(what: str, backbone: Backbone) -> str:
    """What to do when ``backbone`` has no weights file here (for ``what``, a tool's name)."""
    bb = backbone
    label = bb.label
    return (
        f"{what}: no {label} ImageNet weights available. Provide them in one of two ways:\n"
        f"  * pass --weights FILE (or --vgg-weights FILE for biam-predict), FILE being torchvision's\n"
        f"    {bb.weights_file} (e.g. pretrained_weights/{bb.weights_file}), or\n"
        f"  * put that file where torchvision's cache expects it: {torchvision_cache_file(bb.weights_file)}\n"
        f"How to obtain and verify the file on a machine with network: pretrained_weights/README.md.\n"
        f"For tests and smoke runs only, --random-weights SEED (--random-vgg SEED) uses a seeded random {label}."
    )


def load_backbone(name: str, weights: Optional[PathLike] = None, random_seed: Optional[int] = None,
                  what: str = "feature extraction") -> Tuple[nn.Module, str]:
    """Build backbone ``name``'s torchvision network (eval mode, frozen) and say where its weights came from.

    Args:
        weights: a state-dict file of the backbone (loaded with ``weights_only=True``); None:
            torchvision's cache file of the backbone's usual name (:func:`torchvision_cache_file`),
            if present.
        random_seed: explicit request for a seeded random network (tests, smoke runs); only used
            when ``weights`` is None.
        what: the tool's name, for the error message.
    Returns:
        ``(net, source)``: the network (parameters frozen) and a string for the manifest, e.g.
        ``"vgg19-state-dict:vgg19-dcbb9e9d.pth:sha256:dcbb9e9d..."`` or ``"random-seed-0"``;
        the file's content, not its path, so a run resumed on another machine records the same.
    Raises:
        WeightsNotFoundError with instructions when nothing is available; FileNotFoundError /
        ValueError naming the file when it is missing, unreadable or not this architecture.
    """
    bb = get_backbone(name)
    if bb.open_weights is not None:  # not torchvision's (CLIP: open_clip files or tags)
        return bb.open_weights(weights, random_seed, what)
    if weights is None and random_seed is not None:
        return bb.load_net(None, int(random_seed)), f"random-seed-{int(random_seed)}"
    check_weights_available(weights, random_seed, what, backbone=name)
    path = Path(weights) if weights is not None else torchvision_cache_file(bb.weights_file)
    net = bb.load_net(path, None)
    return net, f"{name}-state-dict:{path.name}:sha256:{sha256_file(path)[:16]}"


def weights_error_message(path: PathLike, err: BaseException, what: str, filename: str) -> str:
    """One line for a weights file that ``torch.load(weights_only=True)`` or the model refused.

    Names the file and says it is not a plain state dict. torch's own advice to retry with
    ``weights_only=False`` (which would run whatever code the file holds) is left out.
    """
    if isinstance(err, pickle.UnpicklingError):
        found = re.search(r"GLOBAL (\S+?)[ .]*(?:whose|was|$)", str(err), re.M)
        kind = ("it holds objects other than tensors" + (f" ({found.group(1)})" if found else "")
                + ", refused without running them")
    else:
        text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "weights_only" not in ln]
        detail = lines[0] if lines else type(err).__name__
        for prefix in (f"{path}: ", f"{os.fspath(path)}: "):
            detail = detail[len(prefix):] if detail.startswith(prefix) else detail
        kind = detail if len(detail) <= 240 else detail[:237] + "..."
    return (f"{path}: not a plain {what} state dict ({kind}); use torchvision's {filename} "
            "(see pretrained_weights/README.md)")


def check_weights_available(weights: Optional[PathLike], random_seed: Optional[int], what: str,
                            backbone: str) -> None:
    """Fail early (before hours of work) when :func:`load_backbone` would find no weights.

    Raises WeightsNotFoundError / FileNotFoundError with the instructions of :func:`missing_weights_message`.
    """
    if weights is None and random_seed is not None:
        return
    bb = get_backbone(backbone)
    if bb.check_weights is not None:
        bb.check_weights(weights, random_seed, what)
        return
    label = bb.label
    path = Path(weights) if weights is not None else torchvision_cache_file(bb.weights_file)
    if not path.is_file():
        if weights is not None:
            raise FileNotFoundError(f"{label} weights file not found: {path}\n" + missing_weights_message(what, bb))
        raise WeightsNotFoundError(missing_weights_message(what, bb))

