"""fast0tag: its pairwise ranking loss against the formula written out, the two-layer map, and a run
through biam-train and biam-evaluate like any other method."""

from __future__ import annotations

import json
import math

import pytest
import torch

from biam.cli.evaluate import main as evaluate_main
from biam.cli.train import main as train_main
from biam.config import load_cfg
from biam.modeling import build_model, get_method
from biam.modeling.fast0tag import Fast0Tag, fast0tag_loss

from helpers import TINY_MODEL_OPTS


def brute_force(scores, labels):
    per_image = []
    for s, y in zip(scores.tolist(), labels.tolist()):
        pairs = [math.log1p(math.exp(s[n] - s[p])) for p in range(len(y)) if y[p] > 0 for n in range(len(y)) if y[n] < 0]
        if pairs:
            per_image.append(sum(pairs) / len(pairs))
    return sum(per_image) / len(per_image)


def test_loss_is_the_pairwise_logistic_ranking_loss():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(5, 7, generator=g)
    labels = torch.randint(-1, 2, (5, 7), generator=g).to(torch.int8)
    labels[4] = torch.tensor([1, 0, 0, 1, 0, 0, 0], dtype=torch.int8)  # no negative: no pair
    assert float(fast0tag_loss(scores, labels)) == pytest.approx(brute_force(scores, labels), rel=1e-6)
    assert float(fast0tag_loss(scores, labels, chunk=1)) == pytest.approx(float(fast0tag_loss(scores, labels)), rel=1e-6)
    # Ranking the positive first lowers it; the loss has a gradient.
    y = torch.tensor([[1, -1, -1]], dtype=torch.int8)
    assert fast0tag_loss(torch.tensor([[3.0, 0.0, 0.0]]), y) < fast0tag_loss(torch.tensor([[0.0, 3.0, 0.0]]), y)
    s = scores.clone().requires_grad_(True)
    fast0tag_loss(s, labels).backward()
    assert s.grad.abs().sum() > 0 and get_method("fast0tag").loss is fast0tag_loss


def test_two_layers_into_the_word_space():
    cfg = load_cfg(None, ["MODEL.NAME", "fast0tag", "MODEL.JOINT_DIM", "64", "MODEL.EMBED_DIM", "300"])
    model = build_model(cfg, "vgg19")
    assert isinstance(model, Fast0Tag) and model.hparams()["scene_dim"] == 4096
    assert [tuple(p.shape) for p in model.parameters()] == [(64, 4096), (64,), (300, 64), (300,)]
    scene, emb = torch.randn(3, 4096), torch.randn(9, 300)
    scores = model(torch.randn(3, 512, 196), emb, scene)
    torch.testing.assert_close(scores, model.direction(scene) @ emb.t())
    with pytest.raises(ValueError, match="needs the scene feature"):
        model(torch.randn(3, 512, 196), emb, None)


def test_trains_and_evaluates_through_the_commands(tiny_packed, tmp_path, capsys):
    run = tmp_path / "run"
    opts = TINY_MODEL_OPTS + ["DATA.ROOT", str(tiny_packed), "MODEL.NAME", "fast0tag", "SOLVER.MAX_EPOCHS", "2",
                              "SOLVER.FINETUNE_EPOCHS", "0", "EVAL.START_EPOCH", "2"]
    assert train_main([*opts, "OUTPUT_DIR", str(run)]) == 0, capsys.readouterr().err
    best = torch.load(run / "model_best.pth", weights_only=True)
    assert best["method"] == "fast0tag" and set(best["model"]) == {"net.0.weight", "net.0.bias", "net.2.weight",
                                                                 "net.2.bias"}
    assert evaluate_main(["--checkpoint", str(run / "model_best.pth"), *opts, "OUTPUT_DIR", str(run)]) == 0
    metrics = json.loads(next(run.glob("eval/*/metrics.json")).read_text())
    assert 0.0 <= metrics["zsl"]["mAP"] <= 1.0 and metrics["gzsl"]["num_labels"] == 18
