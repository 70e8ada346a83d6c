"""TensorBoard event files of a training run (only when the optional tensorboard package is there)."""

import json
import sys

import pytest

from biam.config import load_cfg
from biam.engine.trainer import Trainer

from helpers import TINY_MODEL_OPTS

def test_training_writes_readable_event_files(tiny_packed, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    cfg = load_cfg(None, TINY_MODEL_OPTS + ["DATA.ROOT", str(tiny_packed), "OUTPUT_DIR", str(out),
                                            "SOLVER.MAX_EPOCHS", "2", "SOLVER.FINETUNE_EPOCHS", "1",
                                            "EVAL.START_EPOCH", "1", "EVAL.PERIOD", "1"])
    result = Trainer(cfg).run()
    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/images_per_s", "val/mAP", "test/zsl/mAP", "test/gzsl/mAP"} <= tags
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3]
    assert [e.step for e in events.Scalars("val/mAP")] == [1, 2]
    # The last test point is the run's result, as metrics.json holds it.
    assert events.Scalars("test/zsl/mAP")[-1].value == pytest.approx(result["zsl"]["mAP"])
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([r["loss"] for r in lines])
    assert [e.value for e in events.Scalars("train/lr")] == pytest.approx([r["lr"] for r in lines])
    assert "TensorBoard event files" in (out / "log.txt").read_text()


def test_without_tensorboard_training_says_so_and_writes_no_event_files(tiny_packed, tmp_path, monkeypatch):
    # None in sys.modules makes the import fail as it does where the package is not installed.
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    out = tmp_path / "run"
    cfg = load_cfg(None, TINY_MODEL_OPTS + ["DATA.ROOT", str(tiny_packed), "OUTPUT_DIR", str(out),
                                            "SOLVER.MAX_EPOCHS", "1", "SOLVER.FINETUNE_EPOCHS", "0"])
    Trainer(cfg).run()
    assert not (out / "tb").exists()
    assert "tensorboard is not installed" in (out / "log.txt").read_text()
    assert (out / "metrics.json").is_file()
