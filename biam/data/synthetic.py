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

CLI: ``python -m biam.data.synthetic --out DIR [--num-train N --num-test N ...]``.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path
from typing import List, Optional, Sequence

import h5py
import numpy as np

from .released import NUS_WIDE_LAYOUT

__all__ = ["write_synthetic_nus_wide", "SYNTHETIC_PATHS", "main"]

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
                # One gzip dataset per image and field: the released (slow) layout.
                # One chunk per image at gzip level 1: 2 ms per image instead of 7 with auto-chunks.
                f.create_dataset(f"{name}-features", data=feats, chunks=feats.shape, compression="gzip",
                                 compression_opts=1)
                if split == "train":
                    f.create_dataset(f"{name}-labels", data=labels[:S], compression="gzip")
                else:
                    f.create_dataset(f"{name}-labels", data=labels, compression="gzip")
                f.create_dataset(f"{name}-labels_81", data=labels[S:], compression="gzip")
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m biam.data.synthetic", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (gets the released NUS-WIDE/ layout)")
    p.add_argument("--num-train", type=int, default=1500)
    p.add_argument("--num-test", type=int, default=500)
    p.add_argument("--num-tags", type=int, default=60)
    p.add_argument("--num-concepts", type=int, default=15)
    p.add_argument("--overlap", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    paths = write_synthetic_nus_wide(a.out, num_train=a.num_train, num_test=a.num_test, num_tags=a.num_tags,
                                     num_concepts=a.num_concepts, overlap=a.overlap, seed=a.seed)
    print(f"wrote synthetic NUS-WIDE layout under {a.out} ({len(paths)} files); "
          f"convert it with: biam-convert nus_wide --src {a.out} --out <packed dir>")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
