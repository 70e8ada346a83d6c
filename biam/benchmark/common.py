"""What every part of the benchmark shares: label counts, the modes' sizes, the context a part
runs in, and the small timing helpers (device sync, timed call, profile, peak RSS)."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import resource
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List

import torch
import torch.nn.functional as F

from ..utils.io import atomic_open

NUM_SEEN, NUM_UNSEEN = 925, 81
OI_SEEN, OI_UNSEEN = 7186, 400
NUS_TEST_IMAGES = 107_859
NUS_TRAIN_IMAGES = 161_789
OI_TEST_IMAGES = 125_436
PARTS = ("data", "train", "train_oi", "eval_nus", "eval_oi", "testpass")
WAYS = ("original", "ours")
REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------- pages of figures (docs/)
def commit_label() -> str:
    """The checkout's commit (short hash), "with uncommitted changes" when tracked files other than
    pages (``*.md``, which these commands rewrite) differ: the label names the code measured."""
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)*.md"],
                           capture_output=True, text=True, cwd=REPO).stdout.strip()
    return (done.stdout.strip() or "unknown") + (" with uncommitted changes" if dirty else "")


def check_markers(page: Path, begin: str, end: str) -> str:
    """The text of ``page``; ValueError unless it holds ``begin`` and then ``end``, once each."""
    body = Path(page).read_text(encoding="utf-8")
    if body.count(begin) != 1 or body.count(end) != 1 or body.index(begin) > body.index(end):
        raise ValueError(f"{page}: needs the markers {begin} and {end}, once each and in that order")
    return body


def made_by(command: str, seconds: float, how_long: str = "minutes") -> str:
    """The opening of a page's table: "Made by `command` on DATE at commit X (machine; N minutes".
    The caller closes the parenthesis and says what the table holds."""
    machine = f"{platform.machine()}, {os.cpu_count()} CPU threads visible, torch {torch.__version__}"
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"Made by `{command}` on {when} at commit {commit_label()} ({machine}; {seconds / 60:.0f} {how_long}"


def rewrite_between(page: Path, begin: str, end: str, text: str) -> None:
    """Replace what is between the markers ``begin`` and ``end`` of ``page`` by ``text``
    (atomically); nothing else of the page changes, and the markers must be there."""
    page = Path(page)
    body = check_markers(page, begin, end)
    head, rest = body.split(begin, 1)
    _, tail = rest.split(end, 1)
    with atomic_open(page, "w") as fh:
        fh.write(f"{head}{begin}\n{text}\n{end}{tail}")


# --------------------------------------------------------------------------------- sizes
@dataclass(frozen=True)
class Sizes:
    """Counts of one benchmark mode (all stated in the output).

    released_train / released_test: images written in the released layout (the original reads
    them, cycling when it needs more). packed_train / packed_test: images of the packed splits.
    data_images: at least this many images are timed per way in the data part (data_images /
    data_windows per window); data_windows / data_window_s / data_warmup_s: the data part's
    rounds of interleaved windows (the figure is the median of the per-round ratios), the least
    seconds of each window, and the least seconds of untimed warm-up before them;
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
    data_windows: int = 21
    data_window_s: float = 0.2
    data_warmup_s: float = 0.5
    data_steady_images: int = 40_000


SIZES = {
    "full": Sizes("full", released_train=2048, released_test=1024, packed_train=2048, packed_test=1024,
                  data_images=21 * 192, train_steps=12, warmup_steps=2, batch=32,
                  eval_nus_rows=NUS_TEST_IMAGES, eval_nus_loop_cols=NUM_SEEN + NUM_UNSEEN,
                  eval_oi_rows=OI_TEST_IMAGES, eval_oi_loop_cols=300, eval_nus_f1_rows=NUS_TEST_IMAGES,
                  eval_oi_f1_rows=10_000, test_images=1024, profile_steps=3, oi_images=512, oi_steps=6,
                  largest_batch_max=128, data_window_s=0.5, data_warmup_s=1.0, data_steady_images=131_072),
    "quick": Sizes("quick", released_train=384, released_test=128, packed_train=384, packed_test=128,
                   data_images=21 * 96, train_steps=2, warmup_steps=1, batch=32,
                   eval_nus_rows=30_000, eval_nus_loop_cols=150,
                   eval_oi_rows=10_000, eval_oi_loop_cols=100, eval_nus_f1_rows=5_000,
                   eval_oi_f1_rows=2_000, test_images=128, profile_steps=1, oi_images=96, oi_steps=1),
    # For the tests: structure only, every count tiny, and every code path of the CUDA mode
    # (whole epoch, largest-batch search, the original's test pass extrapolated) on the CPU.
    "tiny": Sizes("tiny", released_train=48, released_test=16, packed_train=48, packed_test=24,
                  data_images=32, train_steps=1, warmup_steps=1, batch=4,
                  eval_nus_rows=600, eval_nus_loop_cols=40, eval_oi_rows=800, eval_oi_loop_cols=30,
                  eval_nus_f1_rows=200, eval_oi_f1_rows=200,
                  test_images=24, profile_steps=1, test_batch=8, whole_epoch=True, largest_batch_max=8,
                  oi_images=16, oi_steps=1, data_windows=3, data_window_s=0.0, data_warmup_s=0.0,
                  data_steady_images=192),
    # CUDA: a whole NUS-WIDE-sized epoch and test pass for ours; the original on a few hundred
    # steps/batches, extrapolated.
    "cuda": Sizes("cuda", released_train=1024, released_test=1024, packed_train=NUS_TRAIN_IMAGES,
                  packed_test=NUS_TEST_IMAGES, data_images=21 * 256, train_steps=100, warmup_steps=10, batch=32,
                  eval_nus_rows=NUS_TEST_IMAGES, eval_nus_loop_cols=200,
                  eval_oi_rows=OI_TEST_IMAGES, eval_oi_loop_cols=100, eval_nus_f1_rows=20_000,
                  eval_oi_f1_rows=10_000, test_images=NUS_TEST_IMAGES,
                  profile_steps=5, test_batch=256, whole_epoch=True, largest_batch_max=8192,
                  oi_images=1024, oi_steps=20, data_window_s=0.5, data_warmup_s=2.0, data_steady_images=NUS_TRAIN_IMAGES),
}


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (VmHWM of /proc/self/status, else getrusage)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    # ru_maxrss is in kilobytes on Linux.
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Ctx:
    """Everything a part needs: data paths, sizes, device, and knobs."""

    data: Dict[str, Any]
    sizes: Sizes
    device: torch.device
    work_dir: Path
    compile_cpu: bool = False
    log: Callable[[str], None] = print


def seen_embeddings(device: torch.device, num_seen: int = NUM_SEEN) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(num_seen, 300, generator=gen)
    return F.normalize(emb, dim=1).to(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def profile_table(prof, device: torch.device, top: int = 12) -> List[Dict[str, Any]]:
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    rows = []
    events = prof.key_averages()
    total = sum(getattr(e, key) for e in events) or 1.0
    for e in sorted(events, key=lambda e: getattr(e, key), reverse=True)[:top]:
        rows.append({"op": e.key, "self_ms": getattr(e, key) / 1e3, "share": getattr(e, key) / total, "calls": e.count})
    return rows


def profile_ops(step: Callable[[], Any], n: int, device: torch.device) -> List[Dict[str, Any]]:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(n):
            step()
        sync(device)
    return profile_table(prof, device)


def nus_matrix(rows: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    c = NUM_SEEN + NUM_UNSEEN
    scores = torch.rand(rows, c, generator=gen)
    labels = torch.where(torch.rand(rows, c, generator=gen) < 0.02, 1, -1).to(torch.int8)
    return scores, labels


def oi_matrix(rows: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    c = OI_SEEN + OI_UNSEEN
    scores = torch.rand(rows, c, generator=gen)
    # ~0.25% of entries annotated (about 19 per image), 60% of those positive; the rest 0.
    u = torch.rand(rows, c, generator=gen)
    labels = torch.zeros(rows, c, dtype=torch.int8)
    labels[u < 0.0015] = 1
    labels[(u >= 0.0015) & (u < 0.0025)] = -1
    return scores, labels

