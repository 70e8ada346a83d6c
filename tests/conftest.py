"""Shared test fixtures."""

from pathlib import Path

import pytest
import torch

from helpers import SHARED_DATA, make_tiny_packed


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


@pytest.fixture(scope="session")
def tiny_packed(tmp_path_factory):
    """A tiny packed dataset (96 train / 48 test images, 12 seen + 6 unseen labels), shared
    read-only by the tests of a session (runs write only to their own OUTPUT_DIR)."""
    return make_tiny_packed(tmp_path_factory.mktemp("tiny") / "packed")
