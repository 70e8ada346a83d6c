"""Metrics (AP, F1@K, weighted mAP, the published pooled AP) and the two evaluation protocols."""

from .metrics import average_precision, f1_at_k, f1_at_ks, openimages_published_ap, weighted_map

__all__ = [
    "average_precision",
    "f1_at_k",
    "f1_at_ks",
    "openimages_published_ap",
    "weighted_map",
]
