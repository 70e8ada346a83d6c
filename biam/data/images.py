"""Image files -> normalised tensors, with every unreadable image kept as a named record.

Images are read in DataLoader workers by :class:`ImageFileDataset`; an image that cannot be read
comes back as an :class:`Unreadable` marker so that the main process records it (path + reason)
instead of crashing or silently dropping it. The size and normalisation are the backbone's
(:class:`biam.backbones.Backbone`: ``input_size``, ``mean``, ``std``); images are resized to a
square without keeping the aspect ratio and without a crop, as the released features were made.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["Unreadable", "ImageFileDataset", "collate_images", "image_transform", "backbone_transform",
           "load_image", "to_rgb", "ImageModeError"]

PathLike = Union[str, os.PathLike]


def image_transform(size: int, mean: Sequence[float], std: Sequence[float]):
    """PIL RGB image (any size) -> float32 tensor (3, size, size), normalised by ``mean``/``std``.

    Resized to ``size`` x ``size`` without keeping the aspect ratio and without a crop, as the
    released features were made.
    """
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize((size, size)),
        transforms.ToTensor(),
        transforms.Normalize(tuple(mean), tuple(std)),
    ])


def backbone_transform(backbone):
    """:func:`image_transform` at a :class:`biam.backbones.Backbone`'s input size and normalisation."""
    return image_transform(backbone.input_size, backbone.mean, backbone.std)


class ImageModeError(ValueError):
    """An image whose pixel mode or values cannot be read as 8-bit RGB without changing what it shows."""


# How each PIL mode becomes 8-bit RGB (docs/own_data.md, "Images"). Alpha is composited onto white:
# the colour under a fully transparent pixel is arbitrary (often black), white is what viewers show.
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_DIRECT_MODES = ("RGB", "L", "1", "CMYK", "YCbCr", "RGBX", "HSV")


def to_rgb(img, path: PathLike = "image"):
    """A loaded ``PIL.Image`` of any mode -> 8-bit RGB, or :class:`ImageModeError` naming why not.

    * RGB, L, 1 (black and white), CMYK, YCbCr, RGBX, HSV: PIL's own conversion.
    * P (palette): its colours; with a transparent colour, as RGBA below.
    * RGBA, LA, PA (and premultiplied RGBa, La): alpha composited onto white.
    * I;16 (and I;16B/L/N): 16-bit, scaled to 8 bits (value / 257), not clipped.
    * I (32-bit integer, how PIL opens some 16-bit files): values must lie in 0..65535, scaled
      as 16-bit; F (32-bit float): values must lie in [0, 1], scaled by 255. Other values, and any
      other mode (LAB, ...), are refused with the range or mode in the message.
    """
    from PIL import Image

    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode in _DIRECT_MODES:
        return img.convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img)
        if arr.ndim != 2:
            raise ImageModeError(f"{path}: image mode {mode} with shape {arr.shape} is not a greyscale image")
        values = arr.astype(np.float64)
        if not np.isfinite(values).all():
            raise ImageModeError(f"{path}: image mode {mode} holds values that are not finite")
        low, high = (0.0, 1.0) if mode == "F" else (0.0, 65535.0)
        if values.size and (values.min() < low or values.max() > high):
            raise ImageModeError(f"{path}: image mode {mode} holds values {values.min():g}..{values.max():g}, "
                                 f"outside {low:g}..{high:g}; convert it to an 8-bit or 16-bit image first")
        scaled = values * 255.0 if mode == "F" else values / 257.0
        grey = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")
        return grey.convert("RGB")
    raise ImageModeError(f"{path}: image mode {mode} cannot be read as RGB by this tool; save it as an RGB, "
                         "greyscale or palette image")


def load_image(path: PathLike):
    """Open an image file fully and return it as an RGB ``PIL.Image`` (:func:`to_rgb`).

    Raises ``OSError`` (missing file, truncated or corrupt data, not an image; PIL's
    ``UnidentifiedImageError`` is one) or ``ValueError`` (:class:`ImageModeError`: a mode or
    values that cannot be read as RGB) / ``Image.DecompressionBombError``.
    ``load()`` is forced here so that a truncated file fails now, not later in a transform.
    """
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        return to_rgb(img, path)


@dataclass(frozen=True)
class Unreadable:
    """Marker a dataset item carries instead of a tensor when its image could not be read.

    ``path``: the file; ``reason``: the exception type and message.
    """

    path: str
    reason: str


def _read_errors():
    from PIL import Image

    # Everything PIL and the OS raise for bad files; anything else is a bug and must surface.
    return (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class ImageFileDataset(Dataset):
    """Image files -> ``(tensor (3, S, S) float32, index)``, or ``(Unreadable, index)``.

    Args:
        paths: image files, in output order; ``index`` is the position in this list.
        transform: PIL image -> tensor (:func:`image_transform`, :func:`backbone_transform`).

    Safe to hand to DataLoader workers (holds only paths). Use :func:`collate_images` as the
    DataLoader's ``collate_fn``.
    """

    def __init__(self, paths: Sequence[PathLike], transform):
        self.paths = [os.fspath(p) for p in paths]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.paths[index]
        try:
            img = load_image(path)
        except _read_errors() as err:
            return Unreadable(path, f"{type(err).__name__}: {err}"), index
        return self.transform(img), index


def collate_images(items) -> Tuple[torch.Tensor, torch.Tensor, List[Tuple[int, Unreadable]]]:
    """Batch ``ImageFileDataset`` items.

    Input: a list of ``(tensor (3, H, W) | Unreadable, index)``.
    Output: ``images`` (n, 3, H, W) float32 of the readable items, ``indices`` (n,) int64 of those
    items, and ``failed``: list of ``(index, Unreadable)`` for the others, in input order.
    """
    good = [(x, i) for x, i in items if not isinstance(x, Unreadable)]
    failed = [(i, x) for x, i in items if isinstance(x, Unreadable)]
    if good:
        images = torch.stack([x for x, _ in good])
    else:
        images = torch.empty((0, 3, 0, 0))
    indices = torch.tensor([i for _, i in good], dtype=torch.int64)
    return images, indices, failed

