"""What a training run writes per epoch besides checkpoints: the log line and metrics.jsonl,
TensorBoard event files, the tqdm progress bar and the curve plot. Rank 0 only."""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, Dict, Iterator, List, Tuple

from ..utils import comm
from ..utils.io import atomic_open

__all__ = ["open_tensorboard", "write_tensorboard", "progress_bar", "plot_curve", "log_epoch", "trim_jsonl"]


def open_tensorboard(out_dir: str, logger):
    """A SummaryWriter for ``out_dir/tb`` on rank 0 when ``tensorboard`` is installed, else None."""
    if not comm.is_main_process():
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter  # needs the optional tensorboard package
    except ImportError:
        logger.info("tensorboard is not installed: no event files (pip install 'biam[tb]' to get them)")
        return None
    path = os.path.join(out_dir, "tb")
    logger.info(f"TensorBoard event files in {path}")
    return SummaryWriter(path)


def write_tensorboard(tb, record: Dict[str, Any]) -> None:
    """One epoch's loss, learning rate, images/s and validation/test metrics, at step = epoch."""
    if tb is None:
        return
    epoch = record["epoch"]
    for key in ("loss", "lr", "images_per_s"):
        if key in record:
            tb.add_scalar(f"train/{key}", record[key], epoch)
    for split in ("val", "test"):
        for tag, value in _scalars(record.get(split), split):
            tb.add_scalar(tag, value, epoch)
    tb.flush()


def _scalars(tree: Any, prefix: str) -> Iterator[Tuple[str, float]]:
    """(tag, number) for every number in a nested dict of metrics, tags joined with '/'."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _scalars(value, f"{prefix}/{key}")
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool) and math.isfinite(tree):
        yield prefix, float(tree)


def progress_bar(total: int, desc: str):
    """A tqdm bar on stderr on rank 0, None elsewhere."""
    if not comm.is_main_process():
        return None
    from tqdm import tqdm  # imported here: only rank 0 of a training run draws a bar

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


def log_epoch(logger, jsonl, record: Dict[str, Any]) -> None:
    """The epoch's human log line and its metrics.jsonl line."""
    msg = (f"epoch {record['epoch']} [{record['phase']}] loss {record['loss']:.4f} lr {record['lr']:.3e} "
           f"{record['images_per_s']:.0f} img/s ({record['seconds']:.1f} s)")
    if record.get("skipped_batches"):
        msg += f", {record['skipped_batches']} bad batches skipped"
    if "val" in record:
        msg += " | val (seen) " + " ".join(f"{k} {100 * v:.2f}" for k, v in record["val"].items())
    logger.info(msg)
    jsonl.write(record)


def trim_jsonl(path: str, epoch: int, logger) -> None:
    """Drop the metrics.jsonl lines of epochs after ``epoch`` (a resumed run runs them again) and
    a half-written last line, so each epoch appears once."""
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    keep = []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("epoch"), int) and rec["epoch"] <= epoch:
            keep.append(line)
    if len(keep) != len(lines):
        with atomic_open(path, "w") as f:
            f.write("".join(k + "\n" for k in keep))
        logger.info(f"{path}: dropped {len(lines) - len(keep)} line(s) after epoch {epoch} (run again now)")


def plot_curve(history: List[Dict[str, Any]], path: str, metric: str) -> None:
    """Training loss and validation metric per epoch, as a PNG."""
    import matplotlib  # imported here: only runs that plot need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(epochs, [h["loss"] for h in history], "o-", color="tab:blue", label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss", color="tab:blue")
    val = [(h["epoch"], h["val"][metric]) for h in history if "val" in h]
    if val:
        ax2 = ax.twinx()
        ax2.plot([e for e, _ in val], [100 * v for _, v in val], "s--", color="tab:red", label=f"val {metric}")
        ax2.set_ylabel(f"validation {metric} (seen, %)", color="tab:red")
    ax.set_title("training curve")
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
