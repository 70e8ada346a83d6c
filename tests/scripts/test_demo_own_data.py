"""scripts/demo_own_data.sh at its tiny size: generated shapes -> extract_own.py (random VGG19)
-> biam-train -> biam-evaluate -> biam-predict --visualize, each writing its own folder, with
KEY VALUE overrides as README and docs/own_data.md show them (one run serves both checks: the
demo takes about 40 s)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_demo_runs_end_to_end_and_beats_chance_on_unseen_tags(tmp_path):
    out = tmp_path / "demo_own"
    env = dict(os.environ, PYTHON=sys.executable, DEMO_DIR=str(out), DEMO_OWN_SIZE="tiny")
    # An override every step must see: the epochs decide the checkpoint evaluated and used to tag.
    done = subprocess.run(["sh", str(ROOT / "scripts" / "demo_own_data.sh"), "SOLVER.MAX_EPOCHS", "29"],
                          capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    for step in range(1, 6):
        assert f"== {step}/5" in done.stdout
    assert "ZSL chance" in done.stdout and "GZSL chance" in done.stdout

    shapes = json.loads((out / "shapes" / "shapes_demo.json").read_text())
    assert shapes["num_images"] == 30 and shapes["num_test"] == 10
    manifest = json.loads((out / "packed" / "manifest.json").read_text())
    assert manifest["scene"]["source"] == "random-seed-0"  # the random backbone is recorded
    assert manifest["splits"]["train"]["num_images"] == 20 and manifest["splits"]["test"]["num_images"] == 10

    # biam-evaluate wrote its own folder beside the run, with the chance levels.
    evaluation = out / "run" / "eval" / "test-checkpoint_epoch_0029" / "metrics.json"
    metrics = json.loads(evaluation.read_text())
    zsl, chance = metrics["zsl"], metrics["chance"]["zsl"]
    # 10 test images and 6 tags make the chance level high and noisy (about 40), so the bar is 3
    # points above it.
    assert zsl["mAP"] >= chance["mAP"] + 0.03, (zsl, chance)
    assert metrics["gzsl"]["mAP"] > metrics["chance"]["gzsl"]["mAP"]

    # Two attention figures, one per predicted test image, each a real picture.
    figures = sorted((out / "attention").glob("*_attention.png"))
    assert [f.name for f in figures] == ["shape_00020_attention.png", "shape_00021_attention.png"]
    for figure in figures:
        with Image.open(figure) as img:
            assert min(img.size) > 100
