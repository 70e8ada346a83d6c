"""The published way of computing the metrics: plain Python loops over labels and images.

Kept only as the reference for tests and for ``biam-benchmark`` (us versus the original's way of
working). They are slow on purpose: one ``numpy.argsort`` per label, one per image. Ties are
broken by ``argsort`` order, so on tied scores they may differ from ``biam.evaluation.metrics``
(which uses a defined tie rule); on tie-free scores the results are equal.
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

__all__ = [
    "PUBLISHED_OPENIMAGES_KS",
    "published_loop_average_precision",
    "published_loop_f1_at_k",
    "published_loop_openimages",
    "published_loop_pooled_openimages_ap",
]

# The K of each task in the original's Open Images evaluation log.
PUBLISHED_OPENIMAGES_KS = {"seen": (1, 5, 10, 20), "zsl": (1, 3, 10, 20), "gzsl": (1, 5, 10, 20)}


def _as_numpy(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        x = x.numpy()
    a = np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-d (images, labels), got shape {a.shape}")
    return a


def _ap_of_ranking(scores: np.ndarray, labels: np.ndarray) -> float:
    """AP of one ranked list. scores, labels: (n,) with labels in {-1, +1}. Returns a float."""
    order = np.argsort(-scores, kind="quicksort")
    hits = labels[order] == 1
    num_pos = int(hits.sum())
    if num_pos == 0:
        return 0.0
    precision_at = np.cumsum(hits) / np.arange(1, hits.size + 1)
    return float(precision_at[hits].sum() / num_pos)


def published_loop_average_precision(scores, labels) -> np.ndarray:
    """Per-label AP with one Python iteration (and one argsort) per label.

    Args:
        scores: (N, C) array-like. labels: (N, C) in {-1, 0, +1}; 0 entries are skipped.
    Returns:
        (C,) float64 numpy array; 0 for a label without a positive.
    """
    s = _as_numpy(scores, "scores").astype(np.float64)
    y = _as_numpy(labels, "labels")
    out = np.zeros(s.shape[1], dtype=np.float64)
    for c in range(s.shape[1]):
        keep = y[:, c] != 0
        out[c] = _ap_of_ranking(s[keep, c], y[keep, c])
    return out


def published_loop_f1_at_k(scores, labels, k: int) -> Tuple[float, float, float]:
    """Overall F1@K with one Python iteration per image.

    Args:
        scores, labels: (N, C); k: labels per image.
    Returns:
        (f1, precision, recall) floats.
    """
    s = _as_numpy(scores, "scores").astype(np.float64)
    y = _as_numpy(labels, "labels")
    if k > s.shape[1]:
        raise ValueError(f"K={k} is larger than the {s.shape[1]} labels")
    tp = 0
    for i in range(s.shape[0]):
        top = np.argsort(-s[i])[:k]
        tp += int((y[i, top] == 1).sum())
    num_pos = int((y == 1).sum())
    p = tp / (s.shape[0] * k) if s.shape[0] else 0.0
    r = tp / num_pos if num_pos else 0.0
    f1 = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return f1, p, r


def published_loop_pooled_openimages_ap(scores, labels) -> np.ndarray:
    """The published Open Images AP function, label by label (docs/metrics.md).

    For label c: the rows annotated for c; every annotated entry of those rows, all labels
    pooled, ranked together; the AP of that pooled list is returned as label c's AP.

    Args:
        scores, labels: (N, C).
    Returns:
        (C,) float64 numpy array.
    """
    s = _as_numpy(scores, "scores").astype(np.float64)
    y = _as_numpy(labels, "labels")
    out = np.zeros(s.shape[1], dtype=np.float64)
    for c in range(s.shape[1]):
        rows = y[:, c] != 0
        sub_s, sub_y = s[rows], y[rows]
        keep = sub_y != 0
        out[c] = _ap_of_ranking(sub_s[keep], sub_y[keep])
    return out


def published_loop_openimages(scores, labels, num_seen: int) -> Dict[str, Dict[str, float]]:
    """The original Open Images evaluation of one weights file, task by task, as its
    ``evaluate_openimages.py`` runs it (docs/metrics.md).

    Per task (SEEN: the first ``num_seen`` columns, ZSL: the others, GZSL: all):
    keep the images with a +1 among the task's columns; for SEEN and GZSL keep only the columns
    annotated (non-zero) in some kept image (ZSL keeps all); the pooled AP of every kept column
    (:func:`published_loop_pooled_openimages_ap`), its plain mean and its mean weighted by each
    column's +1 images; F1/P/R at the task's K of :data:`PUBLISHED_OPENIMAGES_KS`, over the kept
    columns for SEEN and over all the task's columns for ZSL and GZSL.

    Args:
        scores, labels: (N, C) with the seen columns first.
        num_seen: S.
    Returns:
        {"seen" | "zsl" | "gzsl": {"published_pooled_mAP", "published_weighted_pooled_mAP",
        "F1@K", "P@K", "R@K", "num_images", "num_mean_columns"}}; ``num_mean_columns`` is the
        number of columns the plain mean divides by.
    """
    s = _as_numpy(scores, "scores").astype(np.float64)
    y = _as_numpy(labels, "labels")
    c = s.shape[1]
    out = {}
    for task, cols in (("seen", np.arange(num_seen)), ("zsl", np.arange(num_seen, c)), ("gzsl", np.arange(c))):
        ts, ty = s[:, cols], y[:, cols]
        keep = [i for i in range(ty.shape[0]) if (ty[i] == 1).sum() > 0]
        ts, ty = ts[keep], ty[keep]
        if task == "zsl":
            mask = np.arange(ty.shape[1])
        else:
            mask = np.array([j for j in range(ty.shape[1]) if (ty[:, j] != 0).sum() > 0], dtype=np.int64)
        map_s, map_y = ts[:, mask], ty[:, mask]
        ap = published_loop_pooled_openimages_ap(map_s, map_y)
        imgs_per_label = np.clip(map_y, 0, 1).sum(0).astype(np.float64)
        res = {
            "published_pooled_mAP": float(ap.mean()),
            "published_weighted_pooled_mAP": float((imgs_per_label * ap).sum() / imgs_per_label.sum()),
            "num_images": len(keep),
            "num_mean_columns": int(mask.size),
        }
        f1_s, f1_y = (map_s, map_y) if task == "seen" else (ts, ty)
        for k in PUBLISHED_OPENIMAGES_KS[task]:
            f1, p, r = published_loop_f1_at_k(f1_s, f1_y, k)
            res.update({f"F1@{k}": f1, f"P@{k}": p, f"R@{k}": r})
        out[task] = res
    return out
