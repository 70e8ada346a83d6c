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


def make_tiny_packed(root, **kwargs):
    """A tiny learnable packed dataset: biam.data.synthetic.write_learnable_packed (its keyword
    arguments and defaults: 96 train / 48 test images, 12 seen + 6 unseen labels). Returns root."""
    from biam.data.synthetic import write_learnable_packed

    return write_learnable_packed(root, **kwargs)


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
