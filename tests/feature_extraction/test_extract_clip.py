"""The NUS-WIDE and Open Images extractors with the CLIP backbones (random CLIP weights, no network):
the manifest records the backbone and its weights (file and SHA-256), the features are the
backbone's, a rerun is a no-op, and biam-embed-labels puts CLIP label embeddings into the packed data."""

from __future__ import annotations

import hashlib
import os
import pickle

import numpy as np
import pytest
import torch

pytest.importorskip("open_clip")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from biam.backbones import get_backbone, load_backbone  # noqa: E402
from biam.cli.embed_labels import main as embed_main  # noqa: E402
from biam.data.label_encoders import packed_label_encoder  # noqa: E402
from biam.data.packed import PackedDataset, load_embeddings, read_manifest  # noqa: E402
from biam.extraction import FeatureExtractor  # noqa: E402

TEST = [
    ("water\\0005_15.jpg", [0, 0, 1, 1, 0], [1, 0, 0], "ok"),
    ("water\\0006_16.jpg", [1, 0, 0, 0, 1], [0, 1, 1], "ok"),
]


def reference(net, name, paths):
    """The backbone's features computed here: 224 x 224 resize without a crop, CLIP mean/std."""
    from PIL import Image
    from torchvision import transforms

    bb = get_backbone(name)
    tf = transforms.Compose([transforms.Resize((224, 224)), transforms.ToTensor(), transforms.Normalize(bb.mean, bb.std)])
    x = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])
    regions, scene = FeatureExtractor(net, name)(x)
    return regions.numpy(), scene.numpy()


def test_nus_wide_with_clip_vit_b16_then_clip_label_embeddings(tmp_path, helpers, capsys):
    nus = helpers.make_nus_release(tmp_path / "NUS-WIDE", TEST[:1], TEST)
    helpers.write_nus_embedding_pickle(tmp_path / "emb.pkl")
    out = tmp_path / "packed"
    args = ["--nus-root", str(nus), "--embeddings", str(tmp_path / "emb.pkl"), "--out", str(out), "--splits", "test",
            "--backbone", "clip_vit_b16", "--random-weights", "0", "--dtype", "float32", "--batch-size", "2",
            "--workers", "0", "--device", "cpu"]
    script = helpers.load_script("extract_nus_wide")
    assert script.main(args) == 0, capsys.readouterr().err
    manifest = read_manifest(out)
    assert manifest["backbone"]["name"] == "clip_vit_b16" and manifest["backbone"]["grid"] == [14, 14]
    assert manifest["scene"]["source"] == "clip_vit_b16:open_clip:ViT-B-16:random-seed-0"
    ds = PackedDataset(out, "test")
    data = ds.read_slice(0, len(ds))
    ds.close()
    assert data["regions"].shape == (2, 512, 196) and data["scene"].shape == (2, 512)
    net, _ = load_backbone("clip_vit_b16", None, 0)
    paths = [nus / "Flickr" / "water" / n for n in ("0005_15.jpg", "0006_16.jpg")]
    regions, scene = reference(net, "clip_vit_b16", paths)
    np.testing.assert_allclose(data["regions"], regions, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(data["scene"], scene, rtol=1e-4, atol=1e-4)
    capsys.readouterr()
    assert script.main(args) == 0 and "already complete" in capsys.readouterr().out

    # CLIP label embeddings replace the word vectors in the packed data, with their record.
    assert embed_main(["--packed", str(out), "--clip", "clip_vit_b16", "--random-weights", "0", "--template",
                       "a photo of a {}.", "--out", str(out / "embeddings.npz"), "--overwrite"]) == 0
    seen, unseen = load_embeddings(out)
    assert seen.shape == (3, 512) and unseen.shape == (3, 512)
    assert packed_label_encoder(out)["name"] == "clip_vit_b16:random-seed-0"


def test_openimages_with_clip_rn50_weights_file(tmp_path, helpers, capsys):
    meta = tmp_path / "2018_04"
    (meta / "test").mkdir(parents=True)
    (meta / "classes-trainable.txt").write_text("/m/a\n/m/b\n")
    (meta / "unseen_labels.pkl").write_bytes(pickle.dumps(np.array(["/m/x"], dtype=object), protocol=2))
    (meta / "top_400_unseen.csv").write_bytes("\ufeff0\r\n".encode("utf-8"))
    (meta / "test" / "test-annotations-human-imagelabels.csv").write_text(
        "ImageID,Source,LabelName,Confidence\nimg1,verification,/m/b,1\nimg2,verification,/m/x,1\n")
    images = tmp_path / "images"
    helpers.make_image(images / "img1.jpg", seed=1)
    helpers.make_image(images / "img2.jpg", seed=2, size=(30, 90))
    rng = np.random.default_rng(0)
    emb = [rng.normal(size=(2, 300)).astype(np.float32), rng.normal(size=(1, 300)).astype(np.float32)]
    (tmp_path / "emb.pkl").write_bytes(pickle.dumps(emb, protocol=2))
    net, _ = load_backbone("clip_rn50", None, 0)
    weights = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(net.state_dict(), weights)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    out = tmp_path / "packed"
    rc = helpers.load_script("extract_openimages").main(
        ["--split", "test", "--meta-dir", str(meta), "--images", str(images), "--embeddings", str(tmp_path / "emb.pkl"),
         "--out", str(out), "--backbone", "clip_rn50", "--weights", f"openai={weights}", "--dtype", "float32",
         "--batch-size", "4", "--workers", "0", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    manifest = read_manifest(out)
    assert manifest["backbone"] == {"name": "clip_rn50", "input_size": 224, "grid": [7, 7], "channels": 2048,
                                    "scene_dim": 1024}
    assert manifest["scene"]["source"] == f"clip_rn50:open_clip:RN50:openai:{weights.name}:sha256:{digest}"
    ds = PackedDataset(out, "test")
    data = ds.read_slice(0, len(ds))
    ds.close()
    regions, scene = reference(net, "clip_rn50", [images / "img1.jpg", images / "img2.jpg"])
    np.testing.assert_allclose(data["regions"], regions, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(data["scene"], scene, rtol=1e-4, atol=1e-4)
    # Without weights: the error names both ways and nothing is written.
    capsys.readouterr()
    rc = helpers.load_script("extract_openimages").main(
        ["--split", "test", "--meta-dir", str(meta), "--images", str(images), "--embeddings", str(tmp_path / "emb.pkl"),
         "--out", str(tmp_path / "none"), "--backbone", "clip_rn50"])
    err = capsys.readouterr().err
    assert rc == 2 and "--weights FILE" in err and "--weights TAG" in err and not (tmp_path / "none").exists()
