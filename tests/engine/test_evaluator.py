"""biam-evaluate: its metrics.json equals the protocol applied to scores computed directly."""

import json
import os

import numpy as np
import pytest
import torch

from biam.config import load_cfg
from biam.data.packed import PackedDataset, load_embeddings
from biam.cli.evaluate import main
from biam.datasets.nus_wide import evaluate_nus_wide
from biam.modeling import build_model

from helpers import TINY_MODEL_OPTS


def test_evaluator_matches_direct_computation(tiny_packed, tmp_path):
    cfg = load_cfg(None, TINY_MODEL_OPTS + ["DATA.ROOT", str(tiny_packed)])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    weights = tmp_path / "published_style.pth"
    torch.save(model.state_dict(), weights)  # a plain state dict, as the published checkpoints are

    out = tmp_path / "eval"
    rc = main(["--checkpoint", str(weights), *TINY_MODEL_OPTS, "DATA.ROOT", str(tiny_packed),
               "OUTPUT_DIR", str(out), "EVAL.BATCH_SIZE", "7"])
    assert rc == 0
    # Evaluation writes its own folder, named by the split and the weights file.
    out = out / "eval" / "test-published_style"
    saved = json.loads((out / "metrics.json").read_text())

    # Direct: every test image at once, embeddings L2-normalised, seen columns then unseen.
    test = PackedDataset(tiny_packed, "test")
    data = test.read_slice(0, len(test))
    seen, unseen = load_embeddings(tiny_packed)
    emb = np.concatenate([seen, unseen]).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    with torch.no_grad():
        scores = model(torch.from_numpy(data["regions"].astype(np.float32)), torch.from_numpy(emb),
                       torch.from_numpy(data["scene"].astype(np.float32)))
    direct = evaluate_nus_wide(scores, torch.from_numpy(data["labels"]), num_seen=test.num_seen).to_dict()
    assert saved.keys() == direct.keys() == {"zsl", "gzsl"}
    for task in direct:
        for key, value in direct[task].items():
            assert saved[task][key] == pytest.approx(value, abs=1e-6), (task, key)
    assert 0.0 <= saved["zsl"]["mAP"] <= 1.0  # fractions, not percent
    assert (out / "config.yaml").is_file()


def test_evaluator_requires_weights(tiny_packed, capsys):
    assert main([*TINY_MODEL_OPTS, "DATA.ROOT", str(tiny_packed)]) == 2
    assert "--checkpoint" in capsys.readouterr().err


def test_zsl_and_gzsl_rows_from_two_files_as_the_original_open_images_evaluation(tiny_packed, tmp_path):
    cfg = load_cfg(None, TINY_MODEL_OPTS + ["DATA.ROOT", str(tiny_packed)])
    files = {}
    for name, seed in (("model_best_zsl.pth", 0), ("model_best_gzsl.pth", 1)):
        torch.manual_seed(seed)
        files[name] = tmp_path / name
        torch.save(build_model(cfg).state_dict(), files[name])  # published plain state dicts

    def run(out, *args):
        assert main([*args, *TINY_MODEL_OPTS, "DATA.ROOT", str(tiny_packed), "OUTPUT_DIR", str(tmp_path / out)]) == 0
        # Each evaluation writes its own folder, named by the (ZSL) weights file.
        stem = os.path.splitext(os.path.basename(args[1]))[0]
        return json.loads((tmp_path / out / "eval" / f"test-{stem}" / "metrics.json").read_text())

    zsl_alone = run("a", "--checkpoint", str(files["model_best_zsl.pth"]))
    gzsl_alone = run("b", "--checkpoint", str(files["model_best_gzsl.pth"]))
    assert zsl_alone["gzsl"]["mAP"] != gzsl_alone["gzsl"]["mAP"]  # the two files differ
    pair = run("pair", "--checkpoint", str(files["model_best_zsl.pth"]),
               "--gzsl-checkpoint", str(files["model_best_gzsl.pth"]))
    assert set(pair) == {"zsl", "gzsl", "files"}
    assert pair["zsl"] == zsl_alone["zsl"] and pair["gzsl"] == gzsl_alone["gzsl"]
    # Every row of each file, the GZSL file first, as the original's evaluation prints them.
    assert [f["weights"] for f in pair["files"]] == [str(files["model_best_gzsl.pth"]), str(files["model_best_zsl.pth"])]
    assert pair["files"][0]["metrics"] == gzsl_alone and pair["files"][1]["metrics"] == zsl_alone
    # The same through the config key.
    key = run("key", "--checkpoint", str(files["model_best_zsl.pth"]), "EVAL.GZSL_WEIGHTS", str(files["model_best_gzsl.pth"]))
    assert key == pair
    assert "GZSL: " in (tmp_path / "key" / "eval" / "test-model_best_zsl" / "log.txt").read_text()


def test_own_checkpoint_with_other_heads_is_refused_naming_both_values(tiny_packed, tmp_path, capsys):
    from biam.engine import checkpoint as ckpt

    cfg = load_cfg(None, TINY_MODEL_OPTS + ["DATA.ROOT", str(tiny_packed), "MODEL.HEADS", "4"])
    path = tmp_path / "model_best.pth"
    ckpt.atomic_torch_save(ckpt.model_file(build_model(cfg)), str(path))
    rc = main(["--checkpoint", str(path), *TINY_MODEL_OPTS, "DATA.ROOT", str(tiny_packed),
               "OUTPUT_DIR", str(tmp_path / "eval")])  # TINY_MODEL_OPTS configure 2 heads
    assert rc == 1
    err = capsys.readouterr().err
    assert "model_best.pth" in err and "MODEL.HEADS: checkpoint 4, config 2" in err
    missing = tmp_path / "nope.pth"
    rc = main(["--checkpoint", str(path), "--gzsl-checkpoint", str(missing), *TINY_MODEL_OPTS, "MODEL.HEADS", "4",
               "DATA.ROOT", str(tiny_packed), "OUTPUT_DIR", str(tmp_path / "eval2")])
    assert rc == 1 and f"EVAL.GZSL_WEIGHTS: checkpoint not found: {missing}" in capsys.readouterr().err
