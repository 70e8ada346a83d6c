"""biam-evaluate: its metrics.json equals the protocol applied to scores computed directly."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from biam.config import load_cfg
from biam.data.packed import PackedDataset, load_embeddings
from biam.engine.evaluator import main
from biam.evaluation import evaluate_nus_wide
from biam.modeling import build_model

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
from conftest import TINY_MODEL_OPTS  # noqa: E402


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
