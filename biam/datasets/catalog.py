"""The registry of datasets: one :class:`DatasetInfo` per dataset, registered by name.

A dataset is one file (see ``biam/datasets/nus_wide.py``) that builds a ``DatasetInfo`` and
passes it to :func:`register_dataset`; ``DATA.DATASET`` names it. The trainer, the evaluator,
the chance levels and ``biam-convert`` read everything dataset-specific from it: the
evaluation protocol (K values, rows, mAP variants), the label-space facts and, for datasets
with a released feature layout, its converter. docs/architecture.md, "Adding a dataset".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Tuple

from ..data.checksums import KnownFile
from ..evaluation.protocols import Protocol

__all__ = [
    "DatasetInfo", "ReleasedLayout", "UnknownDatasetError", "register_dataset", "unregister_dataset",
    "get_dataset", "list_datasets", "check_manifest_dataset", "known_release_files",
]


class UnknownDatasetError(ValueError):
    """A dataset name that is not registered (the message lists the registered ones)."""


@dataclass(frozen=True)
class ReleasedLayout:
    """A released feature layout that ``biam-convert <dataset>`` turns into packed shards.

    Attributes:
        help: one line for ``biam-convert --help``.
        paths: input file key -> default path relative to ``--src``.
        path_flags: input file key -> the command-line flag overriding its path (the flag's
            help shows the default); the key ``embeddings`` is the common ``--embeddings``.
        extra_flags: key -> (flag, help) for inputs without a default path (None when not given).
        convert: ``convert(src, out, *, paths, splits, shard_size, dtype, scene_head,
            scene_source, overwrite, batch) -> manifest dict``; ``paths`` holds every key of
            ``paths`` and ``extra_flags`` as absolute file paths (or None).
    """

    help: str
    paths: Mapping[str, str]
    convert: Callable[..., dict]
    path_flags: Mapping[str, str] = field(default_factory=dict)
    extra_flags: Mapping[str, Tuple[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetInfo:
    """Everything dataset-specific, in one object.

    Attributes:
        name: the registry name (``DATA.DATASET``, the manifest's ``dataset`` field).
        description: one line for listings and messages.
        protocol: how the test split is scored (:class:`biam.evaluation.Protocol`).
        num_seen: the fixed seen-label count of the published dataset (None: any; a packed
            dataset records its own labels, this is the protocol functions' default).
        num_unseen_eval: the fixed count of evaluated unseen labels (None: any).
        released: the released-layout converter of ``biam-convert`` (None: the dataset is only
            made by a feature extractor, as ``own``).
        known_files: published SHA-256 and size of its release files, by path relative to the
            release's ``datasets/`` folder (``biam-checksums --root``).
    """

    name: str
    description: str
    protocol: Protocol
    num_seen: Optional[int] = None
    num_unseen_eval: Optional[int] = None
    released: Optional[ReleasedLayout] = None
    known_files: Mapping[str, KnownFile] = field(default_factory=dict)

    def __post_init__(self):
        if self.protocol.name != self.name:
            raise ValueError(f"dataset {self.name!r}: its protocol is named {self.protocol.name!r}; use the same name")


_REGISTRY: Dict[str, DatasetInfo] = {}


def register_dataset(info: DatasetInfo) -> DatasetInfo:
    """Add ``info`` under ``info.name``; a name already registered is a ValueError. Returns ``info``."""
    if not isinstance(info, DatasetInfo):
        raise TypeError(f"register_dataset takes a DatasetInfo, got {type(info).__name__}")
    if info.name in _REGISTRY:
        raise ValueError(f"dataset {info.name!r} is already registered")
    _REGISTRY[info.name] = info
    return info


def unregister_dataset(name: str) -> None:
    """Remove a registered dataset (tests and interactive sessions); unknown names are an error."""
    get_dataset(name)
    del _REGISTRY[name]


def get_dataset(name: str) -> DatasetInfo:
    """The registered dataset ``name``; :class:`UnknownDatasetError` lists the registered ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownDatasetError(
            f"unknown dataset {name!r}; registered datasets: {', '.join(map(repr, list_datasets()))}") from None


def list_datasets() -> List[str]:
    """Names of the registered datasets, in registration order."""
    return list(_REGISTRY)


def check_manifest_dataset(configured: str, manifest: Mapping, where: str) -> DatasetInfo:
    """The dataset of ``DATA.DATASET`` after checking that the packed data was written for it.

    Args:
        configured: ``DATA.DATASET``. manifest: the packed dataset's manifest.
        where: the manifest's path, for the message.
    Raises:
        ValueError naming both names when the manifest's ``dataset`` differs.
    """
    info = get_dataset(configured)
    recorded = manifest.get("dataset")
    if recorded != configured:
        raise ValueError(
            f"{where}: the packed data is dataset {recorded!r} but DATA.DATASET is {configured!r}; set "
            f"DATA.DATASET {recorded} (registered: {', '.join(list_datasets())}) or point DATA.ROOT at a "
            f"{configured} dataset")
    return info


def known_release_files() -> Dict[str, KnownFile]:
    """Every registered dataset's published release files (path relative to ``datasets/``)."""
    out: Dict[str, KnownFile] = {}
    for name in list_datasets():
        out.update(get_dataset(name).known_files)
    return out
