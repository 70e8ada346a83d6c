"""Training images held on the accelerator (``DATA.IN_MEMORY device``).

A :class:`ResidentSplit` copies a subset of a packed split once into tensors on one device
(features in their stored dtype, e.g. float16; labels int8), and a training batch is then
gathered there by ``index_select``: no host-to-device copy per step, only one copy of the
epoch's row numbers per epoch. The batches are the ones :class:`biam.data.loader.BatchLoader`
reads from disk for the same arguments, in the same order (it computes them; this module only
gathers), so the results are those of the streamed path.

Memory: an image takes ``C x R x itemsize + scene_dim x itemsize + L`` bytes (NUS-WIDE, VGG19
float16: 512 x 196 x 2 + 4096 x 2 + 1006 = 209,902 bytes, 34.0 GB for 161,789 images). The
copy goes through the host in slices of ``chunk`` images, so host memory holds only two slices
(pinned, for the asynchronous copy), never the whole split.

``DATA.IN_MEMORY auto`` holds the split on a CUDA device when :func:`fits_on_device` says so:
its bytes must fit in the device's free memory less a reserve for training of
``max(RESERVE_MIN_BYTES, RESERVE_FRACTION x total memory)`` (see the constants).
"""

from __future__ import annotations

from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np
import torch

__all__ = ["RESERVE_FRACTION", "RESERVE_MIN_BYTES", "image_bytes", "device_memory", "fits_on_device",
           "ResidentSplit"]

# Room "auto" leaves on the device for everything else a run allocates there: weights, Adam's
# moments and gradients (BiAM: a few MB), activations of a training step (a few hundred MB per 32
# images, more with Open Images' 7186 labels or larger batches), the evaluation passes that run
# between epochs, torch.compile's and cuDNN's workspaces, and the caching allocator's
# fragmentation. A quarter of the card (35 GB of an H200, 20 of an 80 GB H100, 6 of a 24 GB
# card) is several times what those take at the published batch sizes; 4 GiB is the floor on
# small cards. An explicit ``device`` asks for the split to fit in the free memory only.
RESERVE_FRACTION = 0.25
RESERVE_MIN_BYTES = 4 * 2**30


def image_bytes(dataset) -> int:
    """Bytes one image of ``dataset`` (a PackedDataset) takes held in its stored dtypes."""
    per = dataset.channels * dataset.num_regions * dataset.feature_dtype.itemsize + dataset.num_labels
    if dataset.has_scene:
        per += dataset.scene_dim * dataset.feature_dtype.itemsize
    return int(per)


def device_memory(device: torch.device) -> Tuple[int, int]:
    """(free, total) bytes of a CUDA ``device``. Memory that PyTorch's caching allocator holds
    without using it (a previous phase's split, say) counts as free: our tensors can take it."""
    free, total = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free), int(total)


def fits_on_device(need: int, device: torch.device) -> bool:
    """Whether ``auto`` holds ``need`` bytes on ``device``: a CUDA device only, and only with
    the reserve for training left over (``max(RESERVE_MIN_BYTES, RESERVE_FRACTION x total)``)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    free, total = device_memory(device)
    return need <= free - max(RESERVE_MIN_BYTES, RESERVE_FRACTION * total)


def _runs(idx: np.ndarray, chunk: int) -> List[Tuple[int, int, int]]:
    """(start, stop, position) of the runs of consecutive values of sorted ``idx``, cut to at
    most ``chunk`` images each."""
    if len(idx) == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(idx)]])
    out = []
    for a, b in zip(starts.tolist(), stops.tolist()):
        for s in range(a, b, chunk):
            e = min(b, s + chunk)
            out.append((int(idx[s]), int(idx[e - 1]) + 1, s))
    return out


class ResidentSplit:
    """Images ``indices`` of ``dataset`` held as tensors on ``device``.

    Attributes: ``regions`` (n, C, R) and ``scene`` (n, scene_dim) (when the dataset has scene
    features) in the stored feature dtype, ``labels`` (n, S+U) int8, all on ``device``;
    ``index`` (n,) int64 numpy, the sorted global image indices (row ``i`` holds image
    ``index[i]``; names and bad-batch reports go by it, on the host); ``positive`` (n,) bool
    numpy, whether the image has a positive (+1) label among its first ``require_positive`` labels
    (all True when ``require_positive`` is 0). ``nbytes`` is what the tensors take.
    """

    def __init__(self, dataset, indices: Sequence[int], device: torch.device, *, require_positive: int = 0,
                 chunk: int = 1024, progress: bool = True):
        self.device = torch.device(device)
        self.index = np.asarray(indices, dtype=np.int64)
        if len(self.index) > 1 and not (np.diff(self.index) > 0).all():
            raise ValueError("ResidentSplit: indices must be sorted and unique")
        ds = dataset
        n = len(self.index)
        fdtype = torch.from_numpy(np.empty(0, dtype=ds.feature_dtype)).dtype
        self.fields = ["regions", "scene", "labels"] if ds.has_scene else ["regions", "labels"]
        shapes = {"regions": (ds.channels, ds.num_regions), "scene": (ds.scene_dim,), "labels": (ds.num_labels,)}
        dtypes = {"regions": fdtype, "scene": fdtype, "labels": torch.int8}
        self.nbytes = image_bytes(ds) * n
        tensors = {f: torch.empty((n,) + shapes[f], dtype=dtypes[f], device=self.device) for f in self.fields}
        self.require_positive = int(require_positive)
        self.positive = np.ones(n, dtype=bool)
        runs = _runs(self.index, chunk)
        on_host = self.device.type == "cpu"
        # Two staging slices: the host fills one while the previous one is copied to the device.
        pin = self.device.type == "cuda"
        staging = [] if on_host else [
            {f: torch.empty((chunk,) + shapes[f], dtype=dtypes[f], pin_memory=pin) for f in self.fields}
            for _ in range(2)]
        done = [None, None]
        bar = None
        if progress and len(runs) >= 8:
            from tqdm import tqdm

            bar = tqdm(total=n, desc=f"load {ds.split} onto {self.device}", unit="img")
        for k, (start, stop, at) in enumerate(runs):
            m = stop - start
            if on_host:
                # Read straight into the resident tensors (their numpy views): no copy at all.
                out = {f: tensors[f][at:at + m].numpy() for f in self.fields}
                ds.read_into(start, stop, out, self.fields)
                lab = out["labels"]
            else:
                buf = staging[k % 2]
                if done[k % 2] is not None:
                    done[k % 2].synchronize()  # its previous copy has left the buffer
                out = {f: buf[f][:m].numpy() for f in self.fields}
                ds.read_into(start, stop, out, self.fields)
                for f in self.fields:
                    tensors[f][at:at + m].copy_(buf[f][:m], non_blocking=pin)
                if pin:
                    done[k % 2] = torch.cuda.Event()
                    done[k % 2].record()
                lab = out["labels"]
            if require_positive:
                self.positive[at:at + m] = (lab[:, :require_positive] > 0).any(axis=1)
            if bar is not None:
                bar.update(m)
        if bar is not None:
            bar.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.regions = tensors["regions"]
        self.labels = tensors["labels"]
        self.scene = tensors.get("scene")

    def __len__(self) -> int:
        return len(self.index)

    def batches(self, batches: Sequence[np.ndarray], *, float32: bool) -> Iterator[Dict[str, torch.Tensor]]:
        """Gather the given batches (each (b,) global image indices, all held here), in order.

        Each batch: ``regions``, ``scene``, ``labels`` on the device (float32 features when
        ``float32``, else the stored dtype), ``index`` (b',) int64 on the host. With
        ``require_positive`` > 0 the images without a positive among their first
        ``require_positive`` labels are left out (b' <= b), and the batch carries ``keep``, a (b',) bool host tensor
        (all True), which tells the trainer the rows are decided without reading the labels
        back from the device. The row numbers of the whole epoch cross to the device in one copy.
        """
        rows, idxs = [], []
        for idx in batches:
            idx = np.asarray(idx, dtype=np.int64)
            r = np.searchsorted(self.index, idx)
            if len(idx) and (r.max() >= len(self.index) or (self.index[r] != idx).any()):
                raise IndexError(f"ResidentSplit: batch holds images that are not resident ({idx[:4].tolist()} ...)")
            if self.require_positive:
                keep = self.positive[r]
                r, idx = r[keep], idx[keep]
            rows.append(r)
            idxs.append(idx)
        flat = np.concatenate(rows) if rows else np.empty(0, dtype=np.int64)
        on_device = torch.from_numpy(flat).to(self.device)
        pos = 0
        for r, idx in zip(rows, idxs):
            sel = on_device[pos:pos + len(r)]
            pos += len(r)
            batch = {"regions": self.regions.index_select(0, sel), "labels": self.labels.index_select(0, sel),
                     "index": torch.from_numpy(idx)}
            if self.scene is not None:
                batch["scene"] = self.scene.index_select(0, sel)
            if float32:
                for k in ("regions", "scene"):
                    if k in batch:
                        batch[k] = batch[k].float()
            if self.require_positive:
                batch["keep"] = torch.ones(len(idx), dtype=torch.bool)
            yield batch


