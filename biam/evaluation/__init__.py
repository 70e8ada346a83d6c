"""Metrics (AP, F1@K, weighted mAP, the published pooled AP) and the two evaluation protocols.

See docs/metrics.md for the definitions, the tie rule and the published Open Images flaw.
"""

from .metrics import average_precision, f1_at_k, f1_at_ks, openimages_published_ap, weighted_map
from .protocols import (
    EvalResult,
    chance_level,
    evaluate_nus_wide,
    evaluate_openimages,
    evaluate_random_baseline,
    expected_random_ap,
)

__all__ = [
    "EvalResult",
    "average_precision",
    "chance_level",
    "evaluate_nus_wide",
    "evaluate_openimages",
    "evaluate_random_baseline",
    "expected_random_ap",
    "f1_at_k",
    "f1_at_ks",
    "openimages_published_ap",
    "weighted_map",
]
