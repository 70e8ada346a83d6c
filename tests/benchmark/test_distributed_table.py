"""python -m biam.benchmark.distributed: its data, its figures and the page it rewrites.

The runs themselves (torchrun on the CPU) are what tests/engine/test_distributed.py checks;
here the pieces the command adds around them."""

from pathlib import Path

import torch

from biam.benchmark import distributed as dist_table
from biam.data.packed import PackedDataset

REPO = Path(__file__).resolve().parents[2]


def test_data_has_the_dropped_images_and_the_uneven_end(tmp_path):
    root = dist_table.make_data(tmp_path / "data")
    ds = PackedDataset(root, "train")
    labels = ds.labels()
    assert len(ds) == 100 and len(ds) % 16 == 4  # the last global batch of 16 leaves rank 1 nothing
    no_seen_positive = ~(labels[:, :dist_table.NUM_SEEN] > 0).any(axis=1)
    assert int(no_seen_positive.sum()) == dist_table.NUM_DROPPED
    assert (labels[no_seen_positive, dist_table.NUM_SEEN:] > 0).any(axis=1).all()


def test_differences_keep_weights_and_running_statistics_apart():
    a = {"conv.weight": torch.zeros(3), "bn.running_mean": torch.zeros(2), "bn.num_batches_tracked": torch.tensor(3)}
    b = {"conv.weight": torch.tensor([0.0, 0.5, 0.0]), "bn.running_mean": torch.tensor([0.0, -2.0]),
         "bn.num_batches_tracked": torch.tensor(9)}
    assert dist_table.differences(a, b) == (0.5, 2.0)
    rows = [{"name": "r", "cells": {"float32": (0.5, 2.0)}}]
    assert dist_table.format_table(rows).splitlines()[-1] == "| r | weights 0.5, running statistics 2 | - |"


def test_the_page_holds_the_markers_and_names_the_command():
    text = (REPO / "docs" / "distributed.md").read_text(encoding="utf-8")
    assert text.count(dist_table.BEGIN) == 1 and text.count(dist_table.END) == 1
    inside = text.split(dist_table.BEGIN, 1)[1].split(dist_table.END, 1)[0]
    # The table the command wrote: every row, and how it was made.
    assert all(f"| {name} |" in inside for name in dist_table.ROWS)
    assert inside.strip().startswith("Made by `python -m biam.benchmark.distributed` on ") and " at commit " in inside
