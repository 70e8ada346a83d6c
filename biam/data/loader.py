"""Batches from a packed dataset for training and evaluation.

How an epoch is ordered (a pure function of ``seed, epoch, rank, world_size`` and the subset,
see :func:`epoch_order`):

1. The subset of image indices (sorted) is cut into *blocks* of ``block_size`` consecutive
   images. When shuffling, the cut starts at a random offset each epoch (the piece before it
   joins the last block), so the same images are not always grouped together.
2. The blocks are shuffled and dealt round-robin to the ranks: rank ``r`` gets blocks
   ``r, r + W, r + 2W, ...`` of the shuffled list, so each rank reads only its own blocks and
   every image is on exactly one rank per epoch.
3. A rank's images, in block order, are cut into batches of ``batch_size``. A batch therefore
   holds ``batch_size / block_size`` blocks from random places of the split, and each block is
   read as one contiguous slice (no single-image reads).

Uneven ranks: ranks differ by at most one block of images, so their batch counts differ by at
most one (or more when ``block_size > batch_size``). :meth:`BatchLoader.num_batches_for_rank`
gives every rank's count without communication, so the trainer can stop all ranks at
``min`` (dropping a few images that epoch), or wrap training in DDP's ``join()``.

Workers: every batch is an independent item, so DataLoader workers (any number) yield exactly
the same batches in the same order as ``num_workers=0``. Each worker opens its own HDF5 handles
lazily (see :class:`biam.data.packed.PackedDataset`).
"""

from __future__ import annotations

import math
import os
from typing import Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .packed import NUM_CHANNELS, NUM_REGIONS, SCENE_DIM, PackedDataset

__all__ = ["epoch_order", "BatchLoader", "build_loader"]


def epoch_order(
    indices: np.ndarray,
    *,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
    block_size: int = 8,
) -> np.ndarray:
    """The image order of one rank for one epoch.

    Input: ``indices`` (n,) sorted unique global image indices (the subset). Output: (m,) int64,
    the global indices this rank visits, in order (``m`` about ``n / world_size``). Identical
    arguments always give the identical order.
    """
    indices = np.asarray(indices, dtype=np.int64)
    n = len(indices)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} not in [0, world_size={world_size})")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if n == 0:
        return indices
    num_blocks = math.ceil(n / block_size)
    pos = np.arange(n, dtype=np.int64)
    if shuffle:
        # One generator per (seed, epoch): the order never depends on earlier epochs or on rank.
        rng = np.random.default_rng([int(seed), int(epoch)])
        offset = int(rng.integers(block_size)) if n > block_size else 0
        pos = np.roll(pos, -offset)
        blocks = rng.permutation(num_blocks)
    else:
        blocks = np.arange(num_blocks)
    mine = blocks[rank::world_size]
    take = (mine[:, None] * block_size + np.arange(block_size)[None, :]).ravel()
    take = take[take < n]
    return indices[pos[take]]


def _runs(idx: np.ndarray) -> List[tuple]:
    """Split global indices into maximal runs of consecutive values: [(start, stop, out_pos)]."""
    if len(idx) == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(idx)]])
    return [(int(idx[a]), int(idx[b - 1]) + 1, int(a)) for a, b in zip(starts, stops)]


class _BatchSource(Dataset):
    """Map-style dataset whose item ``k`` is batch ``k`` of the current epoch (already collated)."""

    def __init__(self, dataset: PackedDataset, batches: List[np.ndarray], memory: Optional[dict], float32: bool = True):
        self.dataset = dataset
        self.batches = batches
        self.memory = memory
        self.float32 = float32
        self.fields = ["regions", "scene", "labels"] if dataset.has_scene else ["regions", "labels"]

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> Dict[str, torch.Tensor]:
        idx = self.batches[k]
        b = len(idx)
        ds = self.dataset
        out = {
            "regions": np.empty((b, NUM_CHANNELS, NUM_REGIONS), dtype=ds.feature_dtype),
            "labels": np.empty((b, ds.num_labels), dtype=np.int8),
        }
        if ds.has_scene:
            out["scene"] = np.empty((b, SCENE_DIM), dtype=ds.feature_dtype)
        if self.memory is not None:
            rows = np.searchsorted(self.memory["index"], idx)
            for f in self.fields:
                np.take(self.memory[f], rows, axis=0, out=out[f])
        else:
            for start, stop, at in _runs(idx):
                ds.read_into(start, stop, {f: out[f][at:at + stop - start] for f in self.fields}, self.fields)
        # float16 -> float32 here, in the worker, so a CPU training process gets ready tensors;
        # for a GPU the stored dtype travels (half the bytes to pin and copy) and converts there.
        feats = _as_float32 if self.float32 else torch.from_numpy
        batch = {
            "regions": feats(out["regions"]),
            "labels": torch.from_numpy(out["labels"]),
            "index": torch.from_numpy(np.ascontiguousarray(idx, dtype=np.int64)),
        }
        if ds.has_scene:
            batch["scene"] = feats(out["scene"])
        return batch


def _as_float32(a: np.ndarray) -> torch.Tensor:
    """float16/float32 array -> new float32 tensor of the same shape."""
    # numpy's allocator hands out large buffers faster than torch's (measured 1.7 vs 3.1 ms for
    # a batch of 32 regions, mostly first-touch page faults), and torch's copy_ converts fast.
    if a.dtype == np.float32:
        return torch.from_numpy(a)  # already a fresh array of this batch: no copy needed
    dest = torch.from_numpy(np.empty(a.shape, dtype=np.float32))
    dest.copy_(torch.from_numpy(a))
    return dest


class BatchLoader:
    """Iterable over the batches of one rank for the current epoch; see :func:`build_loader`.

    ``len(loader)`` is the number of batches on this rank this epoch. Call ``set_epoch(e)``
    before iterating epoch ``e`` (the order changes per epoch when shuffling).
    """

    def __init__(
        self,
        dataset: PackedDataset,
        *,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        epoch: int = 0,
        indices: Optional[Sequence[int]] = None,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        block_size: int = 8,
        in_memory: Union[bool, str] = False,
        pin_memory: bool = False,
        drop_last: bool = False,
        float32: bool = True,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.epoch = int(epoch)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.num_workers = int(num_workers)
        self.block_size = int(block_size)
        self.drop_last = bool(drop_last)
        self.float32 = bool(float32)
        # Pinning needs an accelerator; without one torch only warns, so skip it quietly.
        self.pin_memory = bool(pin_memory) and torch.cuda.is_available()
        n = len(dataset)
        if indices is None:
            self.indices = np.arange(n, dtype=np.int64)
        else:
            idx = np.asarray(indices, dtype=np.int64)
            if idx.ndim != 1:
                raise ValueError(f"indices: expected a 1-d sequence, got shape {idx.shape}")
            if len(idx) and (idx.min() < 0 or idx.max() >= n):
                raise IndexError(f"indices out of range [0, {n}) of split '{dataset.split}' ({dataset.root})")
            self.indices = np.unique(idx)
            if len(self.indices) != len(idx):
                raise ValueError("indices: contains repeated image indices")
        # Validate now so that bad arguments fail at construction, not in a worker.
        epoch_order(self.indices[:1], shuffle=False, rank=self.rank, world_size=self.world_size, block_size=self.block_size)
        self.memory = None
        if in_memory:
            need = self.memory_bytes()
            if in_memory == "auto":
                if need <= 0.5 * _available_ram():
                    self.memory = self._load_memory()
            elif in_memory is True:
                avail = _available_ram()
                if need > 0.9 * avail:
                    raise MemoryError(f"in_memory: split '{dataset.split}' subset needs {need / 2**30:.1f} GiB, "
                                      f"only {avail / 2**30:.1f} GiB available; use in_memory=False or 'auto'")
                self.memory = self._load_memory()
            else:
                raise ValueError(f"in_memory must be True, False or 'auto', got {in_memory!r}")

    def memory_bytes(self) -> int:
        """Bytes the subset takes in RAM in its stored dtype (what in-memory mode loads)."""
        ds = self.dataset
        per = NUM_CHANNELS * NUM_REGIONS * ds.feature_dtype.itemsize + ds.num_labels
        if ds.has_scene:
            per += SCENE_DIM * ds.feature_dtype.itemsize
        return int(per * len(self.indices))

    def _load_memory(self) -> dict:
        from tqdm import tqdm

        ds = self.dataset
        fields = ["regions", "scene", "labels"] if ds.has_scene else ["regions", "labels"]
        mem = {"index": self.indices}
        for f in fields:
            shape = {"regions": (NUM_CHANNELS, NUM_REGIONS), "scene": (SCENE_DIM,), "labels": (ds.num_labels,)}[f]
            mem[f] = np.empty((len(self.indices),) + shape, dtype=np.int8 if f == "labels" else ds.feature_dtype)
        # Read in runs of at most 1024 images to keep peak memory at the destination arrays.
        runs = []
        for start, stop, at in _runs(self.indices):
            for s in range(start, stop, 1024):
                runs.append((s, min(stop, s + 1024), at + s - start))
        for start, stop, at in tqdm(runs, desc=f"load {ds.split} into RAM", unit="slice", disable=len(runs) < 8):
            part = ds.read_slice(start, stop, fields=fields)
            for f in fields:
                mem[f][at:at + stop - start] = part[f]
        return mem

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration follows."""
        self.epoch = int(epoch)

    def order(self, rank: Optional[int] = None) -> np.ndarray:
        """(m,) int64 global image indices of ``rank`` (default: this rank) this epoch, in order."""
        return epoch_order(self.indices, shuffle=self.shuffle, seed=self.seed, epoch=self.epoch,
                           rank=self.rank if rank is None else rank, world_size=self.world_size,
                           block_size=self.block_size)

    def batches(self, rank: Optional[int] = None) -> List[np.ndarray]:
        """Global image indices of each batch of ``rank`` this epoch."""
        order = self.order(rank)
        out = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.drop_last and out and len(out[-1]) < self.batch_size:
            out.pop()
        return out

    def num_batches_for_rank(self, rank: int) -> int:
        """Batches ``rank`` gets this epoch (pure arithmetic; no communication needed)."""
        m = len(self.order(rank))
        return m // self.batch_size if self.drop_last else math.ceil(m / self.batch_size)

    @property
    def min_batches(self) -> int:
        """Fewest batches over all ranks this epoch (run this many steps to keep ranks in step)."""
        return min(self.num_batches_for_rank(r) for r in range(self.world_size))

    def __len__(self) -> int:
        return self.num_batches_for_rank(self.rank)

    def __iter__(self) -> Iterator[Dict[str, torch.Tensor]]:
        source = _BatchSource(self.dataset, self.batches(), self.memory, self.float32)
        if self.num_workers == 0:
            for k in range(len(source)):
                batch = source[k]
                yield {key: v.pin_memory() for key, v in batch.items()} if self.pin_memory else batch
            return
        # The parent's HDF5 handles must not be inherited by forked workers; each opens its own.
        self.dataset.close()
        loader = DataLoader(source, batch_size=None, shuffle=False, num_workers=self.num_workers,
                            pin_memory=self.pin_memory)
        yield from loader


def _available_ram() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume it does not fit
        return 0


def build_loader(
    dataset: PackedDataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    indices: Optional[Sequence[int]] = None,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    block_size: int = 8,
    in_memory: Union[bool, str] = False,
    pin_memory: bool = False,
    drop_last: bool = False,
    float32: bool = True,
) -> BatchLoader:
    """Batches of ``dataset`` for one rank.

    Each batch is a dict: ``regions`` (B, 512, 196) float32, ``scene`` (B, 4096) float32 (only
    when the dataset has scene features; with ``float32=False`` both keep the stored dtype, e.g.
    float16, for the consumer to convert on its device), ``labels`` (B, S+U) int8, ``index`` (B,) int64 global
    image index. ``shuffle=False`` gives the images in index order (evaluation); with
    ``world_size > 1`` ranks then hold interleaved blocks, so gather results by ``index``.
    ``indices`` restricts the epoch to a subset of image indices. ``block_size`` images are read
    as one slice (keep ``batch_size`` a multiple of it for well-mixed batches). ``in_memory``:
    True loads the subset into RAM once (MemoryError if it cannot fit), ``"auto"`` does so only
    when it takes under half the free RAM. Create the loader once and call ``set_epoch``.
    """
    return BatchLoader(dataset, batch_size=batch_size, shuffle=shuffle, seed=seed, epoch=epoch, indices=indices,
                       rank=rank, world_size=world_size, num_workers=num_workers, block_size=block_size,
                       in_memory=in_memory, pin_memory=pin_memory, drop_last=drop_last, float32=float32)
