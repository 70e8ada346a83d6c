"""Shared test fixtures."""

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
# Real files from the published release, for tests that say so (never copied into the repo).
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _few_threads():
    # CI has 2 cores; keep each test from oversubscribing them.
    torch.set_num_threads(2)
    yield


@pytest.fixture
def shared_data() -> Path:
    """Path of ``../shared/data``; skips the test cleanly when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data (files from the published release) is not present")
    return SHARED_DATA


def make_tiny_packed(root, *, num_train=96, num_test=48, num_seen=12, num_unseen=6, seed=0, scene=True,
                     shard_size=40, dataset="nus_wide"):
    """Write a tiny packed dataset whose labels are learnable from the region features.

    Each label has a random 300-d embedding; unseen embeddings mix two seen ones. An image's
    present labels are written into a few regions as relu(P @ embedding) over weak noise, so a
    model that learns P^T through ``W`` transfers to unseen labels. Returns the root path.
    """
    import numpy as np

    from biam.data.packed import PackedWriter, save_embeddings

    rng = np.random.default_rng(seed)
    seen = rng.normal(size=(num_seen, 300)).astype(np.float32)
    mix = rng.integers(0, num_seen, size=(num_unseen, 2))
    unseen = (seen[mix[:, 0]] + seen[mix[:, 1]] + 0.3 * rng.normal(size=(num_unseen, 300))).astype(np.float32)
    emb = np.concatenate([seen, unseen])
    emb_n = emb / np.linalg.norm(emb, axis=1, keepdims=True)
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
            present = (first, second)
            labels[i, present] = 1
            for c in present:
                where = rng.choice(196, size=8, replace=False)
                regions[i, :, where] += np.maximum(proj @ emb_n[c], 0)[None, :] * 2
        names = [f"{split}_{i:04d}.jpg" for i in range(n)]
        sc = np.abs(rng.normal(size=(n, 4096))).astype(np.float32) if scene else None
        writer.append(regions, labels, names, scene=sc)
        writer.close()
    return root


@pytest.fixture(scope="session")
def tiny_packed(tmp_path_factory):
    """A tiny packed dataset (96 train / 48 test images, 12 seen + 6 unseen labels), shared
    read-only by the tests of a session (runs write only to their own OUTPUT_DIR)."""
    return make_tiny_packed(tmp_path_factory.mktemp("tiny") / "packed")


TINY_MODEL_OPTS = [
    "MODEL.CHANNEL_DIM", "16", "MODEL.HEADS", "2", "MODEL.JOINT_DIM", "32",
    "DATA.NUM_WORKERS", "0", "SOLVER.BATCH_SIZE", "16", "EVAL.BATCH_SIZE", "32",
    "SOLVER.MAX_EPOCHS", "4", "SOLVER.WARMUP_EPOCHS", "1", "SOLVER.FINETUNE_EPOCHS", "1",
    "EVAL.START_EPOCH", "2", "EVAL.PERIOD", "2", "PLOT_CURVE", "False", "DEVICE", "cpu",
]
