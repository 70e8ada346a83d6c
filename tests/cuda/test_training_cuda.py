"""Training on CUDA: bf16 autocast + torch.compile against float32 eager from the same seed and
initial weights, float32 on CUDA against the CPU, and the fused Adam's on-device skip of a bad
step. The CPU variants (bf16 autocast on the CPU, eager) run the same comparisons without a GPU.

Dropout is off, so that the runs differ only in their arithmetic (CPU and CUDA draw dropout
masks from different generators, and torch.compile draws them differently from eager).
"""

from __future__ import annotations


import pytest
import torch

from biam.config import load_cfg
from biam.engine.trainer import Trainer

from helpers import TINY_MODEL_OPTS, check_bad_step_is_skipped

CUDA_MARKS = (pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"))

# (device, AMP, COMPILE, loss tolerance (relative, per epoch), metric tolerance (absolute), DATA.IN_MEMORY).
# On CUDA "auto" holds the tiny split on the GPU; "off" reads it from the files (the streamed path).
# float32 on either device differs only in the order of sums (~1e-6 relative per op); bf16
# rounds matmul/conv inputs to 8 significant bits (2^-9 = 0.2% relative), which moves a hinge
# loss by up to a few percent over 3 epochs on 77 images.
VARIANTS = [
    pytest.param("cpu", "bf16", "off", 5e-2, 0.08, "auto", id="cpu-bf16-eager"),
    pytest.param("cuda", "off", "off", 2e-3, 0.02, "auto", marks=CUDA_MARKS, id="cuda-fp32-eager"),
    pytest.param("cuda", "off", "off", 2e-3, 0.02, "off", marks=CUDA_MARKS, id="cuda-fp32-eager-streamed"),
    pytest.param("cuda", "bf16", "on", 5e-2, 0.08, "auto", marks=CUDA_MARKS, id="cuda-bf16-compile"),
]


def train(root, out, device, amp, compile_, in_memory="auto"):
    """3 epochs on the tiny set, dropout off; returns (per-epoch losses, test metrics, final weights)."""
    cfg = load_cfg(None, TINY_MODEL_OPTS + [
        "DATA.ROOT", str(root), "OUTPUT_DIR", str(out), "DEVICE", device, "AMP", amp, "COMPILE", compile_,
        "MODEL.ATTN_DROPOUT", "0.0", "MODEL.SCENE_DROPOUT", "0.0", "SOLVER.MAX_EPOCHS", "3",
        "SOLVER.FINETUNE_EPOCHS", "0", "EVAL.START_EPOCH", "3", "EVAL.PERIOD", "1", "DATA.IN_MEMORY", in_memory])
    trainer = Trainer(cfg)
    result = trainer.run()
    # Where the batches came from: the GPU itself when "auto" finds room there (the tiny split does).
    want = "device" if device == "cuda" and in_memory == "auto" else "disk" if in_memory == "off" else "ram"
    assert trainer.train_loader.where == want
    losses = [h["loss"] for h in trainer.history]
    weights = {k: v.detach().float().cpu() for k, v in trainer.raw_model.state_dict().items()
               if v.is_floating_point()}
    return losses, result, weights


@pytest.fixture(scope="module")
def cpu_float32(tiny_packed, tmp_path_factory):
    return train(tiny_packed, tmp_path_factory.mktemp("cpu32") / "run", "cpu", "off", "off")


@pytest.mark.parametrize("device, amp, compile_, loss_tol, metric_tol, in_memory", VARIANTS)
def test_training_tracks_cpu_float32(cpu_float32, tiny_packed, tmp_path, device, amp, compile_, loss_tol,
                                     metric_tol, in_memory):
    ref_losses, ref_result, ref_weights = cpu_float32
    losses, result, weights = train(tiny_packed, tmp_path / "run", device, amp, compile_, in_memory)
    assert len(losses) == len(ref_losses) == 3
    assert losses[-1] < losses[0]  # it learns
    for got, want in zip(losses, ref_losses):
        assert abs(got - want) <= loss_tol * abs(want), (losses, ref_losses)
    for setting in ("zsl", "gzsl"):
        for key in ("mAP", "F1@3", "F1@5"):
            assert abs(result[setting][key] - ref_result[setting][key]) <= metric_tol, (setting, key, result, ref_result)
    assert set(weights) == set(ref_weights)
    assert all(torch.isfinite(w).all() for w in weights.values())


@pytest.mark.parametrize("device, amp, compile_", [
    pytest.param("cpu", "bf16", "off", id="cpu-bf16-eager"),
    pytest.param("cuda", "bf16", "on", marks=CUDA_MARKS, id="cuda-bf16-compile"),
])
def test_bad_step_is_skipped_on_the_device(tiny_packed, tmp_path, device, amp, compile_):
    """A NaN batch under bf16 (and compile on CUDA): the GradScaler (scale 1) hands the fused Adam
    the verdict on the device, which leaves weights and moments as they were; it is counted when read."""
    cfg = load_cfg(None, TINY_MODEL_OPTS + ["DATA.ROOT", str(tiny_packed), "OUTPUT_DIR", str(tmp_path / "run"),
                                            "DEVICE", device, "AMP", amp, "COMPILE", compile_,
                                            "SOLVER.BAD_LOSS", "skip"])
    trainer = Trainer(cfg)
    assert trainer.optimizer.param_groups[0]["fused"] and trainer.amp_dtype == torch.bfloat16
    assert float(trainer.scaler.get_scale()) == 1.0
    check_bad_step_is_skipped(trainer, tmp_path / "run" / "log.txt")
