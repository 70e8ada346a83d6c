"""Fixtures for the feature extraction and prediction tests: a seeded random VGG19 (no network,
no ImageNet weights) saved once per session, generated images and tiny fake releases."""

from __future__ import annotations

import importlib
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
VGG_SEED = 0


def load_script(name: str):
    """The command behind ``feature_extraction/<name>.py`` (the script is a shim over ``biam.cli.<name>``)."""
    return importlib.import_module(f"biam.cli.{name}")


@pytest.fixture
def helpers():
    """This module, so tests can call its helper functions (conftest is not importable by name)."""
    return sys.modules[__name__]


@pytest.fixture(scope="session")
def vgg_random():
    """torchvision VGG19 with seed-0 random weights, eval mode (what ``--random-weights 0`` builds)."""
    import torchvision

    torch.manual_seed(VGG_SEED)
    return torchvision.models.vgg19(weights=None).eval()


@pytest.fixture(scope="session")
def vgg_file(vgg_random, tmp_path_factory) -> Path:
    """The same weights as a state-dict file (what ``--weights FILE`` reads)."""
    path = tmp_path_factory.mktemp("weights") / "vgg19-random0.pth"
    torch.save(vgg_random.state_dict(), path)
    return path


def make_image(path: Path, seed: int, size=(64, 48)) -> Path:
    """A small random RGB JPEG (or PNG by suffix) at ``path``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def make_corrupt_jpeg(path: Path) -> Path:
    """A JPEG cut after its header: PIL identifies it but cannot decode it."""
    make_image(path, seed=99)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


def reference_features(vgg, image_paths):
    """What the released features are, computed here with torchvision directly:
    (N, 512, 196) conv5_4 and (N, 4096) fc7 of 224x224 ImageNet-normalised images."""
    from PIL import Image
    from torchvision import transforms

    tf = transforms.Compose([transforms.Resize((224, 224)), transforms.ToTensor(),
                             transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    x = torch.stack([tf(Image.open(p).convert("RGB")) for p in image_paths])
    with torch.no_grad():
        fmap = vgg.features[:-1](x)
        pooled = vgg.avgpool(vgg.features[-1](fmap)).flatten(1)
        scene = vgg.classifier[:5](pooled)  # fc6, ReLU, Dropout (eval: identity), fc7, ReLU
    return fmap.flatten(2).numpy(), scene.numpy()


# Tags (tag-file order) and concepts: "dog" and "water" are both; seen = sky, cat, car.
NUS_TAGS = ["sky", "dog", "cat", "water", "car"]
NUS_CONCEPTS = ["person", "water", "dog"]
NUS_SEEN = ["sky", "cat", "car"]


def make_nus_release(root: Path, train, test):
    """Write a fake NUS-WIDE release under ``root``.

    ``train``/``test``: lists of ``(relative image path with backslashes, tag row (5,), concept
    row (3,), kind)`` with kind "ok", "corrupt" or "missing". Returns ``root``.
    """
    (root / "NUS_WID_Tags").mkdir(parents=True)
    (root / "ConceptsList").mkdir()
    (root / "ImageList").mkdir()
    gt = root / "Groundtruth" / "TrainTestLabels"
    gt.mkdir(parents=True)
    (root / "NUS_WID_Tags" / "TagList1k.txt").write_text("\r\n".join(NUS_TAGS) + "\r\n")
    (root / "ConceptsList" / "Concepts81.txt").write_text("\r\n".join(NUS_CONCEPTS) + "\r\n")
    for split, items, listname, tagname, suffix in (("train", train, "TrainImagelist.txt", "Train_Tags1k.dat", "Train"),
                                                   ("test", test, "TestImagelist.txt", "Test_Tags1k.dat", "Test")):
        (root / "ImageList" / listname).write_text("".join(f"{rel}\r\n" for rel, *_ in items))
        (root / "NUS_WID_Tags" / tagname).write_text("".join("\t".join(map(str, t)) + "\t\r\n" for _, t, _, _ in items))
        for j, concept in enumerate(NUS_CONCEPTS):
            (gt / f"Labels_{concept}_{suffix}.txt").write_text("".join(f"{c[j]}\r\n" for _, _, c, _ in items))
        for k, (rel, _, _, kind) in enumerate(items):
            path = root / "Flickr" / Path(*rel.split("\\"))
            if kind == "ok":
                make_image(path, seed=(0 if split == "train" else 100) + k, size=(64 + 8 * k, 48))
            elif kind == "corrupt":
                make_corrupt_jpeg(path)
    return root


def write_nus_embedding_pickle(path: Path, seed: int = 1):
    """A stand-in for the released embedding pickle: [tags (5, 300), concepts (3, 300)] float32.

    (Writing a pickle is harmless; the code under test reads it with the restricted unpickler.)
    """
    rng = np.random.default_rng(seed)
    tags = rng.normal(size=(len(NUS_TAGS), 300)).astype(np.float32)
    concepts = rng.normal(size=(len(NUS_CONCEPTS), 300)).astype(np.float32)
    path.write_bytes(pickle.dumps([tags, concepts], protocol=2))
    return tags, concepts


def write_glove(path: Path, words, dim: int = 300, seed: int = 2):
    """A tiny GloVe text file with random vectors for ``words``; returns {word: vector}."""
    rng = np.random.default_rng(seed)
    vecs = {w: rng.normal(size=dim).astype(np.float32) for w in words}
    path.write_text("".join(w + " " + " ".join(f"{v:.6f}" for v in vec) + "\n" for w, vec in vecs.items()))
    return {w: np.array([float(f"{v:.6f}") for v in vec], dtype=np.float32) for w, vec in vecs.items()}
