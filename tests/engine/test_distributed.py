"""Real torch.distributed runs on the CPU (gloo, two processes launched by torchrun).

Each test starts real processes; nothing is mocked. They compare a two-process run with a
single-process run of the same data (also where images are dropped for lack of a seen positive,
a rank keeps none, and the epoch ends unevenly) and check what a killed rank leaves behind.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from biam.data.loader import build_loader
from biam.data.packed import PackedDataset, PackedWriter, save_embeddings
from biam.engine import checkpoint as ckpt

from helpers import TINY_MODEL_OPTS

# Dropout off and synchronised batch norm: then one process with batch 2B and two with batch B
# each compute the same steps on the same (default, shuffled) global batches, and any difference
# is rounding, which Adam can amplify (it normalises every gradient element, so one near 0 moves
# by up to the learning rate either way). These runs are float64, where rounding is smallest;
# `python -m biam.benchmark.distributed` measures both precisions (docs/distributed.md).
EXACT = ["MODEL.ATTN_DROPOUT", "0.0", "MODEL.SCENE_DROPOUT", "0.0", "DIST_BN", "sync",
         "DATA.TRAIN_FRACTION", "1.0", "SOLVER.FINETUNE_EPOCHS", "0", "SOLVER.MAX_EPOCHS", "3",
         "DTYPE", "float64"]
# The float32 path under DDP, where rounding is not amplified: blocks of 8 images, 2 epochs.
FLOAT32_BLOCKS = [*EXACT[:-2], "DATA.SAMPLING", "blocks", "DATA.BLOCK_SIZE", "8"]


def _env():
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # two processes on two cores
    return env


def torchrun(nproc, module, *args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", module, *args]


def run(cmd, timeout=300):
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env())
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    return done


def weights(out):
    return ckpt.load_checkpoint(ckpt.latest_checkpoint(str(Path(out) / "checkpoints")))["model"]


def test_two_processes_match_one_process(tiny_packed, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    # Two epochs: float32 reductions in another order leave 3.3e-6 after one epoch and 7.0e-6
    # after two (measured); in a third epoch at the recipe's rate such a difference can flip a
    # discrete choice (a top-k region) and jump to ~1e-3, as it does with the code before the
    # learning-rate fix at a constant rate (2.6e-3 after three epochs, both codes alike).
    common = [*TINY_MODEL_OPTS, "DATA.ROOT", str(tiny_packed), *FLOAT32_BLOCKS, "SOLVER.MAX_EPOCHS", "2"]
    run([sys.executable, "-m", "biam.cli.train", *common, "SOLVER.BATCH_SIZE", "16", "OUTPUT_DIR", str(one)])
    run(torchrun(2, "biam.cli.train", *common, "SOLVER.BATCH_SIZE", "8", "OUTPUT_DIR", str(two)))
    a, b = weights(one), weights(two)
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())
    # Stated tolerance: 1e-4 absolute after 2 epochs.
    assert worst < 1e-4, worst
    # Every training image was used once per epoch across the two ranks (each has a seen
    # positive label, so none is dropped from its batch).
    for line in (two / "metrics.jsonl").read_text().splitlines():
        assert json.loads(line)["images"] == 96
    # Only rank 0 wrote outputs: one log, one metrics line per epoch.
    assert len((two / "metrics.jsonl").read_text().splitlines()) == 2


def make_packed_with_dropped(root, num_train, dropped, seed=0, num_seen=12, num_unseen=6):
    """A tiny packed dataset whose training images ``dropped`` (a boolean mask) have no positive
    seen label (only an unseen one), so the trainer drops them from their batches."""
    rng = np.random.default_rng(seed)
    seen = rng.normal(size=(num_seen, 300)).astype(np.float32)
    unseen = rng.normal(size=(num_unseen, 300)).astype(np.float32)
    save_embeddings(root, seen, unseen)
    for split, n in (("train", num_train), ("test", 24)):
        writer = PackedWriter(root, split, dataset="nus_wide", seen_labels=[f"tag{i}" for i in range(num_seen)],
                              unseen_labels=[f"concept{i}" for i in range(num_unseen)], shard_size=40,
                              scene_source="random-test")
        labels = -np.ones((n, num_seen + num_unseen), dtype=np.int8)
        for i in range(n):
            if split == "train" and dropped[i]:
                labels[i, num_seen + rng.integers(num_unseen)] = 1
            else:
                labels[i, rng.choice(num_seen + num_unseen, size=2, replace=False)] = 1
                labels[i, rng.integers(num_seen)] = 1
        regions = np.abs(rng.normal(size=(n, 512, 196))).astype(np.float32)
        regions[:, :, :8] += np.abs(labels[:, :1].astype(np.float32))[:, :, None]
        writer.append(regions, labels, [f"{split}_{i:04d}.jpg" for i in range(n)],
                      scene=np.abs(rng.normal(size=(n, 4096))).astype(np.float32))
        writer.close()
    return root


def _max_difference(a, b):
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


def _shares(root, seed, epoch, batch, world):
    """Each step's kept-image count per rank, from the loader the trainer builds."""
    ds = PackedDataset(root, "train")
    seen_positive = (ds.labels()[:, :12] > 0).any(axis=1)
    per_rank = [[(len(b), int(seen_positive[b].sum())) for b in
                 build_loader(ds, batch_size=batch, shuffle=True, seed=seed, epoch=epoch, rank=r, world_size=world)
                 .batches()] for r in range(world)]
    return list(zip(*per_rank))  # steps x ranks x (images, kept)


def _one_process_and_two_ranks(root, tmp_path, batch):
    """One epoch of 1 process x 2 ``batch`` and of 2 ranks x ``batch`` (float64, dropout off);
    asserts their weights agree within 1e-4 and returns the common options and both folders."""
    common = [*TINY_MODEL_OPTS, "DATA.ROOT", str(root), *EXACT, "SOLVER.MAX_EPOCHS", "1"]
    one, two = tmp_path / "one", tmp_path / "two"
    run([sys.executable, "-m", "biam.cli.train", *common, "SOLVER.BATCH_SIZE", str(2 * batch), "OUTPUT_DIR", str(one)])
    run(torchrun(2, "biam.cli.train", *common, "SOLVER.BATCH_SIZE", str(batch), "OUTPUT_DIR", str(two)))
    worst = _max_difference(weights(one), weights(two))
    assert worst < 1e-4, worst
    return common, one, two


def test_two_ranks_equal_one_process_with_dropped_images_and_uneven_end(tmp_path):
    """2 ranks x 8 against 1 process x 16, one epoch of the default shuffled batches, in float64:
    15% of the images have no seen positive and are dropped, and 100 = 6 x 16 + 4 leaves rank 1
    an empty share at the end. The loss is normalised by the kept images of the global batch, so
    the weights agree to rounding."""
    n = 100
    dropped = np.zeros(n, dtype=bool)
    dropped[np.random.default_rng(1).choice(n, size=15, replace=False)] = True
    root = make_packed_with_dropped(tmp_path / "packed", n, dropped)
    steps = _shares(root, 3483, 1, 8, 2)
    assert len(steps) == 7 and steps[-1][0][0] == 4 and steps[-1][1] == (0, 0)
    assert any(a[1] != b[1] for a, b in steps)  # ranks keep different counts: the case that matters
    _, one, two = _one_process_and_two_ranks(root, tmp_path, 8)
    for out in (one, two):
        record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
        assert record["images"] == 85  # every kept image once, over both ranks
    a, b = (json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["loss"] for out in (one, two))
    assert b == pytest.approx(a, rel=1e-5)


def test_a_rank_that_keeps_no_image_still_matches_one_process(tmp_path):
    """Half the images dropped, 2 ranks x 2 against 1 process x 4 after one epoch of the default
    shuffled batches, in float64: some steps leave one rank with images but none kept, one step
    keeps none on any rank (one process skips it; the ranks skip it on the device), and the last
    share is empty."""
    n = 30
    dropped = np.random.default_rng(5).random(n) < 0.5
    root = make_packed_with_dropped(tmp_path / "packed", n, dropped)
    seed = 3483
    steps = _shares(root, seed, 1, 2, 2)
    assert any(r[0] > 0 and r[1] == 0 for s in steps for r in s)  # a rank keeps none of its images
    assert any(all(r[1] == 0 for r in s) for s in steps)  # no rank keeps one
    assert any(r[0] == 0 for s in steps for r in s)  # an empty share
    common, one, two = _one_process_and_two_ranks(root, tmp_path, 2)
    for a, b in zip(*((out / "metrics.jsonl").read_text().splitlines() for out in (one, two))):
        a, b = json.loads(a), json.loads(b)
        assert a["images"] == b["images"] == int((~dropped).sum())
        assert a["skipped_batches"] == b["skipped_batches"]
    # Per-rank batch norm (the default DIST_BN) runs the same data without error.
    per_rank = [x if x != "sync" else "per-rank" for x in common]
    run(torchrun(2, "biam.cli.train", *per_rank, "SOLVER.BATCH_SIZE", "2", "OUTPUT_DIR", str(tmp_path / "per_rank")))
    assert all(torch.isfinite(v).all() for v in weights(tmp_path / "per_rank").values() if v.is_floating_point())


def test_distributed_evaluation_equals_single_process(tiny_packed, tmp_path):
    train_out = tmp_path / "train"
    run([sys.executable, "-m", "biam.cli.train", *TINY_MODEL_OPTS, "DATA.ROOT", str(tiny_packed), "OUTPUT_DIR", str(train_out),
         "SOLVER.MAX_EPOCHS", "2", "SOLVER.FINETUNE_EPOCHS", "0", "EVAL.TEST_AFTER_FINETUNE", "False"])
    weights_file = ckpt.latest_checkpoint(str(train_out / "checkpoints"))
    common = [*TINY_MODEL_OPTS, "DATA.ROOT", str(tiny_packed), "EVAL.BATCH_SIZE", "10", "--checkpoint", weights_file]
    single = run([sys.executable, "-m", "biam.cli.evaluate", *common, "OUTPUT_DIR", str(tmp_path / "e1")])
    multi = run(torchrun(2, "biam.cli.evaluate", *common, "OUTPUT_DIR", str(tmp_path / "e2")))
    # Evaluation writes its own folder OUTPUT_DIR/eval/<split>-<checkpoint name>/.
    name = "test-" + Path(weights_file).stem
    m1 = json.loads((tmp_path / "e1" / "eval" / name / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "e2" / "eval" / name / "metrics.json").read_text())
    assert m1.keys() == m2.keys()
    for task in m1:
        for key in m1[task]:
            assert m2[task][key] == pytest.approx(m1[task][key], abs=1e-6), (task, key)

    def table(out):
        return [line for line in out.stdout.splitlines() if line.startswith(("ZSL", "GZSL", "("))]

    assert len(table(single)) == 3 and table(single) == table(multi)


def _children(pid):
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry))
    return kids


def test_killed_rank_stops_the_job_and_resume_continues(tiny_packed, tmp_path):
    common = [*TINY_MODEL_OPTS, "DATA.ROOT", str(tiny_packed), *EXACT, "SOLVER.BATCH_SIZE", "8",
              "SOLVER.MAX_EPOCHS", "4"]
    straight = tmp_path / "straight"
    run(torchrun(2, "biam.cli.train", *common, "OUTPUT_DIR", str(straight)))

    out = tmp_path / "killed"
    launcher = subprocess.Popen(torchrun(2, "biam.cli.train", *common, "OUTPUT_DIR", str(out)),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    first = out / "checkpoints" / "checkpoint_epoch_0001.pth"
    deadline = time.time() + 180
    while time.time() < deadline and not first.exists():
        time.sleep(0.05)
    assert first.exists()
    workers = _children(launcher.pid)
    assert len(workers) == 2
    os.kill(max(workers), signal.SIGKILL)  # one rank dies mid-run
    assert launcher.wait(timeout=120) != 0  # the job stops instead of hanging
    last = ckpt.latest_checkpoint(str(out / "checkpoints"))
    assert not (out / "checkpoints" / "checkpoint_epoch_0004.pth").exists()
    ckpt.load_checkpoint(last)  # complete and loadable
    run(torchrun(2, "biam.cli.train", *common, "OUTPUT_DIR", str(out), "--resume"))
    a, b = weights(straight), weights(out)
    for k in a:
        assert torch.allclose(a[k].double(), b[k].double(), atol=1e-6), k
