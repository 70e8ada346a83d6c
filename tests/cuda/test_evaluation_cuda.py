"""biam-evaluate on CUDA against the CPU: one checkpoint, the same metrics within 1e-3 in float32
(bf16 autocast within a looser bound, stated below). The CPU variants run the same comparison
with another batch size and with bf16 autocast on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from biam.config import load_cfg
from biam.cli.evaluate import main as evaluate_main
from biam.engine.trainer import Trainer

from helpers import TINY_MODEL_OPTS

CUDA_MARKS = (pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"))
MODEL_OPTS = ["MODEL.CHANNEL_DIM", "16", "MODEL.HEADS", "2", "MODEL.JOINT_DIM", "32", "DATA.NUM_WORKERS", "0"]


@pytest.fixture(scope="module")
def checkpoint(tiny_packed, tmp_path_factory):
    """A checkpoint trained for 2 epochs on the CPU (its rankings are far from random)."""
    out = tmp_path_factory.mktemp("ckpt") / "run"
    cfg = load_cfg(None, TINY_MODEL_OPTS + ["DATA.ROOT", str(tiny_packed), "OUTPUT_DIR", str(out),
                                            "SOLVER.MAX_EPOCHS", "2", "SOLVER.FINETUNE_EPOCHS", "0"])
    Trainer(cfg).run()
    path = sorted((out / "checkpoints").glob("checkpoint_epoch_*.pth"))[-1]
    return path


def evaluate(root, weights, out, *opts):
    assert evaluate_main(MODEL_OPTS + ["DATA.ROOT", str(root), "OUTPUT_DIR", str(out), "--checkpoint", str(weights),
                                       *opts]) == 0
    # biam-evaluate writes its own folder, named by the split and the weights file.
    return json.loads((out / "eval" / f"test-{Path(weights).stem}" / "metrics.json").read_text())


def max_metric_difference(a, b):
    """Largest |a - b| over every metric of the zsl and gzsl tables (fractions)."""
    return max(abs(a[s][k] - b[s][k]) for s in ("zsl", "gzsl") for k in a[s] if isinstance(a[s][k], float))


# bf16 autocast rounds the scores' inputs to 8 significant bits; on 48 test images one swapped
# pair of near-tied scores moves an AP by up to ~1e-2, so bf16 is held to 3e-2 here (the
# prepared GPU run reports both precisions against 1e-3 on the demo's 200 test images).
@pytest.mark.parametrize("opts, tol", [
    pytest.param(["DEVICE", "cpu", "EVAL.BATCH_SIZE", "7"], 1e-3, id="cpu-fp32-batch7"),
    pytest.param(["DEVICE", "cpu", "AMP", "bf16"], 3e-2, id="cpu-bf16"),
    pytest.param(["DEVICE", "cuda", "AMP", "off"], 1e-3, marks=CUDA_MARKS, id="cuda-fp32"),
    pytest.param(["DEVICE", "cuda"], 3e-2, marks=CUDA_MARKS, id="cuda-default-bf16"),
])
def test_metrics_match_the_cpu(checkpoint, tiny_packed, tmp_path, opts, tol):
    ref = evaluate(tiny_packed, checkpoint, tmp_path / "cpu", "DEVICE", "cpu", "AMP", "off")
    got = evaluate(tiny_packed, checkpoint, tmp_path / "other", *opts)
    assert set(got["zsl"]) == set(ref["zsl"]) and set(got["gzsl"]) == set(ref["gzsl"])
    assert 0.0 < ref["zsl"]["mAP"] < 1.0
    assert max_metric_difference(got, ref) <= tol, (got, ref)
