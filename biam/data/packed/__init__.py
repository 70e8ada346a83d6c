"""The packed dataset format: a few large HDF5 shards per split, read in contiguous slices.

Layout of a packed dataset directory (see ``docs/data_format.md`` for the full description)::

    <root>/manifest.json           what is there: labels, dtype, backbone, scene source, shards + sha256
    <root>/embeddings.npz          "seen" (S, 300) and "unseen" (U, 300) float32, raw rows
    <root>/<split>-00000.h5, ...   shards; datasets regions, scene (optional), labels, names

:class:`PackedWriter` writes one split shard by shard. Each shard goes to a temporary name, is
fsynced and renamed, and only then listed in the manifest (itself replaced atomically), so a
killed writer leaves only complete, listed shards plus at most one temporary file, and a rerun
continues after the last listed shard. :class:`PackedDataset` reads a split by global image index.
"""

from ...utils.io import sha256_file
from .dataset import PackedDataset
from .manifest import (EMBEDDINGS, FEATURE_DTYPES, FORMAT_VERSION, MANIFEST, PackedFormatError, l2_normalize,
                       load_embeddings, read_manifest, resolve_backbone, save_embeddings, shard_filename)
from .writer import PackedWriter

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "EMBEDDINGS",
    "FEATURE_DTYPES",
    "PackedFormatError",
    "PackedWriter",
    "resolve_backbone",
    "PackedDataset",
    "read_manifest",
    "save_embeddings",
    "load_embeddings",
    "l2_normalize",
    "shard_filename",
    "sha256_file",
]
