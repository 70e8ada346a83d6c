"""The learning rate of every epoch: the rate the original release used, through the trainer too.

The reference is ``../shared/data/NUS-WIDE/published_lr.csv`` (a file of the published run: the
rate its optimiser used in each of its 40 epochs); tests that read it skip without ``../shared``.
"""

import csv
import json
import math

import pytest
import torch

from biam.config import load_cfg
from biam.engine.schedule import build_scheduler, lr_at_epoch, recipe_lr
from biam.engine.trainer import Trainer

from helpers import TINY_MODEL_OPTS

NUS = dict(base_lr=1e-3, warmup_epochs=3, total_epochs=40, min_lr=5e-4, finetune_lr=3.33e-4)


def published_used_lr(shared_data):
    """{epoch: rate the published optimiser used} from the release's replayed schedule."""
    with open(shared_data / "NUS-WIDE" / "published_lr.csv", newline="") as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    rates = {int(r["epoch"]): float(r["used_lr"]) for r in rows}
    assert sorted(rates) == list(range(1, 41))
    return rates


def _run(optimizer, scheduler, epochs):
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_recipe_lr_is_the_published_used_rate_in_all_40_epochs(shared_data):
    used = published_used_lr(shared_data)
    for epoch, rate in used.items():
        assert recipe_lr(epoch, **NUS) == pytest.approx(rate, rel=1e-9, abs=0), epoch


def test_trainer_uses_and_records_the_published_rate_in_every_epoch(shared_data, tiny_packed, tmp_path):
    """A 40 + 2 epoch run with the NUS-WIDE recipe's schedule keys, one step per epoch."""
    used = published_used_lr(shared_data)
    out = tmp_path / "run"
    cfg = load_cfg(None, TINY_MODEL_OPTS + [
        "DATA.ROOT", str(tiny_packed), "OUTPUT_DIR", str(out), "MAX_STEPS_PER_EPOCH", "1",
        "SOLVER.BASE_LR", "0.001", "SOLVER.MIN_LR", "0.0005", "SOLVER.SCHEDULE", "cosine",
        "SOLVER.MAX_EPOCHS", "40", "SOLVER.WARMUP_EPOCHS", "3",
        "SOLVER.FINETUNE_EPOCHS", "2", "SOLVER.FINETUNE_LR", "0.000333",
        "EVAL.START_EPOCH", "40", "EVAL.TEST_AFTER_FINETUNE", "False",
    ])
    Trainer(cfg).run()
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == list(range(1, 43))
    for line in lines[:40]:
        assert line["lr"] == pytest.approx(used[line["epoch"]], rel=1e-9, abs=0), line["epoch"]
    assert [line["lr"] for line in lines[40:]] == [0.000333, 0.000333]
    # Full precision in the JSON line: the value read back is a float64 of the rate, not rounded.
    assert lines[4]["lr"] == recipe_lr(5, **NUS)


def test_scheduler_follows_recipe_lr_into_fine_tuning():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1e-3)
    sched = build_scheduler(opt, **NUS)
    lrs = _run(opt, sched, 40)
    assert lrs[:5] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3, 1e-3, 5e-4 + 2.5e-4 * (1 + math.cos(math.pi / 37))])
    assert lrs == [recipe_lr(e, **NUS) for e in range(1, 41)]
    assert lrs[-1] > 5e-4  # the last training epoch runs just above the floor, as the original did
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))  # monotone after warm-up
    # The fine-tuning phase's fresh optimiser continues the same function from epoch 41.
    opt2 = torch.optim.Adam([p], lr=1.0)
    sched2 = build_scheduler(opt2, **NUS, first_epoch=41)
    assert _run(opt2, sched2, 3) == [3.33e-4] * 3


def test_scheduler_resumes_from_state_dict():
    def fresh():
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.Adam([p], lr=1e-3)
        return opt, build_scheduler(opt, warmup_epochs=3, total_epochs=10, base_lr=1e-3, min_lr=1e-4)

    opt, sched = fresh()
    full = _run(opt, sched, 10)
    opt, sched = fresh()
    first = _run(opt, sched, 4)
    state = {"opt": opt.state_dict(), "sched": sched.state_dict()}
    assert set(state["sched"]) == {"last_epoch", "first_epoch"}  # the rates come from the config
    opt2, sched2 = fresh()
    opt2.load_state_dict(state["opt"])
    sched2.load_state_dict(state["sched"])
    assert first + _run(opt2, sched2, 6) == full


def test_scheduler_reads_the_lambdalr_state_of_older_checkpoints():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1e-3)
    old = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    for _ in range(5):
        opt.step()
        old.step()
    opt2 = torch.optim.Adam([p], lr=1e-3)
    sched = build_scheduler(opt2, **NUS)
    sched.load_state_dict(old.state_dict())
    assert opt2.param_groups[0]["lr"] == recipe_lr(6, **NUS)


def test_constant_schedule_and_no_warmup():
    assert lr_at_epoch(1, 0, 10, 1e-4, 0.0, cosine=False) == pytest.approx(1e-4)
    assert lr_at_epoch(10, 0, 10, 1e-4, 0.0, cosine=False) == pytest.approx(1e-4)
    # Without warm-up the cosine starts at the peak in epoch 1 and stays above the floor.
    assert lr_at_epoch(1, 0, 10, 1e-4, 1e-5) == 1e-4
    assert 1e-5 < lr_at_epoch(10, 0, 10, 1e-4, 1e-5) < 1.3e-5
    with pytest.raises(ValueError, match="counted from 1"):
        recipe_lr(0, **NUS)
