"""Evaluation protocols (docs/metrics.md): a :class:`Protocol` says how a dataset is scored.

A dataset's protocol (held by its entry in :mod:`biam.datasets`) fixes the K of P/R/F1@K,
which test images count (all, or per task those with a positive) and which mAP variants are
reported. :func:`evaluate` applies one; ``evaluate_nus_wide`` and ``evaluate_openimages`` of
:mod:`biam.datasets.nus_wide` and :mod:`biam.datasets.openimages` are the paper's two, with
their published defaults.

All take the full score and label matrices over the GZSL label list, seen columns first, then
the evaluated unseen columns: (N, S + U), torch (CPU or CUDA; computed where the scores are) or
numpy. ZSL evaluates the U unseen columns alone (top-K among them), GZSL all S + U columns, and
SEEN (a protocol with the task "seen", as Open Images) the S seen columns alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .f1 import f1_at_ks
from .metrics import (
    ArrayLike,
    _check_pair,
    _row_chunks,
    average_precision,
    openimages_published_ap,
)

__all__ = [
    "EvalResult",
    "Protocol",
    "chance_level",
    "evaluate",
    "evaluate_random_baseline",
    "expected_random_ap",
]

# Every task a protocol may report, in the order of the tables (the original's Open Images
# evaluation prints SEEN, ZSL, GZSL).
TASKS = ("seen", "zsl", "gzsl")
ROW_RULES = ("all", "with_positive")


@dataclass(frozen=True)
class Protocol:
    """How a dataset's test split is scored (one per dataset, see :mod:`biam.datasets`).

    Attributes:
        name: the name results carry (``EvalResult.dataset``), the dataset's registry name.
        ks: the K of the P/R/F1@K columns, for ZSL and GZSL.
        num_seen: S, the default seen-column count when the caller gives none (None: required).
        rows: which test images count, per task: "all" (NUS-WIDE: every image; a label without
            a positive has AP 0) or "with_positive" (Open Images: the images with at least one
            +1 among the task's columns; labels are mostly unannotated there).
        annotated_metrics: also report "mAP_annotated" (mean over the columns with an annotated
            image), "wmAP" (AP weighted by +1 images) and "num_ap_labels"; a column without an
            annotated image then counts 0 in "mAP" and is NaN in ``per_label_ap``.
        pooled_ap: the original's evaluation of this dataset used its pooled AP
            (``openimages_published_ap``); ``EVAL.PUBLISHED_OPENIMAGES_AP`` then reports it as
            "published_pooled_mAP" and, weighted by each column's +1 images,
            "published_weighted_pooled_mAP".
        validation_ks: the K of the validation metrics on the seen labels (model selection;
            ``EVAL.SELECT_METRIC`` names one of them).
        tasks: the tasks reported, among "seen" (the S seen columns), "zsl" and "gzsl"; "zsl"
            and "gzsl" always.
        pooled_mean_annotated: tasks whose "published_pooled_mAP" is the mean over the task's
            columns annotated in some kept image, as the original averages SEEN and GZSL on Open
            Images; the other tasks average over all their columns, an unannotated one counting
            0 (the original's ZSL).
        f1_annotated: tasks whose P/R/F1@K take the top K among the task's columns annotated in
            some kept image only, as the original's SEEN F1 on Open Images does.
    """

    name: str
    ks: Tuple[int, ...]
    num_seen: Optional[int] = None
    rows: str = "all"
    annotated_metrics: bool = False
    pooled_ap: bool = False
    validation_ks: Tuple[int, ...] = (3, 5)
    tasks: Tuple[str, ...] = ("zsl", "gzsl")
    pooled_mean_annotated: Tuple[str, ...] = ()
    f1_annotated: Tuple[str, ...] = ()

    def __post_init__(self):
        if self.rows not in ROW_RULES:
            raise ValueError(f"Protocol {self.name!r}: rows={self.rows!r}; allowed: {', '.join(ROW_RULES)}")
        if not self.ks or not self.validation_ks:
            raise ValueError(f"Protocol {self.name!r}: ks and validation_ks must not be empty")
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not {"zsl", "gzsl"} <= set(self.tasks):
            raise ValueError(f"Protocol {self.name!r}: tasks={self.tasks!r}; allowed: {', '.join(TASKS)}, "
                             f"with 'zsl' and 'gzsl' always")
        for key in ("pooled_mean_annotated", "f1_annotated"):
            tasks = getattr(self, key)
            if any(t not in self.tasks for t in tasks):
                raise ValueError(f"Protocol {self.name!r}: {key}={tasks!r} names a task not in tasks={self.tasks!r}")
            if tasks and not self.annotated_metrics:
                raise ValueError(f"Protocol {self.name!r}: {key} needs annotated_metrics=True")

# Column headers of the table for the metric keys that are not per-K.
_EXTRA_COLUMNS = (("mAP", "mAP"), ("mAP_annotated", "mAP annot."), ("wmAP", "wmAP"),
                  ("published_pooled_mAP", "pub.pooled mAP"),
                  ("published_weighted_pooled_mAP", "pub.weighted mAP"))


@dataclass
class EvalResult:
    """Metrics of one protocol run.

    Attributes:
        dataset: the protocol's name (the registered dataset, e.g. "nus_wide", "openimages").
        ks: the K of the F1/P/R columns.
        metrics: {"zsl": {...}, "gzsl": {...}} (and "seen" for a protocol with that task, as
            Open Images); per task "P@K", "R@K", "F1@K" for each K, "mAP" (and for a protocol
            with annotated metrics, as Open Images, "mAP_annotated", "wmAP", optionally
            "published_pooled_mAP" and "published_weighted_pooled_mAP") as fractions in [0, 1],
            plus counts "num_images", "num_labels" (columns evaluated) and for Open Images
            "num_ap_labels" (columns with an annotated image).
        per_label_ap: per task a (columns,) float64 numpy array of per-label AP; NaN for an
            annotated-metrics (Open Images) column without an annotated image (it counts 0 in "mAP").
        chance: optionally the same protocol on random scores (set by the caller).
    """

    dataset: str
    ks: Tuple[int, ...]
    metrics: Dict[str, Dict[str, float]]
    per_label_ap: Dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    chance: Optional["EvalResult"] = None

    def to_dict(self) -> Dict[str, Dict[str, float]]:
        """{task: {metric: value}} ("zsl", "gzsl", maybe "seen") with plain Python numbers (JSON-ready)."""
        return {task: dict(values) for task, values in self.metrics.items()}

    def format_table(self, chance: Optional["EvalResult"] = None) -> str:
        """The paper's table: rows (SEEN,) ZSL and GZSL, columns P/R/F1 at each K and mAP, in percent.

        Args:
            chance: an ``EvalResult`` of the same protocol; adds "ZSL chance" / "GZSL chance" rows
                (for the tasks of this result).
        Returns:
            A multi-line string.
        """
        keys: List[Tuple[str, str]] = []
        for k in self.ks:
            keys += [(f"P@{k}", f"P@{k}"), (f"R@{k}", f"R@{k}"), (f"F1@{k}", f"F1@{k}")]
        present = set().union(*(m.keys() for m in self.metrics.values())) if self.metrics else set()
        keys += [kv for kv in _EXTRA_COLUMNS if kv[0] in present and (kv[0] != "mAP_annotated" or self._annotated_differs())]
        rows: List[Tuple[str, Dict[str, float]]] = []
        for task in TASKS:
            if task in self.metrics:
                rows.append((task.upper(), self.metrics[task]))
        if chance is not None:
            for task in TASKS:
                if task in chance.metrics and task in self.metrics:
                    rows.append((f"{task.upper()} chance", chance.metrics[task]))
        label_w = max(len(r[0]) for r in rows) if rows else 4
        widths = [max(6, len(h)) for _, h in keys]
        lines = ["  ".join([" " * label_w] + [h.rjust(w) for (_, h), w in zip(keys, widths)])]
        for name, values in rows:
            cells = []
            for (key, _), w in zip(keys, widths):
                v = values.get(key)
                cells.append(("-" if v is None or math.isnan(v) else f"{100 * v:.2f}").rjust(w))
            lines.append("  ".join([name.ljust(label_w)] + cells))
        counts = []
        for task in TASKS:
            m = self.metrics.get(task, {})
            if "num_images" in m:
                extra = f", {m['num_ap_labels']} of them annotated" if "num_ap_labels" in m else ""
                counts.append(f"{task.upper()}: {m['num_images']} images, {m['num_labels']} labels{extra}")
        if counts:
            lines.append("(" + "; ".join(counts) + "; values in %)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format_table()

    def _annotated_differs(self) -> bool:
        # The per-annotated-label mAP is shown only where it differs from the mAP: when some
        # column of a task has no annotated image.
        return any(m.get("num_ap_labels", m.get("num_labels")) != m.get("num_labels") for m in self.metrics.values())


# ----------------------------------------------------------------------------------- helpers
def _split(num_cols: int, num_seen: int, tasks: Sequence[str] = ("zsl", "gzsl")) -> Dict[str, slice]:
    """The columns of each task, in table order."""
    if not 0 <= int(num_seen) < num_cols:
        raise ValueError(f"num_seen={num_seen} must leave at least one unseen column among the {num_cols} "
                         f"label columns (seen columns first, then unseen)")
    if "seen" in tasks and int(num_seen) == 0:
        raise ValueError("the SEEN task needs at least one seen column; num_seen=0")
    cols = {"seen": slice(0, int(num_seen)), "zsl": slice(int(num_seen), num_cols), "gzsl": slice(0, num_cols)}
    return {task: cols[task] for task in TASKS if task in tasks}


def _check_ks(ks: Sequence[int], num_cols: int, task: str) -> Tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    for k in ks:
        if k < 1 or k > num_cols:
            raise ValueError(f"K={k} is not possible for {task}: it has {num_cols} labels")
    return ks


def _f1_metrics(f1s: Dict[int, Tuple[float, float, float]]) -> Dict[str, float]:
    out: Dict[str, float] = {}
    for k, (f1, p, r) in f1s.items():
        out.update({f"P@{k}": p, f"R@{k}": r, f"F1@{k}": f1})
    return out


def _column_counts(y: torch.Tensor, row_mask: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per column: annotated (non-zero) entries and +1 entries in the kept rows.

    Args:
        y: (N, C) labels. row_mask: (N,) bool or None.
    Returns:
        two (C,) int64 tensors.
    """
    n, c = y.shape
    annotated = torch.zeros(c, dtype=torch.int64, device=y.device)
    positives = torch.zeros(c, dtype=torch.int64, device=y.device)
    # Blocks of whole rows, and counting through the list of non-zero entries: labels are
    # mostly 0 on Open Images, and a column reduction over int8 is far slower than this here.
    for r0, r1 in _row_chunks(n, c, None):
        lab = y[r0:r1]
        row, col = lab.nonzero(as_tuple=True)
        if row_mask is not None:
            keep = row_mask[r0:r1][row]
            row, col = row[keep], col[keep]
        annotated += torch.bincount(col, minlength=c)
        positives += torch.bincount(col[lab[row, col] == 1], minlength=c)
    return annotated, positives


def _rows_with_positive(y: torch.Tensor) -> torch.Tensor:
    """(N,) bool: images with at least one +1 among the columns of ``y`` (N, C)."""
    keep = torch.zeros(y.shape[0], dtype=torch.bool, device=y.device)
    for r0, r1 in _row_chunks(y.shape[0], y.shape[1], None):
        keep[r0:r1] = (y[r0:r1] == 1).any(1)
    return keep


# --------------------------------------------------------------------------------- protocols
def evaluate(
    scores: ArrayLike,
    labels: ArrayLike,
    protocol: Protocol,
    num_seen: Optional[int] = None,
    ks: Optional[Sequence[int]] = None,
    published_ap: bool = False,
) -> EvalResult:
    """Apply ``protocol`` to one score matrix.

    Args:
        scores: (N, S + U) scores, seen columns first. labels: (N, S + U) in {-1, 0, +1}.
        protocol: the dataset's :class:`Protocol`.
        num_seen: S (the protocol's ``num_seen`` when None).
        ks: the K of F1@K (the protocol's ``ks`` when None).
        published_ap: also report "published_pooled_mAP" and "published_weighted_pooled_mAP"
            (the original's pooled AP; only for a protocol with ``pooled_ap``, else ignored).
    Returns:
        EvalResult with tasks "zsl" (the U unseen columns), "gzsl" (all columns) and, for a
        protocol with the task, "seen" (the S seen columns).
    """
    num_seen, ks = _protocol_defaults(protocol, num_seen, ks)
    if protocol.rows == "all" and not protocol.annotated_metrics:
        return _evaluate_all_rows(scores, labels, num_seen, ks, protocol)
    return _evaluate_kept_rows(scores, labels, num_seen, ks, protocol, published_ap and protocol.pooled_ap)






def _evaluate_all_rows(scores: ArrayLike, labels: ArrayLike, num_seen: int, ks: Tuple[int, ...],
                       protocol: Protocol) -> EvalResult:
    """Every image counts; mAP the plain mean over the task's columns (rows "all")."""
    s, y = _check_pair(scores, labels)
    n, c = s.shape
    cols = _split(c, num_seen, protocol.tasks)
    for task, sl in cols.items():
        _check_ks(ks, sl.stop - sl.start, task.upper())
    # A label's AP does not depend on the other columns: one pass serves ZSL and GZSL.
    ap = average_precision(s, y).double().cpu().numpy()
    metrics, per_label = {}, {}
    for task, sl in cols.items():
        m = _f1_metrics(f1_at_ks(s[:, sl], y[:, sl], ks))
        m["mAP"] = float(ap[sl].mean())
        m["num_images"] = n
        m["num_labels"] = sl.stop - sl.start
        metrics[task] = m
        per_label[task] = ap[sl].copy()
    return EvalResult(protocol.name, ks, metrics, per_label)


def _evaluate_kept_rows(scores: ArrayLike, labels: ArrayLike, num_seen: int, ks: Tuple[int, ...],
                        protocol: Protocol, published_ap: bool) -> EvalResult:
    """Per task the protocol's rows; annotated-column metrics (see :class:`Protocol`)."""
    s, y = _check_pair(scores, labels)
    n, c = s.shape
    cols = _split(c, num_seen, protocol.tasks)
    for task, sl in cols.items():
        _check_ks(ks, sl.stop - sl.start, task.upper())
    metrics, per_label = {}, {}
    for task, sl in cols.items():
        ts, ty = s[:, sl], y[:, sl]
        rows = _rows_with_positive(ty) if protocol.rows == "with_positive" else torch.ones(
            n, dtype=torch.bool, device=ty.device)
        annotated, positives = _column_counts(ty, rows)
        kept = annotated > 0
        num_kept = int(kept.sum())
        ap = average_precision(ts, ty, row_mask=rows).double()
        col_mask = None
        if task in protocol.f1_annotated:
            for k in ks:
                if k > num_kept:
                    raise ValueError(f"K={k} is not possible for {task.upper()}: its top K is taken among its "
                                     f"{num_kept} annotated columns")
            col_mask = kept
        m = _f1_metrics(f1_at_ks(ts, ty, ks, row_mask=rows, col_mask=col_mask))
        w = positives.double()
        width = sl.stop - sl.start
        m["mAP"] = float(torch.where(kept, ap, torch.zeros_like(ap)).sum()) / width
        m["mAP_annotated"] = float(ap[kept].mean()) if num_kept else float("nan")
        m["wmAP"] = float((ap * w).sum() / w.sum()) if float(w.sum()) > 0 else float("nan")
        if published_ap:
            # A column without an annotation in the kept rows has pooled AP 0 (its pool is empty).
            pooled = openimages_published_ap(ts, ty, row_mask=rows).double()
            pooled_sum = float(torch.where(kept, pooled, torch.zeros_like(pooled)).sum())
            if task in protocol.pooled_mean_annotated:
                m["published_pooled_mAP"] = pooled_sum / num_kept if num_kept else float("nan")
            else:
                m["published_pooled_mAP"] = pooled_sum / width
            m["published_weighted_pooled_mAP"] = (float((pooled * w).sum() / w.sum()) if float(w.sum()) > 0
                                                  else float("nan"))
        m["num_images"] = int(rows.sum())
        m["num_labels"] = sl.stop - sl.start
        m["num_ap_labels"] = num_kept
        metrics[task] = m
        per = ap.cpu().numpy().copy()
        per[~kept.cpu().numpy()] = np.nan
        per_label[task] = per
    return EvalResult(protocol.name, ks, metrics, per_label)


# ------------------------------------------------------------------------------ chance level
def expected_random_ap(num_pos, num_counted):
    """Expected AP of a uniformly random ranking (no ties).

    E[AP] = (1/n) * (H_n + (P - 1)/(n - 1) * (n - H_n)), H_n the n-th harmonic number: each
    position i holds a positive with probability P/n, and then the expected precision there is
    (1 + (i - 1)(P - 1)/(n - 1)) / i.

    Args:
        num_pos: P per label, array-like of ints. num_counted: n per label (+1 and -1 entries).
    Returns:
        float64 numpy array; 0 where P = 0.
    """
    p = np.asarray(num_pos, dtype=np.float64)
    n = np.asarray(num_counted, dtype=np.float64)
    if np.any(p > n) or np.any(p < 0):
        raise ValueError("each label needs 0 <= positives <= counted entries")
    # Exact harmonic numbers H_0..H_max by a cumulative sum (n is at most the image count).
    n_max = int(n.max()) if n.size else 0
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n_max + 1))])
    h = harmonic[n.astype(np.int64)]
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where(n > 1, (p - 1) / (n - 1), 0.0)
        e = np.where(n > 0, (h + slope * (n - h)) / np.maximum(n, 1), 0.0)
    return np.where(p > 0, e, 0.0)


def chance_level(
    labels: ArrayLike,
    protocol: Protocol,
    num_seen: Optional[int] = None,
    ks: Optional[Sequence[int]] = None,
) -> EvalResult:
    """Expected metrics of uniformly random scores under a protocol, computed from the labels.

    mAP/wmAP use ``expected_random_ap``; F1@K uses the expected true positives: an image with
    q positives among C columns gets K*q/C of them in a random top-K, so P = (+1 entries) /
    (images x C) and R = K / C (F1 is formed from these expectations).

    Args:
        labels: (N, S + U) in {-1, 0, +1}.
        protocol: the dataset's protocol (``biam.datasets.get_dataset(name).protocol``).
        num_seen, ks: as in the protocol (its defaults when None).
    Returns:
        EvalResult (no per-label AP).
    """
    num_seen, ks = _protocol_defaults(protocol, num_seen, ks)
    y = labels if isinstance(labels, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(labels))
    if y.dim() != 2:
        raise ValueError(f"labels must be 2-d (images, labels), got shape {tuple(y.shape)}")
    cols = _split(y.shape[1], num_seen, protocol.tasks)
    metrics = {}
    for task, sl in cols.items():
        width = sl.stop - sl.start
        _check_ks(ks, width, task.upper())
        ty = y[:, sl]
        rows = _rows_with_positive(ty) if protocol.rows == "with_positive" else None
        annotated, positives = _column_counts(ty, rows)
        num_img = ty.shape[0] if rows is None else int(rows.sum())
        total_pos = int(positives.sum())
        e_ap = expected_random_ap(positives.cpu().numpy(), annotated.cpu().numpy())
        # The columns a random top K is drawn from (the annotated ones for an f1_annotated task).
        f1_width = int((annotated > 0).sum()) if task in protocol.f1_annotated else width
        m: Dict[str, float] = {}
        for k in ks:
            p = total_pos / (num_img * f1_width) if num_img and f1_width else 0.0
            r = k / f1_width if total_pos else 0.0
            m.update({f"P@{k}": p, f"R@{k}": r, f"F1@{k}": 2 * p * r / (p + r) if p + r > 0 else 0.0})
        if not protocol.annotated_metrics:
            m["mAP"] = float(e_ap.mean())
        else:
            kept = annotated.cpu().numpy() > 0
            w = positives.cpu().numpy().astype(np.float64)
            m["mAP"] = float(np.where(kept, e_ap, 0.0).sum()) / width
            m["mAP_annotated"] = float(e_ap[kept].mean()) if kept.any() else float("nan")
            m["wmAP"] = float((e_ap * w).sum() / w.sum()) if w.sum() > 0 else float("nan")
            m["num_ap_labels"] = int(kept.sum())
        m["num_images"] = num_img
        m["num_labels"] = width
        metrics[task] = m
    return EvalResult(protocol.name, ks, metrics)


def evaluate_random_baseline(
    labels: ArrayLike,
    protocol: Protocol,
    seed: int = 0,
    num_seen: Optional[int] = None,
    ks: Optional[Sequence[int]] = None,
    published_ap: bool = False,
) -> EvalResult:
    """The protocol applied to seeded uniform random scores of the labels' shape.

    Args:
        labels: (N, S + U) in {-1, 0, +1}; the scores are made on its device.
        protocol: the dataset's protocol. seed: random seed (CPU generator, so the result
            does not depend on the device).
        num_seen, ks, published_ap: as in :func:`evaluate`.
    Returns:
        EvalResult.
    """
    y = labels if isinstance(labels, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(labels))
    gen = torch.Generator().manual_seed(int(seed))
    scores = torch.rand(tuple(y.shape), generator=gen).to(y.device)
    return evaluate(scores, y, protocol, num_seen=num_seen, ks=ks, published_ap=published_ap)






def _protocol_defaults(protocol: Protocol, num_seen: Optional[int], ks: Optional[Sequence[int]]):
    if num_seen is None:
        if protocol.num_seen is None:
            raise ValueError(f"the {protocol.name} protocol has no fixed seen-label count: give num_seen")
        num_seen = protocol.num_seen
    if ks is None:
        ks = protocol.ks
    return int(num_seen), tuple(int(k) for k in ks)
