"""The learning rate per epoch equals the published curve, and resumes from its state dict."""

import math

import pytest
import torch

from biam.engine.schedule import build_scheduler, lr_at_epoch


def published_curve(lr, floor, warmup, total):
    out = [lr * e / warmup for e in range(1, warmup + 1)]
    span = total - warmup
    out += [floor + (lr - floor) * (1 + math.cos(math.pi * t / span)) / 2 for t in range(1, span + 1)]
    return out


def _run(optimizer, scheduler, epochs):
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_scheduler_follows_the_published_curve():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1e-3)
    sched = build_scheduler(opt, warmup_epochs=3, total_epochs=40, base_lr=1e-3, min_lr=5e-4)
    lrs = _run(opt, sched, 40)
    expected = published_curve(1e-3, 5e-4, 3, 40)
    assert lrs[:3] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3])
    assert lrs == pytest.approx(expected, rel=1e-9)
    assert lrs[-1] == pytest.approx(5e-4)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))  # monotone after warm-up


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
    opt2, sched2 = fresh()
    opt2.load_state_dict(state["opt"])
    sched2.load_state_dict(state["sched"])
    assert first + _run(opt2, sched2, 6) == pytest.approx(full)


def test_constant_schedule_and_no_warmup():
    assert lr_at_epoch(1, 0, 10, 1e-4, 0.0, cosine=False) == pytest.approx(1e-4)
    assert lr_at_epoch(10, 0, 10, 1e-4, 0.0, cosine=False) == pytest.approx(1e-4)
    assert lr_at_epoch(10, 0, 10, 1e-4, 1e-5) == pytest.approx(1e-5)
