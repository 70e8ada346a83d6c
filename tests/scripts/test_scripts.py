"""The shell entry points: the demo end to end, and clear stops when data or weights are missing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def sh(script, *args, env=None, timeout=600, cwd=ROOT):
    full_env = dict(os.environ, PYTHON=sys.executable, **(env or {}))
    return subprocess.run(["sh", str(ROOT / "scripts" / script), *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=cwd)


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


def _write_released_openimages(src: Path, seed=0, num_seen=30, num_unseen=40, num_eval=24, num_test=40):
    """A small Open Images test set in the released layout (datasets/OpenImages/README.md),
    written with the project's own tools. Returns (test feature file, evaluated unseen indices).

    Labels are sparse with the cases the original's evaluation treats apart: seen and evaluated
    unseen labels never annotated, labels annotated only -1, images without any positive, images
    with positives only among the evaluated unseen labels or only among the seen ones."""
    import pickle

    import h5py
    import numpy as np

    from biam.demo.synthetic import feature_pool, write_released_keys

    rng = np.random.default_rng(seed)
    base = src / "OpenImages"
    (base / "2018_04").mkdir(parents=True)
    (base / "wiki_contexts").mkdir()
    (base / "2018_04" / "classes-trainable.txt").write_text("".join(f"/m/s{i}\n" for i in range(num_seen)))
    with open(base / "2018_04" / "unseen_labels.pkl", "wb") as fh:
        pickle.dump(np.array([f"/m/u{i}" for i in range(num_unseen)], dtype=object), fh, protocol=2)
    top = rng.permutation(num_unseen)[:num_eval]
    (base / "2018_04" / "top_400_unseen.csv").write_text("".join(f"{i}\n" for i in top))
    with open(base / "wiki_contexts" / "OpenImage_w2v_context_window_10_glove-wiki-gigaword-300.pkl", "wb") as fh:
        pickle.dump([rng.standard_normal((num_seen, 300)).astype(np.float32),
                     rng.standard_normal((num_unseen, 300)).astype(np.float32)], fh, protocol=2)
    width = num_seen + num_unseen
    labels = np.where(rng.random((num_test, width)) < 0.4, np.where(rng.random((num_test, width)) < 0.35, 1, -1), 0)
    seen, unseen = labels[:, :num_seen], labels[:, num_seen:]  # views
    seen[:, [0, 1]] = 0
    unseen[:, top[0]] = 0  # never annotated
    for column in (seen[:, 2], unseen[:, top[1]]):
        column[column == 1] = -1  # annotated, never +1
    labels[0:3] = np.minimum(labels[0:3], 0)  # no positive at all
    seen[3:6] = np.minimum(seen[3:6], 0)  # positives only among the evaluated unseen labels
    unseen[3:6] = np.minimum(unseen[3:6], 0)
    unseen[3:6, top[2]] = 1
    unseen[6:9, top] = np.minimum(unseen[6:9, top], 0)  # positives only among the seen labels
    seen[6:9, 3] = 1
    pool = feature_pool(rng, 8)
    with h5py.File(base / "test.h5", "w") as f:
        for i in range(num_test):
            write_released_keys(f, f"{i:016x}", {"features": pool[i % len(pool)] * rng.random(),
                                                  "seenlabels": seen[i].astype(np.int8),
                                                  "unseenlabels": unseen[i].astype(np.int8)})
    return base / "test.h5", top


def test_openimages_evaluation_of_the_published_pair_prints_every_row_of_each_file(tmp_path):
    """As a user checks a set-up: the published pair in pretrained_weights/ (here two random
    16-head state dicts, configs/openimages.yaml), a release-layout set converted with
    biam-convert, then sh scripts/evaluate_openimages.sh. As the original's
    evaluate_openimages.py: SEEN, ZSL and GZSL of model_best_gzsl.pth, then of
    model_best_zsl.pth; the summary takes ZSL from the ZSL file and GZSL from the GZSL file; the
    published numbers equal the original's loops applied to scores computed directly."""
    import numpy as np
    import torch

    from biam.cli.convert import main as convert_main
    from biam.config import load_cfg
    from biam.data.packed import PackedDataset, load_embeddings
    from biam.evaluation.reference import PUBLISHED_OPENIMAGES_KS, published_loop_openimages
    from biam.modeling import build_model

    test_h5, _ = _write_released_openimages(tmp_path / "datasets")
    packed = tmp_path / "packed"
    assert convert_main(["openimages", "--src", str(tmp_path / "datasets"), "--out", str(packed), "--test-h5",
                         str(test_h5), "--splits", "test", "--scene-fallback", "random", "--shard-size", "16"]) == 0
    cfg = load_cfg(str(ROOT / "configs" / "openimages.yaml"))
    assert cfg.MODEL.HEADS == 16 and cfg.EVAL.PUBLISHED_OPENIMAGES_AP
    (tmp_path / "pretrained_weights").mkdir()
    models = {}
    for seed, name in enumerate(("model_best_zsl", "model_best_gzsl")):
        torch.manual_seed(seed)
        models[name] = build_model(cfg).eval()
        torch.save(models[name].state_dict(), tmp_path / "pretrained_weights" / f"{name}.pth")
    out = tmp_path / "out"
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    done = sh("evaluate_openimages.sh", "DATA.ROOT", str(packed), "OUTPUT_DIR", str(out), "DEVICE", "cpu",
              "DATA.NUM_WORKERS", "0", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "eval" / "test-model_best_zsl" / "metrics.json").read_text())
    assert set(metrics) == {"zsl", "gzsl", "files"}
    files = metrics["files"]
    assert [Path(f["weights"]).name for f in files] == ["model_best_gzsl.pth", "model_best_zsl.pth"]
    assert metrics["zsl"] == files[1]["metrics"]["zsl"] and metrics["gzsl"] == files[0]["metrics"]["gzsl"]

    # The printed log, file by file in the original's order, then the summary.
    text = done.stdout
    at = [text.index(f"pretrained_weights/{name}.pth on") for name in ("model_best_gzsl", "model_best_zsl")]
    assert at[0] < at[1] < text.index("summary, ZSL: pretrained_weights/model_best_zsl.pth")
    for block in (text[at[0]:at[1]], text[at[1]:text.index("summary")]):
        lines = block.splitlines()
        assert "pub.pooled mAP" in lines[1] and "pub.weighted mAP" in lines[1]
        assert [line.split()[0] for line in lines[2:5]] == ["SEEN", "ZSL", "GZSL"]

    # Each file against the original's loops on scores computed here, all test images at once.
    test = PackedDataset(packed, "test")
    data = test.read_slice(0, len(test))
    seen_emb, unseen_emb = load_embeddings(packed)
    evaluated = np.asarray(test.manifest["unseen_eval"])
    emb = np.concatenate([seen_emb, unseen_emb[evaluated]]).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = data["labels"][:, np.concatenate([np.arange(30), 30 + evaluated])]
    for entry, name in zip(files, ("model_best_gzsl", "model_best_zsl")):
        with torch.no_grad():
            scores = models[name](torch.from_numpy(data["regions"].astype(np.float32)), torch.from_numpy(emb),
                                  torch.from_numpy(data["scene"].astype(np.float32)))
        ref = published_loop_openimages(scores.numpy(), labels, num_seen=30)
        assert ref["seen"]["num_mean_columns"] == 28 and ref["gzsl"]["num_mean_columns"] == 28 + 23
        assert ref["gzsl"]["num_images"] == 37 and ref["zsl"]["num_images"] < 34
        for task in ("seen", "zsl", "gzsl"):
            got = entry["metrics"][task]
            assert got["num_images"] == ref[task]["num_images"]
            keys = ["published_pooled_mAP", "published_weighted_pooled_mAP"]
            keys += [f"{m}@{k}" for k in PUBLISHED_OPENIMAGES_KS[task] for m in ("F1", "P", "R")]
            for key in keys:
                assert got[key] == pytest.approx(ref[task][key], abs=1e-6), (name, task, key)


def test_nus_training_and_evaluation_scripts_run_as_documented_with_overrides(tmp_path):
    """sh scripts/train_nus.sh KEY VALUE ... and sh scripts/evaluate_nus.sh CKPT KEY VALUE ... on tiny data."""
    from helpers import TINY_MODEL_OPTS, make_tiny_packed

    packed = make_tiny_packed(tmp_path / "packed")
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    opts = [*TINY_MODEL_OPTS, "SOLVER.MAX_EPOCHS", "2", "SOLVER.FINETUNE_EPOCHS", "0", "EVAL.TEST_AFTER_FINETUNE",
            "False", "DATA.ROOT", str(packed)]
    run = tmp_path / "run"
    done = sh("train_nus.sh", *opts, "OUTPUT_DIR", str(run), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((run / "run.json").read_text())["checkpoints"][-1] == "checkpoint_epoch_0002.pth"
    done = sh("evaluate_nus.sh", str(run / "model_best.pth"), *opts, "OUTPUT_DIR", str(run), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert set(json.loads((run / "eval" / "test-model_best" / "metrics.json").read_text())) >= {"zsl", "gzsl"}
