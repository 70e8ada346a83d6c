"""Open Images v4 (2018_04) as the paper uses it: 7186 seen labels, 400 evaluated unseen ones.

Protocol (docs/metrics.md): tasks SEEN (7186 columns), ZSL (400) and GZSL (7586), as the
original's ``evaluate_openimages.py`` prints them; per task the images with at least one +1
among its columns; P/R/F1 at K = 1, 3, 5, 10, 20 (10 and 20 in the paper; SEEN's top K among
its annotated columns, as the original's); "mAP" the mean over all the task's columns, a column
without an annotated image counting 0; also "mAP_annotated" and "wmAP", and with
``EVAL.PUBLISHED_OPENIMAGES_AP`` the original's pooled AP: averaged over all 400 columns for ZSL
and over the annotated columns for SEEN and GZSL, and weighted by +1 images (the paper's table).
``biam-convert openimages`` reads the released layout (datasets/OpenImages/README.md).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

from ...data.convert import convert_split, scene_fn
from ...data.packed import PackedWriter, save_embeddings
from ...data.released import RecordError
from ...evaluation.metrics import ArrayLike
from ...evaluation.protocols import EvalResult, Protocol, evaluate
from ..catalog import DatasetInfo, ReleasedLayout, register_dataset
from . import release

__all__ = ["NAME", "OPENIMAGES", "evaluate_openimages", "OPENIMAGES_PATHS", "convert_openimages"]

NAME = "openimages"
# Default locations relative to --src (the released ``datasets/`` folder).
OPENIMAGES_PATHS = {
    "classes": "OpenImages/2018_04/classes-trainable.txt",
    "unseen_ids": "OpenImages/2018_04/unseen_labels.pkl",
    "top400": "OpenImages/2018_04/top_400_unseen.csv",
    "descriptions": "OpenImages/2018_04/class-descriptions.csv",
    "embeddings": "OpenImages/wiki_contexts/OpenImage_w2v_context_window_10_glove-wiki-gigaword-300.pkl",
}


def convert_openimages(src: Path, out: Path, *, paths: dict, splits: Sequence[str] = ("train", "test"),
                       shard_size: int = 1024, dtype: str = "float16", scene_head=None, scene_source: Optional[str] = None,
                       overwrite: bool = False, batch: int = 64) -> dict:
    """Convert Open Images. ``paths``: keys of :data:`OPENIMAGES_PATHS` plus ``train_dir``, ``test_h5``."""
    seen = release.read_classes_trainable(paths["classes"])
    unseen = release.read_unseen_ids(paths["unseen_ids"])
    top400 = release.read_top400(paths["top400"], num_unseen=len(unseen))
    seen_emb, unseen_emb = release.read_openimages_embeddings(paths["embeddings"], len(seen), len(unseen))
    extra = {}
    if paths.get("descriptions") and Path(paths["descriptions"]).is_file():
        desc = release.read_class_descriptions(paths["descriptions"])
        # An id without a description keeps its id as its name (listed, never silent).
        missing = [i for i in seen + unseen if i not in desc]
        if missing:
            print(f"note: {len(missing)} class id(s) have no description in {paths['descriptions']}, "
                  f"e.g. {missing[:3]}; their ids are used as names", file=sys.stderr)
        extra["label_descriptions"] = {"seen": [desc.get(i, i) for i in seen], "unseen": [desc.get(i, i) for i in unseen]}
    scene = scene_fn(scene_head)
    manifest = None
    for k, split in enumerate(splits):
        if split == "train":
            if not paths.get("train_dir"):
                raise FileNotFoundError("Open Images: give the training shard folder with --train-dir")
            reader = release.OpenImagesReader(release.openimages_shard_files(paths["train_dir"]),
                                               num_seen=len(seen), num_unseen=None, unseen_pad=len(unseen))
        else:
            if not paths.get("test_h5"):
                raise FileNotFoundError("Open Images: give the test feature file with --test-h5")
            reader = release.OpenImagesReader([paths["test_h5"]], num_seen=len(seen), num_unseen=len(unseen))
        names = [i for _, ids in reader.index() for i in ids]
        if len(set(names)) != len(names):
            raise RecordError(f"Open Images {split}: an image id appears in more than one file")
        writer = PackedWriter(out, split, dataset=NAME, seen_labels=seen, unseen_labels=unseen, unseen_eval=top400,
                              shard_size=shard_size, dtype=dtype, scene_source=scene_source, resume=not overwrite,
                              overwrite=overwrite, extra=extra)
        if k == 0:
            save_embeddings(out, seen_emb, unseen_emb)  # after the manifest, the folder's record
        convert_split(writer, reader.records, names, scene, batch, f"openimages {split}", out)
        manifest = writer.manifest
    return manifest


OPENIMAGES = register_dataset(DatasetInfo(
    name=NAME,
    description="Open Images v4 (7186 seen, 2594 unseen labels, the top 400 evaluated)",
    num_seen=7186,
    num_unseen_eval=400,
    protocol=Protocol(name=NAME, ks=(1, 3, 5, 10, 20), num_seen=7186, rows="with_positive",
                      annotated_metrics=True, pooled_ap=True, tasks=("seen", "zsl", "gzsl"),
                      pooled_mean_annotated=("seen", "gzsl"), f1_annotated=("seen",)),
    known_files=release.KNOWN_FILES,
    released=ReleasedLayout(
        help="Open Images v4 (7186 seen, 2594 unseen, top-400 evaluated)",
        paths=OPENIMAGES_PATHS,
        convert=convert_openimages,
        path_flags={"classes": "--classes", "unseen_ids": "--unseen-ids", "top400": "--top400",
                    "descriptions": "--descriptions"},
        extra_flags={
            "train_dir": ("--train-dir", "folder of the training *.h5 shards (the published scripts name it differently)"),
            "test_h5": ("--test-h5", "the test feature file"),
        },
    ),
))


def evaluate_openimages(
    scores: ArrayLike,
    labels: ArrayLike,
    num_seen: Optional[int] = None,
    ks: Optional[Sequence[int]] = None,
    published_ap: bool = False,
) -> EvalResult:
    """Open Images protocol (docs/metrics.md), tasks SEEN (the S seen columns), ZSL and GZSL.

    Per task: keep the images with at least one +1 among the task's columns; per-label AP on
    those images; "mAP" is the mean over all the task's columns, a column without an annotated
    image counting 0; "mAP_annotated" is the mean over the columns with an annotated image only;
    "wmAP" weights each label's AP by its +1 images; F1/P/R@K over the kept images and all the
    task's columns (SEEN: the top K among its annotated columns only, as the original's).

    Args:
        scores: (N, S + U) scores, seen columns first. labels: (N, S + U) in {-1, 0, +1}.
        num_seen: S (default 7186, Open Images v4's).
        ks: the K of F1@K (default 1, 3, 5, 10, 20: 10 and 20 in the paper; the original logs
            1, 5, 10, 20 for SEEN and GZSL and 1, 3, 10, 20 for ZSL).
        published_ap: also report the original's pooled, flawed AP function:
            "published_pooled_mAP", its mean over all 400 columns for ZSL (0 for a column
            without an annotated image) and over the annotated columns for SEEN and GZSL, and
            "published_weighted_pooled_mAP", weighted by each column's +1 images (the paper's
            table); costs sum over images of (annotations per image)^2 work.
    Returns:
        EvalResult with tasks "seen", "zsl" and "gzsl".
    """
    return evaluate(scores, labels, OPENIMAGES.protocol, num_seen=num_seen, ks=ks, published_ap=published_ap)

