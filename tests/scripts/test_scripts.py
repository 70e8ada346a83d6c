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
    for script in (ROOT / "scripts").glob("*.sh"):
        done = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
        assert done.returncode == 0, (script, done.stderr)
        assert "[[" not in script.read_text(), f"{script.name}: bash-only syntax"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message shown without a GPU")
def test_gpu_benchmark_script_says_when_there_is_no_gpu(tmp_path):
    done = sh("benchmark_gpu.sh", str(tmp_path / "bench"))
    assert done.returncode != 0
    assert "no CUDA device" in done.stderr and "python -m biam.benchmark" in done.stderr
    assert not (tmp_path / "bench").exists()  # nothing half-made


def load_gpu_check():
    """scripts/gpu_check.py (outside the package) as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_plan_fits_one_device_call():
    """The prepared GPU check's plan: its parts in order, each with a time limit, the whole
    budget under 9 minutes; a dry run gets longer limits; an unknown part is refused."""
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "unused", "--plan"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [l.split()[0] for l in lines[:4]] == ["tests", "train", "eval", "bench"]
    assert "budget 530 s" in lines[-1]
    gc = load_gpu_check()
    args = gc.parse_args(["out"])
    assert args.budget < 9 * 60 and not args.dry_run
    assert sum(gc.ESTIMATES.values()) < args.budget
    dry = gc.parse_args(["out", "--dry-run"])
    assert [s["limit_s"] for s in gc.plan(dry)] == [round(gc.PART_LIMITS[p] * gc.DRY_RUN_SLACK) for p in gc.PARTS]
    with pytest.raises(SystemExit, match="unknown part 'gpu'"):
        gc.plan(gc.parse_args(["out", "--parts", "tests,gpu"]))
    assert not (ROOT / "unused").exists()  # --plan runs nothing


def test_gpu_check_comparisons_apply_their_tolerances():
    gc = load_gpu_check()
    ref = {"losses": [2.0, 1.0], "metrics": {"zsl": {"mAP": 0.5}, "gzsl": {"mAP": 0.2}}}
    close = {"losses": [2.01, 1.004], "metrics": {"zsl": {"mAP": 0.505}, "gzsl": {"mAP": 0.2}}}
    c = gc.compare_runs(close, ref, *gc.TOLERANCES["fp32"])
    assert c["passed"] and c["max_loss_rel_diff"] == pytest.approx(0.005) and c["max_metric_abs_diff"] == pytest.approx(0.005)
    far = {"losses": [2.0, 1.2], "metrics": ref["metrics"]}
    assert not gc.compare_runs(far, ref, *gc.TOLERANCES["bf16_compile"])["passed"]  # 20% off in epoch 2
    assert not gc.compare_runs({"losses": [2.0], "metrics": ref["metrics"]}, ref, 1.0, 1.0)["passed"]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the run without a GPU")
def test_gpu_check_refuses_without_gpu_and_its_dry_run_reports_each_part(tmp_path):
    done = sh("gpu_check.sh", str(tmp_path / "real"))
    assert done.returncode == 2 and "no CUDA device" in done.stderr and "--dry-run" in done.stderr
    assert not (tmp_path / "real" / "gpu_check.json").exists()
    # The dry run's cheapest part (the CUDA tests, which skip cleanly here) through the whole driver.
    out = tmp_path / "dry"
    done = sh("gpu_check.sh", str(out), "--dry-run", "--parts", "tests")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["complete"] and report["meta"]["dry_run"]
    tests = report["parts"]["tests"]
    assert tests["status"] == "ok" and tests["passed"] and tests["failures"] == tests["errors"] == 0
    assert tests["tests"] == tests["skipped"] >= 7  # every CUDA-marked test skipped, none failed
    assert (out / "logs" / "tests.log").is_file() and "tests" in done.stdout


def test_openimages_evaluation_takes_zsl_and_gzsl_from_two_files(tmp_path):
    """The original evaluates ZSL with model_best_zsl.pth and GZSL with model_best_gzsl.pth,
    both with 16 heads (configs/openimages.yaml); one file serves both rows when given alone."""
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import make_tiny_packed

    from biam.config import load_cfg
    from biam.modeling import build_model

    # 24 seen labels: the Open Images SEEN row takes its top 20 among the seen labels.
    root = make_tiny_packed(tmp_path / "oi", num_train=16, num_test=24, num_seen=24, num_unseen=20,
                            dataset="openimages")
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
