"""clip_zeroshot: the cosine of CLIP image and label embeddings, scoring its own embeddings right on a
constructed case, directly and through biam-evaluate (a weight-less checkpoint) on real packed data;
refused by biam-train and on features of a non-CLIP backbone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from biam.backbones import get_backbone
from biam.cli.evaluate import main as evaluate_main
from biam.cli.train import main as train_main
from biam.config import load_cfg
from biam.data.label_encoders import save_label_embeddings
from biam.data.packed import PackedWriter
from biam.modeling import build_model, get_method
from biam.modeling.clip_zeroshot import ClipZeroShot, write_checkpoint

from helpers import TINY_MODEL_OPTS


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_scores_are_cosines_and_rank_the_own_label_first():
    rng = np.random.default_rng(0)
    emb = torch.from_numpy(_unit(rng.normal(size=(10, 512))).astype(np.float32))
    order = torch.from_numpy(rng.permutation(10))
    scene = 3.0 * (emb[order] + 0.05 * torch.randn(10, 512, generator=torch.Generator().manual_seed(1)))
    model = build_model(load_cfg(None, ["MODEL.NAME", "clip_zeroshot", "MODEL.EMBED_DIM", "512"]), "clip_vit_b16")
    assert isinstance(model, ClipZeroShot) and not get_method("clip_zeroshot").trainable
    regions = torch.randn(10, 512, 196)
    scores = model(regions, 2.0 * emb, scene)
    assert scores.shape == (10, 10) and torch.equal(scores.argmax(dim=1), order)
    want = torch.nn.functional.cosine_similarity(scene[:, None], emb[None], dim=-1)
    torch.testing.assert_close(scores, want, rtol=1e-5, atol=1e-6)
    # biam-predict's region pooling gives the same image scores.
    torch.testing.assert_close(model.region_scores(regions, emb, scene).topk(model.topk, dim=1).values.mean(1), scores)
    assert model.patch_scores(regions, emb).shape == (10, 196, 10)


def test_refused_off_clip_features_and_by_the_trainer(tiny_packed, tmp_path, capsys):
    cfg = load_cfg(None, ["MODEL.NAME", "clip_zeroshot", "MODEL.EMBED_DIM", "300"])
    with pytest.raises(ValueError, match="backbone 'vgg19'.*--backbone clip_rn50 or clip_vit_b16"):
        build_model(cfg, get_backbone("vgg19"))
    with pytest.raises(ValueError, match="1024-d but MODEL.EMBED_DIM is 300"):
        build_model(cfg, get_backbone("clip_rn50"))
    rc = train_main([*TINY_MODEL_OPTS, "DATA.ROOT", str(tiny_packed), "MODEL.NAME", "clip_zeroshot",
                     "OUTPUT_DIR", str(tmp_path / "run")])
    assert rc != 0 and "clip_zeroshot" in capsys.readouterr().err


def test_biam_evaluate_scores_clip_zeroshot_on_constructed_data(tmp_path, capsys):
    rng = np.random.default_rng(3)
    seen = [f"seen{i}" for i in range(6)]
    unseen = [f"unseen{i}" for i in range(6)]
    emb = _unit(rng.normal(size=(12, 512))).astype(np.float32)
    root = tmp_path / "packed"
    writer = PackedWriter(root, "test", dataset="nus_wide", seen_labels=seen, unseen_labels=unseen, shard_size=16,
                          dtype="float32", scene_source="clip_vit_b16:constructed", backbone="clip_vit_b16")
    n = 24
    own = np.arange(n) % 12  # every label positive in two images
    labels = -np.ones((n, 12), dtype=np.int8)
    labels[np.arange(n), own] = 1
    scene = emb[own] + 0.02 * rng.normal(size=(n, 512)).astype(np.float32)
    writer.append(rng.normal(size=(n, 512, 196)).astype(np.float32), labels, [f"img{i}" for i in range(n)],
                  scene=scene)
    writer.close()
    save_label_embeddings(root / "embeddings.npz", emb[:6], emb[6:],
                          {"name": "clip_vit_b16:constructed", "kind": "clip-text"})
    ckpt = write_checkpoint(tmp_path / "clip_zeroshot.pth", "clip_vit_b16", 512, label_encoder="clip_vit_b16:constructed")
    out = tmp_path / "eval"
    rc = evaluate_main(["--checkpoint", ckpt, "MODEL.NAME", "clip_zeroshot", "MODEL.EMBED_DIM", "512",
                        "DATA.ROOT", str(root), "DATA.DATASET", "nus_wide", "DEVICE", "cpu", "DATA.NUM_WORKERS", "0",
                        "EVAL.BATCH_SIZE", "8", "OUTPUT_DIR", str(out)])
    assert rc == 0, capsys.readouterr().err
    metrics = json.loads(next(out.glob("eval/*/metrics.json")).read_text())
    assert metrics["zsl"]["mAP"] == pytest.approx(1.0) and metrics["gzsl"]["mAP"] == pytest.approx(1.0)
    assert metrics["zsl"]["num_labels"] == 6 and metrics["gzsl"]["num_labels"] == 12
    # The same data with the label embeddings shuffled: the zero-shot scores fall apart.
    save_label_embeddings(root / "embeddings.npz", emb[6:], emb[:6], {"name": "clip_vit_b16:constructed"})
    assert evaluate_main(["--checkpoint", ckpt, "MODEL.NAME", "clip_zeroshot", "MODEL.EMBED_DIM", "512",
                          "DATA.ROOT", str(root), "DATA.DATASET", "nus_wide", "DEVICE", "cpu", "DATA.NUM_WORKERS", "0",
                          "OUTPUT_DIR", str(tmp_path / "eval2")]) == 0
    worse = json.loads(next((tmp_path / "eval2").glob("eval/*/metrics.json")).read_text())
    assert worse["zsl"]["mAP"] < 0.6


def test_plain_clip_tags_new_images_through_the_predictor(tmp_path):
    """biam-predict's Predictor with clip_zeroshot on clip_vit_b16: each image's scores are the
    cosines of CLIP's own image embedding and CLIP's text embeddings of the labels."""
    pytest.importorskip("open_clip")
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from PIL import Image

    from biam.data.label_encoders import encode_labels_clip
    from biam.data.images import backbone_transform
    from biam.engine.predict import Predictor

    names = ["dog", "ice cream", "red car"]
    emb, record = encode_labels_clip(names, "clip_vit_b16", random_seed=0, template="a photo of a {}.")
    ckpt = write_checkpoint(tmp_path / "zs.pth", "clip_vit_b16", 512, label_encoder=record["name"])
    predictor = Predictor.from_checkpoint(ckpt, device="cpu", random_weights=0,
                                          opts=["MODEL.NAME", "clip_zeroshot", "MODEL.EMBED_DIM", "512"])
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, size=(40 + 8 * i, 64, 3), dtype=np.uint8)) for i in range(2)]
    result = predictor.tag(images, names, k=3, embeddings=emb)
    net = predictor.extractor.body.visual
    x = torch.stack([backbone_transform(get_backbone("clip_vit_b16"))(im) for im in images])
    with torch.no_grad():
        want = torch.nn.functional.normalize(net(x), dim=-1) @ torch.from_numpy(emb).t()
    for tags, row in zip(result.images, want):
        got = dict(tags.labels)
        assert [n for n, _ in tags.labels] == [names[i] for i in row.argsort(descending=True).tolist()]
        for i, n in enumerate(names):
            assert got[n] == pytest.approx(float(row[i]), abs=1e-4)
