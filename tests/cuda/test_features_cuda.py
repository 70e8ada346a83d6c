"""Feature extraction on CUDA: feature_extraction/extract_nus_wide.py with --device cuda on a few
generated images gives the CPU's features. The CPU variant checks the script's CPU output
against biam.extraction.FeatureExtractor called directly, with the same comparison."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from biam.data.packed import PackedDataset
from biam.backbones import get_backbone, load_backbone
from biam.data.images import ImageFileDataset, backbone_transform, collate_images
from biam.extraction import FeatureExtractor

CUDA_MARKS = (pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"))
FE_CONFTEST = Path(__file__).resolve().parents[1] / "feature_extraction" / "conftest.py"

TRAIN = [("animal\\0001_11.jpg", [1, 0, 1, 0, 0], [0, 1, 0], "ok"),
         ("sky\\0003_13.jpg", [1, 1, 0, 0, 1], [0, 0, 1], "ok"),
         ("sky\\0007_17.jpg", [0, 1, 1, 0, 1], [1, 0, 1], "ok")]
TEST = [("water\\0005_15.jpg", [0, 0, 1, 1, 0], [1, 0, 0], "ok")]


def fe_helpers():
    """tests/feature_extraction/conftest.py as a module: its fake-release writers."""
    spec = importlib.util.spec_from_file_location("fe_conftest_for_cuda", FE_CONFTEST)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    helpers = fe_helpers()
    root = tmp_path_factory.mktemp("release")
    nus = helpers.make_nus_release(root / "NUS-WIDE", TRAIN, TEST)
    helpers.write_nus_embedding_pickle(root / "emb.pkl")
    return helpers, nus, root / "emb.pkl"


def extract(release, out, device):
    helpers, nus, emb = release
    script = helpers.load_script("extract_nus_wide")
    rc = script.main(["--nus-root", str(nus), "--embeddings", str(emb), "--out", str(out), "--random-weights", "0",
                      "--dtype", "float32", "--batch-size", "2", "--workers", "0", "--device", device])
    assert rc == 0
    ds = PackedDataset(out, "train")
    data = ds.read_slice(0, len(ds))
    ds.close()
    return data


def direct_cpu_features(release, names):
    """FeatureExtractor on the CPU, called directly on the same image files."""
    _, nus, _ = release
    files = [nus / "Flickr" / Path(*rel.split("\\")) for rel, *_ in TRAIN]
    assert [p.parent.name + "_" + p.name for p in files] == list(names)
    vgg, _ = load_backbone("vgg19", None, random_seed=0, what="test")
    extractor = FeatureExtractor(vgg, "vgg19")
    transform = backbone_transform(get_backbone("vgg19"))
    images, _, bad = collate_images([ImageFileDataset(files, transform)[i] for i in range(len(files))])
    assert not bad
    regions, scene = extractor(images)
    return {"regions": regions.numpy(), "scene": scene.numpy()}


def relative_error(got, want):
    """max |got - want| over max |want|: the error on the features' own scale."""
    return float(np.abs(got - want).max() / np.abs(want).max())


# cuDNN convolutions may run in TF32 (10-bit mantissa, the PyTorch default for cuDNN) through the
# 16 conv layers of VGG19: differences of ~1e-3 of the features' scale, held to 1e-2 here.
@pytest.mark.parametrize("device, tol", [pytest.param("cpu", 1e-5, id="cpu-vs-direct"),
                                         pytest.param("cuda", 1e-2, marks=CUDA_MARKS, id="cuda-vs-cpu")])
def test_extraction_matches_the_cpu(release, tmp_path, device, tol):
    got = extract(release, tmp_path / device, device)
    if device == "cpu":
        want = direct_cpu_features(release, got["names"])
    else:
        want = extract(release, tmp_path / "cpu", "cpu")
        assert list(got["names"]) == list(want["names"])
        np.testing.assert_array_equal(got["labels"], want["labels"])
    assert got["regions"].shape == (len(TRAIN), 512, 196) and got["scene"].shape == (len(TRAIN), 4096)
    assert np.abs(want["regions"]).max() > 0  # not an all-zero comparison
    assert relative_error(got["regions"], want["regions"]) <= tol
    assert relative_error(got["scene"], want["scene"]) <= tol
