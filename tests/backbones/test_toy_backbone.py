"""A backbone with a 7 x 7 grid, registered in one test file (tests/backbones/toy_backbone.py),
trains (the channels-last path included, on the CPU), evaluates, predicts and draws attention
maps: nothing in biam/ assumes the 14 x 14 grid of the registered backbones."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from biam.backbones import list_backbones, registry as backbone_registry
from biam.cli.evaluate import main as evaluate_main
from biam.cli.predict import main as predict_main
from biam.config import load_cfg
from biam.data.packed import PackedDataset, PackedWriter, save_embeddings
from biam.engine import checkpoint as ckpt
from biam.engine.trainer import Trainer
from biam.modeling import build_model

from helpers import TINY_MODEL_OPTS

TOY_FILE = Path(__file__).with_name("toy_backbone.py")
MODEL_OPTS = ["MODEL.CHANNEL_DIM", "16", "MODEL.HEADS", "2", "MODEL.JOINT_DIM", "32"]


@pytest.fixture(scope="module")
def toy7():
    """Register ``toy7`` for this module's tests only (other tests list the built-in backbones)."""
    if "toy_backbone" not in sys.modules:
        spec = importlib.util.spec_from_file_location("toy_backbone", TOY_FILE)
        module = importlib.util.module_from_spec(spec)
        sys.modules["toy_backbone"] = module
        spec.loader.exec_module(module)
    bb = sys.modules["toy_backbone"].register()
    yield bb
    backbone_registry._REGISTRY.pop(bb.name)  # no public unregister: a test-only registration
    assert bb.name not in list_backbones()


def write_toy7_packed(root: Path, bb, num_train=64, num_test=32, seed=0) -> Path:
    """Learnable packed data of the toy backbone: each present label lights 4 of the 49 regions."""
    rng = np.random.default_rng(seed)
    num_seen, num_unseen = 8, 6
    emb = rng.normal(size=(num_seen + num_unseen, 300)).astype(np.float32)
    save_embeddings(root, emb[:num_seen], emb[num_seen:])
    proj = rng.normal(size=(bb.channels, 300)).astype(np.float32)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    for split, n in (("train", num_train), ("test", num_test)):
        writer = PackedWriter(root, split, dataset="nus_wide", seen_labels=[f"s{i}" for i in range(num_seen)],
                              unseen_labels=[f"u{i}" for i in range(num_unseen)], shard_size=40,
                              scene_source="random-test", backbone=bb.name, dtype="float32")
        regions = np.abs(rng.normal(scale=0.1, size=(n, bb.channels, bb.num_regions))).astype(np.float32)
        labels = -np.ones((n, num_seen + num_unseen), dtype=np.int8)
        for i in range(n):
            present = (int(rng.integers(num_seen)), int(rng.integers(num_seen + num_unseen)))
            labels[i, list(present)] = 1
            for c in present:
                regions[i, :, rng.choice(bb.num_regions, size=4, replace=False)] += np.maximum(proj @ unit[c], 0)[None, :]
        writer.append(regions, labels, [f"{split}_{i:03d}.jpg" for i in range(n)],
                      scene=np.abs(rng.normal(size=(n, bb.scene_dim))).astype(np.float32))
        writer.close()
    return root


def test_a_7x7_backbone_trains_channels_last_on_the_cpu_evaluates_and_predicts(toy7, tmp_path, capsys):
    packed = write_toy7_packed(tmp_path / "packed", toy7)
    assert PackedDataset(packed, "train").num_regions == 49
    opts = TINY_MODEL_OPTS + ["DATA.ROOT", str(packed), "EVAL.SELECT_METRIC", "mAP", "SOLVER.MAX_EPOCHS", "3",
                              "EVAL.START_EPOCH", "2", "EVAL.PERIOD", "1"]

    # Channels-last on the CPU: the regions are viewed on the backbone's 7 x 7 grid.
    runs = {}
    for setting in ("on", "off"):
        out = tmp_path / f"run-{setting}"
        with Trainer(load_cfg(None, opts + ["CHANNELS_LAST", setting, "OUTPUT_DIR", str(out)])) as trainer:
            assert trainer.channels_last == (setting == "on") and trainer.raw_model.grid == (7, 7)
            weight = trainer.raw_model.conv_3X3.body.weight
            assert weight.is_contiguous(memory_format=torch.channels_last) == (setting == "on")
            trainer.run()
        runs[setting] = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert runs["on"][-1] < runs["on"][0]  # it learns
    # The same maths in another memory layout: the same losses up to float rounding (other conv
    # kernels, whose rounding Adam's per-element steps amplify over the epochs).
    np.testing.assert_allclose(runs["on"], runs["off"], rtol=2e-2)
    assert runs["on"] != runs["off"]  # the layouts really differ (else channels-last did not run)
    best = tmp_path / "run-on" / "model_best.pth"
    assert ckpt.load_checkpoint(str(best))[ckpt.HPARAMS_KEY]["backbone"] == "toy7"

    # Evaluates.
    assert evaluate_main(["--checkpoint", str(best), *opts, "OUTPUT_DIR", str(tmp_path / "ev")]) == 0
    saved = json.loads((tmp_path / "ev" / "eval" / "test-model_best" / "metrics.json").read_text())
    assert 0.0 <= saved["zsl"]["mAP"] <= 1.0 and saved["gzsl"]["num_images"] == 32

    # Predicts from images: the checkpoint's backbone extracts 8 x 7 x 7 regions (seeded random weights).
    rng = np.random.default_rng(1)
    (tmp_path / "imgs").mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (40, 70, 3), dtype=np.uint8)).save(tmp_path / "imgs" / name)
    (tmp_path / "labels.txt").write_text("s0\ns1\nu0\n")
    np.save(tmp_path / "emb.npy", rng.normal(size=(3, 300)).astype(np.float32))
    common = ["--labels", str(tmp_path / "labels.txt"), "--embeddings", str(tmp_path / "emb.npy"),
              "--checkpoint", str(best), "--random-vgg", "0", "--device", "cpu", "--top-k", "2"]
    capsys.readouterr()
    assert predict_main([*common, "--json", str(tmp_path / "imgs"), *MODEL_OPTS]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [Path(r["image"]).name for r in result["results"]] == ["a.png", "b.png"]
    assert all(len(r["labels"]) == 2 for r in result["results"])

    # Draws attention maps on the 7 x 7 grid (biam.engine.visualize reads the grid from the backbone).
    figs = tmp_path / "figs"
    rc = predict_main([*common, "--visualize", str(figs), str(tmp_path / "imgs"), *MODEL_OPTS])
    assert rc == 0, capsys.readouterr().err
    assert sorted(p.name for p in figs.glob("*.png")) == ["a_attention.png", "b_attention.png"]


def test_topk_is_checked_against_the_backbone_at_build_time(toy7):
    cfg = load_cfg(None, MODEL_OPTS + ["MODEL.TOPK", "50"])  # <= 196: no backbone has fewer at config time
    with pytest.raises(ValueError, match=r"MODEL.TOPK = 50; must be in 1..49 \(backbone toy7 has 7 x 7 = 49 regions\)"):
        build_model(cfg, toy7)
    assert build_model(load_cfg(None, MODEL_OPTS + ["MODEL.TOPK", "49"]), toy7).num_regions == 49
