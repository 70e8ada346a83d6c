"""Ranking metrics of the paper (docs/metrics.md): per-label AP, weighted mAP, pooled AP (F1@K: :mod:`.f1`).

Labels are in {-1, 0, +1}: +1 present, -1 verified absent, 0 unknown (never counted).

Average precision without sorting every column
----------------------------------------------
AP of a label only needs, for each positive ``p``, two counts: the positives scoring at or above
``p`` (``pos_ge``) and the negatives scoring at or above ``p`` (``neg_ge``); then
``AP = mean_p pos_ge / (pos_ge + neg_ge)``. Positives are few, so they are sorted; the many
negatives are only *located* among them. A binary search per negative would cost ``O(N log P)``
with cache-unfriendly access (slower here than sorting), so a grid does most of the work:

* each column's range ``[min positive, max positive]`` is cut into ``G = 8 * P`` equal cells
  (plus one cell below and one above) by the same monotone float formula for every entry:
  one multiply, add, clamp and truncation per entry;
* a negative in a cell holding no positive is above exactly the positives of the lower cells,
  so a histogram of negatives per cell plus a prefix sum gives its contribution;
* only entries sharing a cell with a positive (~10% for spread-out scores) are placed exactly:
  compared with the cell's lowest and highest positive, and, in the rare case that they fall
  strictly between two of a cell's positives, by a vectorised bisection among them.

Every step is elementwise, a histogram, or a search over small arrays, vectorised over the
labels of a chunk of columns. Ties: a negative with the same score as a positive counts as
ranked above it, and tied positives all get the precision at the end of their tie block. This is
scikit-learn's ``average_precision_score`` convention (one threshold per distinct score).
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Optional, Tuple, Union

import numpy as np
import torch

__all__ = [
    "average_precision",
    "weighted_map",
    "openimages_published_ap",
]

ArrayLike = Union[torch.Tensor, np.ndarray]

# Grid cells per positive: more cells put fewer negatives on the exact path, but make the
# per-cell tables bigger; 8 measured best on NUS-WIDE-sized data.
_CELLS_PER_POSITIVE = 8
# Flat cell ids are computed in float32: they must stay exact integers.
_MAX_CELLS = (1 << 24) - 1
# Entries (rows x columns) processed at once when a chunk size is not given: ~2M keeps a
# chunk's temporaries (~20 MB) and cell tables near the CPU caches; measured fastest on 2 cores.
_TARGET_CHUNK_ENTRIES = 1 << 21


# ----------------------------------------------------------------------------------- helpers
def _to_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def _check_pair(scores: ArrayLike, labels: ArrayLike) -> Tuple[torch.Tensor, torch.Tensor]:
    """Validate (N, C) scores and labels; returns tensors on the scores' device."""
    s = _to_tensor(scores, "scores")
    y = _to_tensor(labels, "labels")
    if s.dim() != 2 or y.dim() != 2:
        raise ValueError(f"scores and labels must be 2-d (images, labels); got scores {tuple(s.shape)}, "
                         f"labels {tuple(y.shape)}")
    if s.shape != y.shape:
        raise ValueError(f"scores {tuple(s.shape)} and labels {tuple(y.shape)} differ in shape")
    if s.dtype == torch.bool or s.is_complex():
        raise TypeError(f"scores must be real numbers, got {s.dtype}")
    if y.dtype == torch.bool or y.is_complex():
        raise TypeError(f"labels must hold the numbers -1, 0, +1, got dtype {y.dtype}")
    if y.device != s.device:
        y = y.to(s.device)
    if y.numel():
        if y.is_floating_point():
            bad = ~((y == 1) | (y == 0) | (y == -1))
            if bool(bad.any()):
                raise ValueError(f"labels must be -1, 0 or +1; found {y[bad][0].item()!r}")
        else:
            lo, hi = torch.aminmax(y)
            if int(lo) < -1 or int(hi) > 1:
                raise ValueError(f"labels must be -1, 0 or +1; found values from {int(lo)} to {int(hi)}")
    return s, y


def _work_dtype(s: torch.Tensor) -> torch.dtype:
    # float16/bfloat16 -> float32 is exact; integers -> float64 is exact below 2**53.
    if s.dtype in (torch.float32, torch.float64):
        return s.dtype
    if s.is_floating_point():
        return torch.float32
    return torch.float64


def _check_finite(chunk: torch.Tensor, what: str) -> None:
    if chunk.numel() == 0:
        return
    # One reduction pass: NaN and +-inf both show up in the extremes.
    lo, hi = torch.aminmax(chunk)
    if not (bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))):
        raise ValueError(f"{what} contain NaN or infinite values; a ranking needs finite scores")


def _column_chunks(num_rows: int, num_cols: int, chunk_size: Optional[int]) -> Iterator[Tuple[int, int]]:
    if chunk_size is None:
        chunk_size = max(1, _TARGET_CHUNK_ENTRIES // max(num_rows, 1))
    elif int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be a positive number of label columns, got {chunk_size}")
    chunk_size = int(chunk_size)
    for start in range(0, num_cols, chunk_size):
        yield start, min(num_cols, start + chunk_size)


def _row_chunks(num_rows: int, num_cols: int, chunk_size: Optional[int]) -> Iterator[Tuple[int, int]]:
    if chunk_size is None:
        chunk_size = max(1, _TARGET_CHUNK_ENTRIES // max(num_cols, 1))
    elif int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be a positive number of images, got {chunk_size}")
    chunk_size = int(chunk_size)
    for start in range(0, num_rows, chunk_size):
        yield start, min(num_rows, start + chunk_size)


@contextlib.contextmanager
def _one_thread_per_worker(device: torch.device, num_items: int):
    """Yields a ``map(fn, items)`` that runs chunks on parallel Python threads, each with one
    intra-op thread (CPU only).

    Why: the per-chunk work is many medium-sized ops; splitting each op over cores pays a
    barrier per op, which costs more than the op when other processes share the cores. Whole
    chunks per thread (torch releases the GIL inside ops) keep every core busy without barriers.
    """
    workers = torch.get_num_threads()
    if device.type != "cpu" or workers <= 1 or num_items <= 1:
        yield map
        return
    torch.set_num_threads(1)
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        yield pool.map
    finally:
        pool.shutdown(wait=True)
        torch.set_num_threads(workers)


def _like_input(values: torch.Tensor, template: ArrayLike):
    """float64 result as numpy when the caller passed numpy, else as a tensor."""
    if isinstance(template, np.ndarray):
        return values.detach().cpu().numpy()
    return values


# ----------------------------------------------------------------------- AP core (one chunk)
class _Grid:
    """Cell grid of one chunk of columns.

    Column c owns the flat cells ``base[c] .. base[c] + G_c + 2``: one below its lowest
    positive, ``G_c + 1`` over [lowest, highest positive], one above. ``total`` is the number of
    cells; the id ``total`` is a dump cell for entries that do not count.
    """

    def __init__(self, pcol: torch.Tensor, pval: torch.Tensor, num_cols: int):
        """pcol, pval: (P,) column (int64) and score of each positive, P >= 1."""
        device, dtype = pval.device, pval.dtype
        npos = torch.bincount(pcol, minlength=num_cols)
        big = torch.finfo(dtype).max
        lo = torch.full((num_cols,), big, dtype=dtype, device=device).scatter_reduce(0, pcol, pval, "amin")
        hi = torch.full((num_cols,), -big, dtype=dtype, device=device).scatter_reduce(0, pcol, pval, "amax")
        has = npos > 0
        lo = torch.where(has, lo, torch.zeros_like(lo)).double()
        hi = torch.where(has, hi, torch.zeros_like(hi)).double()
        # Fewer cells per positive when a chunk has very many positives: flat cell ids must stay
        # exact integers in float32 (below 2**24).
        room = _MAX_CELLS - 4 * num_cols
        if room <= 0:
            raise ValueError(f"a chunk of {num_cols} label columns is too wide for the cell grid; "
                             f"pass a smaller chunk_size")
        per_pos = min(float(_CELLS_PER_POSITIVE), room / max(pcol.numel(), 1))
        g = (npos.double() * per_pos).floor().long().clamp(min=1)
        span = hi - lo
        size = g + 3
        base = torch.cumsum(size, 0) - size
        # Any slope >= 0 gives exact counts (the map stays monotone); the slope only decides how
        # many negatives share a cell with a positive. The cap keeps val*a + b finite.
        cap = float(torch.finfo(dtype).max) ** 0.5
        a = torch.where(span > 0, g.double() / span, torch.zeros_like(span)).clamp(max=cap)
        b = (base + 1).double() - lo * a
        ok = torch.isfinite(b.to(dtype))
        self.total = int(size.sum())
        self.a = torch.where(ok, a, torch.zeros_like(a)).to(dtype)
        self.b = torch.where(ok, b, (base + 1).double()).to(dtype)
        self.lower = base.to(dtype)
        self.upper = (base + size - 1).to(dtype)
        self.last = base + size - 1  # (Cc,) int64 last cell of each column
        self.npos = npos

    def cells(self, val: torch.Tensor, col: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Flat cell of each score, int32.

        Args:
            val: (N, Cc) scores of the chunk (columns broadcast, any strides), or (E,) scores
                with ``col`` (E,) their columns.
        Returns:
            Contiguous int32 tensor of ``val``'s shape.

        Monotone in ``val`` within a column, and the same score always gets the same cell: each
        step (multiply, add, clamp, truncation of a non-negative number) is one correctly
        rounded operation. (A fused multiply-add is avoided on purpose: its scalar and vector
        code paths may round differently.)
        """
        if col is None:
            a, b, lo, up = self.a, self.b, self.lower, self.upper
        else:
            a, b, lo, up = self.a[col], self.b[col], self.lower[col], self.upper[col]
        t = val * a
        t += b
        torch.clamp(t, min=lo, max=up, out=t)
        return t.to(torch.int32)


def _sorted_positives(pidx: torch.Tensor, pcol: torch.Tensor, pval: torch.Tensor, npos: torch.Tensor):
    """Positives ordered by (column, score), with a batched sort of short rows.

    Args:
        pidx, pcol, pval: (P,) entry index, column and score of each positive.
        npos: (Cc,) positives per column.
    Returns:
        (pidx, pcol, pval) reordered.
    """
    device = pval.device
    num_cols = npos.numel()
    by_col = torch.sort(pcol, stable=True).indices
    pidx, pcol, pval = pidx[by_col], pcol[by_col], pval[by_col]
    col_start = torch.cumsum(npos, 0) - npos
    slot = torch.arange(pcol.numel(), device=device) - col_start[pcol]
    width = int(npos.max())
    # Padding is +inf: it sorts after every (finite) score.
    pad_val = torch.full((num_cols, width), float("inf"), dtype=pval.dtype, device=device)
    pad_val[pcol, slot] = pval
    pad_idx = torch.zeros((num_cols, width), dtype=torch.int64, device=device)
    pad_idx[pcol, slot] = pidx
    sorted_val, perm = torch.sort(pad_val, dim=1)
    valid = torch.arange(width, device=device)[None, :] < npos[:, None]
    return pad_idx.gather(1, perm)[valid], pcol, sorted_val[valid]


def _ap_core(
    grid: _Grid,
    pidx: torch.Tensor,
    pcol: torch.Tensor,
    pval: torch.Tensor,
    cell: torch.Tensor,
    value_at: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """AP per column of a chunk.

    Args:
        grid: the chunk's grid (built from these positives).
        pidx, pcol, pval: (P,) entry index (into ``cell``), column and score of each positive.
        cell: (E,) int32 cell of every entry: all positives, all negatives, and ``grid.total``
            for entries that do not count.
        value_at: given (M,) int64 entry indices, those entries' scores (M,).
    Returns:
        (Cc,) float64 AP; 0 for a column without positives.
    """
    device = pval.device
    total = grid.total
    num_cols = grid.npos.numel()
    num_pos = pval.numel()
    pidx, p_col, p_val = _sorted_positives(pidx, pcol, pval, grid.npos)
    # Cells are monotone in the score within a column, so this order is also sorted by cell.
    p_cell = cell.index_select(0, pidx).long()
    pos_per_cell = torch.bincount(p_cell, minlength=total + 1)
    neg_per_cell = torch.bincount(cell, minlength=total + 1) - pos_per_cell
    # Negatives in strictly higher cells of the positive's own column.
    cum = torch.cumsum(neg_per_cell[:total], 0)
    neg_above = cum[grid.last[p_col]] - cum[p_cell]

    occ_cells, occ_count = torch.unique_consecutive(p_cell, return_counts=True)
    k_occ = occ_cells.numel()
    occ_start = torch.cumsum(occ_count, 0) - occ_count
    occ_min = p_val[occ_start]
    occ_max = p_val[occ_start + occ_count - 1]
    ordinal = torch.full((total + 1,), -1, dtype=torch.int64, device=device)
    ordinal[occ_cells] = torch.arange(k_occ, device=device)

    def bins_of(k: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Histogram bin of entries with score x in occupied cell ordinal k: the cell's first
        positive index + the cell's positives scoring <= x + k, so that every occupied cell
        owns its own n_f + 1 bins."""
        start = occ_start.index_select(0, k)
        cnt = occ_count.index_select(0, k)
        local = torch.where(x >= occ_max.index_select(0, k), cnt, torch.zeros_like(cnt))
        # Strictly inside [min, max) of a cell with several distinct positives (rare):
        # bisection over the cell's sorted positives, all such entries at once.
        inside = ((x >= occ_min.index_select(0, k)) & (x < occ_max.index_select(0, k))).nonzero().squeeze(1)
        if inside.numel():
            xi = x[inside]
            lo = start[inside]
            hi = lo + cnt[inside]
            for _ in range(int(occ_count.max()).bit_length()):
                active = lo < hi
                mid = (lo + hi) // 2
                right = p_val[mid.clamp(max=num_pos - 1)] <= xi
                lo = torch.where(right & active, mid + 1, lo)
                hi = torch.where(~right & active, mid, hi)
            local[inside] = lo - start[inside]
        return start + local + k

    # Every entry sharing a cell with a positive, positives included (their own bins are
    # subtracted below, which is cheaper than reading the labels of all shared entries).
    shared = (pos_per_cell > 0).index_select(0, cell).nonzero().squeeze(1)
    k = ordinal.index_select(0, cell.index_select(0, shared).long())
    hist = torch.bincount(bins_of(k, value_at(shared)), minlength=num_pos + k_occ)
    k_p = ordinal.index_select(0, p_cell)
    hist -= torch.bincount(bins_of(k_p, p_val), minlength=num_pos + k_occ)
    csum = torch.cumsum(hist, 0)
    idx = torch.arange(num_pos, device=device)
    last_bin = occ_start[k_p] + occ_count[k_p] + k_p
    neg_same_cell = csum[last_bin] - csum[idx + k_p]

    # Positives at or above p: the column's positives from the first one tied with p.
    new_run = torch.ones(num_pos, dtype=torch.bool, device=device)
    new_run[1:] = (p_val[1:] != p_val[:-1]) | (p_col[1:] != p_col[:-1])
    run_start = torch.cummax(torch.where(new_run, idx, torch.zeros_like(idx)), 0).values
    pos_ge = torch.cumsum(grid.npos, 0)[p_col] - run_start
    neg_ge = neg_above + neg_same_cell
    prec = pos_ge.double() / (pos_ge + neg_ge).double()
    ap = torch.zeros(num_cols, dtype=torch.float64, device=device).index_add_(0, p_col, prec)
    return ap / grid.npos.clamp(min=1).double()


def _ap_entries(col: torch.Tensor, val: torch.Tensor, pos: torch.Tensor, num_cols: int) -> torch.Tensor:
    """AP of every column from a list of counted entries.

    Args:
        col: (E,) int64 column of each entry in [0, num_cols). val: (E,) finite float32/64
            scores. pos: (E,) bool, True for +1, False for -1.
    Returns:
        (num_cols,) float64; 0 for a column without a positive.
    """
    pidx = pos.nonzero().squeeze(1)
    if pidx.numel() == 0:
        return torch.zeros(num_cols, dtype=torch.float64, device=val.device)
    pcol, pval = col[pidx], val[pidx]
    grid = _Grid(pcol, pval, num_cols)
    cell = grid.cells(val, col)
    return _ap_core(grid, pidx, pcol, pval, cell, value_at=lambda i: val.index_select(0, i))


def _ap_chunk(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """AP of the columns of one (N, Cc) chunk; entries labelled 0 are ignored.

    Dense path when most entries count (NUS-WIDE), entry-list path when few do (Open Images).

    Args:
        s: (N, Cc) finite float32/float64 scores, contiguous. y: (N, Cc) labels, contiguous.
    Returns:
        (Cc,) float64.
    """
    num_cols = s.shape[1]
    counted = int(torch.count_nonzero(y))
    if counted * 4 < y.numel():
        r, c = y.nonzero(as_tuple=True)
        return _ap_entries(c, s[r, c], y[r, c] == 1, num_cols)
    y_flat = y.view(-1)
    pidx = (y_flat == 1).nonzero().squeeze(1)
    if pidx.numel() == 0:
        return torch.zeros(num_cols, dtype=torch.float64, device=s.device)
    s_flat = s.reshape(-1)

    def value_at(i: torch.Tensor) -> torch.Tensor:
        return s_flat.index_select(0, i)

    pcol = pidx % num_cols
    pval = value_at(pidx)
    grid = _Grid(pcol, pval, num_cols)
    cell = grid.cells(s).view(-1)
    if counted < y.numel():
        cell.masked_fill_(y_flat == 0, grid.total)
    return _ap_core(grid, pidx, pcol, pval, cell, value_at)


# -------------------------------------------------------------------------------- public API
def average_precision(
    scores: ArrayLike,
    labels: ArrayLike,
    chunk_size: Optional[int] = None,
    row_mask: Optional[ArrayLike] = None,
):
    """Per-label average precision (docs/metrics.md), no interpolation.

    Only entries labelled +1 or -1 count; entries labelled 0 are ignored. Ties: a -1 entry with
    the same score as a +1 entry ranks above it, and tied +1 entries all get the precision at
    the end of their tie block (scikit-learn's convention).

    Args:
        scores: (N, C) real scores, torch (any device) or numpy; float16/bfloat16 are widened to
            float32, integers to float64. Must be finite.
        labels: (N, C) in {-1, 0, +1}, any integer or float dtype.
        chunk_size: label columns processed at once (memory ~ N * chunk_size * 20 bytes);
            default: about 2M entries per chunk.
        row_mask: optional (N,) bool; rows where it is False are ignored.
    Returns:
        (C,) float64 AP per label, numpy if ``scores`` was numpy, else a tensor on the scores'
        device. A label without a counted positive gets 0.
    """
    s, y = _check_pair(scores, labels)
    rm = None
    if row_mask is not None:
        rm = _to_tensor(row_mask, "row_mask").to(s.device)
        if rm.dtype != torch.bool or rm.shape != (s.shape[0],):
            raise ValueError(f"row_mask must be a bool vector of the {s.shape[0]} rows, got {rm.dtype} "
                             f"{tuple(rm.shape)}")
    n, c = s.shape
    dtype = _work_dtype(s)
    out = torch.zeros(c, dtype=torch.float64, device=s.device)

    def run(bounds: Tuple[int, int]) -> None:
        c0, c1 = bounds
        # Contiguous copies: later passes run faster, and entries are addressed by flat index.
        chunk = s[:, c0:c1].to(dtype=dtype, memory_format=torch.contiguous_format, copy=True)
        lab = y[:, c0:c1].contiguous()
        if rm is not None:
            lab = lab * rm[:, None].to(lab.dtype)
        _check_finite(chunk, f"scores (label columns {c0}..{c1 - 1})")
        out[c0:c1] = _ap_chunk(chunk, lab)

    chunks = list(_column_chunks(n, c, chunk_size))
    with _one_thread_per_worker(s.device, len(chunks)) as pmap:
        # list() drains the iterator so that a worker's exception is raised here.
        list(pmap(run, chunks))
    return _like_input(out, scores)


def weighted_map(ap: ArrayLike, labels: ArrayLike, row_mask: Optional[ArrayLike] = None) -> float:
    """Mean of per-label AP weighted by each label's number of +1 images.

    Args:
        ap: (C,) per-label AP. labels: (N, C) in {-1, 0, +1}.
        row_mask: optional (N,) bool; only these rows count positives.
    Returns:
        float; 0.0 when no label has a positive.
    """
    a = _to_tensor(ap, "ap").double()
    y = _to_tensor(labels, "labels")
    if a.dim() != 1 or y.dim() != 2 or a.shape[0] != y.shape[1]:
        raise ValueError(f"ap must be (C,) and labels (N, C); got ap {tuple(a.shape)}, labels {tuple(y.shape)}")
    pos = y == 1
    if row_mask is not None:
        pos = pos & _to_tensor(row_mask, "row_mask").to(y.device)[:, None]
    w = pos.sum(0).to(device=a.device, dtype=torch.float64)
    total = float(w.sum())
    if total == 0:
        return 0.0
    return float((a * w).sum() / total)


def openimages_published_ap(
    scores: ArrayLike,
    labels: ArrayLike,
    max_pooled_entries: int = 1 << 24,
    row_mask: Optional[ArrayLike] = None,
):
    """Per-label value of the published (flawed) Open Images AP function (docs/metrics.md).

    For label c: take the rows annotated (non-zero) for c, pool *every* non-zero entry of those
    rows (all labels), rank the pool by score and return its AP. Ties as in
    ``average_precision``.

    Cost: the pool of label c has sum over its annotated rows of the row's annotated entries, so
    the total work is sum over rows of (annotated entries per row)^2; labels are processed in
    chunks of at most ``max_pooled_entries`` pooled entries (a single label larger than that is
    processed alone).

    Args:
        scores, labels: (N, C) as in ``average_precision``.
        max_pooled_entries: memory bound of one chunk (~40 bytes per pooled entry).
        row_mask: optional (N,) bool; rows where it is False are ignored.
    Returns:
        (C,) float64, numpy if ``scores`` was numpy, else a tensor on the scores' device.
    """
    s, y = _check_pair(scores, labels)
    n, c = s.shape
    device = s.device
    dtype = _work_dtype(s)
    annotated = y != 0
    if row_mask is not None:
        rm = _to_tensor(row_mask, "row_mask").to(device)
        if rm.dtype != torch.bool or rm.shape != (n,):
            raise ValueError(f"row_mask must be a bool vector of the {n} rows, got {rm.dtype} {tuple(rm.shape)}")
        annotated &= rm[:, None]
    # Row-major list of annotated entries (CSR): row r owns entries row_ptr[r]:row_ptr[r+1].
    er, ec = annotated.nonzero(as_tuple=True)
    e_val = s[er, ec].to(dtype)
    _check_finite(e_val, "scores of annotated entries")
    e_pos = y[er, ec] == 1
    per_row = torch.bincount(er, minlength=n)
    row_ptr = torch.cumsum(per_row, 0) - per_row
    # Pool size of each label = sum of the row sizes of its annotated rows (column-major order).
    # The same entries sorted by label (stable: rows stay in order), from the row-major list:
    # nonzero() of the transposed matrix would walk all N x C entries out of memory order
    # (8.8 s against 0.2 s at Open Images size on 2 cores).
    by_label = torch.argsort(ec, stable=True)
    cr, cc = ec[by_label], er[by_label]  # cr = label, cc = row, sorted by label then row
    pool_of_pair = per_row[cc]
    pool_size = torch.zeros(c, dtype=torch.int64, device=device).index_add_(0, cr, pool_of_pair)
    out = torch.zeros(c, dtype=torch.float64, device=device)
    if cr.numel() == 0:
        return _like_input(out, scores)
    pair_ptr = torch.cumsum(torch.bincount(cr, minlength=c), 0).tolist()
    sizes = pool_size.tolist()
    # Greedy split of the labels into chunks of bounded pooled size (a loop over chunks only).
    bounds, start, acc = [], 0, 0
    for j, sz in enumerate(sizes):
        if acc and acc + sz > max_pooled_entries:
            bounds.append((start, j))
            start, acc = j, 0
        acc += sz
    bounds.append((start, c))
    for c0, c1 in bounds:
        p0 = pair_ptr[c0 - 1] if c0 else 0
        p1 = pair_ptr[c1 - 1]
        if p1 == p0:
            continue
        lab, row = cr[p0:p1] - c0, cc[p0:p1]
        lens = per_row[row]
        # Expand each (label, row) pair into the row's annotated entries.
        pair_of = torch.repeat_interleave(torch.arange(lab.numel(), device=device), lens)
        first = torch.cumsum(lens, 0) - lens
        offset = torch.arange(pair_of.numel(), device=device) - first[pair_of]
        entry = row_ptr[row][pair_of] + offset
        out[c0:c1] = _ap_entries(lab[pair_of], e_val[entry], e_pos[entry], c1 - c0)
    return _like_input(out, scores)
