"""Tests of biam.data.loader: coverage per epoch, determinism, ranks, workers, in-memory mode."""

import numpy as np
import pytest
import torch

from biam.data.loader import build_loader, epoch_order
from biam.data.packed import PackedDataset, PackedWriter

N = 203  # not a multiple of shard, block or batch size, on purpose


def _make(root, scene=True):
    w = PackedWriter(root, "train", dataset="toy", seen_labels=["a", "b"], unseen_labels=["c"],
                     shard_size=50, scene_source="random-seed-0" if scene else None)
    idx = np.arange(N)
    # Every value of image i encodes i, so a batch's rows can be checked against its "index".
    regions = np.broadcast_to(idx[:, None, None], (N, 512, 196)).astype(np.float32)
    labels = (np.stack([idx % 3, idx % 2, idx % 5 == 0], axis=1) * 2 - 1).clip(-1, 1).astype(np.int8)
    sc = np.broadcast_to(idx[:, None], (N, 4096)).astype(np.float32) if scene else None
    w.append(regions, labels, [f"img {i}.jpg" for i in idx], scene=sc)
    w.close()
    return PackedDataset(root, "train"), labels


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    return _make(tmp_path_factory.mktemp("packed"))


def _collect(loader):
    seen = []
    for batch in loader:
        idx = batch["index"].numpy()
        assert batch["regions"].dtype == torch.float32 and batch["regions"].shape[1:] == (512, 196)
        assert batch["labels"].dtype == torch.int8 and batch["index"].dtype == torch.int64
        # Rows really are the images the index says.
        np.testing.assert_array_equal(batch["regions"][:, 0, 0].numpy(), idx)
        np.testing.assert_array_equal(batch["scene"][:, 7].numpy(), idx)
        seen.append(idx)
    return seen


@pytest.mark.parametrize("world_size,num_workers", [(1, 0), (2, 0), (1, 2), (2, 2)])
def test_epoch_covers_every_image_once(packed, world_size, num_workers):
    ds, labels = packed
    all_idx = []
    for rank in range(world_size):
        loader = build_loader(ds, batch_size=16, shuffle=True, seed=1, epoch=3, rank=rank,
                              world_size=world_size, num_workers=num_workers, block_size=4)
        batches = _collect(loader)
        assert len(batches) == len(loader)
        assert all(len(b) == 16 for b in batches[:-1])
        all_idx.append(np.concatenate(batches))
    flat = np.concatenate(all_idx)
    assert sorted(flat.tolist()) == list(range(N))
    if world_size == 2:
        assert abs(len(all_idx[0]) - len(all_idx[1])) <= 4


def test_workers_give_the_same_batches_as_main_process(packed):
    ds, _ = packed
    a = _collect(build_loader(ds, batch_size=8, shuffle=True, seed=5, epoch=1, num_workers=0))
    b = _collect(build_loader(ds, batch_size=8, shuffle=True, seed=5, epoch=1, num_workers=2))
    assert [x.tolist() for x in a] == [x.tolist() for x in b]


def test_deterministic_per_epoch_and_changes_across_epochs(packed):
    ds, _ = packed
    loader = build_loader(ds, batch_size=16, shuffle=True, seed=0, block_size=4)
    loader.set_epoch(2)
    first = np.concatenate(_collect(loader))
    again = build_loader(ds, batch_size=16, shuffle=True, seed=0, epoch=2, block_size=4)
    np.testing.assert_array_equal(first, np.concatenate(_collect(again)))
    loader.set_epoch(3)
    other = np.concatenate(_collect(loader))
    assert not np.array_equal(first, other)
    assert sorted(other.tolist()) == list(range(N))
    # A different seed gives a different order too.
    assert not np.array_equal(first, build_loader(ds, batch_size=16, shuffle=True, seed=1, epoch=2).order())


def test_blocks_are_contiguous_runs(packed):
    ds, _ = packed
    order = build_loader(ds, batch_size=32, shuffle=True, seed=0, block_size=8).order()
    # At most one run break per block (plus the wrap-around block), so reads are slices.
    breaks = int((np.diff(order) != 1).sum())
    assert breaks <= N // 8 + 2


def test_unshuffled_is_index_order_and_subset(packed):
    ds, labels = packed
    seq = np.concatenate(_collect(build_loader(ds, batch_size=10, shuffle=False)))
    np.testing.assert_array_equal(seq, np.arange(N))
    subset = np.arange(0, int(0.8 * N))
    got = np.concatenate(_collect(build_loader(ds, batch_size=10, shuffle=True, indices=subset)))
    assert sorted(got.tolist()) == subset.tolist()
    sparse = np.flatnonzero(labels[:, 0] == 1)  # a subset with holes
    got = np.concatenate(_collect(build_loader(ds, batch_size=7, shuffle=True, indices=sparse, block_size=4)))
    assert sorted(got.tolist()) == sparse.tolist()


def test_in_memory_equals_disk(packed):
    ds, _ = packed
    kw = dict(batch_size=16, shuffle=True, seed=4, epoch=1, indices=np.arange(10, 190))
    disk = list(build_loader(ds, **kw))
    mem_loader = build_loader(ds, in_memory=True, **kw)
    assert mem_loader.memory is not None
    mem = list(mem_loader)
    assert len(disk) == len(mem)
    for a, b in zip(disk, mem):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k])


def test_stored_dtype_batches_equal_float32_batches(tmp_path):
    """float32=False (what a GPU run uses) ships the stored float16 unchanged: the same numbers
    in half the bytes, for the device to convert."""
    w = PackedWriter(tmp_path, "train", dataset="toy", seen_labels=["a", "b"], unseen_labels=["c"],
                     shard_size=50, scene_source="random-seed-0", dtype="float16")
    rng = np.random.default_rng(0)
    n = 70
    w.append(rng.exponential(size=(n, 512, 196)).astype(np.float32), np.ones((n, 3), np.int8),
             [f"img {i}.jpg" for i in range(n)], scene=rng.exponential(size=(n, 4096)).astype(np.float32))
    w.close()
    ds = PackedDataset(tmp_path, "train")
    kw = dict(batch_size=16, shuffle=True, seed=1, num_workers=0)
    as32 = list(build_loader(ds, **kw))
    stored = list(build_loader(ds, float32=False, **kw))
    assert len(as32) == len(stored) == 5
    for a, b in zip(as32, stored):
        for k in ("regions", "scene"):
            assert a[k].dtype == torch.float32 and b[k].dtype == torch.float16
            assert torch.equal(a[k], b[k].float())
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["labels"], b["labels"])


def test_labels_match_and_no_scene(tmp_path):
    ds, labels = _make(tmp_path, scene=False)
    batch = next(iter(build_loader(ds, batch_size=20, shuffle=True, seed=2)))
    assert "scene" not in batch
    np.testing.assert_array_equal(batch["labels"].numpy(), labels[batch["index"].numpy()])


def test_drop_last_and_rank_counts(packed):
    ds, _ = packed
    loader = build_loader(ds, batch_size=16, shuffle=True, world_size=3, rank=1, drop_last=True)
    counts = [loader.num_batches_for_rank(r) for r in range(3)]
    assert loader.min_batches == min(counts)
    assert all(len(b) == 16 for b in loader.batches())
    with pytest.raises(ValueError, match="rank"):
        build_loader(ds, batch_size=4, shuffle=True, rank=2, world_size=2)
    with pytest.raises(IndexError, match="out of range"):
        build_loader(ds, batch_size=4, shuffle=True, indices=[0, N])


def test_epoch_order_is_pure():
    idx = np.arange(1000) * 2
    a = epoch_order(idx, shuffle=True, seed=3, epoch=7, rank=1, world_size=4, block_size=16)
    b = epoch_order(idx, shuffle=True, seed=3, epoch=7, rank=1, world_size=4, block_size=16)
    np.testing.assert_array_equal(a, b)
    union = np.concatenate([epoch_order(idx, shuffle=True, seed=3, epoch=7, rank=r, world_size=4, block_size=16)
                            for r in range(4)])
    assert sorted(union.tolist()) == idx.tolist()
