"""Datasets as plug-ins: each one folder whose ``__init__.py`` registers a :class:`DatasetInfo`
(its protocol, its label-space facts, its release files' checksums and, if it has one, its
released-layout converter) beside the readers of its release and of its image release.
``DATA.DATASET`` names one of :func:`list_datasets`. docs/architecture.md, "Adding a dataset".
"""

from .catalog import (
    DatasetInfo,
    ReleasedLayout,
    UnknownDatasetError,
    check_manifest_dataset,
    get_dataset,
    known_release_files,
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
    "known_release_files",
    "list_datasets",
    "register_dataset",
    "unregister_dataset",
]
