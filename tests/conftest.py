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
