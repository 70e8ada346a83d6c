"""A small, learnable NUS-WIDE-like dataset written in the released layout.

The point is an end-to-end demo and tests (generate -> ``biam-convert nus_wide`` -> train ->
evaluate) in minutes on a laptop, where zero-shot transfer really works:

* Seen label embeddings are random unit vectors in 300-d. Every unseen (concept) embedding is
  a random mix of a few seen embeddings plus a little noise, so unseen labels relate to seen
  ones *only* through their embeddings.
* A fixed random map ``M`` (512 x 300) takes an embedding to the 512 channels. An image holds
  a few labels; each present label is painted into a few random regions as
  ``relu(gain * M e + noise)`` on top of a sparse non-negative background. A model that learns
  to match regions to seen embeddings therefore also scores unseen labels above chance.
* Labels are +1 (present) / -1 (absent), as NUS-WIDE. Training images also carry unseen
  objects (their ``-labels_81`` columns), as in the release; the trainer must not use them.

Files (relative to ``out_dir``, the released ``datasets/`` layout, docs/data_format.md)::

    NUS-WIDE/features/nus_wide_train.h5, NUS-WIDE/features/nus_wide_test.h5
    NUS-WIDE/img_names.pkl, NUS-WIDE/test_img_names.pkl
    NUS-WIDE/NUS_WID_Tags/TagList1k.txt, NUS-WIDE/ConceptsList/Concepts81.txt
    NUS-WIDE/wiki_contexts/NUS_WIDE_pretrained_w2v_glove-wiki-gigaword-300

Random (not learnable) data at the real shapes, for the benchmark, which times reading and
compute and needs sizes, not signal: :func:`feature_pool`, :func:`random_labels`,
:func:`write_released_random` (NUS-WIDE or Open Images keys, one gzip dataset per image and
field) and :func:`write_random_packed` (a packed split with stored scene features).
:func:`write_learnable_packed` writes a tiny learnable packed dataset directly (the tests').

CLI: ``biam-synthetic --out DIR [--num-train N --num-test N ...]``.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import h5py
import numpy as np

from ..data.packed import PackedWriter, save_embeddings
from ..datasets.nus_wide.release import NUS_WIDE_LAYOUT

__all__ = ["write_synthetic_nus_wide", "SYNTHETIC_PATHS", "feature_pool", "random_labels", "write_released_keys",
           "write_released_random", "write_random_packed", "write_learnable_packed"]

EMB_DIM = 300
SYNTHETIC_PATHS = dict(NUS_WIDE_LAYOUT)

_SYLLABLES = ["ka", "lo", "mi", "ru", "ten", "va", "zo", "pel", "dri", "sun", "ber", "on", "ix", "qua", "mor", "fel"]


def _made_up_words(n: int, rng: np.random.Generator) -> List[str]:
    words: List[str] = []
    taken = set()
    while len(words) < n:
        w = "".join(rng.choice(_SYLLABLES, size=int(rng.integers(2, 4))))
        if w not in taken:
            taken.add(w)
            words.append(w)
    return words


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _image_names(prefix: str, n: int, rng: np.random.Generator) -> List[str]:
    names = [f"{prefix}_{i:05d}_{int(rng.integers(10**8, 10**9))}.jpg" for i in range(n)]
    # Names may hold any character but '/': keep a few awkward ones so readers are exercised.
    odd = ["with space", "dash-in-name", "ünïcode", "a,b;c"]
    for j, tag in enumerate(odd[: n // 50]):
        names[j * 7] = f"{prefix}_{tag}_{j}.jpg"
    return names


def write_synthetic_nus_wide(
    out_dir,
    *,
    num_train: int = 1500,
    num_test: int = 500,
    num_tags: int = 60,
    num_concepts: int = 15,
    overlap: int = 5,
    labels_per_image: Sequence[int] = (1, 3),
    regions_per_label: Sequence[int] = (4, 10),
    unseen_share: float = 0.3,
    mix: int = 3,
    noise: float = 0.15,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Write the synthetic dataset; returns a dict of the written paths (keys of SYNTHETIC_PATHS).

    Args:
        num_train, num_test: images per split.
        num_tags, num_concepts, overlap: T tags, U concepts, of which ``overlap`` are also tags
            (seen S = T - overlap, as NUS-WIDE's 1000 / 81 / 75).
        labels_per_image: inclusive range of present labels per image.
        regions_per_label: inclusive range of regions (of 196) showing each present label.
        unseen_share: chance that a present label is drawn from the unseen ones.
        mix: seen embeddings mixed into each unseen embedding.
        noise: relative noise on unseen embeddings and on painted regions.
    """
    from tqdm import tqdm

    if not 0 <= overlap <= min(num_tags, num_concepts):
        raise ValueError(f"overlap {overlap} must be in [0, min(num_tags, num_concepts)]")
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    paths = {k: out / v for k, v in SYNTHETIC_PATHS.items()}
    for p in paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)

    # Label names: concepts, and a tag list holding `overlap` of them at random positions.
    words = _made_up_words(num_tags - overlap + num_concepts, rng)
    concepts = words[:num_concepts]
    seen_names = words[num_concepts:]
    tags = list(seen_names)
    for c in concepts[:overlap]:
        tags.insert(int(rng.integers(len(tags) + 1)), c)
    S, U = len(seen_names), num_concepts

    seen_emb = _unit(rng.standard_normal((S, EMB_DIM))).astype(np.float32)
    weights = np.zeros((U, S))
    for u in range(U):
        weights[u, rng.choice(S, size=mix, replace=False)] = rng.dirichlet(np.ones(mix))
    unseen_emb = _unit(weights @ seen_emb + noise * rng.standard_normal((U, EMB_DIM)) / np.sqrt(EMB_DIM)).astype(np.float32)
    emb_of_tag = {n: e for n, e in zip(seen_names, seen_emb)}
    emb_of_tag.update({n: e for n, e in zip(concepts, unseen_emb)})
    # The release stores raw (unnormalised) GloVe rows: scale rows so loaders must normalise.
    scale = rng.uniform(4.0, 7.0, size=(len(tags), 1)).astype(np.float32)
    tag_matrix = np.stack([emb_of_tag[t] for t in tags]) * scale
    concept_matrix = unseen_emb * rng.uniform(4.0, 7.0, size=(U, 1)).astype(np.float32)

    proj = (rng.standard_normal((512, EMB_DIM)) * np.sqrt(EMB_DIM / 300.0)).astype(np.float32)
    all_emb = np.concatenate([seen_emb, unseen_emb])  # columns: seen then unseen, as the packed rows

    with open(paths["tags"], "w", encoding="utf-8", newline="") as fh:
        fh.write("".join(t + "\r\n" for t in tags))  # the release uses CRLF line ends
    with open(paths["concepts"], "w", encoding="utf-8", newline="") as fh:
        fh.write("".join(c + "\r\n" for c in concepts))
    with open(paths["embeddings"], "wb") as fh:
        pickle.dump([tag_matrix.astype(np.float32), concept_matrix.astype(np.float32)], fh, protocol=2)

    for split, n, key in (("train", num_train, "train_h5"), ("test", num_test, "test_h5")):
        names = _image_names(split, n, rng)
        with open(paths[f"{split}_names"], "wb") as fh:
            pickle.dump({"img_names": names}, fh, protocol=2)
        with h5py.File(paths[key], "w") as f:
            for name in tqdm(names, desc=f"synthetic {split}", unit="img", disable=not progress):
                feats, labels = _one_image(rng, all_emb, proj, S, U, labels_per_image, regions_per_label,
                                           unseen_share, noise)
                # One chunk per image at gzip level 1: 2 ms per image instead of 7 with auto-chunks.
                write_released_keys(f, name, {"features": feats, "labels": labels[:S] if split == "train" else labels,
                                              "labels_81": labels[S:]}, features_level=1)
    return paths


def _one_image(rng, all_emb, proj, S, U, labels_per_image, regions_per_label, unseen_share, noise):
    """(features (512, 196) float32, labels (S+U,) int8) of one synthetic image."""
    k = int(rng.integers(labels_per_image[0], labels_per_image[1] + 1))
    present = set()
    while len(present) < k:
        present.add(int(S + rng.integers(U)) if rng.random() < unseen_share else int(rng.integers(S)))
    # Sparse non-negative background, like post-ReLU conv features (mostly zeros).
    # (5% non-zero cells, exponential values: cheap to draw and quick to gzip).
    feats = np.zeros(512 * 196, dtype=np.float32)
    nz = rng.integers(0, feats.size, size=feats.size // 20)
    feats[nz] = rng.exponential(0.3, size=len(nz)).astype(np.float32)
    feats = feats.reshape(512, 196)
    for c in present:
        regions = rng.choice(196, size=int(rng.integers(regions_per_label[0], regions_per_label[1] + 1)), replace=False)
        signal = proj @ all_emb[c]  # (512,)
        paint = signal[:, None] * 2.0 + noise * 2.0 * rng.standard_normal((512, len(regions)), dtype=np.float32)
        feats[:, regions] = np.maximum(feats[:, regions], np.maximum(paint, 0.0))
    labels = -np.ones(S + U, dtype=np.int8)
    labels[sorted(present)] = 1
    return feats.astype(np.float32), labels


def write_released_keys(f: h5py.File, name: str, fields: Dict[str, np.ndarray],
                        features_level: Optional[int] = None) -> None:
    """Write one image as the release does: one gzip dataset ``<name>-<field>`` per field.

    ``features_level``: gzip level of ``features``, stored as one chunk (None: h5py's default
    level 4 and chunking, as the release was written). Other fields use h5py's defaults.
    """
    for field, value in fields.items():
        if field == "features" and features_level is not None:
            f.create_dataset(f"{name}-{field}", data=value, chunks=value.shape, compression="gzip",
                             compression_opts=features_level)
        else:
            f.create_dataset(f"{name}-{field}", data=value, compression="gzip")


def feature_pool(rng: np.random.Generator, k: int) -> np.ndarray:
    """(k, 512, 196) float32 post-ReLU-like features: ~70% zeros, exponential values elsewhere."""
    x = rng.exponential(1.0, size=(k, 512, 196)).astype(np.float32)
    x[rng.random(x.shape, dtype=np.float32) < 0.7] = 0.0
    return x


def random_labels(rng: np.random.Generator, n: int, c: int, openimages: bool = False,
                  positives: float = 0.02) -> np.ndarray:
    """(n, c) int8 labels with at least one +1 per row.

    NUS-WIDE-like (default): every entry +1 (about ``positives`` of them) or -1. Open Images-like
    (``openimages``): mostly 0 (not annotated), about 8.6 verified positives and 5.8 verified
    negatives per image at c = 7186.
    """
    if openimages:
        u = rng.random((n, c), dtype=np.float32)
        y = np.zeros((n, c), dtype=np.int8)
        y[u < 0.0012] = 1
        y[(u >= 0.0012) & (u < 0.002)] = -1
    else:
        y = np.where(rng.random((n, c), dtype=np.float32) < positives, 1, -1).astype(np.int8)
    y[np.arange(n), rng.integers(0, c, size=n)] = 1
    return y


def write_released_random(path, names: Sequence[str], label_width: int, seed: int, openimages: bool = False,
                          num_unseen: int = 81) -> None:
    """Random features and labels in a released feature file's per-key layout (gzip level 4).

    NUS-WIDE (default): ``<name>-features`` (512, 196) float32, ``<name>-labels``
    (label_width,) int8 and ``<name>-labels_81`` (its last ``num_unseen`` columns). Open Images
    (``openimages``, a training shard): ``<id>-features`` and ``<id>-seenlabels``
    (label_width,) int8, sparse. Features cycle over 16 distinct arrays.
    """
    rng = np.random.default_rng(seed)
    pool = feature_pool(rng, 16)  # distinct arrays to cycle: generating is not what is measured
    labels = random_labels(rng, len(names), label_width, openimages=openimages)
    with h5py.File(path, "w") as f:
        for i, name in enumerate(names):
            fields = ({"features": pool[i % len(pool)], "seenlabels": labels[i]} if openimages else
                      {"features": pool[i % len(pool)], "labels": labels[i], "labels_81": labels[i, -num_unseen:]})
            write_released_keys(f, name, fields)


def write_random_packed(root, split: str, n: int, seed: int, num_seen: int, num_unseen: int, shard_size: int = 4096,
                        openimages: bool = False) -> dict:
    """A packed split of ``n`` random images with stored (random) scene features; returns its
    manifest. Labels are Open Images-like with ``openimages``; embeddings.npz is written once."""
    rng = np.random.default_rng(seed)
    seen = [f"tag{i}" for i in range(num_seen)]
    unseen = [f"concept{i}" for i in range(num_unseen)]
    writer = PackedWriter(root, split, dataset="openimages" if openimages else "nus_wide", seen_labels=seen,
                          unseen_labels=unseen, shard_size=shard_size, scene_source="random-benchmark", resume=False)
    pool = feature_pool(rng, 16).astype(np.float16)
    for start in range(0, n, 512):
        b = min(512, n - start)
        regions = pool[np.arange(start, start + b) % len(pool)]
        scene = rng.exponential(0.5, size=(b, 4096)).astype(np.float16)
        labels = random_labels(rng, b, num_seen + num_unseen, openimages=openimages)
        writer.append(regions, labels, [f"{split}_{start + i:06d}.jpg" for i in range(b)], scene=scene)
    manifest = writer.close()
    if not (Path(root) / "embeddings.npz").is_file():
        save_embeddings(root, rng.standard_normal((num_seen, 300)).astype(np.float32),
                        rng.standard_normal((num_unseen, 300)).astype(np.float32))
    return manifest


def write_learnable_packed(root, *, num_train: int = 96, num_test: int = 48, num_seen: int = 12, num_unseen: int = 6,
                           seed: int = 0, scene: bool = True, shard_size: int = 40, dataset: str = "nus_wide"):
    """A tiny packed dataset (train and test splits) whose labels are learnable from the regions.

    Each label has a random 300-d embedding; unseen embeddings mix two seen ones. An image's two
    present labels (one seen always) are written into 8 regions each as relu(P @ embedding)
    over weak noise, so a model that learns P^T transfers to unseen labels. Returns ``root``.
    """
    rng = np.random.default_rng(seed)
    seen = rng.normal(size=(num_seen, 300)).astype(np.float32)
    mix_of = rng.integers(0, num_seen, size=(num_unseen, 2))
    unseen = (seen[mix_of[:, 0]] + seen[mix_of[:, 1]] + 0.3 * rng.normal(size=(num_unseen, 300))).astype(np.float32)
    emb_n = _unit(np.concatenate([seen, unseen]))
    proj = rng.normal(size=(512, 300)).astype(np.float32) / np.sqrt(300)
    save_embeddings(root, seen, unseen)
    names_seen = [f"tag{i}" for i in range(num_seen)]
    names_unseen = [f"concept{i}" for i in range(num_unseen)]
    for split, n in (("train", num_train), ("test", num_test)):
        writer = PackedWriter(root, split, dataset=dataset, seen_labels=names_seen, unseen_labels=names_unseen,
                              shard_size=shard_size, scene_source="random-test" if scene else None)
        regions = np.abs(rng.normal(scale=0.1, size=(n, 512, 196))).astype(np.float32)
        labels = -np.ones((n, num_seen + num_unseen), dtype=np.int8)
        for i in range(n):
            # One seen label always, so no image is dropped from training for lack of one.
            first = int(rng.integers(num_seen))
            second = int(rng.choice([c for c in range(num_seen + num_unseen) if c != first]))
            labels[i, (first, second)] = 1
            for c in (first, second):
                where = rng.choice(196, size=8, replace=False)
                regions[i, :, where] += np.maximum(proj @ emb_n[c], 0)[None, :] * 2
        sc = np.abs(rng.normal(size=(n, 4096))).astype(np.float32) if scene else None
        writer.append(regions, labels, [f"{split}_{i:04d}.jpg" for i in range(n)], scene=sc)
        writer.close()
    return root
