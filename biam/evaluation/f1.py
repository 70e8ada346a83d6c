"""Overall F1@K, precision@K and recall@K of the paper (docs/metrics.md), over image chunks.

Labels are in {-1, 0, +1}: +1 present, -1 verified absent, 0 unknown (never counted).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from .metrics import ArrayLike, _check_finite, _check_pair, _one_thread_per_worker, _row_chunks, _to_tensor, _work_dtype

__all__ = ["f1_at_k", "f1_at_ks"]


def f1_at_ks(
    scores: ArrayLike,
    labels: ArrayLike,
    ks: Sequence[int],
    chunk_size: Optional[int] = None,
    row_mask: Optional[ArrayLike] = None,
    col_mask: Optional[ArrayLike] = None,
) -> dict:
    """Overall F1, precision and recall at several K from one top-K pass.

    For each image its K top-scored labels are taken; TP = those labelled +1; P = TP / (images
    x K); R = TP / (number of +1 entries); F1 = 2PR / (P + R), 0 when P + R = 0. Ties at the K-th
    place are broken by ``torch.topk`` (unspecified order).

    Args:
        scores, labels: (N, C) as in ``average_precision``.
        ks: positive ints, each at most C (at most the columns kept by ``col_mask``).
        chunk_size: images per chunk (default: about 2M entries).
        row_mask: optional (N,) bool; only these images count.
        col_mask: optional (C,) bool; only these columns count: the top K is taken among them
            and only their +1 entries are counted (the original's SEEN F1 on Open Images).
    Returns:
        {k: (f1, precision, recall)} with Python floats.
    """
    s, y = _check_pair(scores, labels)
    ks = [int(k) for k in ks]
    n, c = s.shape
    cols = None
    if col_mask is not None:
        cm = _to_tensor(col_mask, "col_mask").to(s.device)
        if cm.dtype != torch.bool or cm.shape != (c,):
            raise ValueError(f"col_mask must be a bool vector of the {c} columns, got {cm.dtype} {tuple(cm.shape)}")
        cols = cm.nonzero().squeeze(1)
    width = c if cols is None else int(cols.numel())
    for k in ks:
        if k < 1:
            raise ValueError(f"K={k} must be at least 1")
        if k > width:
            raise ValueError(f"K={k} is larger than the {width} labels" + ("" if cols is None else " kept by col_mask"))
    rm = None
    if row_mask is not None:
        rm = _to_tensor(row_mask, "row_mask").to(s.device)
        if rm.dtype != torch.bool or rm.shape != (n,):
            raise ValueError(f"row_mask must be a bool vector of the {n} rows, got {rm.dtype} {tuple(rm.shape)}")
    kmax = max(ks) if ks else 0
    dtype = _work_dtype(s)

    def run(bounds: Tuple[int, int]) -> Tuple[torch.Tensor, int, int]:
        """(true positives at each rank 1..kmax, +1 entries, images) of one chunk of images."""
        r0, r1 = bounds
        chunk, lab = s[r0:r1].to(dtype), y[r0:r1]
        if rm is not None:
            keep = rm[r0:r1]
            chunk, lab = chunk[keep], lab[keep]
        if cols is not None:
            # Per chunk: a copy of the kept columns of a few images, never of the whole matrix.
            chunk, lab = chunk.index_select(1, cols), lab.index_select(1, cols)
        _check_finite(chunk, f"scores (images {r0}..{r1 - 1})")
        hits = torch.zeros(kmax, dtype=torch.int64, device=s.device)
        if kmax and chunk.shape[0]:
            top = torch.topk(chunk, kmax, dim=1, largest=True, sorted=True).indices
            hits = (lab.gather(1, top) == 1).sum(0)
        return hits, int((lab == 1).sum()), chunk.shape[0]

    hits = torch.zeros(kmax, dtype=torch.int64, device=s.device)
    num_pos = num_img = 0
    chunks = list(_row_chunks(n, c, chunk_size))
    with _one_thread_per_worker(s.device, len(chunks)) as pmap:
        for h, p, i in pmap(run, chunks):
            # hits[j] = true positives at rank j+1; the cumsum below gives TP@K for every K.
            hits += h
            num_pos += p
            num_img += i
    tp_at = torch.cumsum(hits, 0).tolist()
    out = {}
    for k in ks:
        tp = tp_at[k - 1]
        p = tp / (num_img * k) if num_img else 0.0
        r = tp / num_pos if num_pos else 0.0
        f1 = 2 * p * r / (p + r) if p + r > 0 else 0.0
        out[k] = (f1, p, r)
    return out


def f1_at_k(scores: ArrayLike, labels: ArrayLike, k: int, chunk_size: Optional[int] = None) -> Tuple[float, float, float]:
    """Overall F1@K (docs/metrics.md).

    Args:
        scores, labels: (N, C); k: labels taken per image, 1 <= k <= C.
        chunk_size: images per chunk.
    Returns:
        (f1, precision, recall) as Python floats.
    """
    return f1_at_ks(scores, labels, [k], chunk_size=chunk_size)[int(k)]
