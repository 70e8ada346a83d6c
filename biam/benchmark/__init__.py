"""``biam-benchmark``: our way of working measured side by side with the original's, in one run.

What is measured (each "original" figure is the published code's way of doing the same work,
rebuilt here from the original release's code and files; each "ours" figure is this package's way):

* data: images/s of ready float32 batches of 32. Original: random batches of names, key-by-key
  h5py reads of ``<name>-features`` / ``<name>-labels`` from the released per-key gzip layout,
  stacked into tensors. Ours: ``build_loader`` over the packed layout (shuffle=True), with 0 and
  2 workers (one torch intra-op thread). Both are steady-state figures, measured in one process:
  an untimed warm-up (worker start-up and first reads included), then rounds of time-bounded
  windows, one per way (``parts.steady_rates``); the ratio is the median of the rounds' ratios
  (``parts.pair_ratios``), reported with their quartiles, min and max.
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

Modules, one job each: ``common`` (label counts, the modes' sizes, timing helpers), ``data``
(the data in both layouts, written by biam.demo.synthetic), ``original`` (the original's way),
``ours`` (our way), ``parts`` (each part, both ways), ``harness`` (subprocesses, time limits,
budget), ``report`` (the goals, the table, the JSON) and ``cli``.
"""

from .cli import main, parse_args
from .common import NUM_SEEN, NUM_UNSEEN, OI_SEEN, OI_UNSEEN, PARTS, SIZES, WAYS, Ctx, Sizes
from .data import build_data, write_packed, write_released, write_released_openimages
from .harness import run_benchmark
from .original import ReleasedBatches, published_ranking_loss
from .parts import PART_FUNCS, pair_ratios, run_part, steady_rates
from .report import GOALS, format_table, goal_rows, goal_text

__all__ = ["Sizes", "SIZES", "GOALS", "PART_FUNCS", "published_ranking_loss", "ReleasedBatches", "build_data",
           "write_packed", "write_released", "write_released_openimages", "run_benchmark", "run_part",
           "steady_rates", "pair_ratios", "goal_rows", "goal_text", "format_table", "parse_args", "main", "Ctx",
           "PARTS", "WAYS",
           "NUM_SEEN", "NUM_UNSEEN", "OI_SEEN", "OI_UNSEEN"]
