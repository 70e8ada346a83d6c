"""Image list -> one packed split: extraction with resume, several ranks, and a report of the
images that could not be read (shared by ``feature_extraction/extract_*.py``)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..backbones import backbone_of_manifest
from ..data.images import ImageFileDataset, Unreadable, backbone_transform, collate_images
from ..data.packed import PackedDataset, PackedFormatError, PackedWriter, read_manifest, shard_filename
from ..data.splits import SplitSpec
from ..utils import comm
from ..utils.io import atomic_open, refuse_link
from .extractor import build_extractor

__all__ = ["REPORT_HEADER", "report_path", "extract_split", "check_same_dataset"]

PathLike = Union[str, os.PathLike]

REPORT_HEADER = "name\tpath\treason\n"


def report_path(out_root: PathLike, split: str) -> Path:
    """``<out_root>/unreadable-<split>.tsv``: the images of a split that could not be read."""
    return Path(out_root) / f"unreadable-{split}.tsv"


def _atomic_write_text(path: Path, text: str) -> None:
    with atomic_open(path, "w", fsync=True) as fh:
        fh.write(text)


def _report_lines(rows) -> str:
    # Tabs and newlines inside a reason would break the table; flatten them.
    def clean(s) -> str:
        return str(s).replace("\t", " ").replace("\r", " ").replace("\n", " ")

    return "".join(f"{clean(n)}\t{clean(p)}\t{clean(r)}\n" for n, p, r in rows)


def check_same_dataset(manifest: dict, spec: SplitSpec, backbone: str, dtype: str, out_root: PathLike) -> None:
    """Raise PackedFormatError naming the first field in which ``out_root``'s manifest differs
    from what this extraction would write (dataset, seen/unseen labels and their order,
    evaluated unseen labels, backbone, feature dtype)."""
    path = Path(out_root) / "manifest.json"
    given = {"dataset": spec.dataset, "labels": {"seen": list(spec.seen), "unseen": list(spec.unseen)},
             "unseen_eval": None if spec.unseen_eval is None else [int(i) for i in spec.unseen_eval],
             "backbone": backbone, "feature_dtype": dtype}
    there = dict(manifest, backbone=backbone_of_manifest(manifest, str(path)).name)
    for key, value in given.items():
        if there.get(key) != value:
            what = _difference(key, there.get(key), value)
            raise PackedFormatError(
                f"{path}: field '{key}' of the packed dataset there differs from this extraction ({what}); "
                "nothing was changed. Write to a new --out folder (--overwrite starts that folder's splits over)")


def _difference(key: str, old, new) -> str:
    if key == "labels" and isinstance(old, dict):
        for side in ("seen", "unseen"):
            a, b = list(old.get(side) or []), new[side]
            if a != b:
                if sorted(a) == sorted(b):
                    i = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
                    return f"{side} labels in another order: position {i} is {a[i]!r} there, {b[i]!r} now"
                return (f"{side} labels there {len(a)}, now {len(b)}; only there: {sorted(set(a) - set(b))[:5]}, "
                        f"only now: {sorted(set(b) - set(a))[:5]}")
    return f"there {json.dumps(old, ensure_ascii=False)[:80]}, now {json.dumps(new, ensure_ascii=False)[:80]}"


def _rank_range(n: int, rank: int, world: int) -> Tuple[int, int]:
    # Contiguous blocks in rank order, so that concatenating the ranks' shards keeps list order.
    return (n * rank) // world, (n * (rank + 1)) // world


def extract_split(
    spec: SplitSpec,
    out_root: PathLike,
    *,
    weights: Optional[str],
    random_seed: Optional[int],
    batch_size: int = 32,
    num_workers: int = 4,
    shard_size: int = 4096,
    dtype: str = "float16",
    device: str = "auto",
    overwrite: bool = False,
    tool: str = "feature extraction",
    backbone: str,
) -> dict:
    """Compute features of every image of ``spec`` and write them as one packed split.

    ``backbone``: a registered backbone name (:mod:`biam.backbones`); the manifest records it and a
    resumed run must use the same one. ``weights``/``random_seed`` are that backbone's.

    Resumable: complete shards of an earlier run are kept (checksums verified) and extraction
    restarts after the last stored image. Under ``torchrun`` each rank extracts a contiguous
    block of the list into ``<out_root>/.parts/<split>/rank-<r>-of-<W>/``; after a barrier rank 0
    moves the shards into ``out_root`` in rank order and writes the one manifest.

    Output: a summary dict ``{"split", "listed", "written", "unreadable", "report", "skipped_complete"}``
    (on rank 0 the totals over all ranks). Unreadable images (missing, truncated, corrupt, not an
    image) are listed with their reason in :func:`report_path` and counted in the summary.
    """
    spec.check()
    out_root = Path(out_root)
    dev = comm.init_distributed(device, timeout_minutes=24 * 60)
    rank, world = comm.get_rank(), comm.get_world_size()
    summary = {"split": spec.split, "listed": len(spec.paths), "written": 0, "unreadable": 0,
               "report": str(report_path(out_root, spec.split)), "skipped_complete": False}

    final_manifest = out_root / "manifest.json"
    if not overwrite and final_manifest.is_file():
        manifest = read_manifest(out_root)
        entry = manifest["splits"].get(spec.split)
        if entry is not None and entry.get("complete"):
            # "Nothing to do" only for the same data: another dataset, label list or order, or
            # backbone in that folder is refused naming the field (nothing there is rewritten).
            check_same_dataset(manifest, spec, backbone, dtype, out_root)
            summary.update(skipped_complete=True, written=entry["num_images"])
            if rank == 0:
                print(f"{tool}: split '{spec.split}' of {out_root} is already complete "
                      f"({entry['num_images']} images); nothing to do (--overwrite starts it over)")
            return summary

    extractor, source = build_extractor(backbone, weights, random_seed, what=tool)
    extractor = extractor.to(dev)
    start, stop = _rank_range(len(spec.paths), rank, world)
    root = out_root if world == 1 else out_root / ".parts" / spec.split / f"rank-{rank}-of-{world}"
    writer = PackedWriter(
        root, spec.split, dataset=spec.dataset, seen_labels=spec.seen, unseen_labels=spec.unseen,
        unseen_eval=spec.unseen_eval, shard_size=shard_size, dtype=dtype, scene_source=source,
        resume=not overwrite, overwrite=overwrite, extra=spec.extra, backbone=backbone,
    )
    names = list(spec.names[start:stop])
    dataset = ImageFileDataset(spec.paths[start:stop], backbone_transform(extractor.backbone))
    failures: List[Tuple[int, Unreadable]] = []
    resume_at = 0
    if writer.num_images:
        resume_at, failures = _resume_point(PackedDataset(root, spec.split, allow_incomplete=True).names(),
                                            names, dataset, root)
        print(f"{tool} (rank {rank}): resuming split '{spec.split}' after {writer.num_images} stored images "
              f"(image {start + resume_at} of the list)")
    # (Re)opening a writer marks the split incomplete; running the (maybe empty) rest and closing
    # it makes it complete again and rebuilds the report either way.
    todo = torch.utils.data.Subset(dataset, range(resume_at, len(dataset)))
    loader = DataLoader(todo, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_images,
                        pin_memory=dev.type == "cuda", shuffle=False)
    bar = tqdm(total=len(dataset), initial=resume_at, unit="img", dynamic_ncols=True,
               desc=f"{spec.split}" + (f" rank {rank}" if world > 1 else ""))
    with bar:
        for images, local, failed in loader:
            failures.extend(failed)
            if len(local):
                regions, scene = extractor(images.to(dev, non_blocking=True))
                idx = local.numpy()
                writer.append(regions.cpu().numpy(), np.asarray(spec.labels[start + idx], dtype=np.int8), [names[i] for i in idx],
                              scene=scene.cpu().numpy())
            bar.update(len(local) + len(failed))
            if failed:
                bar.set_postfix(unreadable=len(failures))
    writer.close()
    rows = [(names[i], u.path, u.reason) for i, u in sorted(failures, key=lambda t: t[0])]
    _atomic_write_text(report_path(root, spec.split), REPORT_HEADER + _report_lines(rows))

    if world > 1:
        comm.barrier()
        if rank == 0:
            _merge_parts(out_root, spec, world, shard_size, dtype, source, overwrite, backbone)
        comm.barrier()
    if rank == 0:
        entry = read_manifest(out_root)["splits"][spec.split]
        report = report_path(out_root, spec.split)
        with open(report, encoding="utf-8") as fh:
            unreadable = sum(1 for _ in fh) - 1
        summary.update(written=entry["num_images"], unreadable=unreadable)
        print(f"{tool}: split '{spec.split}': {summary['listed']} images listed, {summary['written']} written, "
              f"{unreadable} unreadable" + (f" (listed with reasons in {report})" if unreadable else "")
              + f"; {backbone} weights: {source}")
    return summary


def _resume_point(stored: List[str], names: List[str], dataset: "ImageFileDataset", root: Path):
    """Where a resumed run continues, and the unreadable images before that point.

    ``stored``: names already in complete shards; ``names``: this rank's list. Output:
    ``(position after the last stored image, [(index, Unreadable), ...] of skipped images)``.
    The skipped images are read again so their reasons reach the report.
    """
    where = {n: i for i, n in enumerate(names)}
    pos = [where.get(n, -1) for n in stored]
    if any(p < 0 for p in pos) or any(b <= a for a, b in zip(pos, pos[1:])):
        raise RuntimeError(f"{root}: the stored shards were written from a different image list "
                           "(names missing or out of order); use a fresh output directory or --overwrite")
    resume_at = pos[-1] + 1
    kept = set(pos)
    failures = []
    for i in range(resume_at):
        if i not in kept:
            item, _ = dataset[i]
            reason = item.reason if isinstance(item, Unreadable) else "unreadable in an earlier run, readable now: rerun with --overwrite"
            failures.append((i, Unreadable(dataset.paths[i], reason)))
    return resume_at, failures


def _merge_parts(out_root: Path, spec: SplitSpec, world: int, shard_size: int, dtype: str, source: str,
                 overwrite: bool, backbone: str) -> None:
    """Rank 0, after the barrier: move every rank's shards into ``out_root`` in rank order, write
    one manifest listing them (checksums carried over) and one report, then drop ``.parts``.
    A file at a target shard name that the manifest does not list is refused unless ``overwrite``."""
    parts = [out_root / ".parts" / spec.split / f"rank-{r}-of-{world}" for r in range(world)]
    # Opening a writer on the final root checks that labels/dtype/scene agree with what is there
    # and deletes the shards of this split that its manifest lists (this tool's own files, from an
    # earlier run); its manifest dict is the base of the new one.
    base = PackedWriter(out_root, spec.split, dataset=spec.dataset, seen_labels=spec.seen,
                        unseen_labels=spec.unseen, unseen_eval=spec.unseen_eval, shard_size=shard_size,
                        dtype=dtype, scene_source=source, resume=False, overwrite=overwrite, extra=spec.extra,
                        backbone=backbone).manifest
    if not overwrite:
        count = sum(len(read_manifest(part)["splits"][spec.split]["shards"]) for part in parts)
        for k in range(count):
            if os.path.lexists(out_root / shard_filename(spec.split, k)):
                raise PackedFormatError(
                    f"{out_root / shard_filename(spec.split, k)}: a file of this name is in the output folder but "
                    "the manifest does not list it; move it away, or pass --overwrite to replace it")
    shards, total, report = [], 0, REPORT_HEADER
    for part in parts:
        entry = read_manifest(part)["splits"][spec.split]
        if not entry.get("complete"):
            raise PackedFormatError(f"{part}: split '{spec.split}' incomplete after the barrier")
        for shard in entry["shards"]:
            target = shard_filename(spec.split, len(shards))
            refuse_link(out_root / target, "a shard this command writes")
            os.replace(part / shard["file"], out_root / target)
            shards.append({"file": target, "num_images": shard["num_images"], "sha256": shard["sha256"]})
            total += shard["num_images"]
        with open(report_path(part, spec.split), encoding="utf-8") as fh:
            report += "".join(fh.readlines()[1:])
    base["splits"][spec.split] = {"num_images": total, "complete": True, "shard_size": shard_size, "shards": shards}
    _atomic_write_text(out_root / "manifest.json", json.dumps(base, indent=1, ensure_ascii=False) + "\n")
    read_manifest(out_root)  # the same checks the readers apply
    _atomic_write_text(report_path(out_root, spec.split), report)
    shutil.rmtree(out_root / ".parts" / spec.split)
    if not any((out_root / ".parts").iterdir()):  # other splits may still be in progress there
        (out_root / ".parts").rmdir()

