"""NUS-WIDE (Chua et al., 2009) as the paper uses it: 925 seen tags, 81 unseen concepts.

Protocol: every test image counts; P/R/F1 at K = 3 and 5 and mAP over all the task's columns (a
label without a positive has AP 0). ``biam-convert nus_wide`` reads the released layout
(:data:`release.NUS_WIDE_LAYOUT`). This folder: ``release.py`` (the released feature files,
label lists, embeddings and checksums), ``images.py`` (the image release, for
``feature_extraction/extract_nus_wide.py``). docs/metrics.md, docs/data_format.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from ...data.convert import convert_split, scene_fn
from ...data.packed import PackedWriter, save_embeddings
from ...evaluation.metrics import ArrayLike
from ...evaluation.protocols import EvalResult, Protocol, evaluate
from ..catalog import DatasetInfo, ReleasedLayout, register_dataset
from . import release

__all__ = ["NAME", "NUS_WIDE", "evaluate_nus_wide", "NUS_WIDE_PATHS", "convert_nus_wide"]

NAME = "nus_wide"
# Default locations relative to --src (the released ``datasets/`` folder).
NUS_WIDE_PATHS = dict(release.NUS_WIDE_LAYOUT)


def convert_nus_wide(src: Path, out: Path, *, paths: dict, splits: Sequence[str] = ("train", "test"),
                     shard_size: int = 1024, dtype: str = "float16", scene_head=None, scene_source: Optional[str] = None,
                     overwrite: bool = False, batch: int = 64) -> dict:
    """Convert NUS-WIDE. ``paths``: absolute file paths (keys of :data:`NUS_WIDE_PATHS`). Output: manifest."""
    seen, unseen, seen_tag_index = release.nus_wide_label_names(paths["tags"], paths["concepts"])
    seen_emb, unseen_emb = release.read_nus_wide_embeddings(paths["embeddings"], seen_tag_index, num_concepts=len(unseen))
    scene = scene_fn(scene_head)
    manifest = None
    for k, split in enumerate(splits):
        names = release.read_img_names(paths[f"{split}_names"])
        reader = release.NusWideReader(paths[f"{split}_h5"], names, num_seen=len(seen), num_unseen=len(unseen), split=split)
        writer = PackedWriter(out, split, dataset=NAME, seen_labels=seen, unseen_labels=unseen, unseen_eval=None,
                              shard_size=shard_size, dtype=dtype, scene_source=scene_source, resume=not overwrite,
                              overwrite=overwrite)
        if k == 0:
            # After the writer has put down the manifest (the folder's record), never before it.
            save_embeddings(out, seen_emb, unseen_emb)
        convert_split(writer, reader.records, names, scene, batch, f"nus_wide {split}", out)
        manifest = writer.manifest
    return manifest


NUS_WIDE = register_dataset(DatasetInfo(
    name=NAME,
    description="NUS-WIDE (925 seen tags, 81 unseen concepts)",
    num_seen=925,
    num_unseen_eval=81,
    protocol=Protocol(name=NAME, ks=(3, 5), num_seen=925, rows="all"),
    known_files=release.KNOWN_FILES,
    released=ReleasedLayout(
        help="NUS-WIDE (925 seen tags, 81 unseen concepts)",
        paths=NUS_WIDE_PATHS,
        convert=convert_nus_wide,
        path_flags={"train_h5": "--train-h5", "test_h5": "--test-h5", "train_names": "--train-names",
                    "test_names": "--test-names", "tags": "--tags", "concepts": "--concepts"},
    ),
))


def evaluate_nus_wide(
    scores: ArrayLike,
    labels: ArrayLike,
    num_seen: Optional[int] = None,
    ks: Optional[Sequence[int]] = None,
) -> EvalResult:
    """NUS-WIDE protocol: all images; mAP over every evaluated label (no positive counts as 0).

    Args:
        scores: (N, S + U) scores, seen columns first. labels: (N, S + U) in {-1, 0, +1}.
        num_seen: S (default 925, NUS-WIDE's).
        ks: the K of F1@K (default 3 and 5, the paper's).
    Returns:
        EvalResult with tasks "zsl" (the U unseen columns) and "gzsl" (all columns).
    """
    return evaluate(scores, labels, NUS_WIDE.protocol, num_seen=num_seen, ks=ks)

