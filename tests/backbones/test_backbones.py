"""The backbone registry: every backbone's stated shapes are what its modules compute; the manifest
records the backbone and old manifests read as VGG19; a ResNet-101 dataset goes extract -> train
-> evaluate with the model's widths taken from the manifest; checkpoints and features of
different backbones are refused naming both."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from biam.backbones import BackboneError, backbone_of_manifest, get_backbone, list_backbones
from biam.data.packed import resolve_backbone
from biam.config import load_cfg
from biam.data.packed import PackedDataset, PackedFormatError, PackedWriter, read_manifest
from biam.engine import checkpoint as ckpt
from biam.extraction import FeatureExtractor
from biam.modeling import build_model

from helpers import TINY_MODEL_OPTS

TESTS = Path(__file__).resolve().parents[1]


def test_registry_lists_both_and_unknown_names_are_errors():
    # The CLIP backbones (issue #24) are registered beside the two torchvision ones.
    assert list_backbones() == ["clip_rn50", "clip_vit_b16", "resnet101", "vgg19"]
    with pytest.raises(BackboneError, match="unknown backbone 'vit'.*clip_rn50, clip_vit_b16, resnet101, vgg19"):
        get_backbone("vit")


@pytest.mark.parametrize("name", ["vgg19", "resnet101"])
def test_stated_shapes_match_the_modules_on_a_random_image(name):
    bb = get_backbone(name)
    net = bb.load_net(None, 0)
    extractor = FeatureExtractor(net, name)
    image = torch.randn(1, 3, bb.input_size, bb.input_size)
    fmap = extractor.body(image)
    assert tuple(fmap.shape) == (1, bb.channels, *bb.grid)
    regions, scene = extractor(image)
    assert regions.shape == (1, bb.channels, bb.num_regions) and scene.shape == (1, bb.scene_dim)
    assert torch.isfinite(regions).all() and torch.isfinite(scene).all()
    assert regions.abs().sum() > 0 and scene.abs().sum() > 0
    # Region index = row * cols + col, as the model reshapes them.
    assert torch.equal(regions[0, :, 1 * bb.grid[1] + 2], fmap[0, :, 1, 2])
    if name == "resnet101":
        # The scene feature is the pooled layer4 output, what ResNet's own classifier reads.
        torch.testing.assert_close(scene, torch.flatten(net.avgpool(fmap), 1))
    with pytest.raises(ValueError, match=f"expects \\(B, 3, {bb.input_size}, {bb.input_size}\\)"):
        extractor(torch.randn(1, 3, bb.input_size // 2, bb.input_size // 2))


def _write(root, backbone, channels, scene_dim, n=2):
    writer = PackedWriter(root, "train", dataset="toy", seen_labels=["a"], unseen_labels=["b"],
                          scene_source="test", backbone=backbone)
    writer.append(np.ones((n, channels, 196), np.float32), np.ones((n, 2), np.int8), [f"i{i}" for i in range(n)],
                  scene=np.ones((n, scene_dim), np.float32))
    writer.close()


def test_manifest_records_the_backbone_and_old_manifests_read_as_vgg19(tmp_path):
    _write(tmp_path / "r", "resnet101", 2048, 2048)
    manifest = read_manifest(tmp_path / "r")
    assert manifest["backbone"] == {"name": "resnet101", "input_size": 448, "grid": [14, 14], "channels": 2048,
                                    "scene_dim": 2048}
    ds = PackedDataset(tmp_path / "r", "train")
    assert (ds.backbone.name, ds.channels, ds.num_regions, ds.scene_dim) == ("resnet101", 2048, 196, 2048)
    assert ds.read_slice(0, 2)["regions"].shape == (2, 2048, 196)

    # VGG19-shaped features do not fit a ResNet-101 writer: the field and shapes are named.
    with pytest.raises(ValueError, match=r"field 'regions'.*expected \(1, 2048, 196\)"):
        PackedWriter(tmp_path / "r", "test", dataset="toy", seen_labels=["a"], unseen_labels=["b"],
                     scene_source="test", backbone="resnet101").append(
            np.ones((1, 512, 196), np.float32), np.ones((1, 2), np.int8), ["x"], scene=np.ones((1, 2048), np.float32))
    # A second split of another backbone in the same folder is refused naming both.
    with pytest.raises(PackedFormatError, match="field 'backbone'.*resnet101.*vgg19"):
        PackedWriter(tmp_path / "r", "test", dataset="toy", seen_labels=["a"], unseen_labels=["b"], scene_source="test")

    # Data written before manifests recorded the backbone: the field is absent, it reads as VGG19.
    _write(tmp_path / "v", "vgg19", 512, 4096)
    path = tmp_path / "v" / "manifest.json"
    old = json.loads(path.read_text())
    del old["backbone"]
    path.write_text(json.dumps(old))
    ds = PackedDataset(tmp_path / "v", "train")
    assert (ds.backbone.name, ds.channels, ds.scene_dim) == ("vgg19", 512, 4096)
    # ... and a writer resuming it (VGG19) accepts it.
    PackedWriter(tmp_path / "v", "test", dataset="toy", seen_labels=["a"], unseen_labels=["b"], scene_source="test")

    # A recorded width that is not the backbone's is named.
    bad = dict(old, backbone={"name": "vgg19", "channels": 2048})
    with pytest.raises(BackboneError, match="field 'backbone.channels': 2048.*'vgg19' has 512"):
        backbone_of_manifest(bad, "m.json")


def data_backbone(cfg):
    """The backbone the trainer and the evaluator build the model for: MODEL.BACKBONE checked
    against (or, when "", read from) the manifest at DATA.ROOT."""
    return resolve_backbone(cfg.MODEL.BACKBONE, cfg.DATA.ROOT)


def test_model_widths_come_from_the_manifest_and_a_named_backbone_must_match(tmp_path):
    _write(tmp_path / "r", "resnet101", 2048, 2048)
    cfg = load_cfg(None, TINY_MODEL_OPTS + ["DATA.ROOT", str(tmp_path / "r")])
    model = build_model(cfg, data_backbone(cfg))
    assert model.hparams()["feature_dim"] == 2048 and model.hparams()["scene_dim"] == 2048
    assert model.hparams()["backbone"] == "resnet101"
    assert tuple(model.conv_3X3.body.weight.shape[1:2]) == (2048,)
    # No data: VGG19 widths, as the published checkpoints.
    none = load_cfg(None, TINY_MODEL_OPTS + ["DATA.ROOT", str(tmp_path / "none")])
    plain = build_model(none, data_backbone(none))
    assert (plain.feature_dim, plain.scene_dim, plain.backbone) == (512, 4096, "vgg19")
    assert build_model(cfg, "vgg19").feature_dim == 512  # an explicit argument wins
    with pytest.raises(BackboneError, match="MODEL.BACKBONE = 'vgg19'.*made by backbone 'resnet101'"):
        resolve_backbone("vgg19", tmp_path / "r")


def test_checkpoint_of_another_backbone_is_refused_naming_both(tmp_path):
    _write(tmp_path / "r", "resnet101", 2048, 2048)
    vgg_cfg = load_cfg(None, TINY_MODEL_OPTS + ["DATA.ROOT", str(tmp_path / "none")])
    res_cfg = load_cfg(None, TINY_MODEL_OPTS + ["DATA.ROOT", str(tmp_path / "r")])
    vgg_model, res_model = build_model(vgg_cfg, data_backbone(vgg_cfg)), build_model(res_cfg, data_backbone(res_cfg))
    published = tmp_path / "published.pth"
    torch.save(vgg_model.state_dict(), published)  # plain state dict, as the published files
    ours = tmp_path / "ours.pth"
    torch.save(ckpt.model_file(res_model), ours)
    assert ckpt.checkpoint_backbone(ckpt.load_checkpoint(str(published))) == "vgg19"
    assert ckpt.checkpoint_backbone(ckpt.load_checkpoint(str(ours))) == "resnet101"

    with pytest.raises(ckpt.CheckpointError, match="trained on vgg19 features, but the model is built for resnet101"):
        ckpt.load_model_weights(res_model, str(published))
    with pytest.raises(ckpt.CheckpointError, match="trained on resnet101 features, but the model is built for vgg19"):
        ckpt.load_model_weights(build_model(vgg_cfg), str(ours))
    # Same backbone: loads, as before.
    ckpt.load_model_weights(build_model(vgg_cfg), str(published))
    ckpt.load_model_weights(build_model(res_cfg, data_backbone(res_cfg)), str(ours))
    # biam-predict extracts with the checkpoint's backbone unless MODEL.BACKBONE names one.
    from biam.engine.predict import predict_backbone

    assert predict_backbone(vgg_cfg, str(ours)).name == "resnet101"
    assert predict_backbone(vgg_cfg, str(published)).name == "vgg19"
    named = load_cfg(None, TINY_MODEL_OPTS + ["MODEL.BACKBONE", "vgg19"])
    assert predict_backbone(named, str(ours)).name == "vgg19"  # then refused when the weights load


def test_config_backbone_must_be_registered():
    from biam.config import ConfigError

    with pytest.raises(ConfigError, match="MODEL.BACKBONE = 'vit'.*'resnet101', 'vgg19'"):
        load_cfg(None, ["MODEL.BACKBONE", "vit"])


def test_resnet101_extract_train_evaluate(tmp_path):
    """4 generated images through ResNet-101 (random weights, 448 x 448), 1 epoch, evaluation."""
    from biam.demo import shapes as shapes_demo
    from biam.cli.evaluate import main as evaluate_main
    from biam.engine.trainer import Trainer

    import importlib.util

    demo = tmp_path / "shapes"
    shapes_demo.generate(demo, num_images=4, size=32, seed=3, dim=8)
    out = tmp_path / "packed"
    spec = importlib.util.spec_from_file_location("fe_extract_own_bb", TESTS.parent / "feature_extraction" / "extract_own.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    rc = script.main(["--images", str(demo / "images"), "--annotations", str(demo / "tags.csv"),
                      "--seen", str(demo / "seen.txt"), "--unseen", str(demo / "unseen.txt"),
                      "--word-vectors", str(demo / "word_vectors.txt"), "--out", str(out),
                      "--backbone", "resnet101", "--random-weights", "0", "--batch-size", "2", "--workers", "0",
                      "--dtype", "float32",  # random-init ResNet-101 activations overflow float16
                      "--device", "cpu", "--test-fraction", "0.5", "--seed", "1"])
    assert rc == 0
    assert read_manifest(out)["backbone"]["name"] == "resnet101"
    train = PackedDataset(out, "train")
    assert train.read_slice(0, len(train))["regions"].shape == (len(train), 2048, 196)
    assert train.read_slice(0, len(train))["scene"].shape == (len(train), 2048)

    opts = ["MODEL.CHANNEL_DIM", "16", "MODEL.HEADS", "2", "MODEL.JOINT_DIM", "32", "MODEL.EMBED_DIM", "8",
            "DATA.NUM_WORKERS", "0", "SOLVER.BATCH_SIZE", "4", "EVAL.BATCH_SIZE", "4", "SOLVER.MAX_EPOCHS", "1",
            "SOLVER.WARMUP_EPOCHS", "0", "SOLVER.FINETUNE_EPOCHS", "0", "PLOT_CURVE", "False", "DEVICE", "cpu",
            "DATA.ROOT", str(out), "DATA.DATASET", "own"]  # the dataset extract_own records
    run = tmp_path / "run"
    Trainer(load_cfg(None, opts + ["OUTPUT_DIR", str(run)])).run()
    last = run / "checkpoints" / "checkpoint_epoch_0001.pth"
    saved = torch.load(last, weights_only=True)
    assert saved["model_hparams"]["backbone"] == "resnet101" and saved["model_hparams"]["feature_dim"] == 2048
    assert evaluate_main(["--checkpoint", str(last), *opts, "OUTPUT_DIR", str(tmp_path / "ev")]) == 0
    metrics = json.loads(next((tmp_path / "ev").rglob("metrics.json")).read_text())
    assert 0.0 <= metrics["zsl"]["mAP"] <= 1.0
