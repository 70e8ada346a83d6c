"""``python -m biam.benchmark.distributed``: rerun the table of docs/distributed.md ("How close
two ranks stay to one process") at the current code and rewrite it.

Each row sets one run of two gloo ranks with batch 8 each (``torchrun``, on the CPU) beside
one process with batch 16, on the same 100 generated training images of which 15 have no seen
positive (dropped from their batches) and whose last global batch of 4 leaves rank 1 an empty
share; one epoch, dropout off, in float32 and in float64 (``DTYPE``). A last row sets one
process with two torch threads beside itself with one, which shows the size of float32
rounding alone. The figure is the largest difference of a trained weight, and of a batch-norm
running statistic, between the two runs.

The table is written between the markers ``<!-- distributed-runs:begin -->`` and
``<!-- distributed-runs:end -->`` of the page, with the date, the machine and the commit;
nothing else on the page changes. ``--dry-run`` prints the table without writing it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..backbones import DEFAULT_BACKBONE, get_backbone
from ..data.packed import PackedWriter, save_embeddings
from .common import REPO, made_by, rewrite_between

PAGE = REPO / "docs" / "distributed.md"
BEGIN, END = "<!-- distributed-runs:begin -->", "<!-- distributed-runs:end -->"
NUM_SEEN, NUM_UNSEEN, NUM_TRAIN, NUM_DROPPED = 12, 6, 100, 15
# A small model on the CPU, one epoch, no validation or test: only the weights are compared.
OPTS = ["MODEL.CHANNEL_DIM", "16", "MODEL.HEADS", "2", "MODEL.JOINT_DIM", "32", "DATA.NUM_WORKERS", "0",
        "SOLVER.MAX_EPOCHS", "1", "SOLVER.WARMUP_EPOCHS", "1", "SOLVER.FINETUNE_EPOCHS", "0",
        "EVAL.TEST_AFTER_FINETUNE", "False", "EVAL.START_EPOCH", "2", "PLOT_CURVE", "False", "DEVICE", "cpu",
        "MODEL.ATTN_DROPOUT", "0.0", "MODEL.SCENE_DROPOUT", "0.0", "DATA.TRAIN_FRACTION", "1.0"]
# row name -> (two ranks' DIST_BN, or None for the threads row)
ROWS: Dict[str, Optional[str]] = {
    "2 x 8 against 1 x 16, `DIST_BN sync`": "sync",
    "2 x 8 against 1 x 16, `DIST_BN per-rank` (the default)": "per-rank",
    "one process, 2 threads against 1 thread": None,
}


def make_data(root: Path, seed: int = 0) -> Path:
    """The 100 training (+ 24 test) images of the default backbone's shapes: 15 training images
    have only an unseen positive."""
    rng = np.random.default_rng(seed)
    backbone = get_backbone(DEFAULT_BACKBONE)
    save_embeddings(root, rng.normal(size=(NUM_SEEN, 300)).astype(np.float32),
                    rng.normal(size=(NUM_UNSEEN, 300)).astype(np.float32))
    dropped = np.zeros(NUM_TRAIN, dtype=bool)
    dropped[rng.choice(NUM_TRAIN, size=NUM_DROPPED, replace=False)] = True
    for split, n in (("train", NUM_TRAIN), ("test", 24)):
        writer = PackedWriter(root, split, dataset="nus_wide", seen_labels=[f"tag{i}" for i in range(NUM_SEEN)],
                              unseen_labels=[f"concept{i}" for i in range(NUM_UNSEEN)], shard_size=40,
                              scene_source="random-test")
        labels = -np.ones((n, NUM_SEEN + NUM_UNSEEN), dtype=np.int8)
        for i in range(n):
            if split == "train" and dropped[i]:
                labels[i, NUM_SEEN + rng.integers(NUM_UNSEEN)] = 1
            else:
                labels[i, rng.choice(NUM_SEEN + NUM_UNSEEN, size=2, replace=False)] = 1
                labels[i, rng.integers(NUM_SEEN)] = 1
        regions = np.abs(rng.normal(size=(n, backbone.channels, backbone.num_regions))).astype(np.float32)
        writer.append(regions, labels, [f"{split}_{i:04d}.jpg" for i in range(n)],
                      scene=np.abs(rng.normal(size=(n, backbone.scene_dim))).astype(np.float32))
        writer.close()
    return root


def _train(data: Path, out: Path, log: Path, *, nproc: int, batch: int, dtype: str, dist_bn: str,
           threads: int = 1) -> Dict[str, torch.Tensor]:
    """One training run (``nproc`` > 1: under torchrun); the model state of its checkpoint."""
    args = [*OPTS, "DATA.ROOT", str(data), "OUTPUT_DIR", str(out), "SOLVER.BATCH_SIZE", str(batch),
            "DTYPE", dtype, "DIST_BN", dist_bn]
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
           if nproc > 1 else [sys.executable]) + ["-m", "biam.cli.train", *args]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    with open(log, "a", encoding="utf-8") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        done = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd[-len(args) - 2:][:2])} ({nproc} process(es)) exited with "
                           f"{done.returncode}; see {log}")
    ckpts = sorted((out / "checkpoints").glob("checkpoint_epoch_*.pth"))
    if not ckpts:
        raise FileNotFoundError(f"{out}: no checkpoint")
    return torch.load(ckpts[-1], map_location="cpu", weights_only=True)["model"]


def differences(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> Tuple[float, float]:
    """Largest |a - b| over the trained weights and over the batch-norm running statistics."""
    def worst(keys):
        return max((float((a[k].double() - b[k].double()).abs().max()) for k in keys), default=0.0)
    floats = [k for k in a if a[k].is_floating_point()]
    stats = [k for k in floats if "running_" in k]
    return worst([k for k in floats if k not in stats]), worst(stats)


def measure(work: Path, log: Path, dtypes: Sequence[str] = ("float32", "float64")) -> List[dict]:
    """Every row of the table: its name and, per dtype, (weights, running statistics) differences."""
    data = make_data(work / "data")
    rows = []
    one = {d: _train(data, work / f"one-{d}", log, nproc=1, batch=16, dtype=d, dist_bn="sync") for d in dtypes}
    for name, dist_bn in ROWS.items():
        cells = {}
        for d in dtypes:
            if dist_bn is None:
                if d != "float32":
                    continue
                other = _train(data, work / "one-threads", log, nproc=1, batch=16, dtype=d, dist_bn="sync", threads=2)
            else:
                other = _train(data, work / f"two-{dist_bn}-{d}", log, nproc=2, batch=8, dtype=d, dist_bn=dist_bn)
            cells[d] = differences(one[d], other)
            print(f"distributed: {name}, {d}: weights {cells[d][0]:.2g}, running statistics {cells[d][1]:.2g}",
                  file=sys.stderr)
        rows.append({"name": name, "cells": cells})
    return rows


def format_table(rows: Sequence[dict], dtypes: Sequence[str] = ("float32", "float64")) -> str:
    """The markdown table: one row per comparison, one column per dtype."""
    lines = ["| run | " + " | ".join(dtypes) + " |", "|---|" + "---|" * len(dtypes)]
    for r in rows:
        cells = [f"weights {r['cells'][d][0]:.2g}, running statistics {r['cells'][d][1]:.2g}" if d in r["cells"] else "-"
                 for d in dtypes]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def section(table: str, seconds: float) -> str:
    """What goes between the markers: how the table was made, then the table."""
    return (made_by("python -m biam.benchmark.distributed", seconds)
            + "). Largest difference after one epoch between the two runs of each row "
            "(trained weights; batch-norm running means and variances):\n\n" + table)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m biam.benchmark.distributed", description=__doc__.split("\n\n")[0])
    p.add_argument("--work-dir", metavar="DIR", help="where the data and runs go (default: a temporary folder, removed)")
    p.add_argument("--page", default=str(PAGE), metavar="FILE", help="the page whose table is rewritten "
                                                                     "(default: docs/distributed.md)")
    p.add_argument("--dry-run", action="store_true", help="print the table, write nothing")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="biam-distributed-") as tmp:
        work = Path(args.work_dir) if args.work_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        table = format_table(measure(work, work / "distributed.log"))
        print(table)
        if not args.dry_run:
            rewrite_between(Path(args.page), BEGIN, END, section(table, time.perf_counter() - start))
            print(f"distributed: rewrote the table of {args.page}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
