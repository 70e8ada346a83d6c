"""The parts of the benchmark, each measuring one job both ways (the original's and ours), and
``run_part``, which runs one (part, way) in this process. ``PART_FUNCS`` maps a part's name to
its function ``(ctx, way) -> result dict``."""

from __future__ import annotations

import gc
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .common import NUM_SEEN, NUM_UNSEEN, Ctx, Sizes, nus_matrix, oi_matrix, peak_rss_bytes, profile_ops, sync, timed
from .data import steady_split
from .original import ReleasedBatches, original_metrics, original_testpass, original_trainer
from .ours import largest_batch, our_testpass, our_trainer, ours_metrics
from ..data.loader import build_loader
from ..data.packed import PackedDataset


def pair_ratios(ours: Sequence[float], original: Sequence[float]) -> Dict[str, Any]:
    """Ratios of windows measured next to each other in time, and their summary.

    ``ours[i]`` and ``original[i]`` (images/s, both > 0) are the two ways' windows of round
    ``i``. Returns {"median": the figure, "pair_ratios": every ours[i] / original[i], "min",
    "max", "q1", "q3" (quartiles, numpy's linear interpolation), "spread": max / min,
    "iqr_relative": (q3 - q1) / median}. A load change slower than a round divides out of each
    pair; the median ignores the few pairs a short burst hit on one side only.
    """
    if len(ours) != len(original) or not ours:
        raise ValueError(f"pair_ratios: need as many windows of ours as of the original, at least one "
                         f"(got {len(ours)} and {len(original)})")
    if min(ours) <= 0 or min(original) <= 0:
        raise ValueError("pair_ratios: every window rate must be positive")
    ratios = [float(a) / float(b) for a, b in zip(ours, original)]
    q1, med, q3 = (float(x) for x in np.percentile(ratios, [25, 50, 75]))
    return {"median": med, "pair_ratios": ratios, "min": min(ratios), "max": max(ratios), "q1": q1, "q3": q3,
            "spread": max(ratios) / min(ratios), "iqr_relative": (q3 - q1) / med}


def steady_rates(sources: Dict[str, Callable[[], Any]], sizes: Sizes, batch: int,
                 prefetched: Optional[Dict[str, int]] = None, settle_s: Optional[Dict[str, float]] = None,
                 warmup_batches: Optional[Dict[str, int]] = None) -> Dict[str, Dict[str, Any]]:
    """Steady-state images/s of several endless batch sources, measured in interleaved windows.

    ``sources[name]()`` returns an iterator yielding a batch's image count, or None where a new
    epoch starts (worker start-up happens in the next ``next()``). Each source is warmed up
    untimed: at least ``data_warmup_s`` seconds and ``warmup_batches[name]`` batches (default 2;
    a whole pass over the data gives every way its first reads of every image), worker start-up
    included. Then ``data_windows`` rounds run the sources one after the other (in the order
    given, reversed every other round: the first two sources' windows are always next to each
    other, each first in half the rounds), each timing one window of at least
    ``data_window_s`` seconds and ``data_images / data_windows`` images, after reading untimed
    2 batches plus ``prefetched[name]`` (what a loader's workers prefetched while another source
    was timed).
    After a window of ``name``, ``settle_s[name]`` seconds pass untimed (a loader's workers
    refill their prefetch queue then, not in the next source's window). Interleaving puts a
    change of machine load on every source alike, so ratios of windows of one round hold still
    (see :func:`pair_ratios`). A window that meets an epoch start is dropped (start-up is never
    timed) and measured again. Python's garbage collector is off during the rounds (collected
    once before). Per source: the median window rate, every window's rate in round order, and
    their spread (max / min).
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

    for name, it in its.items():
        skip(it, (warmup_batches or {}).get(name, 2), sizes.data_warmup_s)
    names = list(sources)
    gc_was_on = gc.isenabled()
    gc.collect()
    gc.disable()  # a collection inside a window would land on one source only
    try:
        for r in range(windows):
            for name in (names if r % 2 == 0 else names[::-1]):
                it = its[name]
                while True:
                    if totals[name][2] > 4 * windows:
                        raise RuntimeError(f"data part ({name}): {totals[name][2]} timing windows met an epoch "
                                           f"start; the epoch is too short for windows of {sizes.data_window_s:g} s")
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
                if (settle_s or {}).get(name):
                    time.sleep(settle_s[name])
    finally:
        if gc_was_on:
            gc.enable()
    return {name: {"images_per_s": float(np.median(rates[name])), "window_rates": rates[name],
                   "spread": max(rates[name]) / min(rates[name]), "images": totals[name][0],
                   "seconds": totals[name][1], "windows_dropped_at_epoch_start": totals[name][2], "batch": batch}
            for name in sources}


def part_data(ctx: Ctx, way: str) -> Dict[str, Any]:
    """Steady-state images/s of ready float32 batches of 32, both ways in one process
    (``way`` "both"): the original's per-key reads and our loader with 0 and 2 workers (more on
    CUDA machines), measured in interleaved windows after an untimed warm-up (see
    :func:`steady_rates`), with one torch intra-op thread in this process (the original's reads
    use none; loader workers use one each). Each of ours' loaders gets the median of its
    per-round ratios to the original (:func:`pair_ratios`); the best of them is the figure.
    Returns {"original": {...}, "ours": {"workers0": {..., "ratio_to_original": {...}}, ...,
    "images_per_s": the best's median rate, "ratio_to_original": the best's, "best": its key,
    "torch_threads": 1}}."""
    s = ctx.sizes
    batch = 32
    names = ctx.data["train_names"]
    src = ReleasedBatches(Path(ctx.data["released"]) / "nus_wide_train.h5", names, batch, seed=0)
    # The original's loop has no epoch start-up: its random batches follow each other endlessly.
    sources: Dict[str, Callable[[], Any]] = {"original": lambda: (regions.shape[0] for regions, _ in src)}
    root = steady_split(ctx, s.data_steady_images)
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
    # Warm-up reads every image of both layouts (the split's shards are hard links of the same
    # files): first touches of the page cache, HDF5 metadata and file opens are outside the
    # timing for both ways alike.
    full_pass = -(-len(names) // batch)
    steady_pass = -(-int(s.data_steady_images) // batch)
    # Ours draws from a list of the same images repeated: 8 passes' worth of draws leave about
    # 384 * e^-8 (0.1) of them unread. At most half its epoch, so that windows follow before it ends.
    warmup = {"original": full_pass, **{f"workers{w}": max(full_pass, min(steady_pass // 2, 8 * full_pass))
                                        for w in workers}}
    threads = torch.get_num_threads()
    # One intra-op thread: the original's reads are single-threaded, and with two a busy core
    # elsewhere stalls every parallel float16 -> float32 copy of ours (a load-dependent figure).
    torch.set_num_threads(1)
    try:
        # A DataLoader holds up to 2 batches per worker ready (its default prefetch_factor).
        res = steady_rates(sources, s, batch, prefetched={f"workers{w}": 2 * w for w in workers},
                           settle_s={f"workers{w}": 0.05 for w in workers if w}, warmup_batches=warmup)
    finally:
        torch.set_num_threads(threads)
        src.close()
        for ds in datasets:
            ds.close()
    ours: Dict[str, Any] = {k: v for k, v in res.items() if k != "original"}
    for rec in ours.values():
        rec["ratio_to_original"] = pair_ratios(rec["window_rates"], res["original"]["window_rates"])
    best = max(ours, key=lambda k: ours[k]["ratio_to_original"]["median"])
    ours.update(images_per_s=ours[best]["images_per_s"], ratio_to_original=ours[best]["ratio_to_original"],
                best=best, torch_threads=1)
    return {"original": res["original"], "ours": ours}


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
    orig_step = original_trainer(ctx, s.batch, openimages)
    compile_model = device.type == "cuda" or ctx.compile_cpu
    trainer = our_trainer(ctx, s.batch, compile_model, fraction=1.0, openimages=openimages)
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
    sync(device)
    ours: Dict[str, Any] = {"batch": s.batch, "compiled": compile_model, "warmup_seconds": time.perf_counter() - t0}
    for _ in range(s.warmup_steps):
        orig_step()
    orig: Dict[str, Any] = {"batch": s.batch}
    times = {"original": [], "ours": []}
    images = {"original": 0, "ours": 0}
    for _ in range(s.train_steps):
        for name, step in (("original", orig_step), ("ours", our_step)):
            sync(device)
            t = time.perf_counter()
            n = step()
            sync(device)
            times[name].append(time.perf_counter() - t)
            images[name] += n
    for name, rec in (("original", orig), ("ours", ours)):
        dt = sum(times[name])
        rec.update(images_per_s=images[name] / dt, images=images[name], steps=s.train_steps, seconds=dt,
                   step_seconds=times[name], measured=f"{s.train_steps} steps, interleaved with the other way")
    if s.profile_steps:
        orig["profile"] = profile_ops(orig_step, s.profile_steps, device)
        ours["profile"] = profile_ops(our_step, s.profile_steps, device)
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
                    epoch_loss=rec["loss"], epoch_where=loader.where)
        if device.type == "cuda":
            ours["max_memory_allocated"] = torch.cuda.max_memory_allocated(device)
        ours.update(resident_epoch(trainer, device))
    if s.largest_batch_max:
        ours["largest_batch"] = largest_batch(trainer, device, 2 * s.batch, s.largest_batch_max)
    return {"original": orig, "ours": ours}


def resident_epoch(trainer, device: torch.device) -> Dict[str, Any]:
    """The trainer's next epoch with its training images held on the device
    (``DATA.IN_MEMORY device``; on a CPU, tensors in RAM gathered the same way): the split is
    copied once (timed apart, not in the epoch), then every batch is gathered there. Returns
    the ``resident_*`` figures, or ``resident_error`` when the split does not fit."""
    sync(device)
    t0 = time.perf_counter()
    trainer.train_loader = None  # the streamed loader's workers and buffers go first
    try:
        trainer.train_loader = trainer.loader(trainer.train_set, trainer.train_idx, shuffle=True,
                                              batch_size=trainer.cfg.SOLVER.BATCH_SIZE, in_memory="device")
    except MemoryError as err:
        return {"resident_error": str(err)}
    sync(device)
    load = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rec = trainer.train_one_epoch(101)
    out = {"resident_load_seconds": load, "resident_bytes": trainer.train_loader.memory_bytes(),
           "resident_epoch_seconds": rec["seconds"], "resident_epoch_images": rec["images"],
           "resident_epoch_images_per_s": rec["images_per_s"], "resident_epoch_loss": rec["loss"]}
    if device.type == "cuda":
        out["resident_max_memory_allocated"] = torch.cuda.max_memory_allocated(device)
    trainer.train_loader = None  # frees the device copy
    return out


def part_eval(ctx: Ctx, way: str, which: str) -> Dict[str, Any]:
    """Seconds for one protocol's metrics on random scores (``which``: nus or oi)."""
    s = ctx.sizes
    if which == "nus":
        scores, labels = nus_matrix(s.eval_nus_rows, seed=5)
        ks, loop_cols, f1_rows, row_mask = (3, 5), s.eval_nus_loop_cols, s.eval_nus_f1_rows, None
    else:
        scores, labels = oi_matrix(s.eval_oi_rows, seed=6)
        ks, loop_cols, f1_rows = (10, 20), s.eval_oi_loop_cols, s.eval_oi_f1_rows
        row_mask = (labels == 1).any(dim=1)  # the protocol keeps images with a positive
    out: Dict[str, Any] = {"shape": list(scores.shape)}
    if way == "original":
        s_np, y_np = scores.numpy(), labels.numpy()
        if row_mask is not None:
            keep = row_mask.numpy()
            s_np, y_np = s_np[keep], y_np[keep]
        out.update(original_metrics(s_np, y_np, ks, loop_cols, f1_rows))
        return out
    dev = ctx.device
    sd, yd = scores.to(dev), labels.to(dev)
    rm = None if row_mask is None else row_mask.to(dev)
    result: Dict[str, Any] = {}
    dt = timed(lambda: result.update(ours_metrics(sd, yd, ks, rm)), dev)
    out.update(seconds=dt, **result)
    return out


def part_testpass(ctx: Ctx, way: str) -> Dict[str, Any]:
    """Images/s of a whole test pass: reading, scoring the 1006 labels, metrics."""
    gen = torch.Generator().manual_seed(1)
    emb = F.normalize(torch.randn(NUM_SEEN + NUM_UNSEEN, 300, generator=gen), dim=1).to(ctx.device)
    return original_testpass(ctx, emb) if way == "original" else our_testpass(ctx, emb)


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
