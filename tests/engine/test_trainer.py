"""Training end to end on a tiny packed dataset: smoke run, outputs, resume equality, bad losses."""

import copy
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from biam.config import load_cfg
from biam.engine import checkpoint as ckpt
from biam.cli.train import main
from biam.engine.trainer import Trainer, TrainingDiverged

from helpers import TINY_MODEL_OPTS, check_bad_step_is_skipped


def cfg_for(data_root, out_dir, *extra):
    return load_cfg(None, TINY_MODEL_OPTS + ["DATA.ROOT", str(data_root), "OUTPUT_DIR", str(out_dir), *extra])


def final_weights(out_dir):
    path = ckpt.latest_checkpoint(os.path.join(out_dir, "checkpoints"))
    return ckpt.load_checkpoint(path)["model"]


def test_smoke_run_writes_every_output_and_learns(tiny_packed, tmp_path):
    out = tmp_path / "run"
    cfg = cfg_for(tiny_packed, out, "SOLVER.MAX_EPOCHS", "6", "PLOT_CURVE", "True", "SOLVER.MIN_LR", "0.0005")
    result = Trainer(cfg).run()
    for name in ("config.yaml", "log.txt", "metrics.jsonl", "metrics.json", "model_best.pth", "curve.png"):
        assert (out / name).is_file(), name
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == list(range(1, 8))
    assert [l["phase"] for l in lines] == ["train"] * 6 + ["finetune"]
    assert lines[-1]["loss"] < lines[0]["loss"]  # the loss falls
    assert all(l["images_per_s"] > 0 for l in lines)
    assert "val" in lines[1] and "val" in lines[3] and "val" not in lines[2]  # epochs 2, 4, 6
    assert "test" in lines[-1]
    saved = json.loads((out / "metrics.json").read_text())
    assert set(saved) >= {"zsl", "gzsl"} and {"mAP", "F1@3", "P@5"} <= set(saved["zsl"])
    assert saved == json.loads(json.dumps(result))
    # The resolved config beside the outputs rebuilds the same config.
    again = load_cfg(str(out / "config.yaml"))
    assert again.dump() == cfg.dump()
    # Only the last KEEP_CHECKPOINTS epoch checkpoints remain, with zero-padded names.
    names = sorted(os.listdir(out / "checkpoints"))
    assert names == ["checkpoint_epoch_0005.pth", "checkpoint_epoch_0006.pth", "checkpoint_epoch_0007.pth"]
    state = ckpt.load_checkpoint(str(out / "checkpoints" / names[-1]))
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "epoch", "best", "config"} <= set(state)


def test_resume_in_process_equals_uninterrupted(tiny_packed, tmp_path):
    straight = tmp_path / "straight"
    Trainer(cfg_for(tiny_packed, straight)).run()
    # Stop after epoch 3 (as if killed), then resume to the end.
    resumed = tmp_path / "resumed"
    Trainer(cfg_for(tiny_packed, resumed, "SOLVER.FINETUNE_EPOCHS", "0", "SOLVER.MAX_EPOCHS", "4")).run()
    for name in ("checkpoint_epoch_0004.pth",):
        os.remove(resumed / "checkpoints" / name)
    Trainer(cfg_for(tiny_packed, resumed), resume="last").run()
    a, b = final_weights(straight), final_weights(resumed)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_sigkill_then_resume_equals_uninterrupted(tiny_packed, tmp_path):
    """A real training process killed with SIGKILL mid-run, then resumed with --resume."""
    straight = tmp_path / "straight"
    Trainer(cfg_for(tiny_packed, straight)).run()
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "biam.cli.train", *TINY_MODEL_OPTS, "DATA.ROOT", str(tiny_packed), "OUTPUT_DIR", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "checkpoints" / "checkpoint_epoch_0002.pth").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "checkpoints" / "checkpoint_epoch_0002.pth").exists()
    assert not (out / "checkpoints" / "checkpoint_epoch_0005.pth").exists()  # it really died early
    # The newest complete checkpoint loads; leftovers of the interrupted write are ignored.
    ckpt.load_checkpoint(ckpt.latest_checkpoint(str(out / "checkpoints")))
    done = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = final_weights(straight), final_weights(out)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_exploding_loss_stops_with_image_names_and_keeps_last_checkpoint(tiny_packed, tmp_path):
    out = tmp_path / "explode"
    Trainer(cfg_for(tiny_packed, out, "SOLVER.MAX_EPOCHS", "2", "SOLVER.FINETUNE_EPOCHS", "0")).run()
    os.remove(out / "checkpoints" / "checkpoint_epoch_0002.pth")
    before = ckpt.latest_checkpoint(str(out / "checkpoints"))
    # Resume with a loss ceiling every batch exceeds: the first batch of epoch 2 stops the run.
    trainer = Trainer(cfg_for(tiny_packed, out, "SOLVER.MAX_EPOCHS", "2", "SOLVER.FINETUNE_EPOCHS", "0",
                              "SOLVER.MAX_LOSS", "1e-6"), resume="last")
    with pytest.raises(TrainingDiverged) as err:
        trainer.run()
    msg = str(err.value)
    assert "epoch 2 step 0" in msg and "train_0" in msg and os.path.basename(before) in msg
    assert ckpt.latest_checkpoint(str(out / "checkpoints")) == before  # nothing newer was written
    ckpt.load_checkpoint(before)


def test_nan_features_stop_the_run_naming_the_image(tmp_path):
    """A NaN that reached a shard after conversion (the converter refuses them) is caught."""
    import h5py

    from helpers import make_tiny_packed

    root = make_tiny_packed(tmp_path / "packed", num_train=32, num_test=16, shard_size=64)
    with h5py.File(root / "train-00000.h5", "r+") as f:
        f["regions"][5, 0, :3] = float("nan")
        bad_name = f["names"].asstr()[5]
    cfg = cfg_for(root, tmp_path / "run", "SOLVER.BATCH_SIZE", "32", "DATA.TRAIN_FRACTION", "1.0",
                  "SOLVER.MAX_EPOCHS", "1", "SOLVER.WARMUP_EPOCHS", "0", "SOLVER.FINETUNE_EPOCHS", "0")
    with pytest.raises(TrainingDiverged, match=bad_name):
        Trainer(cfg).run()


def test_bad_batches_can_be_skipped_and_counted(tiny_packed, tmp_path):
    out = tmp_path / "skip"
    cfg = cfg_for(tiny_packed, out, "SOLVER.BAD_LOSS", "skip", "SOLVER.MAX_LOSS", "1e-6",
                  "SOLVER.MAX_EPOCHS", "1", "SOLVER.WARMUP_EPOCHS", "0", "SOLVER.FINETUNE_EPOCHS", "0")
    Trainer(cfg).run()
    line = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert line["skipped_batches"] == 5  # 77 training images (80% of 96) -> 5 batches of 16, all skipped
    assert "skipped" in (out / "log.txt").read_text()


@pytest.mark.parametrize("fused", [True, False])
def test_bad_step_is_skipped_on_the_device_and_counted_when_read(tiny_packed, tmp_path, fused):
    """The deferred check: a NaN batch leaves weights, moments and step counts untouched
    without the step reading anything back; the verdict is counted when check_pending reads it."""
    trainer = Trainer(cfg_for(tiny_packed, tmp_path / "defer", "SOLVER.BAD_LOSS", "skip", "SOLVER.FUSED_ADAM", str(fused)))
    assert bool(trainer.optimizer.param_groups[0]["fused"]) is fused  # fused Adam on the CPU too: the CUDA path
    assert not hasattr(trainer.optimizer, "found_inf")  # the trainer sets no optimiser internals
    check_bad_step_is_skipped(trainer, tmp_path / "defer" / "log.txt")


def test_cli_reports_config_errors(tmp_path, capsys):
    assert main(["SOLVER.NOPE", "1"]) == 2
    assert "SOLVER.NOPE" in capsys.readouterr().err


def test_openimages_recipe_drops_crowded_images_and_uses_its_protocol(tmp_path):
    from helpers import make_tiny_packed

    # 24 seen labels: the Open Images SEEN row takes its top 20 among the seen labels.
    root = make_tiny_packed(tmp_path / "oi", num_train=48, num_test=24, num_seen=24, num_unseen=20, shard_size=64,
                            dataset="openimages")
    out = tmp_path / "run"
    cfg = cfg_for(root, out, "DATA.DATASET", "openimages", "DATA.MAX_POSITIVES", "1", "DATA.TRAIN_FRACTION", "1.0",
                  "SOLVER.MAX_EPOCHS", "1", "SOLVER.WARMUP_EPOCHS", "0", "SOLVER.FINETUNE_EPOCHS", "0",
                  "EVAL.PUBLISHED_OPENIMAGES_AP", "True")
    trainer = Trainer(cfg)
    # Every tiny image has one seen positive, and a second one when its other label is seen.
    labels = trainer.train_set.labels()[:, :24]
    assert len(trainer.train_idx) == int(((labels == 1).sum(axis=1) <= 1).sum()) < 48
    result = trainer.run()
    for task in ("seen", "zsl", "gzsl"):
        assert {"mAP", "wmAP", "published_pooled_mAP", "published_weighted_pooled_mAP", "F1@10", "F1@20",
                "P@1"} <= set(result[task])
    assert "dropped" in (out / "log.txt").read_text()


class _ConstantValidation(Trainer):
    """The real trainer with a validation score that never changes: every validation is a tie."""

    def validate(self):
        return {"mAP": 0.5, "F1@3": 0.5, "F1@5": 0.5, "P@3": 0.5, "P@5": 0.5, "R@3": 0.5, "R@5": 0.5}


def test_model_selection_tie_goes_to_the_later_epoch(tiny_packed, tmp_path):
    """The original keeps a checkpoint whose metric is >= the best so far; so do we."""
    out = tmp_path / "tie"
    trainer = _ConstantValidation(cfg_for(tiny_packed, out, "SOLVER.MAX_EPOCHS", "4", "SOLVER.FINETUNE_EPOCHS", "0"))
    trainer.run()
    assert trainer.best["epoch"] == 4  # validated at 2 and 4, equal scores
    best_file = ckpt.load_checkpoint(str(out / "model_best.pth"))
    assert best_file[ckpt.HPARAMS_KEY]["heads"] == 2  # the model's hyperparameters are recorded
    best = ckpt.model_state_from(best_file)
    last = final_weights(out)
    for k in last:
        assert torch.equal(best[k], last[k]), k


def test_trainer_loss_is_the_mean_over_images_with_a_positive(tiny_packed, tmp_path):
    """Images without a positive seen label are dropped before the forward, as in the original's
    training loop, so the step's loss is the mean over the images that have one."""
    from biam.engine.runtime import scene_features
    from biam.modeling import ranking_loss

    trainer = Trainer(cfg_for(tiny_packed, tmp_path / "loss", "MODEL.ATTN_DROPOUT", "0.0", "MODEL.SCENE_DROPOUT", "0.0"))
    loader = trainer.phase_loader()
    loader.set_epoch(1)
    batch = next(iter(loader))
    num_seen = trainer.labels.num_seen
    batch["labels"] = batch["labels"].clone()
    batch["labels"][:4, :num_seen] = torch.where(batch["labels"][:4, :num_seen] > 0, -1, batch["labels"][:4, :num_seen])
    keep = (batch["labels"][:, :num_seen] > 0).any(dim=1)
    assert int(keep.sum()) == batch["labels"].shape[0] - 4
    regions = batch["regions"][keep].float()
    trainer.model.train()
    with torch.no_grad():
        scores = trainer.model(regions, trainer.labels.seen, scene_features({k: v[keep] for k, v in batch.items()},
                                                                            regions, trainer.scene_head))
    labels = batch["labels"][keep][:, :num_seen]
    expected = ranking_loss(scores, labels, reduction="mean_positive")
    assert float(expected) == pytest.approx(float(ranking_loss(scores, labels)))  # the two means agree here
    loss, n = trainer.train_step(batch, trainer.labels.seen, num_seen, 1, 0)
    assert n == int(keep.sum())
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)


def test_the_skip_machinery_leaves_a_good_step_bit_identical_to_a_plain_adam_step(tiny_packed, tmp_path):
    """Without float16 the GradScaler's scale stays 1: a good step updates the weights exactly as
    backward() and optimizer.step() alone do."""
    from biam.engine.runtime import scene_features
    from biam.modeling import ranking_loss

    trainer = Trainer(cfg_for(tiny_packed, tmp_path / "plain", "MODEL.ATTN_DROPOUT", "0.0", "MODEL.SCENE_DROPOUT", "0.0"))
    loader = trainer.phase_loader()
    loader.set_epoch(1)
    batches = iter(loader)
    seen, num_seen = trainer.labels.seen, trainer.labels.num_seen
    trainer.train_step(next(batches), seen, num_seen, 1, 0)  # creates the optimiser state
    batch = next(batches)
    model, optimizer = trainer.model, trainer.optimizer
    start = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())

    trainer.train_step(batch, seen, num_seen, 1, 1)
    assert trainer.check_pending() == 0 and float(trainer.scaler.get_scale()) == 1.0
    ours = {k: v.clone() for k, v in model.state_dict().items()}

    model.load_state_dict(start[0])
    optimizer.load_state_dict(start[1])
    labels = batch["labels"][:, :num_seen]
    keep = (labels > 0).any(dim=1)
    kept = {k: v[keep] for k, v in batch.items()}
    regions = kept["regions"].float()
    optimizer.zero_grad(set_to_none=True)
    ranking_loss(model(regions, seen, scene_features(kept, regions, trainer.scene_head)), labels[keep]).backward()
    optimizer.step()
    plain = model.state_dict()
    assert any(not torch.equal(plain[k], start[0][k]) for k in plain)  # the step moved the weights
    for k in plain:
        assert torch.equal(ours[k], plain[k]), k


def test_unfused_adam_restores_the_per_parameter_loop(tiny_packed, tmp_path):
    trainer = Trainer(cfg_for(tiny_packed, tmp_path / "unfused", "SOLVER.FUSED_ADAM", "False",
                              "SOLVER.MAX_EPOCHS", "1", "SOLVER.FINETUNE_EPOCHS", "0"))
    group = trainer.optimizer.param_groups[0]
    assert not group["fused"] and group["foreach"] is False
    trainer.run()
    line = json.loads((tmp_path / "unfused" / "metrics.jsonl").read_text().splitlines()[0])
    assert math.isfinite(line["loss"]) and line["skipped_batches"] == 0


def test_device_resident_training_equals_streamed_bit_for_bit(tmp_path):
    """DATA.IN_MEMORY device (on the CPU: the split as tensors in RAM, every batch gathered by
    index) against the files read every epoch (off): the same batches in the same order, so the
    same per-epoch losses, metrics and final weights, bit for bit, through the train phase and
    the fine-tuning phase (which holds another subset), dropout on, some images dropped for
    lack of a positive seen label."""
    import h5py

    from conftest import make_tiny_packed

    root = make_tiny_packed(tmp_path / "packed", num_train=64, num_test=24, shard_size=24)
    with h5py.File(root / "train-00001.h5", "r+") as f:
        lab = f["labels"][()]
        lab[::3, :12] = -1  # a third of this shard: no positive among the 12 seen labels
        f["labels"][...] = lab
    runs = {}
    for mode in ("off", "device"):
        out = tmp_path / mode
        trainer = Trainer(cfg_for(root, out, "DATA.IN_MEMORY", mode, "SOLVER.MAX_EPOCHS", "2",
                                  "SOLVER.FINETUNE_EPOCHS", "1", "EVAL.START_EPOCH", "2", "DATA.TRAIN_FRACTION", "0.75"))
        result = trainer.run()
        assert trainer.train_loader.where == ("device" if mode == "device" else "disk")
        lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
        runs[mode] = ([(l["loss"], l["images"], l.get("val"), l.get("test")) for l in lines], final_weights(out), result)
    (lines_off, w_off, res_off), (lines_dev, w_dev, res_dev) = runs["off"], runs["device"]
    assert [l[1] for l in lines_off][-1] < 64 and lines_off[0][1] < 48  # images were dropped in both phases
    assert lines_dev == lines_off and res_dev == res_off
    for k in w_off:
        assert torch.equal(w_off[k], w_dev[k]), k
    assert "training images held on cpu" in (tmp_path / "device" / "log.txt").read_text()
