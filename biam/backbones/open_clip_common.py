"""Building CLIP models with ``open_clip`` (the optional ``[clip]`` extra), for the CLIP backbones
(:mod:`.clip_rn50`, :mod:`.clip_vit_b16`) and the CLIP text encoder (:mod:`biam.data.label_encoders`).

Weights come from exactly one of:

* ``--weights FILE``: a local open_clip checkpoint (a state dict, ``.bin``/``.pt`` loaded with
  ``weights_only=True``, or ``.safetensors``), e.g. the ``open_clip_pytorch_model.bin`` of the
  ``openai`` tag. A file holds OpenAI's CLIP weights unless its name is given as ``TAG=FILE``
  (the tag decides QuickGELU or GELU, see below);
* ``--weights TAG`` (online): an open_clip pretrained tag of the architecture (``openai``,
  ``laion2b_s34b_b88k``, ...); open_clip fetches the file into its cache, then it is read as a file;
* ``--random-weights SEED``: seeded random weights, for tests and smoke runs only (recorded so).

Without any of them it is an error naming the ways (never a silent random model). The source
string recorded in the manifest names the backbone, the weights file and its full SHA-256.

OpenAI's weights were trained with QuickGELU; open_clip builds ``<arch>-quickgelu`` for them, and
we do the same, since the plain GELU architecture would load the same tensors and compute other
features without any error.

``open_clip`` is imported inside the functions: the package works without it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Tuple

import torch
from torch import nn

from ..utils.io import sha256_file
from .registry import PathLike
from .weights import WeightsNotFoundError

__all__ = ["OpenClipError", "import_open_clip", "resolve_clip_weights", "load_clip_model", "clip_weights_message",
           "check_clip_weights", "quick_gelu_for"]

OPENAI_TAG = "openai"


class OpenClipError(WeightsNotFoundError):
    """open_clip is missing, or a CLIP weights file/tag cannot be used (the message says what to do)."""


def import_open_clip():
    """The ``open_clip`` module, or :class:`OpenClipError` saying how to install it."""
    try:
        import open_clip
    except ImportError:
        raise OpenClipError("the CLIP backbones and text encoders need open_clip: pip install -e \".[clip]\" "
                            "(the open-clip-torch package)") from None
    return open_clip


def clip_weights_message(what: str, label: str, arch: str, tags=None) -> str:
    """What to do when a CLIP backbone/encoder has no weights (for ``what``, a tool's name)."""
    shown = ", ".join(tags) if tags else "openai, ..."
    return (f"{what}: no {label} weights given. Provide them in one of two ways:\n"
            f"  * --weights FILE: a local open_clip checkpoint of {arch} (e.g. the open_clip_pytorch_model.bin "
            f"or .safetensors of the '{OPENAI_TAG}' tag); write TAG=FILE for weights of another tag, or\n"
            f"  * --weights TAG on a machine with network: an open_clip pretrained tag of {arch} ({shown}); "
            "open_clip downloads the file into its cache.\n"
            f"For tests and smoke runs only, --random-weights SEED uses a seeded random {label}.")


def _known_tags(arch: str):
    try:
        return list(import_open_clip().list_pretrained_tags_by_model(arch))
    except OpenClipError:
        return []


def _split_spec(weights: PathLike, arch: str) -> Tuple[Optional[str], Optional[Path]]:
    """``--weights`` -> (tag or None, file or None). An existing file wins over a tag of that name."""
    text = os.fspath(weights)
    if Path(text).is_file():
        return None, Path(text)
    tag, sep, rest = text.partition("=")
    if sep and tag in _known_tags(arch):
        return tag, Path(rest)
    if text in _known_tags(arch):
        return text, None
    return None, Path(text)


def quick_gelu_for(tag: Optional[str]) -> bool:
    """Whether the weights of ``tag`` need QuickGELU (OpenAI's, and a file without a tag)."""
    return tag is None or tag == OPENAI_TAG or tag.startswith("openai") or "quickgelu" in tag


def check_clip_weights(weights: Optional[PathLike], random_seed: Optional[int], what: str, label: str,
                       arch: str) -> None:
    """Fail early when :func:`resolve_clip_weights` would find nothing (no weights, missing file, unknown tag)."""
    if weights is None:
        if random_seed is None:
            raise OpenClipError(clip_weights_message(what, label, arch, _known_tags(arch)))
        return
    import_open_clip()
    tag, path = _split_spec(weights, arch)
    if path is not None and not path.is_file():
        raise FileNotFoundError(f"{label} weights file not found: {path} (and {os.fspath(weights)!r} is not an "
                                f"open_clip tag of {arch})\n" + clip_weights_message(what, label, arch, _known_tags(arch)))


def resolve_clip_weights(weights: PathLike, arch: str, what: str, label: str) -> Tuple[Optional[str], Path]:
    """``--weights`` value -> (tag or None, local file); a bare tag is fetched by open_clip (online)."""
    open_clip = import_open_clip()
    tag, path = _split_spec(weights, arch)
    if path is None:
        from open_clip.pretrained import download_pretrained, get_pretrained_cfg

        try:
            path = Path(download_pretrained(get_pretrained_cfg(arch, tag)))
        except (OSError, RuntimeError, ValueError) as err:  # the hub's offline/HTTP errors are OSError/RuntimeError
            raise OpenClipError(f"{what}: cannot fetch open_clip weights {arch}/{tag} ({type(err).__name__}: "
                                f"{str(err).splitlines()[0] if str(err) else ''}); offline, pass the checkpoint file "
                                f"instead: --weights {tag}=FILE") from None
        del open_clip
    if not path.is_file():
        raise FileNotFoundError(f"{label} weights file not found: {path}\n"
                                + clip_weights_message(what, label, arch, _known_tags(arch)))
    return tag, path


def _read_state_dict(path: Path, label: str) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except (OSError, RuntimeError, ValueError) as err:
            raise ValueError(f"{path}: not a safetensors {label} checkpoint ({err})") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, ValueError, OSError) as err:
            line = next((ln for ln in str(err).splitlines() if ln.strip() and "weights_only" not in ln), type(err).__name__)
            raise ValueError(f"{path}: not a plain {label} state dict ({line[:200]}); OpenAI's TorchScript .pt files "
                             "are not read: use open_clip's open_clip_pytorch_model.bin or .safetensors") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path}: expected a {label} state dict, found {type(state).__name__}")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _build(arch: str, quick_gelu: bool) -> nn.Module:
    open_clip = import_open_clip()
    # open_clip logs a warning for every model built without pretrained weights: that is the point here.
    quiet = logging.getLogger()
    level = quiet.level
    quiet.setLevel(max(level, logging.ERROR))
    try:
        return open_clip.create_model(arch, pretrained=None, force_quick_gelu=quick_gelu)
    finally:
        quiet.setLevel(level)


def load_clip_model(name: str, arch: str, label: str, weights: Optional[PathLike], random_seed: Optional[int],
                    what: str) -> Tuple[nn.Module, str]:
    """An open_clip CLIP model (eval mode, frozen) and the source string for the manifest.

    Args:
        name: our registry name (``clip_rn50``), first field of the source string.
        arch: open_clip's architecture name (``RN50``, ``ViT-B-16``).
        weights: a file, ``TAG=FILE`` or a tag (see the module docstring); None with ``random_seed``:
            seeded random weights.
    Returns:
        ``(model, source)``; source ``"clip_rn50:open_clip:RN50:openai:FILE:sha256:<64 hex>"`` or
        ``"clip_rn50:open_clip:RN50:random-seed-0"``.
    Raises:
        OpenClipError (no weights, no open_clip, fetch failed), FileNotFoundError, ValueError naming the
        file when it is not a state dict of ``arch``.
    """
    check_clip_weights(weights, random_seed, what, label, arch)
    if weights is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(random_seed))
            model = _build(arch, quick_gelu=True)
        source = f"{name}:open_clip:{arch}:random-seed-{int(random_seed)}"
    else:
        tag, path = resolve_clip_weights(weights, arch, what, label)
        state = _read_state_dict(path, label)
        # Built with its random init (not on meta): open_clip's unsaved buffers (the text attention
        # mask) come from __init__.
        model = _build(arch, quick_gelu=quick_gelu_for(tag))
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(f"{path}: not an open_clip {arch} state dict ({str(err).splitlines()[0]})") from None
        source = f"{name}:open_clip:{arch}:{tag or 'file'}:{path.name}:sha256:{sha256_file(path)}"
    model.requires_grad_(False)
    return model.eval(), source
