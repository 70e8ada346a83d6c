"""Attention figures as in the BiAM paper: the image and, for each top label, its region scores.

One PNG per image: the image, then one panel per label with the label's 14x14 region scores
(``BiAM.region_scores``) upsampled bilinearly to the displayed image and overlaid with a
colormap, titled with the label and its image score. Drawn with matplotlib's Agg canvas
directly (no pyplot, no global backend switch), so it works on machines without a display.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["PANEL_PX", "TITLE_PX", "DISPLAY_MAX_SIDE", "figure_size", "upsample_map", "save_attention_figure"]

PANEL_PX = 300  # width and height of one panel, pixels
TITLE_PX = 50  # room for the two-line titles above the panels
DPI = 100
DISPLAY_MAX_SIDE = 448  # large photos are shown downscaled; the map is upsampled to what is shown


def figure_size(num_labels: int) -> Tuple[int, int]:
    """Pixel size ``(width, height)`` of the PNG for ``num_labels`` label panels (+1 image panel)."""
    return PANEL_PX * (num_labels + 1), PANEL_PX + TITLE_PX


def upsample_map(region_scores: np.ndarray, height: int, width: int) -> np.ndarray:
    """(196,) or (14, 14) region scores -> (height, width) float32 in [0, 1].

    Bilinear upsampling of the 14x14 grid (region = row * 14 + col), then min-max scaling so
    that every label's map uses the whole colormap (a flat map becomes all zeros).
    """
    grid = torch.as_tensor(np.asarray(region_scores, dtype=np.float32)).reshape(1, 1, 14, 14)
    up = F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()
    lo, hi = float(up.min()), float(up.max())
    return (up - lo) / (hi - lo) if hi > lo else np.zeros_like(up)


def save_attention_figure(
    image,
    region_scores: np.ndarray,
    labels: Sequence[str],
    scores: Sequence[float],
    out_path: Union[str, os.PathLike],
    cmap: str = "jet",
    alpha: float = 0.5,
) -> Path:
    """Write the attention figure of one image.

    Args:
        image: a ``PIL.Image`` (RGB) or an image file path.
        region_scores: (196, K) or (K, 196) region scores of the K labels shown (K = len(labels)).
        labels, scores: K label names and image scores, in display order.
        out_path: the PNG to write; its size is :func:`figure_size` (K).
    Returns:
        ``Path(out_path)``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    if not hasattr(image, "size"):
        with Image.open(image) as img:
            image = img.convert("RGB")
    k = len(labels)
    maps = np.asarray(region_scores, dtype=np.float32)
    if maps.shape == (196, k) and k != 196:
        maps = maps.T
    if maps.shape != (k, 196) or len(scores) != k:
        raise ValueError(f"region_scores must be (196, {k}) or ({k}, 196) with {k} scores; "
                         f"got {np.asarray(region_scores).shape} and {len(scores)} scores")
    scale = min(1.0, DISPLAY_MAX_SIDE / max(image.size))
    shown = image.resize((max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale))), Image.BILINEAR)
    pixels = np.asarray(shown)
    h, w = pixels.shape[:2]

    width, height = figure_size(k)
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    top = PANEL_PX / height
    for j in range(k + 1):
        ax = fig.add_axes((j / (k + 1), 0.0, 1.0 / (k + 1), top * 0.98))
        ax.imshow(pixels)
        if j == 0:
            ax.set_title("image", fontsize=9)
        else:
            ax.imshow(upsample_map(maps[j - 1], h, w), cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0)
            ax.set_title(f"{labels[j - 1]}\n{float(scores[j - 1]):.3f}", fontsize=9)
        ax.set_axis_off()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=DPI, format="png")
    return out_path
