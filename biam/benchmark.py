"""``biam-benchmark``: our way of working measured side by side with the original's, in one run.

What is measured (each "original" figure is the published code's way of doing the same work,
rebuilt here from the original release's code and files; each "ours" figure is this package's way):

* data: images/s of ready float32 batches of 32. Original: random batches of names, key-by-key
  h5py reads of ``<name>-features`` / ``<name>-labels`` from the released per-key gzip layout,
  stacked into tensors. Ours: ``build_loader`` over the packed layout (shuffle=True), with 0 and
  2 workers. Both are steady-state figures: an untimed warm-up (worker start-up included), then
  the median of several time-bounded windows (``_steady_rate``).
* training: images/s of whole training steps at batch 32 (reading included). Original: released
  reads, the frozen VGG19 scene head recomputed every step, float32, eager,
  ``attention="published"`` and the (B, C, C) ranking loss. Ours: the trainer's ``train_step``
  (packed data with stored scene features, fused attention, our O(BC) loss, bf16 autocast and
  ``torch.compile`` on CUDA). A torch.profiler table says where the time goes. Part
  ``train_oi`` does the same with Open Images shapes (7186 seen + 400 unseen labels, the
  released Open Images keys ``<id>-features`` / ``<id>-seenlabels``).
* evaluation: seconds for the NUS-WIDE and Open Images metrics (per-label loop vs ours) and
  images/s of a whole test pass (reading, scoring, metrics).
* memory: peak RSS of every (part, way), each measured in its own subprocess, and
  ``torch.cuda.max_memory_allocated`` on the GPU.

Output: a table (ours, original, ratio, goal, met?) and a JSON file (``--out``). Ratios are
always "times faster" (ours/original for rates, original/ours for seconds). Absolute times
mean something only from a GPU; on a CPU read the ratios.

CLI: ``python -m biam.benchmark [--quick | --tiny] [--device cpu|cuda] [--out FILE]
[--data-dir DIR] [--steps N] [--images N] [--parts data,train,...] [--in-process]
[--compile-cpu] [--part-timeout S] [--budget S]``. Parts run in the order given; a failing part is reported
(exit code 1) and the others still run; with ``--out`` the JSON is rewritten after every part.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import h5py
import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Sizes", "SIZES", "published_ranking_loss", "ReleasedBatches", "build_data", "run_benchmark", "main"]

NUM_SEEN, NUM_UNSEEN = 925, 81
OI_SEEN, OI_UNSEEN = 7186, 400
NUS_TEST_IMAGES = 107_859
NUS_TRAIN_IMAGES = 161_789
OI_TEST_IMAGES = 125_436
PARTS = ("data", "train", "train_oi", "eval_nus", "eval_oi", "testpass")
WAYS = ("original", "ours")


# --------------------------------------------------------------------------------- sizes
@dataclass(frozen=True)
class Sizes:
    """Counts of one benchmark mode (all stated in the output).

    released_train / released_test: images written in the released layout (the original reads
    them, cycling when it needs more). packed_train / packed_test: images of the packed splits.
    data_images: at least this many images are timed per data measurement (spread over its
    windows); data_windows / data_window_s / data_warmup_s: the data part's timed windows (the
    median is reported), the least seconds of each, and the untimed warm-up before them;
    data_steady_images: images our loader's epoch holds in the data part (the train shards
    listed again by hard links), so that no window waits for an epoch's worker start-up. train_steps / warmup_steps: timed and
    untimed training steps per way. batch: training batch. eval_*: matrix sizes of the metric
    benchmarks; *_loop_cols: columns the per-label loop is timed on (extrapolated linearly to
    all columns when fewer); *_f1_rows: images the per-image F1 loop is timed on (extrapolated
    likewise). test_images: images of the whole-test-pass measurement (the original's figure
    is extrapolated from its released_test images when there are more); test_batch: our
    test-pass batch. whole_epoch: also time the trainer's own epoch over all packed_train
    images. largest_batch_max: also search the largest training batch that fits, doubling from
    2 x batch up to this (0: no search). oi_images / oi_steps: images of the Open Images-shaped
    data (both layouts) and timed training steps per way on it (after one warm-up step each).
    """

    name: str
    released_train: int
    released_test: int
    packed_train: int
    packed_test: int
    data_images: int
    train_steps: int
    warmup_steps: int
    batch: int
    eval_nus_rows: int
    eval_nus_loop_cols: int
    eval_oi_rows: int
    eval_oi_loop_cols: int
    eval_nus_f1_rows: int
    eval_oi_f1_rows: int
    test_images: int
    profile_steps: int
    test_batch: int = 32
    whole_epoch: bool = False
    largest_batch_max: int = 0
    oi_images: int = 256
    oi_steps: int = 2
    data_windows: int = 7
    data_window_s: float = 0.5
    data_warmup_s: float = 0.5
    data_steady_images: int = 40_000


SIZES = {
    "full": Sizes("full", released_train=2048, released_test=1024, packed_train=2048, packed_test=1024,
                  data_images=1536, train_steps=12, warmup_steps=2, batch=32,
                  eval_nus_rows=NUS_TEST_IMAGES, eval_nus_loop_cols=NUM_SEEN + NUM_UNSEEN,
                  eval_oi_rows=OI_TEST_IMAGES, eval_oi_loop_cols=300, eval_nus_f1_rows=NUS_TEST_IMAGES,
                  eval_oi_f1_rows=10_000, test_images=1024, profile_steps=3, oi_images=512, oi_steps=6,
                  largest_batch_max=128, data_window_s=1.5, data_warmup_s=1.0, data_steady_images=131_072),
    "quick": Sizes("quick", released_train=384, released_test=128, packed_train=384, packed_test=128,
                   data_images=384, train_steps=2, warmup_steps=1, batch=32,
                   eval_nus_rows=30_000, eval_nus_loop_cols=150,
                   eval_oi_rows=10_000, eval_oi_loop_cols=100, eval_nus_f1_rows=5_000,
                   eval_oi_f1_rows=2_000, test_images=128, profile_steps=1, oi_images=96, oi_steps=1),
    # For the tests: structure only, every count tiny, and every code path of the CUDA mode
    # (whole epoch, largest-batch search, the original's test pass extrapolated) on the CPU.
    "tiny": Sizes("tiny", released_train=48, released_test=16, packed_train=48, packed_test=24,
                  data_images=32, train_steps=1, warmup_steps=1, batch=4,
                  eval_nus_rows=600, eval_nus_loop_cols=40, eval_oi_rows=800, eval_oi_loop_cols=30, eval_nus_f1_rows=200, eval_oi_f1_rows=200,
                  test_images=24, profile_steps=1, test_batch=8, whole_epoch=True, largest_batch_max=8,
                  oi_images=16, oi_steps=1, data_windows=3, data_window_s=0.0, data_warmup_s=0.0,
                  data_steady_images=192),
    # CUDA: a whole NUS-WIDE-sized epoch and test pass for ours; the original on a few hundred
    # steps/batches, extrapolated.
    "cuda": Sizes("cuda", released_train=1024, released_test=1024, packed_train=NUS_TRAIN_IMAGES,
                  packed_test=NUS_TEST_IMAGES, data_images=4096, train_steps=100, warmup_steps=10, batch=32,
                  eval_nus_rows=NUS_TEST_IMAGES, eval_nus_loop_cols=200,
                  eval_oi_rows=OI_TEST_IMAGES, eval_oi_loop_cols=100, eval_nus_f1_rows=20_000,
                  eval_oi_f1_rows=10_000, test_images=NUS_TEST_IMAGES,
                  profile_steps=5, test_batch=256, whole_epoch=True, largest_batch_max=8192,
                  oi_images=1024, oi_steps=20, data_window_s=1.0, data_warmup_s=2.0, data_steady_images=NUS_TRAIN_IMAGES),
}


# ------------------------------------------------------------------------- small helpers
def peak_rss_bytes() -> int:
    """Peak resident set size of this process (VmHWM of /proc/self/status, else getrusage)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    # ru_maxrss is in kilobytes on Linux.
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def machine_info(device: str) -> Dict[str, Any]:
    """CPU model and core count (and GPU name when ``device`` is cuda) of this machine."""
    cpu = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {"cpu": cpu, "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "gpu": None}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rng_labels(rng: np.random.Generator, n: int, c: int, positives: float) -> np.ndarray:
    """(n, c) int8 in {-1, +1} with about ``positives`` of +1, at least one +1 per row."""
    y = np.where(rng.random((n, c), dtype=np.float32) < positives, 1, -1).astype(np.int8)
    y[np.arange(n), rng.integers(0, c, size=n)] = 1
    return y


def _oi_labels(rng: np.random.Generator, n: int, c: int) -> np.ndarray:
    """(n, c) int8 shaped like Open Images annotations: mostly 0 (not annotated), about 8.6
    verified positives and 5.8 verified negatives per image, at least one +1 per row."""
    u = rng.random((n, c), dtype=np.float32)
    y = np.zeros((n, c), dtype=np.int8)
    y[u < 0.0012] = 1
    y[(u >= 0.0012) & (u < 0.002)] = -1
    y[np.arange(n), rng.integers(0, c, size=n)] = 1
    return y


def _feature_pool(rng: np.random.Generator, k: int) -> np.ndarray:
    """(k, 512, 196) float32 post-ReLU-like features: ~70% zeros, exponential values elsewhere."""
    x = rng.exponential(1.0, size=(k, 512, 196)).astype(np.float32)
    x[rng.random(x.shape, dtype=np.float32) < 0.7] = 0.0
    return x


# -------------------------------------------------------------------------- data building
def write_released(path: Path, names: Sequence[str], label_width: int, seed: int) -> None:
    """Write the released per-key layout (the original release's NUS-WIDE feature files): one gzip dataset per image and field.

    ``<name>-features`` (512, 196) float32, ``<name>-labels`` (label_width,) int8 and
    ``<name>-labels_81`` (81,) int8, gzip at h5py's default level (4), as the release was written.
    """
    rng = np.random.default_rng(seed)
    pool = _feature_pool(rng, 16)  # distinct arrays to cycle: generating is not what we measure
    labels = _rng_labels(rng, len(names), label_width, 0.02)
    with h5py.File(path, "w") as f:
        for i, name in enumerate(names):
            f.create_dataset(f"{name}-features", data=pool[i % len(pool)], compression="gzip")
            f.create_dataset(f"{name}-labels", data=labels[i], compression="gzip")
            f.create_dataset(f"{name}-labels_81", data=labels[i, -NUM_UNSEEN:], compression="gzip")


def write_released_openimages(path: Path, ids: Sequence[str], seed: int) -> None:
    """One released Open Images training shard (as the original release's files hold it): ``<id>-features`` (512, 196) float32 and
    ``<id>-seenlabels`` (7186,) int8, one gzip dataset each."""
    rng = np.random.default_rng(seed)
    pool = _feature_pool(rng, 16)
    labels = _oi_labels(rng, len(ids), OI_SEEN)
    with h5py.File(path, "w") as f:
        for i, name in enumerate(ids):
            f.create_dataset(f"{name}-features", data=pool[i % len(pool)], compression="gzip")
            f.create_dataset(f"{name}-seenlabels", data=labels[i], compression="gzip")


def write_packed(root: Path, split: str, n: int, seed: int, shard_size: int = 4096, repeat_to: Optional[int] = None,
                 openimages: bool = False) -> None:
    """Write split ``split`` of a packed NUS-WIDE-shaped dataset with stored scene features.

    ``openimages``: Open Images shapes (7186 seen + 400 unseen labels, sparse annotations)
    instead of NUS-WIDE's (925 + 81, every label +1 or -1).
    With ``repeat_to``, only one full shard and the remainder shard are written; the full shard
    is hard-linked as many times as needed to list ``repeat_to`` images (every link has the same
    bytes and checksum, so the page cache holds one copy: stated in the output).
    """
    from .data.packed import PackedWriter, read_manifest, save_embeddings, shard_filename

    rng = np.random.default_rng(seed)
    num_seen, num_unseen = (OI_SEEN, OI_UNSEEN) if openimages else (NUM_SEEN, NUM_UNSEEN)
    seen = [f"tag{i}" for i in range(num_seen)]
    unseen = [f"concept{i}" for i in range(num_unseen)]
    total = n if repeat_to is None else repeat_to
    write_n = n if repeat_to is None else min(total, shard_size + total % shard_size)
    writer = PackedWriter(root, split, dataset="openimages" if openimages else "nus_wide", seen_labels=seen,
                          unseen_labels=unseen,
                          shard_size=shard_size, scene_source="random-benchmark", resume=False)
    pool = _feature_pool(rng, 16).astype(np.float16)
    for start in range(0, write_n, 512):
        b = min(512, write_n - start)
        regions = pool[np.arange(start, start + b) % len(pool)]
        scene = rng.exponential(0.5, size=(b, 4096)).astype(np.float16)
        labels = (_oi_labels(rng, b, num_seen + num_unseen) if openimages
                  else _rng_labels(rng, b, num_seen + num_unseen, 0.02))
        writer.append(regions, labels, [f"{split}_{start + i:06d}.jpg" for i in range(b)], scene=scene)
    manifest = writer.close()
    if not (root / "embeddings.npz").is_file():
        save_embeddings(root, rng.standard_normal((num_seen, 300)).astype(np.float32),
                        rng.standard_normal((num_unseen, 300)).astype(np.float32))
    if repeat_to is None or write_n == total:
        return
    entry = manifest["splits"][split]
    full, rest = entry["shards"][0], (entry["shards"][1] if len(entry["shards"]) > 1 else None)
    copies = total // shard_size
    rest_tmp = root / (split + "-rest.h5.part")
    if rest is not None:
        os.replace(root / rest["file"], rest_tmp)
    shards = [dict(full)]
    for i in range(1, copies):
        target = root / shard_filename(split, i)
        os.link(root / full["file"], target)
        shards.append(dict(full, file=target.name))
    if rest is not None:
        os.replace(rest_tmp, root / shard_filename(split, copies))
        shards.append(dict(rest, file=shard_filename(split, copies)))
    entry.update(shards=shards, num_images=total)
    tmp = root / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, root / "manifest.json")
    read_manifest(root)  # the rewritten manifest must still pass the reader's checks


def build_data(data_dir: Path, sizes: Sizes, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Write the released and packed data under ``data_dir`` (skipped when already there).

    Returns a dict of paths and counts, also stored as ``data_dir/benchmark_data.json``.
    """
    info_path = data_dir / "benchmark_data.json"
    want = {"sizes": asdict(sizes)}
    if info_path.is_file():
        info = json.loads(info_path.read_text(encoding="utf-8"))
        if info.get("sizes") == want["sizes"]:
            log(f"reusing benchmark data in {data_dir}")
            return info
    data_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    released = data_dir / "released"
    released.mkdir(exist_ok=True)
    train_names = [f"train_{i:06d}.jpg" for i in range(sizes.released_train)]
    test_names = [f"test_{i:06d}.jpg" for i in range(sizes.released_test)]
    log(f"writing released layout: {len(train_names)} train + {len(test_names)} test images (gzip per key)")
    write_released(released / "nus_wide_train.h5", train_names, NUM_SEEN, seed=1)
    write_released(released / "nus_wide_test.h5", test_names, NUM_SEEN + NUM_UNSEEN, seed=2)
    packed = data_dir / "packed"
    if packed.exists():
        shutil.rmtree(packed)
    big = sizes.name == "cuda"
    log(f"writing packed layout: {sizes.packed_train} train + {sizes.packed_test} test images"
        + (" (one shard written, hard-linked to fill the split)" if big else ""))
    write_packed(packed, "train", sizes.packed_train, seed=3, repeat_to=sizes.packed_train if big else None)
    write_packed(packed, "test", sizes.packed_test, seed=4, repeat_to=sizes.packed_test if big else None)
    oi_ids = [f"{i:016x}" for i in range(sizes.oi_images)]
    log(f"writing the Open Images-shaped variant (7186 + 400 labels): {sizes.oi_images} training images in both layouts")
    write_released_openimages(released / "openimages_train.h5", oi_ids, seed=8)
    packed_oi = data_dir / "packed_oi"
    if packed_oi.exists():
        shutil.rmtree(packed_oi)
    write_packed(packed_oi, "train", sizes.oi_images, seed=9, openimages=True)
    write_packed(packed_oi, "test", 32, seed=10, openimages=True)  # the trainer opens a test split too
    info = dict(want, released=str(released), packed=str(packed), train_names=train_names, test_names=test_names,
                packed_oi=str(packed_oi), oi_ids=oi_ids, build_seconds=time.perf_counter() - t0)
    info_path.write_text(json.dumps(info), encoding="utf-8")
    return info


# -------------------------------------------------------------------- the original's way
class ReleasedBatches:
    """The original's input pipeline: random batches of names, key-by-key reads, stacked.

    Args:
        path: a released NUS-WIDE feature file; names: its image names.
        batch: images per batch; seed: order of the random batches; label_field: ``labels``.
    Iterating yields ``(regions (B, 512, 196) float32, labels (B, L) int8)`` tensors, cycling
    over fresh random permutations for as long as asked.
    """

    def __init__(self, path: os.PathLike, names: Sequence[str], batch: int, seed: int = 0, label_field: str = "labels",
                 shuffle: bool = True):
        self.file = h5py.File(path, "r")
        self.names = list(names)
        self.batch = batch
        self.rng = np.random.default_rng(seed)
        self.label_field = label_field
        self.shuffle = shuffle

    def __iter__(self):
        while True:
            order = self.rng.permutation(len(self.names)) if self.shuffle else np.arange(len(self.names))
            for i in range(0, len(order), self.batch):
                names = [self.names[j] for j in order[i:i + self.batch]]
                feats = np.stack([self.file[f"{n}-features"][()] for n in names])
                labels = np.stack([self.file[f"{n}-{self.label_field}"][()] for n in names])
                yield torch.from_numpy(feats), torch.from_numpy(labels)

    def close(self) -> None:
        self.file.close()


def published_ranking_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The published code's loss formulation, with its (B, C, C) tensors.

    scores (B, C) float, labels (B, C) in {-1, 0, +1} -> scalar: columns that are zero in the
    whole batch and images without a positive are left out; per image, the sum of
    max(0, 1 + s_n - s_p) over (positive p, negative n) pairs over the number of pairs that
    contribute (+1e-8); mean over images.
    """
    cols = (labels != 0).any(dim=0)
    s, y = scores[:, cols], labels[:, cols]
    keep = (y > 0).any(dim=1)
    s, y = s[keep], y[keep]
    pos = (y > 0).to(s.dtype)
    neg = (y < 0).to(s.dtype)
    # [b, p, n] = 1 + s_n - s_p, kept only where p is a positive and n a negative of image b.
    hinge = F.relu(1.0 + s[:, None, :] - s[:, :, None]) * (pos[:, :, None] * neg[:, None, :])
    per_image = hinge.sum(dim=(1, 2)) / ((hinge > 0).sum(dim=(1, 2)).to(s.dtype) + 1e-8)
    return per_image.mean()


# ------------------------------------------------------------------ measuring one part
@dataclass
class Ctx:
    """Everything a part needs: data paths, sizes, device, and knobs."""

    data: Dict[str, Any]
    sizes: Sizes
    device: torch.device
    work_dir: Path
    compile_cpu: bool = False
    log: Callable[[str], None] = print


def _seen_embeddings(device: torch.device, num_seen: int = NUM_SEEN) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(num_seen, 300, generator=gen)
    return F.normalize(emb, dim=1).to(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


# ----- data
def _steady_rates(sources: Dict[str, Callable[[], Any]], sizes: Sizes, batch: int,
                  prefetched: Optional[Dict[str, int]] = None) -> Dict[str, Dict[str, Any]]:
    """Steady-state images/s of several endless batch sources, measured in interleaved windows.

    ``sources[name]()`` returns an iterator yielding a batch's image count, or None where a new
    epoch starts (worker start-up happens in the next ``next()``). Each source is warmed up
    untimed (at least ``data_warmup_s`` seconds and 2 batches, worker start-up included). Then
    ``data_windows`` rounds run the sources one after the other (the first of each round
    rotates), each timing one window of at least ``data_window_s`` seconds and
    ``data_images / data_windows`` images, after reading untimed 2 batches plus
    ``prefetched[name]`` (what a loader's workers prefetched while another source was timed). Interleaving puts a change of
    machine load on every source alike, so their ratio holds still. A window that meets an
    epoch start is dropped (start-up is never timed) and measured again. Per source: the
    median window rate, every window's rate, and their spread (max / min).
    """
    windows = max(1, sizes.data_windows)
    min_images = max(1, sizes.data_images // windows)
    its = {name: make() for name, make in sources.items()}
    rates: Dict[str, List[float]] = {name: [] for name in sources}
    totals = {name: [0, 0.0, 0] for name in sources}  # timed images, timed seconds, dropped windows

    def skip(it, batches: int, seconds: float = 0.0) -> None:
        t0, n = time.perf_counter(), 0
        while n < batches or time.perf_counter() - t0 < seconds:
            if next(it) is not None:
                n += 1

    for it in its.values():
        skip(it, 2, sizes.data_warmup_s)
    names = list(sources)
    for r in range(windows):
        for name in names[r % len(names):] + names[:r % len(names)]:
            it = its[name]
            while True:
                if totals[name][2] > 4 * windows:
                    raise RuntimeError(f"data part ({name}): {totals[name][2]} timing windows met an epoch start; "
                                       f"the epoch is too short for windows of {sizes.data_window_s:g} s")
                skip(it, 2 + (prefetched or {}).get(name, 0))
                images, t0, crossed = 0, time.perf_counter(), False
                while images < min_images or time.perf_counter() - t0 < sizes.data_window_s:
                    n = next(it)
                    if n is None:
                        crossed = True
                        break
                    images += n
                dt = time.perf_counter() - t0
                if not crossed:
                    break
                totals[name][2] += 1  # the untimed reads before the next try cover the new epoch's start-up
            rates[name].append(images / dt)
            totals[name][0] += images
            totals[name][1] += dt
    return {name: {"images_per_s": float(np.median(rates[name])), "window_rates": rates[name],
                   "spread": max(rates[name]) / min(rates[name]), "images": totals[name][0],
                   "seconds": totals[name][1], "windows_dropped_at_epoch_start": totals[name][2], "batch": batch}
            for name in sources}


def _steady_split(ctx: Ctx, min_images: int) -> Path:
    """A packed root whose train split lists the benchmark's train shards again and again (hard
    links, same bytes) until it holds at least ``min_images``, so that a timing window never
    waits for an epoch's worker start-up. Built once in the data folder, outside the timing."""
    from .data.packed import read_manifest, shard_filename

    src = Path(ctx.data["packed"])
    root = ctx.work_dir / "packed_steady"
    manifest = read_manifest(src)
    shards = manifest["splits"]["train"]["shards"]
    per_round = sum(sh["num_images"] for sh in shards)
    rounds = max(1, -(-min_images // per_round))
    if (root / "manifest.json").is_file():
        have = read_manifest(root)["splits"]["train"]
        if have["num_images"] == rounds * per_round:
            return root
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    listed = []
    for r in range(rounds):
        for sh in shards:
            name = shard_filename("train", len(listed))
            try:
                os.link(src / sh["file"], root / name)
            except OSError:  # a file system without hard links
                os.symlink((src / sh["file"]).resolve(), root / name)
            listed.append(dict(sh, file=name))
    manifest["splits"] = {"train": dict(manifest["splits"]["train"], shards=listed, num_images=rounds * per_round)}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    read_manifest(root)
    return root


def part_data(ctx: Ctx, way: str) -> Dict[str, Any]:
    """Steady-state images/s of ready float32 batches of 32, both ways in one process
    (``way`` "both"): the original's per-key reads and our loader with 0 and 2 workers (more on
    CUDA machines), measured in interleaved windows after an untimed warm-up (see
    :func:`_steady_rates`). Returns {"original": {...}, "ours": {"workers0": ..., ...,
    "images_per_s": best, "best": its key}}."""
    from .data.loader import build_loader
    from .data.packed import PackedDataset

    s = ctx.sizes
    batch = 32
    src = ReleasedBatches(Path(ctx.data["released"]) / "nus_wide_train.h5", ctx.data["train_names"], batch, seed=0)
    # The original's loop has no epoch start-up: its random batches follow each other endlessly.
    sources: Dict[str, Callable[[], Any]] = {"original": lambda: (regions.shape[0] for regions, _ in src)}
    root = _steady_split(ctx, s.data_steady_images)
    workers = [0, 2] if ctx.device.type == "cpu" else [0, min(8, max(2, (os.cpu_count() or 2) - 2))]
    datasets = []
    for w in workers:
        ds = PackedDataset(root, "train")
        datasets.append(ds)
        loader = build_loader(ds, batch_size=batch, shuffle=True, num_workers=w, seed=0)

        def endless(loader=loader):
            epoch = 0
            while True:
                yield None  # an epoch starts: its worker start-up is in the next batch's wait
                loader.set_epoch(epoch)
                for b in loader:
                    yield b["regions"].shape[0]
                epoch += 1

        sources[f"workers{w}"] = endless
    try:
        # A DataLoader holds up to 2 batches per worker ready (its default prefetch_factor).
        res = _steady_rates(sources, s, batch, prefetched={f"workers{w}": 2 * w for w in workers})
    finally:
        src.close()
        for ds in datasets:
            ds.close()
    ours = {k: v for k, v in res.items() if k != "original"}
    best = max(ours, key=lambda k: ours[k]["images_per_s"])
    ours.update(images_per_s=ours[best]["images_per_s"], best=best)
    return {"original": res["original"], "ours": ours}


# ----- training
def _profile_table(prof, device: torch.device, top: int = 12) -> List[Dict[str, Any]]:
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    rows = []
    events = prof.key_averages()
    total = sum(getattr(e, key) for e in events) or 1.0
    for e in sorted(events, key=lambda e: getattr(e, key), reverse=True)[:top]:
        rows.append({"op": e.key, "self_ms": getattr(e, key) / 1e3, "share": getattr(e, key) / total, "calls": e.count})
    return rows


def _profile(step: Callable[[], Any], n: int, device: torch.device) -> List[Dict[str, Any]]:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(n):
            step()
        _sync(device)
    return _profile_table(prof, device)


def _original_trainer(ctx: Ctx, batch: int, openimages: bool = False):
    """Step function (returns images) of the original's training loop, on the NUS-WIDE-shaped
    released file or, with ``openimages``, the Open Images-shaped one."""
    from .modeling import BiAM, SceneHead

    device = ctx.device
    torch.manual_seed(0)
    model = BiAM(attention="published").to(device).train()
    # Default-initialised weights: the values do not change the time, SceneHead.random's
    # seeded draw of 120M numbers would only slow the set-up.
    head = SceneHead().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), weight_decay=5e-4)
    if openimages:
        emb = _seen_embeddings(device, OI_SEEN)
        src = ReleasedBatches(Path(ctx.data["released"]) / "openimages_train.h5", ctx.data["oi_ids"], batch, seed=0,
                              label_field="seenlabels")
    else:
        emb = _seen_embeddings(device)
        src = ReleasedBatches(Path(ctx.data["released"]) / "nus_wide_train.h5", ctx.data["train_names"], batch, seed=0)
    it = iter(src)

    def step() -> int:
        regions, labels = next(it)
        regions, labels = regions.to(device), labels.to(device)
        keep = (labels > 0).any(dim=1)
        regions, labels = regions[keep], labels[keep]
        scene = head(regions)  # recomputed from the regions at every step, as published
        scores = model(regions, emb, scene)
        loss = published_ranking_loss(scores, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return int(regions.shape[0])

    return step


def _our_trainer(ctx: Ctx, batch: int, compile_model: bool, fraction: float = 1.0, openimages: bool = False):
    """A real :class:`biam.engine.trainer.Trainer` on the packed data (its own train_step)."""
    from .config import get_cfg_defaults
    from .engine.trainer import Trainer

    device = ctx.device
    cfg = get_cfg_defaults()
    cfg.DATA.ROOT = ctx.data["packed_oi" if openimages else "packed"]
    cfg.DATA.DATASET = "openimages" if openimages else "nus_wide"
    cfg.DATA.TRAIN_FRACTION = fraction
    cfg.DATA.IN_MEMORY = "off"  # read from the packed files, as a dataset larger than RAM would
    cfg.DATA.NUM_WORKERS = 0 if device.type == "cpu" else min(8, max(2, (os.cpu_count() or 2) - 2))
    cfg.SOLVER.BATCH_SIZE = batch
    cfg.DEVICE = device.type
    cfg.AMP = "auto"  # bf16 on CUDA; float32 on the CPU (no bf16 speed-up on most CPUs)
    cfg.COMPILE = "on" if compile_model else "off"
    cfg.PLOT_CURVE = False
    cfg.OUTPUT_DIR = str(ctx.work_dir / f"trainer-{'oi-' if openimages else ''}{os.getpid()}")
    cfg.freeze()
    trainer = Trainer(cfg)
    return trainer


def part_train(ctx: Ctx, way: str, openimages: bool = False) -> Dict[str, Any]:
    """Images/s of whole training steps at the benchmark batch (reading included).

    ``way`` is "both": the two ways run in one process, step by step in turn (original, ours,
    original, ...), so that load from other processes on a shared machine hits both alike.
    With NUS-WIDE shapes, ours then also runs a whole epoch and the largest-batch search when
    the mode asks for them; ``openimages`` uses the Open Images-shaped data (steps only).
    Returns {"original": {...}, "ours": {...}}.
    """
    s = ctx.sizes
    if openimages:
        s = replace(s, train_steps=s.oi_steps, warmup_steps=1, profile_steps=0, whole_epoch=False,
                    largest_batch_max=0)
    device = ctx.device
    orig_step = _original_trainer(ctx, s.batch, openimages)
    compile_model = device.type == "cuda" or ctx.compile_cpu
    trainer = _our_trainer(ctx, s.batch, compile_model, fraction=1.0, openimages=openimages)
    seen, num_seen = trainer.labels.seen, trainer.labels.num_seen
    loader = trainer.phase_loader()
    state = {"epoch": 0, "it": None, "step": 0}

    def our_step() -> int:
        # The trainer's own loop body: next loader batch, then train_step.
        while True:
            if state["it"] is None:
                loader.set_epoch(state["epoch"])
                state["it"] = iter(loader)
            try:
                batch = next(state["it"])
                break
            except StopIteration:
                state["it"], state["epoch"] = None, state["epoch"] + 1
        _, n = trainer.train_step(batch, seen, num_seen, state["epoch"], state["step"])
        state["step"] += 1
        return n

    t0 = time.perf_counter()
    for _ in range(s.warmup_steps):
        our_step()  # compile (when on) and allocator warm-up, reported apart
    _sync(device)
    ours: Dict[str, Any] = {"batch": s.batch, "compiled": compile_model, "warmup_seconds": time.perf_counter() - t0}
    for _ in range(s.warmup_steps):
        orig_step()
    orig: Dict[str, Any] = {"batch": s.batch}
    times = {"original": [], "ours": []}
    images = {"original": 0, "ours": 0}
    for _ in range(s.train_steps):
        for name, step in (("original", orig_step), ("ours", our_step)):
            _sync(device)
            t = time.perf_counter()
            n = step()
            _sync(device)
            times[name].append(time.perf_counter() - t)
            images[name] += n
    for name, rec in (("original", orig), ("ours", ours)):
        dt = sum(times[name])
        rec.update(images_per_s=images[name] / dt, images=images[name], steps=s.train_steps, seconds=dt,
                   step_seconds=times[name], measured=f"{s.train_steps} steps, interleaved with the other way")
    if s.profile_steps:
        orig["profile"] = _profile(orig_step, s.profile_steps, device)
        ours["profile"] = _profile(our_step, s.profile_steps, device)
    ours["labels"] = orig["labels"] = int(trainer.labels.num_seen)
    if s.whole_epoch:
        orig["epoch_seconds_extrapolated"] = s.packed_train / orig["images_per_s"]
        orig["measured"] += "; epoch extrapolated from these steps"
        state["it"] = None  # let the interleaved run's loader workers go first
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        # The trainer's own epoch (its loop, progress bar and bad-batch checks) over every image.
        rec = trainer.train_one_epoch(100)
        ours.update(epoch_seconds=rec["seconds"], epoch_images=rec["images"], epoch_images_per_s=rec["images_per_s"],
                    epoch_loss=rec["loss"])
        if device.type == "cuda":
            ours["max_memory_allocated"] = torch.cuda.max_memory_allocated(device)
    if s.largest_batch_max:
        ours["largest_batch"] = _largest_batch(trainer, device, 2 * s.batch, s.largest_batch_max)
    return {"original": orig, "ours": ours}


def _is_out_of_memory(err: BaseException) -> bool:
    # Compiled code may surface an allocator failure as a plain RuntimeError.
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def _largest_batch(trainer, device: torch.device, start: int, limit: int, budget_s: float = 60.0) -> Dict[str, Any]:
    """Doubling search (start, 2 x start, ... up to limit) for the largest training batch that
    fits, and images/s of the trainer's model (compiled, autocast as configured) at each size.

    Inputs are random tensors already on the device, so the figures are compute throughput
    without reading. The search stops at the first out-of-memory error, or before a new size
    once ``budget_s`` seconds are spent (recompiles for new shapes can be slow): the result
    says which.
    """
    from .engine.runtime import autocast_context
    from .modeling import ranking_loss

    model, opt = trainer.model, trainer.optimizer
    emb = trainer.labels.seen
    four_d = device.type == "cuda" and trainer.cfg.CHANNELS_LAST  # as the trainer feeds it
    tried: List[Dict[str, Any]] = []
    b = start
    stopped = f"reached the search limit {limit}"
    t0 = time.perf_counter()
    while b <= limit:
        if time.perf_counter() - t0 > budget_s:
            stopped = f"time budget {budget_s:g} s spent before batch {b}"
            break
        try:
            if four_d:
                x = torch.rand(b, 512, 14, 14, device=device).contiguous(memory_format=torch.channels_last)
            else:
                x = torch.rand(b, 512, 196, device=device)
            scene = torch.rand(b, 4096, device=device)
            y = torch.where(torch.rand(b, emb.shape[0], device=device) < 0.02, 1, -1).to(torch.int8)
            y[:, 0] = 1

            def step() -> None:
                opt.zero_grad(set_to_none=True)
                with autocast_context(device, trainer.amp_dtype):
                    scores = model(x, emb, scene)
                ranking_loss(scores.float(), y).backward()
                opt.step()

            first = _timed(step, device)  # a new size may recompile: reported apart
            dt = _timed(lambda: [step() for _ in range(5)], device)
            tried.append({"batch": b, "images_per_s": 5 * b / dt, "first_step_seconds": first})
        except (RuntimeError, torch.OutOfMemoryError) as err:
            if not _is_out_of_memory(err):
                raise
            stopped = f"out of memory at batch {b}"
            break
        finally:
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        b *= 2
    last = tried[-1] if tried else {"batch": None, "images_per_s": None}
    # On a CPU the rate per image can fall as the batch grows: the fastest size is kept apart.
    best = max(tried, key=lambda t: t["images_per_s"]) if tried else {"batch": None, "images_per_s": None}
    return {"batch": last["batch"], "images_per_s": last["images_per_s"], "best_batch": best["batch"],
            "best_images_per_s": best["images_per_s"], "tried": tried, "stopped": stopped,
            "note": "device-resident inputs (no reading); each new size may recompile (first step apart)"}


# ----- evaluation metrics
def _nus_matrix(rows: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    c = NUM_SEEN + NUM_UNSEEN
    scores = torch.rand(rows, c, generator=gen)
    labels = torch.where(torch.rand(rows, c, generator=gen) < 0.02, 1, -1).to(torch.int8)
    return scores, labels


def _oi_matrix(rows: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    c = OI_SEEN + OI_UNSEEN
    scores = torch.rand(rows, c, generator=gen)
    # ~0.25% of entries annotated (about 19 per image), 60% of those positive; the rest 0.
    u = torch.rand(rows, c, generator=gen)
    labels = torch.zeros(rows, c, dtype=torch.int8)
    labels[u < 0.0015] = 1
    labels[(u >= 0.0015) & (u < 0.0025)] = -1
    return scores, labels


def _ours_metrics(scores, labels, ks, row_mask=None) -> Dict[str, Any]:
    from .evaluation import average_precision, f1_at_ks

    ap = average_precision(scores, labels, row_mask=row_mask)
    f1 = f1_at_ks(scores, labels, ks, row_mask=row_mask)
    return {"mAP": float(ap.mean()), **{f"F1@{k}": v[0] for k, v in f1.items()}}


def _original_metrics(s_np: np.ndarray, y_np: np.ndarray, ks: Sequence[int], loop_cols: int,
                      f1_rows: int) -> Dict[str, Any]:
    """The published loops: per-label AP on ``loop_cols`` columns and per-image F1@K on
    ``f1_rows`` images, each extrapolated linearly to the whole (N, C) matrix when smaller."""
    from .evaluation import reference as ref

    n, c = s_np.shape
    cols, rows = min(loop_cols, c), min(f1_rows, n)
    t0 = time.perf_counter()
    ap = ref.published_loop_average_precision(s_np[:, :cols], y_np[:, :cols])
    loop_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    f1 = {k: ref.published_loop_f1_at_k(s_np[:rows], y_np[:rows], k) for k in ks}
    f1_s = time.perf_counter() - t0
    return {"loop_columns": cols, "columns": c, "f1_rows": rows, "rows": n, "ap_loop_seconds": loop_s,
            "f1_loop_seconds": f1_s, "seconds": loop_s * c / cols + f1_s * n / rows,
            "extrapolated": cols < c or rows < n, "mAP_on_loop_columns": float(np.mean(ap)),
            **{f"F1@{k}_on_loop_rows": v[0] for k, v in f1.items()}}


def part_eval(ctx: Ctx, way: str, which: str) -> Dict[str, Any]:
    """Seconds for one protocol's metrics on random scores (``which``: nus or oi)."""
    s = ctx.sizes
    if which == "nus":
        scores, labels = _nus_matrix(s.eval_nus_rows, seed=5)
        ks, loop_cols, f1_rows, row_mask = (3, 5), s.eval_nus_loop_cols, s.eval_nus_f1_rows, None
    else:
        scores, labels = _oi_matrix(s.eval_oi_rows, seed=6)
        ks, loop_cols, f1_rows = (10, 20), s.eval_oi_loop_cols, s.eval_oi_f1_rows
        row_mask = (labels == 1).any(dim=1)  # the protocol keeps images with a positive
    out: Dict[str, Any] = {"shape": list(scores.shape)}
    if way == "original":
        s_np, y_np = scores.numpy(), labels.numpy()
        if row_mask is not None:
            keep = row_mask.numpy()
            s_np, y_np = s_np[keep], y_np[keep]
        out.update(_original_metrics(s_np, y_np, ks, loop_cols, f1_rows))
        return out
    dev = ctx.device
    sd, yd = scores.to(dev), labels.to(dev)
    rm = None if row_mask is None else row_mask.to(dev)
    result: Dict[str, Any] = {}
    dt = _timed(lambda: result.update(_ours_metrics(sd, yd, ks, rm)), dev)
    out.update(seconds=dt, **result)
    return out


# ----- whole test pass
def part_testpass(ctx: Ctx, way: str) -> Dict[str, Any]:
    """Images/s of a whole test pass: reading, scoring the 1006 labels, metrics."""
    from .modeling import BiAM, SceneHead

    s = ctx.sizes
    device = ctx.device
    gen = torch.Generator().manual_seed(1)
    emb = F.normalize(torch.randn(NUM_SEEN + NUM_UNSEEN, 300, generator=gen), dim=1).to(device)
    if way == "original":
        model = BiAM(attention="published").to(device).eval()
        head = SceneHead().to(device)
        names = ctx.data["test_names"]
        src = ReleasedBatches(Path(ctx.data["released"]) / "nus_wide_test.h5", names, 32, shuffle=False)
        # The original's batches: measured on up to released_test images, cycled when asked for more.
        n_images = min(s.test_images, len(names))
        scores, labels = [], []
        t0 = time.perf_counter()
        with torch.no_grad():
            it = iter(src)
            while sum(x.shape[0] for x in scores) < n_images:
                regions, lab = next(it)
                regions = regions.to(device)
                scores.append(model(regions, emb, head(regions)).cpu())
                labels.append(lab)
        _sync(device)
        read_score_s = time.perf_counter() - t0
        src.close()
        per_image = read_score_s / sum(x.shape[0] for x in scores)  # images read, whole batches
        total_images = s.test_images
        sc, lb = torch.cat(scores)[:n_images], torch.cat(labels)[:n_images]
        if total_images <= n_images:
            m = _original_metrics(sc.numpy(), lb.numpy(), (3, 5), sc.shape[1], sc.shape[0])
        else:
            # More test images than the released file holds (the CUDA mode's full test split):
            # reading and scoring scale per image, and the loops cost what they cost on a
            # full-size matrix: time them on its column / row subsets and scale.
            big_s, big_y = _nus_matrix(total_images, seed=7)
            m = _original_metrics(big_s.numpy(), big_y.numpy(), (3, 5), s.eval_nus_loop_cols, s.eval_nus_f1_rows)
        metric_s, extrapolated = m["seconds"], m["extrapolated"]
        seconds = per_image * total_images + metric_s
        out = {"images": total_images, "measured_images": n_images, "read_score_seconds": read_score_s,
               "metric_seconds": metric_s, "seconds": seconds, "images_per_s": total_images / seconds,
               "extrapolated": extrapolated or total_images != n_images}
        if device.type == "cuda":
            out["max_memory_allocated"] = torch.cuda.max_memory_allocated(device)
        return out

    from .data.loader import build_loader
    from .data.packed import PackedDataset
    from .engine.runtime import resolve_amp, run_inference

    model = BiAM(attention="fused").to(device).eval()
    amp = resolve_amp("auto", device)
    ds = PackedDataset(ctx.data["packed"], "test")
    n_images = min(s.test_images, len(ds))
    workers = 0 if device.type == "cpu" else min(8, max(2, (os.cpu_count() or 2) - 2))
    loader = build_loader(ds, batch_size=s.test_batch, shuffle=False, indices=np.arange(n_images),
                          num_workers=workers, pin_memory=device.type == "cuda", float32=device.type != "cuda")
    columns = torch.arange(NUM_SEEN + NUM_UNSEEN)
    # One short warm-up batch (kernel selection), not timed.
    run_inference(model, [next(iter(build_loader(ds, batch_size=8, shuffle=False, indices=np.arange(8))))],
                  emb, columns, device, amp)
    result: Dict[str, Any] = {}

    def work() -> None:
        sc, lb = run_inference(model, loader, emb, columns, device, amp)
        metric_dev = device
        result.update(_ours_metrics(sc.to(metric_dev), lb.to(metric_dev), (3, 5)))

    dt = _timed(work, device)
    out = {"images": n_images, "seconds": dt, "images_per_s": n_images / dt, "extrapolated": False}
    if device.type == "cuda":
        out["max_memory_allocated"] = torch.cuda.max_memory_allocated(device)
    return out


PART_FUNCS: Dict[str, Callable[[Ctx, str], Dict[str, Any]]] = {
    "data": part_data,
    "train": part_train,
    "train_oi": lambda ctx, way: part_train(ctx, way, openimages=True),
    "eval_nus": lambda ctx, way: part_eval(ctx, way, "nus"),
    "eval_oi": lambda ctx, way: part_eval(ctx, way, "oi"),
    "testpass": part_testpass,
}


def run_part(ctx: Ctx, part: str, way: str) -> Dict[str, Any]:
    """Run one (part, way) here (way "both" for data and training); adds wall time and this process's peak RSS."""
    if device_is_cuda(ctx.device):
        torch.cuda.reset_peak_memory_stats(ctx.device)
    t0 = time.perf_counter()
    res = PART_FUNCS[part](ctx, way)
    res["wall_seconds"] = time.perf_counter() - t0
    res["peak_rss_bytes"] = peak_rss_bytes()
    return res


def device_is_cuda(device: torch.device) -> bool:
    return device.type == "cuda"


def run_part_subprocess(args: argparse.Namespace, part: str, way: str, data_dir: Path,
                        timeout: Optional[float] = None) -> Dict[str, Any]:
    """Run one (part, way) in a fresh interpreter, so its peak RSS is its own; stopped after
    ``timeout`` seconds (None: no limit)."""
    out_file = Path(tempfile.mkstemp(prefix=f"biam-bench-{part}-{way}-", suffix=".json")[1])
    cmd = [sys.executable, "-m", "biam.benchmark", "--child", f"{part}:{way}", "--child-out", str(out_file),
           "--data-dir", str(data_dir), "--mode", args.mode, "--device", args.device]
    if args.steps:
        cmd += ["--steps", str(args.steps)]
    if args.images:
        cmd += ["--images", str(args.images)]
    if args.compile_cpu:
        cmd.append("--compile-cpu")
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        out_file.unlink(missing_ok=True)
        tail = (err.stdout or "")[-2000:] if isinstance(err.stdout, str) else ""
        raise RuntimeError(f"benchmark part {part} ({way}) stopped after {timeout:.3g} s (--part-timeout / "
                           f"--budget):\n{tail}") from None
    if proc.returncode != 0:
        out_file.unlink(missing_ok=True)
        raise RuntimeError(f"benchmark part {part} ({way}) failed with exit code {proc.returncode}:\n{proc.stdout[-4000:]}")
    res = json.loads(out_file.read_text(encoding="utf-8"))
    out_file.unlink()
    return res


# ---------------------------------------------------------------------------- the report
def _goal_rows(parts: Dict[str, Dict[str, Dict[str, Any]]], device: str) -> List[Dict[str, Any]]:
    """The table: one row per comparison, ratio = times faster for ours.

    A part that failed (a way holds "error") or is half measured gives no row; the report lists it under "failures".
    A missed goal's row says by how much (``short_by``: the factor ours must still gain).
    """
    rows: List[Dict[str, Any]] = []

    def add(section, name, unit, ours, orig, higher_better, goal, note=""):
        """goal: None, ("ratio>=", x), ("ratio>", x) or ("ours<", limit in the row's unit)."""
        ratio = (ours / orig) if higher_better else (orig / ours)
        met, short_by, goal_text = None, None, "-"
        if goal is not None:
            kind, x = goal
            if kind == "ours<":
                met, goal_text = ours < x, f"ours < {x:g} {unit}"
                short_by = None if met else ours / x
            else:
                met = ratio >= x if kind == "ratio>=" else ratio > x
                goal_text = f"ratio {kind[5:]} {x:g}"
                short_by = None if met else x / ratio
        rows.append({"section": section, "name": name, "unit": unit, "ours": ours, "original": orig,
                     "ratio": ratio, "goal": goal_text, "met": met, "short_by": short_by, "note": note})

    # Rows only for parts whose two ways are both measured (a report written mid-run has halves).
    ok = {part: ways for part, ways in parts.items()
          if all(w in ways for w in WAYS) and not any("error" in r for r in ways.values())}
    cuda = device == "cuda"
    if "data" in ok:
        d = ok["data"]
        add("data", "ready float32 batches of 32", "img/s", d["ours"]["images_per_s"], d["original"]["images_per_s"],
            True, ("ratio>=", 15.0),
            f"ours: best of {d['ours']['best']}; steady state, median of {len(d['original']['window_rates'])} "
            f"interleaved windows (max/min of the windows: ours {d['ours'][d['ours']['best']]['spread']:.2f}, "
            f"original {d['original']['spread']:.2f}; far above 1 means the machine's load changed)")
    if "train" in ok:
        t = ok["train"]
        o, g = t["ours"], t["original"]
        how = "compiled" if o.get("compiled") else "eager (torch.compile not measured on CPU)"
        # The CPU goal (1.3x) is for steps; on a GPU the goal is the whole epoch below.
        add("training", f"training steps, batch {o['batch']}", "img/s", o["images_per_s"], g["images_per_s"], True,
            ("ratio>", 1.0) if cuda else ("ratio>=", 1.3), f"{how}; {o['steps']} steps each way, interleaved")
        if "epoch_seconds" in o:
            add("training", f"whole epoch ({o['epoch_images']:,} images)", "s", o["epoch_seconds"],
                g["epoch_seconds_extrapolated"], False, ("ours<", 30.0) if cuda else None,
                "ours: the trainer's own epoch; original extrapolated from its timed steps")
        big = o.get("largest_batch")
        if big and big.get("batch"):
            add("training", f"largest batch that fits ({big['batch']})", "img/s", big["images_per_s"],
                g["images_per_s"], True, None,
                f"ours at batch {big['batch']} ({big['stopped']}; fastest tried: batch {big['best_batch']}, "
                f"{big['best_images_per_s']:.4g} img/s), device-resident inputs; original at {g['batch']}")
    if "train_oi" in ok:
        t2 = ok["train_oi"]
        add("training", f"steps, Open Images shapes ({t2['ours']['labels']} labels)", "img/s",
            t2["ours"]["images_per_s"], t2["original"]["images_per_s"], True, ("ratio>", 1.0),
            f"batch {t2['ours']['batch']}, {t2['ours']['steps']} steps each way, interleaved")
    for part, label in (("eval_nus", "NUS-WIDE metrics (AP 1006 + F1@3,5)"),
                        ("eval_oi", "Open Images metrics (AP 7586 + F1@10,20)")):
        if part in ok:
            e = ok[part]
            o = e["original"]
            note = f"{e['ours']['shape'][0]} x {e['ours']['shape'][1]}"
            if o["extrapolated"]:
                note += (f"; loops timed on {o['loop_columns']} columns (AP) and {o['f1_rows']} images (F1), "
                         "extrapolated linearly")
            add("evaluation", label, "s", e["ours"]["seconds"], o["seconds"], False, ("ratio>", 1.0), note)
    if "testpass" in ok:
        p = ok["testpass"]
        note = f"{p['ours']['images']} images"
        if p["original"]["extrapolated"]:
            note += (f"; original extrapolated from its {p['original']['measured_images']} measured images "
                     "and its loops' subsets")
        if cuda:
            add("evaluation", "whole NUS-WIDE test pass", "s", p["ours"]["seconds"], p["original"]["seconds"], False,
                ("ours<", 15.0), note)
        else:
            add("evaluation", "whole test pass (read, score, metrics)", "img/s", p["ours"]["images_per_s"],
                p["original"]["images_per_s"], True, ("ratio>", 1.0), note)
    for part, ways in ok.items():
        if all("peak_rss_bytes" in ways[w] for w in WAYS if w in ways) and len(ways) == 2:
            add("memory", f"peak RSS, {part}", "MiB", ways["ours"]["peak_rss_bytes"] / 2**20,
                ways["original"]["peak_rss_bytes"] / 2**20, False, None,
                "one process per (part, way)" if ways["ours"].get("subprocess") else "cumulative (in-process run)")
        if cuda and all("max_memory_allocated" in ways.get(w, {}) for w in WAYS):
            add("memory", f"max GPU memory allocated, {part}", "MiB", ways["ours"]["max_memory_allocated"] / 2**20,
                ways["original"]["max_memory_allocated"] / 2**20, False, None)
    return rows


def format_table(rows: List[Dict[str, Any]]) -> str:
    """Plain-text table of ``rows`` (ours, original, ratio, goal, met?; a miss says by how much)."""
    head = f"{'section':<11} {'measure':<44} {'unit':<6} {'ours':>11} {'original':>11} {'ratio':>8}  {'goal':<16} met?"
    lines = [head, "-" * len(head)]
    for r in rows:
        met = "-" if r["met"] is None else ("yes" if r["met"] else f"NO ({r['short_by']:.2f}x short)")
        lines.append(f"{r['section']:<11} {r['name'][:44]:<44} {r['unit']:<6} {r['ours']:>11.4g} {r['original']:>11.4g} "
                     f"{r['ratio']:>7.2f}x  {r['goal']:<16} {met}")
    return "\n".join(lines)


def run_benchmark(args: argparse.Namespace, log: Callable[[str], None] = print,
                  on_update: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    """Build the data, run every requested (part, way) in the order of ``--parts``, and return
    the report dict.

    A (part, way) that fails or passes ``--part-timeout`` is recorded under "failures" (its
    error text kept) and the run goes on with the next one. With ``--budget`` a (part, way) is
    given at most the seconds left of it, and none is started once it is spent (listed under
    "skipped"). ``on_update`` receives the report
    so far after every (part, way) ("complete": False until the end), so that a run stopped
    from outside still leaves what it measured.
    """
    sizes = _sizes_from_args(args)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("biam-benchmark: --device cuda but no CUDA device is available")
    parts = [p for p in args.parts.split(",") if p]
    for p in parts:
        if p not in PARTS:
            raise SystemExit(f"biam-benchmark: unknown part {p!r} (choose from {', '.join(PARTS)})")
    tmp = None
    if args.data_dir:
        data_dir = Path(args.data_dir)
    else:
        tmp = tempfile.mkdtemp(prefix="biam-bench-")
        data_dir = Path(tmp)
    started = datetime.datetime.now(datetime.timezone.utc)
    t_start = time.perf_counter()

    def stamp(msg: str) -> None:
        log(f"[{time.perf_counter() - t_start:7.1f} s] {msg}")

    results: Dict[str, Dict[str, Dict[str, Any]]] = {}
    failures: List[Dict[str, str]] = []
    skipped: List[str] = []
    data: Dict[str, Any] = {}
    try:
        data = build_data(data_dir, sizes, stamp)
        ctx = Ctx(data=data, sizes=sizes, device=device, work_dir=data_dir, compile_cpu=args.compile_cpu, log=log)
        for part in parts:
            results[part] = {}
            for way in (("both",) if part in ("data", "train", "train_oi") else WAYS):
                left = args.budget - (time.perf_counter() - t_start) if args.budget else None
                if left is not None and left < 5:
                    stamp(f"skipping {part} ({way}): --budget {args.budget:g} s spent")
                    skipped.append(f"{part} ({way})")
                    continue
                stamp(f"measuring {part} ({way}) ...")
                try:
                    if args.in_process:
                        res = run_part(ctx, part, way)
                    else:
                        limits = [x for x in (args.part_timeout, left) if x]
                        limit = min(limits) if limits else None
                        res = run_part_subprocess(args, part, way, data_dir, timeout=limit)
                        res["subprocess"] = True
                except Exception as err:  # noqa: BLE001 - recorded, reported and turned into exit code 1
                    text = f"{type(err).__name__}: {err}"
                    stamp(f"FAILED {part} ({way}): {text.splitlines()[0]}")
                    failures.append({"part": part, "way": way, "error": text})
                    for w in (WAYS if way == "both" else (way,)):
                        results[part][w] = {"error": text}
                else:
                    if way == "both":
                        for w in WAYS:
                            # Both ways shared one process: its peak belongs to neither alone.
                            res[w]["peak_rss_both_ways_bytes"] = res["peak_rss_bytes"]
                            res[w]["wall_seconds_both_ways"] = res["wall_seconds"]
                            results[part][w] = res[w]
                    else:
                        results[part][way] = res
                if on_update is not None:
                    on_update(_report(args, sizes, device, started, data, results, failures, skipped, complete=False))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    stamp("done")
    results = {part: ways for part, ways in results.items() if ways}
    return _report(args, sizes, device, started, data, results, failures, skipped, complete=True)


def _report(args, sizes: Sizes, device: torch.device, started, data: Dict[str, Any],
            results: Dict[str, Dict[str, Dict[str, Any]]], failures: List[Dict[str, str]], skipped: List[str],
            complete: bool) -> Dict[str, Any]:
    """The report dict (see docs/benchmarks.md) from the results so far (a copy: later parts
    do not change a report already handed out)."""
    results = copy.deepcopy(results)
    notes = [
        f"mode {sizes.name}: counts in meta.sizes; ratio = times faster for ours.",
        "Both layouts are read from the page cache (written just before): the comparison is of the work of "
        "reading, not of the disk.",
        "Original training: released reads, scene head every step, float32, eager, published attention, "
        "(B, C, C) loss. Ours: the trainer's train_step on packed data with stored scene features.",
    ]
    if sizes.name == "cuda":
        notes.append("CUDA: the packed split is one 4096-image shard hard-linked to 161,789 images, so the epoch "
                     "reads a file that sits in the page cache; a cold disk would add its read time. The original "
                     "is measured on a few hundred steps/batches and extrapolated.")
    elif not args.compile_cpu:
        notes.append("CPU: torch.compile is not measured (inductor's C++ build takes minutes on 2 cores; "
                     "use --compile-cpu to include it).")
    return {
        "meta": {"date": started.isoformat(timespec="seconds"), "command": " ".join(["python", "-m", "biam.benchmark"]
                 + list(args.argv)), "machine": machine_info(device.type), "device": device.type,
                 "mode": sizes.name, "sizes": asdict(sizes), "data_build_seconds": data.get("build_seconds"),
                 "notes": notes, "complete": complete},
        "table": _goal_rows(results, device.type),
        "failures": list(failures),
        "skipped": list(skipped),
        "data": results.get("data", {}),
        "training": results.get("train", {}),
        "training_openimages": results.get("train_oi", {}),
        "evaluation": {k: results[k] for k in ("eval_nus", "eval_oi", "testpass") if k in results},
        "memory": {p: {w: {k: v for k, v in results[p][w].items()
                           if k in ("peak_rss_bytes", "peak_rss_both_ways_bytes", "max_memory_allocated")}
                       for w in results[p]} for p in results},
    }


def _sizes_from_args(args: argparse.Namespace) -> Sizes:
    sizes = SIZES[args.mode]
    if args.steps:
        sizes = replace(sizes, train_steps=int(args.steps))
    if args.images:
        sizes = replace(sizes, data_images=int(args.images), test_images=int(args.images))
    return sizes


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="biam-benchmark", description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="smaller counts (under 2 minutes on 2 CPU cores)")
    mode.add_argument("--tiny", action="store_true", help="tiny counts, for tests (figures mean nothing)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda: a whole NUS-WIDE-sized epoch and test pass for ours")
    p.add_argument("--out", default="", help="write the JSON report to this file")
    p.add_argument("--data-dir", default="", help="where to build the data (default: a temporary folder, removed)")
    p.add_argument("--steps", type=int, default=0, help="timed training steps per way")
    p.add_argument("--images", type=int, default=0, help="images per data measurement and test pass")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma list of parts ({', '.join(PARTS)})")
    p.add_argument("--in-process", action="store_true",
                   help="run every part in this process (memory peaks are then cumulative)")
    p.add_argument("--compile-cpu", action="store_true", help="also torch.compile our model on the CPU")
    p.add_argument("--part-timeout", type=float, default=0.0,
                   help="stop a (part, way) subprocess after this many seconds and go on (0: no limit)")
    p.add_argument("--budget", type=float, default=0.0,
                   help="seconds for the whole run, data building included: each (part, way) gets at most "
                        "what is left, and none starts once it is spent (0: no limit)")
    p.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    p.add_argument("--child-out", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.mode is None:
        args.mode = "tiny" if args.tiny else "quick" if args.quick else ("cuda" if args.device == "cuda" else "full")
    if args.mode not in SIZES:
        p.error(f"unknown mode {args.mode!r}")
    args.argv = argv
    return args


def _child(args: argparse.Namespace) -> int:
    part, way = args.child.split(":")
    data_dir = Path(args.data_dir)
    data = json.loads((data_dir / "benchmark_data.json").read_text(encoding="utf-8"))
    ctx = Ctx(data=data, sizes=_sizes_from_args(args), device=torch.device(args.device), work_dir=data_dir,
              compile_cpu=args.compile_cpu, log=lambda m: print(m, file=sys.stderr))
    res = run_part(ctx, part, way)
    Path(args.child_out).write_text(json.dumps(res), encoding="utf-8")
    return 0


def _write_report(path: str, report: Dict[str, Any]) -> None:
    tmp = Path(path + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)  # a reader never sees half a report


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark; exit code 0, or 1 when a part failed or was skipped (the report lists it)."""
    args = parse_args(argv)
    if args.child:
        return _child(args)
    on_update = (lambda r: _write_report(args.out, r)) if args.out else None
    report = run_benchmark(args, on_update=on_update)
    m = report["meta"]
    print(f"\nBiAM benchmark, mode {m['mode']} on {m['machine']['gpu'] or m['machine']['cpu']} "
          f"({m['machine']['cores']} cores), {m['date']}")
    print(format_table(report["table"]))
    for way in WAYS:
        prof = report["training"].get(way, {}).get("profile")
        if prof:
            print(f"\ntraining profile, {way} (top ops by self time):")
            for r in prof[:8]:
                print(f"  {r['share'] * 100:5.1f}%  {r['self_ms']:9.1f} ms  {r['op']}")
    for n in m["notes"]:
        print("note:", n)
    for f in report["failures"]:
        print(f"FAILED: {f['part']} ({f['way']}): {f['error'][-1500:]}", file=sys.stderr)
    if report["skipped"]:
        print(f"skipped (--budget spent): {', '.join(report['skipped'])}", file=sys.stderr)
    if args.out:
        _write_report(args.out, report)
        print(f"wrote {args.out}")
    return 1 if report["failures"] or report["skipped"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
