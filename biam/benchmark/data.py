"""The benchmark's data: the same random images in the released per-key layout (what the
original reads) and in our packed layout, NUS-WIDE-shaped and Open Images-shaped, written with
biam.demo.synthetic's random writers."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

from ..demo import synthetic
from .common import NUM_SEEN, NUM_UNSEEN, OI_SEEN, OI_UNSEEN, Ctx, Sizes
from ..data.packed import read_manifest, shard_filename


def write_released(path: Path, names: Sequence[str], label_width: int, seed: int) -> None:
    """The released NUS-WIDE per-key layout: ``<name>-features`` (512, 196) float32,
    ``<name>-labels`` (label_width,) int8 and ``<name>-labels_81`` (81,) int8, gzip level 4."""
    synthetic.write_released_random(path, names, label_width, seed, num_unseen=NUM_UNSEEN)


def write_released_openimages(path: Path, ids: Sequence[str], seed: int) -> None:
    """One released Open Images training shard: ``<id>-features`` (512, 196) float32 and
    ``<id>-seenlabels`` (7186,) int8 (sparse, as annotated), one gzip dataset each."""
    synthetic.write_released_random(path, ids, OI_SEEN, seed, openimages=True)


def write_packed(root: Path, split: str, n: int, seed: int, shard_size: int = 4096, repeat_to: Optional[int] = None,
                 openimages: bool = False) -> None:
    """Write split ``split`` of a packed dataset with stored scene features.

    ``openimages``: Open Images shapes (7186 seen + 400 unseen labels, sparse annotations)
    instead of NUS-WIDE's (925 + 81, every label +1 or -1).
    With ``repeat_to``, only one full shard and the remainder shard are written; the full shard
    is hard-linked as many times as needed to list ``repeat_to`` images (every link has the same
    bytes and checksum, so the page cache holds one copy: stated in the output).
    """
    num_seen, num_unseen = (OI_SEEN, OI_UNSEEN) if openimages else (NUM_SEEN, NUM_UNSEEN)
    total = n if repeat_to is None else repeat_to
    write_n = n if repeat_to is None else min(total, shard_size + total % shard_size)
    manifest = synthetic.write_random_packed(root, split, write_n, seed, num_seen, num_unseen, shard_size=shard_size,
                                             openimages=openimages)
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


def steady_split(ctx: Ctx, min_images: int) -> Path:
    """A packed root whose train split lists the benchmark's train shards again and again (hard
    links, same bytes) until it holds at least ``min_images``, so that a timing window never
    waits for an epoch's worker start-up. Built once in the data folder, outside the timing."""
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
    for _ in range(rounds):
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

