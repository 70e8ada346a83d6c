"""Metrics (AP, F1@K, weighted mAP, the published pooled AP) and the evaluation protocols
(:class:`Protocol`, applied by :func:`evaluate`; each dataset's own is in :mod:`biam.datasets`).

See docs/metrics.md for the definitions, the tie rule and the published Open Images flaw.
"""

from .f1 import f1_at_k, f1_at_ks
from .metrics import average_precision, openimages_published_ap, weighted_map
from .protocols import (
    EvalResult,
    Protocol,
    chance_level,
    evaluate,
    evaluate_random_baseline,
    expected_random_ap,
)

__all__ = [
    "EvalResult",
    "Protocol",
    "average_precision",
    "chance_level",
    "evaluate",
    "evaluate_random_baseline",
    "expected_random_ap",
    "f1_at_k",
    "f1_at_ks",
    "openimages_published_ap",
    "weighted_map",
]
