"""The method registry: a new method is one file, then train, evaluate, resume and predict with it.

tests/modeling/toy_method.py is what a user's ``my_method.py`` would hold (module, from_config,
loss, one ``register_method`` line); importing it registers ``MODEL.NAME toy``, as a user's
training script imports its method before building the config. Nothing else is edited for it.
"""

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from biam.cli.evaluate import main as evaluate_main
from biam.cli.predict import main as predict_main
from biam.cli.train import main as train_main
from biam.config import ConfigError, load_cfg
from biam.engine import checkpoint as ckpt
from biam.modeling import BiAM, build_model, get_method, list_methods, ranking_loss, register_method, unregister_method
from biam.modeling.registry import UnknownMethodError

from helpers import TINY_MODEL_OPTS

TOY_FILE = Path(__file__).with_name("toy_method.py")


def _toy_module():
    """Import tests/modeling/toy_method.py once per process (it registers "toy" when imported)."""
    if "toy_method" not in sys.modules:
        spec = importlib.util.spec_from_file_location("toy_method", TOY_FILE)
        module = importlib.util.module_from_spec(spec)
        sys.modules["toy_method"] = module
        spec.loader.exec_module(module)
    return sys.modules["toy_method"]


@pytest.fixture(scope="module")
def toy():
    return _toy_module()


def opts_for(data_root, out_dir, *extra):
    return TINY_MODEL_OPTS + ["DATA.ROOT", str(data_root), "OUTPUT_DIR", str(out_dir), "MODEL.NAME", "toy", *extra]


def final_weights(out_dir):
    return ckpt.load_checkpoint(ckpt.latest_checkpoint(os.path.join(out_dir, "checkpoints")))["model"]


def test_biam_is_registered_with_its_loss_and_unknown_names_are_listed():
    assert list_methods()[0] == "biam"
    method = get_method("biam")
    assert method.loss is ranking_loss and method.trainable and method.build == BiAM.from_config
    cfg = load_cfg(None, ["MODEL.HEADS", "4"])
    assert cfg.MODEL.NAME == "biam" and isinstance(build_model(cfg), BiAM)
    with pytest.raises(UnknownMethodError, match="unknown method 'nope'; registered methods: 'biam'"):
        get_method("nope")
    with pytest.raises(ConfigError, match="MODEL.NAME = 'nope'; allowed values: 'biam'"):
        load_cfg(None, ["MODEL.NAME", "nope"])
    with pytest.raises(ValueError, match="already registered"):
        register_method("biam", loss=ranking_loss)(BiAM)


def test_a_method_without_a_loss_is_refused_by_biam_train(tiny_packed, tmp_path, capsys):
    @register_method("scores_only")
    class ScoresOnly(torch.nn.Module):
        @classmethod
        def from_config(cls, cfg, backbone):
            return cls()

    try:
        assert not get_method("scores_only").trainable
        out = tmp_path / "run"
        rc = train_main(TINY_MODEL_OPTS + ["DATA.ROOT", str(tiny_packed), "OUTPUT_DIR", str(out),
                                           "MODEL.NAME", "scores_only"])
        assert rc == 1
        assert "MODEL.NAME = 'scores_only'" in capsys.readouterr().err
        assert not out.exists()  # refused before anything was written
    finally:
        unregister_method("scores_only")


def test_a_method_in_one_file_trains_evaluates_resumes_and_predicts(toy, tiny_packed, tmp_path, capsys):
    assert "toy" in list_methods() and get_method("toy").loss is toy.toy_loss
    # Trains (biam-train), with the toy's loss: the loss falls and the run writes its outputs.
    straight = tmp_path / "straight"
    assert train_main(opts_for(tiny_packed, straight)) == 0
    lines = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["loss"] < lines[0]["loss"]
    best = ckpt.load_checkpoint(str(straight / "model_best.pth"))
    assert best[ckpt.METHOD_KEY] == "toy" and set(best["model"]) == {"proj.weight", "proj.bias"}
    last = ckpt.load_checkpoint(ckpt.latest_checkpoint(str(straight / "checkpoints")))
    assert last[ckpt.METHOD_KEY] == "toy" and last[ckpt.HPARAMS_KEY]["backbone"] == "vgg19"
    # The toy's own loss is what training reports (BCE from random init is near log 2, not a ranking loss).
    assert 0.0 < lines[0]["loss"] < 1.0

    # Resumes bit for bit: stop after epoch 3, resume to the end.
    resumed = tmp_path / "resumed"
    assert train_main(opts_for(tiny_packed, resumed, "SOLVER.FINETUNE_EPOCHS", "0")) == 0
    os.remove(resumed / "checkpoints" / "checkpoint_epoch_0004.pth")
    assert train_main(opts_for(tiny_packed, resumed, "--resume")) == 0
    a, b = final_weights(straight), final_weights(resumed)
    assert set(a) == {"proj.weight", "proj.bias"}
    for k in a:
        assert torch.equal(a[k], b[k]), k

    # Evaluates (biam-evaluate) through build_model.
    ev = tmp_path / "ev"
    assert evaluate_main(["--checkpoint", str(straight / "model_best.pth"), *opts_for(tiny_packed, ev)]) == 0
    saved = json.loads((ev / "eval" / "test-model_best" / "metrics.json").read_text())
    assert {"mAP", "F1@3"} <= set(saved["zsl"]) and 0.0 <= saved["zsl"]["mAP"] <= 1.0

    # Predicts (biam-predict) on generated images, with a seeded random VGG19.
    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "imgs" / name)
    (tmp_path / "labels.txt").write_text("sky\ndog\nwater\n")
    np.save(tmp_path / "emb.npy", rng.normal(size=(3, 300)).astype(np.float32))
    capsys.readouterr()
    rc = predict_main([str(tmp_path / "imgs"), "MODEL.NAME", "toy", "--labels", str(tmp_path / "labels.txt"),
                       "--embeddings", str(tmp_path / "emb.npy"), "--checkpoint", str(straight / "model_best.pth"),
                       "--random-vgg", "0", "--device", "cpu", "--top-k", "2", "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert [Path(r["image"]).name for r in result["results"]] == ["a.png", "b.png"]
    for r in result["results"]:
        scores = [t["score"] for t in r["labels"]]
        assert len(scores) == 2 and scores == sorted(scores, reverse=True) and all(np.isfinite(scores))


def test_a_checkpoint_of_another_method_is_refused_naming_both(toy, tmp_path):
    cfg_biam = load_cfg(None, ["MODEL.HEADS", "4"])
    cfg_toy = load_cfg(None, ["MODEL.NAME", "toy"])
    toy_model, biam_model = build_model(cfg_toy), build_model(cfg_biam)
    assert isinstance(toy_model, toy.ToyMethod)
    ckpt.atomic_torch_save(ckpt.model_file(toy_model), str(tmp_path / "toy.pth"))
    ckpt.atomic_torch_save(ckpt.model_file(biam_model), str(tmp_path / "biam.pth"))
    torch.save(biam_model.state_dict(), tmp_path / "plain.pth")  # a published-style file: BiAM's
    with pytest.raises(ckpt.CheckpointError, match="toy.pth: a checkpoint of method 'toy', but the model is method 'biam'"):
        ckpt.load_model_weights(build_model(cfg_biam), str(tmp_path / "toy.pth"))
    with pytest.raises(ckpt.CheckpointError, match="method 'biam', but the model is method 'toy'"):
        ckpt.load_model_weights(build_model(cfg_toy), str(tmp_path / "biam.pth"))
    with pytest.raises(ckpt.CheckpointError, match="plain.pth: a checkpoint of method 'biam'.*method 'toy'"):
        ckpt.load_model_weights(build_model(cfg_toy), str(tmp_path / "plain.pth"))
    ckpt.load_model_weights(build_model(cfg_toy), str(tmp_path / "toy.pth"))
    ckpt.load_model_weights(build_model(cfg_biam), str(tmp_path / "plain.pth"))
