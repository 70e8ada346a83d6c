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

import torch
from torch.utils.data import Dataset

__all__ = ["Unreadable", "ImageFileDataset", "collate_images", "image_transform", "backbone_transform",
           "load_image"]

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


def load_image(path: PathLike):
    """Open an image file fully and return it as an RGB ``PIL.Image``.

    Raises ``OSError`` (missing file, truncated or corrupt data, not an image; PIL's
    ``UnidentifiedImageError`` is one) or ``ValueError``/``Image.DecompressionBombError``.
    ``load()`` is forced here so that a truncated file fails now, not later in a transform.
    """
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        return img.convert("RGB")


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

