"""Batches from a packed dataset for training and evaluation.

How an epoch is ordered (a pure function of ``seed, epoch``, the subset, ``sampling``,
``block_size`` and the global batch size; see :func:`global_batches`):

1. The whole epoch is cut into *global batches* of ``batch_size * world_size`` images, the
   same for every number of processes: 2 ranks with batch 16 see the global batches that one
   process with batch 32 sees.
2. Rank ``r`` takes rows ``r * batch_size : (r + 1) * batch_size`` of each global batch (its
   *share*). Every rank gets one share per global batch, so all ranks run the same number of
   steps; at the end of an epoch a share may be short or empty (a training loader yields an
   empty batch then, so the rank still joins every collective; an evaluation loader skips it).

``sampling`` decides the global batches when shuffling:

* ``"shuffle"`` (default): a new uniform random permutation of the subset every epoch, cut
  into global batches. Every image is used once per epoch and every batch is a uniformly
  random subset, so batches mix the split as uniform sampling does and no group of images
  stays together from one epoch to the next.
* ``"randperm"``: the published recipe's draw: every batch is an independent uniform draw of
  ``batch_size * world_size`` distinct images (a fresh ``randperm`` per batch), ``ceil(n / B)``
  batches per epoch, so an image can appear in several batches of an epoch or in none.
* ``"blocks"``: the subset cut into blocks of ``block_size`` consecutive images (at a random
  offset each epoch), the blocks shuffled; a batch holds ``batch_size / block_size`` blocks.
  Reads are long slices (for slow random access), but a batch then mixes few places of the
  split: the original files are in Flickr-query folder order, so a batch of 32 in blocks of 8
  holds about 5 query folders instead of about 31.

Reading: uncompressed shards (what ``biam-convert`` writes by default) are read image by image
with ``os.preadv`` at byte offsets computed once from HDF5's chunk index, which is as fast as
a contiguous HDF5 slice of 8 images and makes uniform batches cost no more than blocks; runs of
consecutive images and compressed shards go through HDF5 slice reads.

Workers: every batch is an independent item, so DataLoader workers (any number) yield exactly
the same batches in the same order as ``num_workers=0``. Each worker opens its own HDF5 handles
lazily (see :class:`biam.data.packed.PackedDataset`).

Where the images come from (``in_memory``): the packed files (False), a copy in RAM (True, or
"auto" when it fits), or tensors on the training device (``"device"``, or "auto" when the
device is a CUDA GPU with room: :mod:`biam.data.resident`), where a batch is gathered by index
with no host-to-device copy. The batches (images, order, ranks' shares) are the same for every
choice; only where their bytes are read differs.
"""

from __future__ import annotations

import math
import os
from typing import Dict, Iterator, List, Optional, Sequence, Union

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .packed import PackedDataset, PackedFormatError
from .resident import ResidentSplit, device_memory, fits_on_device, image_bytes

__all__ = ["SAMPLING", "epoch_order", "global_batches", "BatchLoader", "build_loader"]

SAMPLING = ("shuffle", "randperm", "blocks")


def epoch_order(
    indices: np.ndarray,
    *,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    sampling: str = "shuffle",
    block_size: int = 8,
) -> np.ndarray:
    """The global image order of one epoch (``sampling`` "shuffle" or "blocks"; see the module).

    Input: ``indices`` (n,) sorted unique global image indices (the subset). Output: (n,) int64,
    the same indices in the order the epoch visits them. It does not depend on the number of
    processes. Identical arguments always give the identical order.
    """
    indices = np.asarray(indices, dtype=np.int64)
    n = len(indices)
    if sampling not in ("shuffle", "blocks"):
        raise ValueError(f"epoch_order: sampling must be 'shuffle' or 'blocks', got {sampling!r}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if n == 0 or not shuffle:
        return indices
    # One generator per (seed, epoch): the order never depends on earlier epochs.
    rng = np.random.default_rng([int(seed), int(epoch)])
    if sampling == "shuffle":
        return indices[rng.permutation(n)]
    num_blocks = math.ceil(n / block_size)
    # The cut starts at a random offset (the piece before it joins the last block), so the same
    # images are not always grouped together.
    offset = int(rng.integers(block_size)) if n > block_size else 0
    pos = np.roll(np.arange(n, dtype=np.int64), -offset)
    blocks = rng.permutation(num_blocks)
    take = (blocks[:, None] * block_size + np.arange(block_size)[None, :]).ravel()
    return indices[pos[take[take < n]]]


def global_batches(
    indices: np.ndarray,
    global_batch: int,
    *,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    sampling: str = "shuffle",
    block_size: int = 8,
    drop_last: bool = False,
) -> List[np.ndarray]:
    """The global batches of one epoch: a list of int64 arrays of global image indices.

    ``global_batch`` is the images of one step over all ranks (batch size x world size). Every
    batch has ``global_batch`` images except maybe the last (dropped with ``drop_last``).
    """
    if global_batch < 1:
        raise ValueError(f"batch size must be >= 1, got {global_batch}")
    if sampling not in SAMPLING:
        raise ValueError(f"sampling must be one of {', '.join(map(repr, SAMPLING))}, got {sampling!r}")
    indices = np.asarray(indices, dtype=np.int64)
    n = len(indices)
    if shuffle and sampling == "randperm":
        rng = np.random.default_rng([int(seed), int(epoch)])
        count = n // global_batch if drop_last else math.ceil(n / global_batch)
        size = min(global_batch, n)
        # A fresh uniform draw of distinct images per batch, as torch.randperm(n)[:B] is.
        return [indices[rng.choice(n, size=size, replace=False)] for _ in range(count)]
    order = epoch_order(indices, shuffle=shuffle, seed=seed, epoch=epoch,
                        sampling="blocks" if sampling == "blocks" else "shuffle", block_size=block_size)
    out = [order[i:i + global_batch] for i in range(0, n, global_batch)]
    if drop_last and out and len(out[-1]) < global_batch:
        out.pop()
    return out


def _runs(idx: np.ndarray) -> List[tuple]:
    """Split global indices into maximal runs of consecutive values: [(start, stop, out_pos)]."""
    if len(idx) == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(idx)]])
    return [(int(idx[a]), int(idx[b - 1]) + 1, int(a)) for a, b in zip(starts, stops)]


class _DirectReader:
    """Reads single images of uncompressed chunked shards straight from the file.

    A small HDF5 slice read costs about 0.07 ms per field in the library's selection machinery
    whatever its size, so one read per image would run at a quarter of the speed of 8-image
    slices. The packed shards store each field in uncompressed chunks of whole images, so an
    image's bytes sit at ``chunk offset + row * row bytes``: the chunk offsets are taken once
    from HDF5's chunk index, and each image is one ``preadv`` into its batch row. Fields that do
    not qualify (compressed, filtered, other layouts) are left to HDF5 (``table`` gives None).
    """

    def __init__(self, dataset: PackedDataset, fields: Sequence[str]):
        self.paths = [str(dataset.root / s["file"]) for s in dataset.shards]
        self.tables: Dict[tuple, Optional[tuple]] = {}
        for s in range(len(dataset.shards)):
            dataset._shard(s)  # opens and checks the shard (shapes, dtypes) as any read would
            for f in fields:
                self.tables[(s, f)] = self._table(dataset._dsets[s][f])
        self._fds: Dict[int, int] = {}
        self._pid = os.getpid()

    @staticmethod
    def _table(dset) -> Optional[tuple]:
        """(chunk byte offsets (k,) int64, images per chunk, bytes per image), or None."""
        plist = dset.id.get_create_plist()
        if plist.get_layout() != h5py.h5d.CHUNKED or plist.get_nfilters() != 0 or not dset.dtype.isnative:
            return None
        chunks = dset.chunks
        if chunks is None or tuple(chunks[1:]) != tuple(dset.shape[1:]) or dset.shape[0] == 0:
            return None
        rows = int(chunks[0])
        row_bytes = int(np.prod(dset.shape[1:], dtype=np.int64)) * dset.dtype.itemsize
        count = math.ceil(dset.shape[0] / rows)
        offsets = np.full(count, -1, dtype=np.int64)
        found = []
        if hasattr(dset.id, "chunk_iter"):
            dset.id.chunk_iter(lambda info: found.append(info))
        else:
            found = [dset.id.get_chunk_info(i) for i in range(dset.id.get_num_chunks())]
        for info in found:
            if info.byte_offset is None or info.size != rows * row_bytes or info.filter_mask != 0:
                return None
            offsets[info.chunk_offset[0] // rows] = info.byte_offset
        if (offsets < 0).any():  # a chunk never written: leave the fill values to HDF5
            return None
        return offsets, rows, row_bytes

    def __getstate__(self):
        return {"paths": self.paths, "tables": self.tables}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._fds, self._pid = {}, os.getpid()

    def _fd(self, s: int) -> int:
        if self._pid != os.getpid():
            self._fds, self._pid = {}, os.getpid()  # positionless preads could share them, but be plain
        fd = self._fds.get(s)
        if fd is None:
            fd = self._fds[s] = os.open(self.paths[s], os.O_RDONLY | getattr(os, "O_BINARY", 0))
        return fd

    def read(self, s: int, local: int, index: int, field: str, dest: np.ndarray) -> None:
        """Image ``local`` of shard ``s`` (global ``index``), field ``field``, into ``dest``."""
        offsets, rows, row_bytes = self.tables[(s, field)]
        c, w = divmod(local, rows)
        at = int(offsets[c]) + w * row_bytes
        view = memoryview(dest).cast("B")
        if hasattr(os, "preadv"):
            got = os.preadv(self._fd(s), [view], at)
        else:  # no preadv (Windows): pread returns a copy
            data = os.pread(self._fd(s), row_bytes, at)
            got = len(data)
            view[:got] = data
        if got != row_bytes:
            raise PackedFormatError(f"{self.paths[s]}: field '{field}': image {index} (row {local} of the shard) "
                                    f"ends past the end of the file (truncated? run verify())")

    def close(self) -> None:
        fds, self._fds = self._fds, {}
        if self._pid == os.getpid():
            for fd in fds.values():
                os.close(fd)

    def __del__(self):
        try:
            self.close()
        except (OSError, AttributeError, TypeError):  # interpreter shutdown
            pass


class _BatchSource(Dataset):
    """Map-style dataset whose item ``k`` is batch ``k`` of the current epoch (already collated)."""

    def __init__(self, dataset: PackedDataset, batches: List[np.ndarray], memory: Optional[dict], float32: bool = True,
                 direct: Optional[_DirectReader] = None, require_positive: int = 0):
        self.dataset = dataset
        self.batches = batches
        self.memory = memory
        self.float32 = float32
        self.direct = direct
        self.require_positive = int(require_positive)
        self.fields = ["regions", "scene", "labels"] if dataset.has_scene else ["regions", "labels"]

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> Dict[str, torch.Tensor]:
        idx = self.batches[k]
        b = len(idx)
        ds = self.dataset
        out = {
            "regions": np.empty((b, ds.channels, ds.num_regions), dtype=ds.feature_dtype),
            "labels": np.empty((b, ds.num_labels), dtype=np.int8),
        }
        if ds.has_scene:
            out["scene"] = np.empty((b, ds.scene_dim), dtype=ds.feature_dtype)
        if self.memory is not None:
            rows = np.searchsorted(self.memory["index"], idx)
            for f in self.fields:
                np.take(self.memory[f], rows, axis=0, out=out[f])
        else:
            self._read(idx, out)
        if self.require_positive:
            # As the resident path does before gathering (see BatchLoader): the same rows.
            keep = (out["labels"][:, :self.require_positive] > 0).any(axis=1)
            if not keep.all():
                idx = idx[keep]
                out = {f: np.ascontiguousarray(a[keep]) for f, a in out.items()}
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
        if self.require_positive:
            batch["keep"] = torch.ones(len(idx), dtype=torch.bool)
        return batch


    def _read(self, idx: np.ndarray, out: Dict[str, np.ndarray]) -> None:
        ds, direct = self.dataset, self.direct
        for start, stop, at in _runs(idx):
            if direct is not None and stop - start < 4:
                # Short runs (uniform batches: single images) are cheaper read directly.
                s, local = ds.locate(start)
                if stop <= int(ds.shard_offsets[s + 1]):
                    slow = [f for f in self.fields if direct.tables[(s, f)] is None]
                    for f in self.fields:
                        if direct.tables[(s, f)] is not None:
                            for j in range(stop - start):
                                direct.read(s, local + j, start + j, f, out[f][at + j])
                    if slow:
                        ds.read_into(start, stop, {f: out[f][at:at + stop - start] for f in slow}, slow)
                    continue
            ds.read_into(start, stop, {f: out[f][at:at + stop - start] for f in self.fields}, self.fields)


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

    ``len(loader)`` is the number of batches on this rank this epoch (the same on every rank
    when shuffling). Call ``set_epoch(e)`` before iterating epoch ``e``.
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
        sampling: str = "shuffle",
        block_size: int = 8,
        in_memory: Union[bool, str] = False,
        pin_memory: bool = False,
        drop_last: bool = False,
        float32: bool = True,
        direct_reads: bool = True,
        device: Union[str, torch.device, None] = None,
        require_positive: int = 0,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, world_size={world_size})")
        if sampling not in SAMPLING:
            raise ValueError(f"sampling must be one of {', '.join(map(repr, SAMPLING))}, got {sampling!r}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.epoch = int(epoch)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.num_workers = int(num_workers)
        self.sampling = sampling
        self.block_size = int(block_size)
        self.drop_last = bool(drop_last)
        self.float32 = bool(float32)
        self.direct_reads = bool(direct_reads)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.require_positive = int(require_positive)
        if self.require_positive < 0:
            raise ValueError(f"require_positive must be >= 0, got {require_positive}")
        self._direct: Optional[_DirectReader] = None
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
        self.memory = None
        self.resident: Optional[ResidentSplit] = None
        if in_memory:
            need = self.memory_bytes()
            if in_memory == "auto":
                if fits_on_device(need, self.device):
                    self.resident = self._load_resident()
                elif need <= 0.5 * _available_ram():
                    self.memory = self._load_memory()
            elif in_memory is True:
                avail = _available_ram()
                if need > 0.9 * avail:
                    raise MemoryError(f"in_memory: split '{dataset.split}' subset needs {need / 2**30:.1f} GiB, "
                                      f"only {avail / 2**30:.1f} GiB available; use in_memory=False or 'auto'")
                self.memory = self._load_memory()
            elif in_memory == "device":
                self._check_device_room(need)
                self.resident = self._load_resident()
            else:
                raise ValueError(f"in_memory must be True, False, 'auto' or 'device', got {in_memory!r}")

    def _check_device_room(self, need: int) -> None:
        """An explicit "device" needs the subset to fit in the device's free memory (RAM on a CPU)."""
        if self.device.type == "cuda":
            free, total = device_memory(self.device)
            where = f"{self.device} ({free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB)"
        else:
            free = int(0.9 * _available_ram())
            where = f"RAM ({free / 2**30:.1f} GiB available)"
        if need > free:
            raise MemoryError(f"in_memory 'device': split '{self.dataset.split}' subset ({len(self.indices)} images) "
                              f"needs {need / 2**30:.1f} GiB, more than {where}; use in_memory=False or 'auto'")

    def _load_resident(self) -> ResidentSplit:
        return ResidentSplit(self.dataset, self.indices, self.device, require_positive=self.require_positive)

    def memory_bytes(self) -> int:
        """Bytes the subset takes in its stored dtypes (what in-memory and device modes hold)."""
        return image_bytes(self.dataset) * len(self.indices)

    @property
    def where(self) -> str:
        """Where the batches come from: "device" (resident on ``self.device``), "ram" or "disk"."""
        return "device" if self.resident is not None else "ram" if self.memory is not None else "disk"

    def _load_memory(self) -> dict:
        from tqdm import tqdm

        ds = self.dataset
        fields = ["regions", "scene", "labels"] if ds.has_scene else ["regions", "labels"]
        mem = {"index": self.indices}
        for f in fields:
            shape = {"regions": (ds.channels, ds.num_regions), "scene": (ds.scene_dim,), "labels": (ds.num_labels,)}[f]
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

    def global_batches(self) -> List[np.ndarray]:
        """The epoch's global batches (``batch_size * world_size`` images each; the last may be
        short), identical on every rank and for every world size with the same global batch."""
        return global_batches(self.indices, self.batch_size * self.world_size, shuffle=self.shuffle, seed=self.seed,
                              epoch=self.epoch, sampling=self.sampling, block_size=self.block_size,
                              drop_last=self.drop_last)

    def batches(self, rank: Optional[int] = None) -> List[np.ndarray]:
        """Global image indices of each batch of ``rank`` (default: this rank) this epoch: its
        share of every global batch. Shuffling loaders keep empty shares (every rank runs the
        same steps); unshuffled (evaluation) loaders leave them out."""
        r = self.rank if rank is None else int(rank)
        b = self.batch_size
        out = [g[r * b:(r + 1) * b] for g in self.global_batches()]
        return out if self.shuffle else [x for x in out if len(x)]

    def order(self, rank: Optional[int] = None) -> np.ndarray:
        """(m,) int64 global image indices of ``rank`` (default: this rank) this epoch, in order."""
        parts = self.batches(rank)
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    def num_batches_for_rank(self, rank: int) -> int:
        """Batches ``rank`` gets this epoch (pure arithmetic; no communication needed)."""
        return len(self.batches(rank))

    @property
    def min_batches(self) -> int:
        """Fewest batches over all ranks this epoch (all equal when shuffling)."""
        return min(self.num_batches_for_rank(r) for r in range(self.world_size))

    def __len__(self) -> int:
        return self.num_batches_for_rank(self.rank)

    def _direct_reader(self) -> Optional[_DirectReader]:
        if self.memory is not None or self.resident is not None or not self.direct_reads:
            return None
        if self._direct is None:
            ds = self.dataset
            self._direct = _DirectReader(ds, ["regions", "scene", "labels"] if ds.has_scene else ["regions", "labels"])
        return self._direct

    def __iter__(self) -> Iterator[Dict[str, torch.Tensor]]:
        if self.resident is not None:
            # Gathered on the device, in this process: no workers, nothing to pin.
            yield from self.resident.batches(self.batches(), float32=self.float32)
            return
        source = _BatchSource(self.dataset, self.batches(), self.memory, self.float32, self._direct_reader(),
                              self.require_positive)
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
    sampling: str = "shuffle",
    block_size: int = 8,
    in_memory: Union[bool, str] = False,
    pin_memory: bool = False,
    drop_last: bool = False,
    float32: bool = True,
    direct_reads: bool = True,
    device: Union[str, torch.device, None] = None,
    require_positive: int = 0,
) -> BatchLoader:
    """Batches of ``dataset`` for one rank.

    Each batch is a dict: ``regions`` (B, C, R) float32 (VGG19: (B, 512, 196)), ``scene`` (B, scene_dim) float32 (only
    when the dataset has scene features; with ``float32=False`` both keep the stored dtype, e.g.
    float16, for the consumer to convert on its device), ``labels`` (B, S+U) int8, ``index`` (B,)
    int64 global image index. ``B`` is ``batch_size`` except at the end of an epoch, where a
    rank's share of the last global batch may be short or, when shuffling, empty (B = 0).
    ``shuffle=False`` gives the images in index order (evaluation); with ``world_size > 1`` each
    rank holds its shares of the global batches, so gather results by ``index``. ``indices``
    restricts the epoch to a subset of image indices. ``sampling``: "shuffle" (a uniform
    permutation per epoch), "randperm" (an independent uniform draw per batch, as published) or
    "blocks" (``block_size`` consecutive images per block; see the module docstring).
    ``in_memory``: True loads the subset into RAM once (MemoryError if it cannot fit);
    ``"device"`` copies it once onto ``device`` (a :class:`biam.data.resident.ResidentSplit`;
    MemoryError if it does not fit in the free device memory, RAM for a CPU) and gathers every
    batch there: ``regions``, ``scene`` and ``labels`` are then tensors on ``device``,
    ``index`` stays on the host, and there are no workers; ``"auto"`` picks ``device`` when
    ``device`` is a CUDA GPU where the subset fits with room for training
    (:func:`biam.data.resident.fits_on_device`), else RAM when the subset takes under half the
    free RAM, else the files. ``require_positive=k`` leaves out of every batch the images
    without a positive (+1) label among their first ``k`` label columns (the seen labels: such
    images add nothing to the ranking loss), and then each batch carries ``keep``, a (B,) bool
    host tensor (all True): a trainer can take its rows as decided without reading labels
    back from the device. ``direct_reads=False`` reads every image through HDF5 instead of the
    file offsets. Create the loader once and call ``set_epoch``.
    """
    return BatchLoader(dataset, batch_size=batch_size, shuffle=shuffle, seed=seed, epoch=epoch, indices=indices,
                       rank=rank, world_size=world_size, num_workers=num_workers, sampling=sampling,
                       block_size=block_size, in_memory=in_memory, pin_memory=pin_memory, drop_last=drop_last,
                       float32=float32, direct_reads=direct_reads, device=device, require_positive=require_positive)
