"""The benchmark's harness: builds the data, runs every (part, way) in order (each in its own
interpreter unless ``--in-process``), keeps a failing or timed-out one from stopping the others,
holds the run to ``--budget``, and hands the report so far on after every (part, way)."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

from .common import PARTS, SIZES, WAYS, Ctx, Sizes
from .data import build_data
from .parts import run_part
from .report import build_report


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
    if args.batch_search >= 0:
        cmd += ["--batch-search", str(args.batch_search)]
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
    sizes = sizes_from_args(args)
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
                    on_update(build_report(args, sizes, device, started, data, results, failures, skipped, complete=False))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    stamp("done")
    results = {part: ways for part, ways in results.items() if ways}
    return build_report(args, sizes, device, started, data, results, failures, skipped, complete=True)


def sizes_from_args(args: argparse.Namespace) -> Sizes:
    sizes = SIZES[args.mode]
    if args.steps:
        sizes = replace(sizes, train_steps=int(args.steps))
    if args.images:
        sizes = replace(sizes, data_images=int(args.images), test_images=int(args.images))
    if getattr(args, "batch_search", -1) >= 0:
        sizes = replace(sizes, largest_batch_max=int(args.batch_search))
    return sizes


def run_child(args: argparse.Namespace) -> int:
    part, way = args.child.split(":")
    data_dir = Path(args.data_dir)
    data = json.loads((data_dir / "benchmark_data.json").read_text(encoding="utf-8"))
    ctx = Ctx(data=data, sizes=sizes_from_args(args), device=torch.device(args.device), work_dir=data_dir,
              compile_cpu=args.compile_cpu, log=lambda m: print(m, file=sys.stderr))
    res = run_part(ctx, part, way)
    Path(args.child_out).write_text(json.dumps(res), encoding="utf-8")
    return 0


def write_report(path: str, report: Dict[str, Any]) -> None:
    tmp = Path(path + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)  # a reader never sees half a report

