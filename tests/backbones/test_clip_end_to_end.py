"""A 7 x 7 grid end to end: own tagged images -> extract_own --backbone clip_rn50 (random CLIP
weights) -> biam-train a few steps -> biam-evaluate. BiAM reads the grid and widths from the data's
backbone; the manifest records the backbone and its weights."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("open_clip")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from biam.cli import evaluate as evaluate_cli  # noqa: E402
from biam.cli import extract_own, train  # noqa: E402
from biam.data.packed import PackedDataset, read_manifest  # noqa: E402
from biam.demo import shapes as shapes_demo  # noqa: E402

from helpers import TINY_MODEL_OPTS  # noqa: E402


def test_clip_rn50_features_train_and_evaluate(tmp_path, capsys):
    demo = tmp_path / "shapes"
    shapes_demo.generate(demo, num_images=20, num_test=6, size=64, seed=3, dim=8)
    packed = tmp_path / "packed"
    rc = extract_own.main(["--images", str(demo / "images"), "--annotations", str(demo / "tags.csv"),
                           "--seen", str(demo / "seen.txt"), "--unseen", str(demo / "unseen.txt"),
                           "--train-list", str(demo / "train.txt"), "--test-list", str(demo / "test.txt"),
                           "--word-vectors", str(demo / "word_vectors.txt"), "--out", str(packed),
                           "--backbone", "clip_rn50", "--random-weights", "0", "--dtype", "float32",
                           "--batch-size", "8", "--workers", "0", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    manifest = read_manifest(packed)
    assert manifest["backbone"] == {"name": "clip_rn50", "input_size": 224, "grid": [7, 7], "channels": 2048,
                                    "scene_dim": 1024}
    assert manifest["scene"] == {"present": True, "source": "clip_rn50:open_clip:RN50:random-seed-0"}
    ds = PackedDataset(packed, "test")
    data = ds.read_slice(0, len(ds))
    ds.close()
    assert data["regions"].shape == (6, 2048, 49) and data["scene"].shape == (6, 1024)

    run = tmp_path / "run"
    opts = TINY_MODEL_OPTS + ["DATA.ROOT", str(packed), "DATA.DATASET", "own", "MODEL.EMBED_DIM", "8",
                              "MODEL.TOPK", "6", "SOLVER.MAX_EPOCHS", "2", "SOLVER.WARMUP_EPOCHS", "1",
                              "SOLVER.FINETUNE_EPOCHS", "0", "EVAL.START_EPOCH", "2", "EVAL.PERIOD", "1",
                              "SOLVER.BATCH_SIZE", "4", "DATA.TRAIN_FRACTION", "1.0"]
    assert train.main([*opts, "OUTPUT_DIR", str(run)]) == 0, capsys.readouterr().err
    ckpt = run / "checkpoints" / "checkpoint_epoch_0002.pth"
    assert ckpt.is_file()
    assert evaluate_cli.main(["--checkpoint", str(ckpt), *opts, "OUTPUT_DIR", str(run)]) == 0, capsys.readouterr().err
    metrics = json.loads(next((run / "eval").glob("*/metrics.json")).read_text())
    assert 0.0 <= metrics["zsl"]["mAP"] <= 100.0 and metrics["gzsl"]["num_images"] == 6
