"""The shell entry points: the demo end to end, and clear stops when data or weights are missing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def sh(script, *args, env=None, timeout=600):
    full_env = dict(os.environ, PYTHON=sys.executable, **(env or {}))
    return subprocess.run(["sh", str(ROOT / "scripts" / script), *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=ROOT)


def test_demo_learns_unseen_labels_far_above_chance(tmp_path):
    """The real demo script on a smaller synthetic set: generate, convert, train, evaluate."""
    out = tmp_path / "demo"
    done = sh("demo.sh", "SOLVER.MAX_EPOCHS", "4", "EVAL.START_EPOCH", "2",
              env={"DEMO_DIR": str(out), "DEMO_NUM_TRAIN": "320", "DEMO_NUM_TEST": "120"})
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    zsl, chance = metrics["zsl"], metrics["chance"]["zsl"]
    # Unseen labels are reachable only through their embeddings: far above chance means transfer.
    assert zsl["mAP"] > 2 * chance["mAP"], (zsl, chance)
    assert zsl["F1@3"] > 2 * chance["F1@3"]
    assert "ZSL chance" in done.stdout and "GZSL" in done.stdout
    assert (out / "run" / "curve.png").stat().st_size > 1000
    manifest = json.loads((out / "packed" / "manifest.json").read_text())
    assert manifest["scene"]["source"].startswith("random")  # the fallback is recorded


@pytest.mark.parametrize("script", ["train_nus.sh", "train_openimages.sh"])
def test_training_scripts_name_missing_data_and_the_command_that_makes_it(script, tmp_path):
    missing = tmp_path / "nowhere"
    done = sh(script, "DATA.ROOT", str(missing))
    assert done.returncode != 0
    assert f"missing: {missing}/manifest.json" in done.stderr
    assert "biam-convert" in done.stderr and "README.md" in done.stderr


@pytest.mark.parametrize("script, default", [("evaluate_nus.sh", "model_best_nus.pth"),
                                             ("evaluate_openimages.sh", "model_best_zsl.pth")])
def test_evaluation_scripts_name_missing_weights_and_where_to_get_them(script, default, tmp_path):
    done = sh(script, "DATA.ROOT", str(tmp_path))
    assert done.returncode != 0
    assert f"missing: pretrained_weights/{default}" in done.stderr
    assert "pretrained_weights/README.md" in done.stderr
    # With weights present, the missing data is named next.
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    done = sh(script, str(weights), "DATA.ROOT", str(tmp_path / "none"))
    assert done.returncode != 0 and f"missing: {tmp_path / 'none'}/manifest.json" in done.stderr


def test_scripts_are_posix_sh():
    for script in [*(ROOT / "scripts").glob("*.sh"), *(ROOT / ".ci").glob("*.sh")]:
        done = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
        assert done.returncode == 0, (script, done.stderr)
        assert "[[" not in script.read_text(), f"{script.name}: bash-only syntax"


def test_openimages_evaluation_takes_zsl_and_gzsl_from_two_files(tmp_path):
    """The original evaluates ZSL with model_best_zsl.pth and GZSL with model_best_gzsl.pth,
    both with 16 heads (configs/openimages.yaml); one file serves both rows when given alone."""
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import make_tiny_packed

    from biam.config import load_cfg
    from biam.modeling import build_model

    root = make_tiny_packed(tmp_path / "oi", num_train=16, num_test=24, num_unseen=20, dataset="openimages")
    cfg = load_cfg(str(ROOT / "configs" / "openimages.yaml"))
    assert cfg.MODEL.HEADS == 16
    files = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        files.append(tmp_path / f"w{seed}.pth")
        torch.save(build_model(cfg).state_dict(), files[-1])
    results = {}
    for name, args in (("pair", files), ("zsl", files[:1]), ("gzsl", files[1:])):
        out = tmp_path / name
        done = sh("evaluate_openimages.sh", *map(str, args), "DATA.ROOT", str(root), "OUTPUT_DIR", str(out),
                  "DEVICE", "cpu", "DATA.NUM_WORKERS", "0", "EVAL.PUBLISHED_OPENIMAGES_AP", "False")
        assert done.returncode == 0, done.stderr[-3000:]
        # Each evaluation writes its own folder, named by the (ZSL) weights file.
        results[name] = json.loads((out / "eval" / f"test-{args[0].stem}" / "metrics.json").read_text())
    assert "GZSL: " in (tmp_path / "pair" / "eval" / "test-w0" / "log.txt").read_text()
    assert results["pair"] == {"zsl": results["zsl"]["zsl"], "gzsl": results["gzsl"]["gzsl"]}
