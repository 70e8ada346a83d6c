"""Helpers shared by the tests (imported as ``helpers``: pytest.ini puts tests/ on the path)."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# Real files from the published release, for tests that say so (never copied into the repo).
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def make_tiny_packed(root, **kwargs):
    """A tiny learnable packed dataset: biam.demo.synthetic.write_learnable_packed (its keyword
    arguments and defaults: 96 train / 48 test images, 12 seen + 6 unseen labels). Returns root."""
    from biam.demo.synthetic import write_learnable_packed

    return write_learnable_packed(root, **kwargs)


TINY_MODEL_OPTS = [
    "MODEL.CHANNEL_DIM", "16", "MODEL.HEADS", "2", "MODEL.JOINT_DIM", "32",
    "DATA.NUM_WORKERS", "0", "SOLVER.BATCH_SIZE", "16", "EVAL.BATCH_SIZE", "32",
    "SOLVER.MAX_EPOCHS", "4", "SOLVER.WARMUP_EPOCHS", "1", "SOLVER.FINETUNE_EPOCHS", "1",
    "EVAL.START_EPOCH", "2", "EVAL.PERIOD", "2", "PLOT_CURVE", "False", "DEVICE", "cpu",
]


def check_bad_step_is_skipped(trainer, log_file: Path) -> None:
    """Drive ``trainer`` (SOLVER.BAD_LOSS skip) through a good, a NaN and a good batch: the NaN
    batch leaves weights, Adam moments and step counts untouched without the step reading
    anything back; its verdict is counted when check_pending reads it; the next good batch
    moves the weights again. Shared by the CPU and CUDA tests of the bad-step path."""
    import torch

    loader = trainer.phase_loader()
    loader.set_epoch(1)
    batches = iter(loader)
    seen, num_seen = trainer.labels.seen, trainer.labels.num_seen
    trainer.train_step(next(batches), seen, num_seen, 1, 0)  # creates the optimiser state
    assert trainer.check_pending() == 0
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items() if v.is_floating_point()}
    moments = [{k: v.clone() for k, v in st.items()} for st in trainer.optimizer.state.values()]

    bad = next(batches)
    bad["regions"] = bad["regions"].clone()
    bad["regions"][0, 0, 0] = float("nan")
    loss, n = trainer.train_step(bad, seen, num_seen, 1, 1)
    assert loss is not None and float(loss) == 0.0 and n == bad["regions"].shape[0]
    assert len(trainer.pending) == 1 and trainer.skipped_in_epoch == 0  # not read yet
    now = trainer.model.state_dict()
    for k, v in weights.items():
        if "running" not in k:  # batch-norm statistics move in the forward, as published
            assert torch.equal(now[k], v), k
    for before, st in zip(moments, trainer.optimizer.state.values()):
        for k, v in before.items():
            assert torch.equal(st[k], v), k
    assert trainer.check_pending() == 1 and trainer.skipped_in_epoch == 1 and not trainer.pending
    assert "skipped" in Path(log_file).read_text()

    trainer.train_step(next(batches), seen, num_seen, 1, 2)  # a good batch moves the weights again
    assert trainer.check_pending() == 0
    assert any(not torch.equal(trainer.model.state_dict()[k], v) for k, v in weights.items())


# One interpreter answers many --help calls in turn (torch is imported once, not once a command).
# A job is (key, kind, target, argv0): kind "script" calls target "module:function" as the
# installed console-script wrapper does, "module" runs it as `python -m target`, "file" as
# `python target`.
_HELP_BATCH = r"""
import contextlib, io, json, runpy, sys
from importlib import import_module
out = {}
for key, kind, target, argv0 in json.loads(sys.argv[1]):
    stdout, stderr = io.StringIO(), io.StringIO()
    sys.argv = [argv0, "--help"]
    code = 0
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            if kind == "script":
                module, function = target.split(":")
                code = getattr(import_module(module), function)()
            elif kind == "module":
                runpy.run_module(target, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(target, run_name="__main__")
        except SystemExit as err:
            code = err.code
    out[key] = [0 if code is None else code, stdout.getvalue(), stderr.getvalue()]
print(json.dumps(out))
"""


def helps_in_one_interpreter(jobs, cwd, timeout=600):
    """``{key: (exit code, stdout, stderr)}`` of ``--help`` for every job ``(key, kind, target, argv0)``."""
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _HELP_BATCH, json.dumps(jobs)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return {key: tuple(v) for key, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}
