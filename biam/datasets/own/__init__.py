"""Your own tagged images (docs/own_data.md), packed by ``feature_extraction/extract_own.py``.

The labels are complete (+1 present, -1 absent, as NUS-WIDE's), so the NUS-WIDE protocol
applies: every test image counts; P/R/F1 at K = 3 and 5; mAP over all the task's columns. The
label counts are the data's own. No released layout: the extractor writes the packed data
with manifest ``dataset`` "own" (its ``--dataset-name``), which ``DATA.DATASET own`` expects.
``annotations.py`` reads the annotation, label and image-list files and builds the splits.
"""

from __future__ import annotations

from ...evaluation.protocols import Protocol
from ..catalog import DatasetInfo, register_dataset

__all__ = ["NAME", "OWN"]

NAME = "own"

OWN = register_dataset(DatasetInfo(
    name=NAME,
    description="your own tagged images (feature_extraction/extract_own.py; docs/own_data.md)",
    protocol=Protocol(name=NAME, ks=(3, 5), rows="all"),
))
