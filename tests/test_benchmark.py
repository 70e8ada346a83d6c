"""biam-benchmark: structure of its report, its loss and its data builders (no timing checks)."""

import json

import numpy as np
import pytest
import torch

from biam import benchmark as bm
from biam.data.packed import PackedDataset
from biam.modeling import ranking_loss


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    """One --tiny run, in this process, with its JSON report read back."""
    root = tmp_path_factory.mktemp("bench")
    out = root / "report.json"
    torch.set_num_threads(2)
    assert bm.main(["--tiny", "--in-process", "--data-dir", str(root / "data"), "--out", str(out)]) == 0
    return json.loads(out.read_text(encoding="utf-8"))


def test_report_has_every_section(tiny_report):
    for key in ("meta", "table", "data", "training", "evaluation", "memory"):
        assert key in tiny_report
    meta = tiny_report["meta"]
    assert meta["mode"] == "tiny" and meta["device"] == "cpu"
    assert meta["machine"]["cores"] >= 1 and meta["machine"]["cpu"]
    assert "--tiny" in meta["command"] and meta["date"]
    assert set(tiny_report["evaluation"]) == {"eval_nus", "eval_oi", "testpass"}
    for part in ("data", "training"):
        assert set(tiny_report[part]) == {"original", "ours"}
    for way in ("original", "ours"):
        prof = tiny_report["training"][way]["profile"]
        assert prof and all({"op", "self_ms", "share", "calls"} <= set(r) for r in prof)
    sections = {r["section"] for r in tiny_report["table"]}
    assert sections == {"data", "training", "evaluation", "memory"}


def test_table_ratios_agree_with_ours_and_original(tiny_report):
    for row in tiny_report["table"]:
        assert row["ours"] > 0 and row["original"] > 0
        # Ratios are "times faster for ours": rates divide one way, seconds and bytes the other.
        want = row["ours"] / row["original"] if row["unit"] == "img/s" else row["original"] / row["ours"]
        assert row["ratio"] == pytest.approx(want)
        if row["goal"].startswith("ratio >= "):
            assert row["met"] == (row["ratio"] >= float(row["goal"].split()[-1]))
        elif row["goal"] == "ratio > 1":
            assert row["met"] == (row["ratio"] > 1.0)
        else:
            assert row["met"] is None
    # The table's figures are the ones of the detailed sections.
    data = tiny_report["data"]
    row = next(r for r in tiny_report["table"] if r["section"] == "data")
    assert row["ours"] == data["ours"]["images_per_s"] and row["original"] == data["original"]["images_per_s"]
    assert data["ours"]["images_per_s"] == max(data["ours"][w]["images_per_s"] for w in ("workers0", "workers2"))
    ev = tiny_report["evaluation"]["eval_oi"]["original"]
    assert ev["extrapolated"] and ev["loop_columns"] < ev["columns"]
    assert ev["seconds"] == pytest.approx(ev["ap_loop_seconds"] * ev["columns"] / ev["loop_columns"]
                                          + ev["f1_loop_seconds"] * ev["rows"] / ev["f1_rows"])


def test_published_loss_equals_ours():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(6, 40, generator=gen, dtype=torch.float64) * 2
    labels = torch.where(torch.rand(6, 40, generator=gen) < 0.2, 1, -1).to(torch.int8)
    labels[:, 5] = 0  # a column unknown everywhere
    labels[3] = -1  # an image without a positive is dropped
    labels[1, :3] = 0
    a = bm.published_ranking_loss(scores, labels)
    b = ranking_loss(scores, labels)
    assert float(a) == pytest.approx(float(b), rel=1e-6)


def test_repeated_shard_split_is_a_valid_packed_dataset(tmp_path):
    bm.write_packed(tmp_path, "train", 0, seed=0, shard_size=8, repeat_to=21)
    ds = PackedDataset(tmp_path, "train")
    assert len(ds) == 21 and len(ds.shards) == 3
    part = ds.read_slice(6, 18, fields=["regions", "labels"])
    assert part["regions"].shape == (12, 512, 196)
    # Shards 0 and 1 are the same file (hard link), so image 2 and image 10 are equal.
    a = ds.read_slice(2, 3, fields=["regions"])["regions"]
    b = ds.read_slice(10, 11, fields=["regions"])["regions"]
    assert np.array_equal(a, b)


def test_released_batches_read_every_name(tmp_path):
    names = [f"img {i}.jpg" for i in range(10)]
    bm.write_released(tmp_path / "f.h5", names, bm.NUM_SEEN, seed=0)
    src = bm.ReleasedBatches(tmp_path / "f.h5", names, batch=4, shuffle=False)
    it = iter(src)
    shapes = [next(it) for _ in range(3)]
    src.close()
    assert [r.shape[0] for r, _ in shapes] == [4, 4, 2]
    assert shapes[0][0].dtype == torch.float32 and shapes[0][1].shape == (4, bm.NUM_SEEN)
