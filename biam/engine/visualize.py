"""Attention figures as in the BiAM paper: the image and, for each top label, its region scores.

One PNG per image: the image, then one panel per label with the label's region scores on the
backbone's grid (``BiAM.region_scores``, ``Backbone.grid``) upsampled bilinearly to the displayed
image and overlaid with a colormap, titled with the label and its image score. Drawn with matplotlib's Agg canvas
directly (no pyplot, no global backend switch), so it works on machines without a display.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..data.images import load_image
from ..utils.io import atomic_open

__all__ = ["PANEL_PX", "TITLE_PX", "DISPLAY_MAX_SIDE", "figure_size", "as_grid_maps", "upsample_map",
           "save_attention_figure", "render_attention_figure"]

PANEL_PX = 300  # width and height of one panel, pixels
TITLE_PX = 50  # room for the two-line titles above the panels
DPI = 100
DISPLAY_MAX_SIDE = 448  # large photos are shown downscaled; the map is upsampled to what is shown


def figure_size(num_labels: int) -> Tuple[int, int]:
    """Pixel size ``(width, height)`` of the PNG for ``num_labels`` label panels (+1 image panel)."""
    return PANEL_PX * (num_labels + 1), PANEL_PX + TITLE_PX


def as_grid_maps(region_scores, num_labels: int, grid: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """Region scores of ``num_labels`` labels -> (K, rows, cols) float32.

    Accepted: (K, rows, cols); or (K, rows * cols) / (rows * cols, K) with ``grid=(rows, cols)``
    (region = row * cols + col, the backbone's order). Raises ValueError naming the shapes.
    """
    maps = np.asarray(region_scores, dtype=np.float32)
    k = num_labels
    if maps.ndim == 3 and maps.shape[0] == k and (grid is None or tuple(maps.shape[1:]) == tuple(grid)):
        return maps
    if maps.ndim == 2 and grid is not None:
        rows, cols = (int(g) for g in grid)
        if maps.shape == (rows * cols, k) and maps.shape != (k, rows * cols):
            maps = maps.T
        if maps.shape == (k, rows * cols):
            return maps.reshape(k, rows, cols)
    want = f"({k}, rows, cols), or ({k}, rows * cols) / (rows * cols, {k}) with grid=(rows, cols)"
    raise ValueError(f"region_scores must be {want}; got {maps.shape} with grid={grid}")


def upsample_map(region_scores: np.ndarray, height: int, width: int, grid: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """One label's region scores, (rows, cols) or (rows * cols,) with ``grid`` -> (height, width)
    float32 in [0, 1].

    Bilinear upsampling of the grid (region = row * cols + col), then min-max scaling so that
    every label's map uses the whole colormap (a flat map becomes all zeros).
    """
    scores = np.asarray(region_scores, dtype=np.float32)
    cells = scores if scores.ndim == 2 else scores.reshape(*(grid or (-1,)))
    if cells.ndim != 2:
        raise ValueError(f"upsample_map: a (rows, cols) map, or a flat one with grid=(rows, cols); got {scores.shape}")
    up = F.interpolate(torch.as_tensor(cells)[None, None], size=(height, width), mode="bilinear",
                       align_corners=False)[0, 0].numpy()
    lo, hi = float(up.min()), float(up.max())
    return (up - lo) / (hi - lo) if hi > lo else np.zeros_like(up)


def render_attention_figure(
    image,
    region_scores,
    labels: Sequence[str],
    scores: Sequence[float],
    grid: Optional[Tuple[int, int]] = None,
    cmap: str = "jet",
    alpha: float = 0.5,
):
    """The attention figure of one image as a matplotlib ``Figure`` (Agg canvas), not written.

    Args: as :func:`save_attention_figure`. Returns the figure; ``figure.savefig(fh, format="png")``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    if not hasattr(image, "size"):
        image = load_image(image)  # 16-bit, alpha, palette: as the model saw it (to_rgb)
    k = len(labels)
    if len(scores) != k:
        raise ValueError(f"{k} labels but {len(scores)} scores")
    maps = as_grid_maps(region_scores, k, grid)
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
    return fig


def save_attention_figure(
    image,
    region_scores,
    labels: Sequence[str],
    scores: Sequence[float],
    out_path: Union[str, os.PathLike],
    grid: Optional[Tuple[int, int]] = None,
    cmap: str = "jet",
    alpha: float = 0.5,
) -> Path:
    """Write the attention figure of one image.

    Args:
        image: a ``PIL.Image`` (RGB) or an image file path.
        region_scores: the K labels' region scores on the backbone's grid: (K, rows, cols), or
            (K, rows * cols) / (rows * cols, K) with ``grid=(rows, cols)``.
        labels, scores: K label names and image scores, in display order.
        out_path: the PNG to write (its folder is created); its size is :func:`figure_size` (K).
    Returns:
        ``Path(out_path)``.
    """
    fig = render_attention_figure(image, region_scores, labels, scores, grid=grid, cmap=cmap, alpha=alpha)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # Complete or absent, never through a link: a figure is replaced only by a whole new one.
    with atomic_open(out_path, "wb") as f:
        fig.savefig(f, dpi=DPI, format="png")
    return out_path
