"""Datasets as plug-ins: each one file that registers a :class:`DatasetInfo` (its protocol, its
label-space facts and, if it has one, its released-layout converter). ``DATA.DATASET`` names
one of :func:`list_datasets`. docs/architecture.md, "Adding a dataset".
"""

from .catalog import (
    DatasetInfo,
    ReleasedLayout,
    UnknownDatasetError,
    check_manifest_dataset,
    get_dataset,
    list_datasets,
    register_dataset,
    unregister_dataset,
)

# The built-in datasets register themselves on import, in this order.
from . import nus_wide, openimages, own  # noqa: E402,F401  (isort: skip)

__all__ = [
    "DatasetInfo",
    "ReleasedLayout",
    "UnknownDatasetError",
    "check_manifest_dataset",
    "get_dataset",
    "list_datasets",
    "register_dataset",
    "unregister_dataset",
]
