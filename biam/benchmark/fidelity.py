"""``python -m biam.benchmark.fidelity``: rerun every measured row of docs/fidelity.md at the
current code and rewrite its table of runs.

Each row is one training run on the same synthetic data (the demo's generator, seed 0), with
the demo's config cut to 4 + 1 epochs on the CPU, and one ``KEY VALUE`` change from the
defaults (or, for the float32 storage row, the same data converted with ``--dtype float32``).
On the CPU a run is deterministic, so a row's difference from the defaults row comes from its
key alone. The runs are commands users have (``biam-synthetic``, ``biam-convert``,
``biam-train``), run as subprocesses, so the figures are what those commands give.

The table is written between the markers ``<!-- fidelity-runs:begin -->`` and
``<!-- fidelity-runs:end -->`` of the page, with the date, the machine, the commit and this
command; nothing else on the page changes. ``--dry-run`` runs one epoch per row and prints the
table without writing it (what the test does, on tiny data).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from .common import REPO, made_by, rewrite_between

PAGE = REPO / "docs" / "fidelity.md"
BEGIN, END = "<!-- fidelity-runs:begin -->", "<!-- fidelity-runs:end -->"

# name -> (KEY VALUE overrides, data variant). "defaults" is the reference of every other row.
ROWS: Dict[str, tuple] = {
    "defaults": ((), "packed"),
    "`SEED 3484`": (("SEED", "3484"), "packed"),
    "`MODEL.ATTENTION published`": (("MODEL.ATTENTION", "published"), "packed"),
    "`SOLVER.FUSED_ADAM False`": (("SOLVER.FUSED_ADAM", "False"), "packed"),
    "`DATA.SAMPLING randperm`": (("DATA.SAMPLING", "randperm"), "packed"),
    "float32 storage (`biam-convert --dtype float32`)": ((), "packed32"),
    "`AMP bf16`": (("AMP", "bf16"), "packed"),
}
# The recipe of every run: the demo's config, 4 + 1 epochs, on the CPU.
BASE = ["PLOT_CURVE", "False", "DEVICE", "cpu", "SOLVER.MAX_EPOCHS", "4", "EVAL.START_EPOCH", "2",
        "EVAL.REPORT_CHANCE", "False"]
SIZES = {"full": (320, 120), "tiny": (48, 24)}


def _run(cmd: List[str], log: Path) -> None:
    with open(log, "a", encoding="utf-8") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        done = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited with {done.returncode}; see {log}")


def make_data(work: Path, num_train: int, num_test: int, log: Path) -> Dict[str, Path]:
    """The synthetic release and its two conversions (float16, float32) under ``work``."""
    py = sys.executable
    _run([py, "-m", "biam.cli.synthetic", "--out", str(work / "released"), "--seed", "0",
          "--num-train", str(num_train), "--num-test", str(num_test)], log)
    out = {}
    for name, extra in (("packed", []), ("packed32", ["--dtype", "float32"])):
        _run([py, "-m", "biam.cli.convert", "nus_wide", "--src", str(work / "released"), "--out", str(work / name),
              "--scene-fallback", "random", *extra], log)
        out[name] = work / name
    return out


def final_weights(run: Path) -> Dict[str, torch.Tensor]:
    """The model state of the run's last checkpoint."""
    ckpts = sorted((run / "checkpoints").glob("checkpoint_epoch_*.pth"))
    if not ckpts:
        raise FileNotFoundError(f"{run}: no checkpoint")
    return torch.load(ckpts[-1], map_location="cpu", weights_only=True)["model"]


def run_row(name: str, data: Dict[str, Path], work: Path, log: Path, epochs: Optional[int] = None) -> dict:
    """Train one row; return its test metrics, the two losses and its final weights."""
    opts, variant = ROWS[name]
    out = work / "runs" / re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")
    base = list(BASE)
    if epochs is not None:
        base += ["SOLVER.MAX_EPOCHS", str(epochs), "SOLVER.WARMUP_EPOCHS", "0", "EVAL.START_EPOCH", str(epochs)]
    start = time.perf_counter()
    _run([sys.executable, "-m", "biam.cli.train", "--config-file", str(REPO / "configs" / "demo.yaml"),
          "DATA.ROOT", str(data[variant]), "OUTPUT_DIR", str(out), *base, *opts], log)
    seconds = time.perf_counter() - start
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    epochs_log = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    train = [e for e in epochs_log if e.get("phase") == "train"]
    tune = [e for e in epochs_log if e.get("phase") == "finetune"]
    return {"name": name, "metrics": metrics, "loss_train": train[-1]["loss"] if train else float("nan"),
            "loss_finetune": tune[-1]["loss"] if tune else float("nan"), "weights": final_weights(out),
            "seconds": seconds}


def max_weight_difference(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> float:
    """Largest |a - b| over every floating-point tensor of two state dicts (0.0 when bitwise equal)."""
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


def format_table(rows: Sequence[dict]) -> str:
    """The markdown table of runs; ``rows[0]`` is the defaults row, the reference of max |dw|."""
    ref = rows[0]["weights"]
    lines = ["| run (KEY VALUE) | ZSL mAP | ZSL F1@3 | GZSL mAP | GZSL F1@3 | loss, last training epoch "
             "| loss, fine-tuning | max abs dw |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        z, g = r["metrics"]["zsl"], r["metrics"]["gzsl"]
        dw = max_weight_difference(r["weights"], ref)
        dw_text = "0 (bitwise equal)" if dw == 0 and r is not rows[0] else ("0" if dw == 0 else f"{dw:.2g}")
        lines.append(f"| {r['name']} | {100 * z['mAP']:.2f} | {100 * z['F1@3']:.2f} | {100 * g['mAP']:.2f} | "
                     f"{100 * g['F1@3']:.2f} | {r['loss_train']:.5f} | {r['loss_finetune']:.5f} | {dw_text} |")
    return "\n".join(lines)


def section(table: str, seconds: float) -> str:
    """What goes between the markers: how the table was made, then the table."""
    return (made_by("python -m biam.benchmark.fidelity", seconds, "minutes for all rows")
            + "). Test split after 4 + 1 epochs, in %; loss = mean training "
            "loss of the last training epoch and of the fine-tuning epoch; max abs dw = largest difference of a "
            "final weight from the defaults row's.\n\n" + table)


def rewrite_page(page: Path, text: str) -> None:
    """Replace what is between the markers of ``page`` by ``text`` (atomically); the markers must be there."""
    rewrite_between(page, BEGIN, END, text)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m biam.benchmark.fidelity", description=__doc__.split("\n\n")[0])
    p.add_argument("--work-dir", metavar="DIR", help="where the data and runs go (default: a temporary folder, removed)")
    p.add_argument("--page", default=str(PAGE), metavar="FILE", help="the page whose table is rewritten (default: "
                                                                     "docs/fidelity.md)")
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated row names (default: all)")
    p.add_argument("--dry-run", action="store_true",
                   help="tiny data and one epoch per row; print the table, write nothing")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    names = [n for n in args.rows.split(",") if n]
    unknown = [n for n in names if n not in ROWS]
    if unknown or not names or names[0] != "defaults":
        print(f"fidelity: --rows must start with 'defaults' and name rows of {list(ROWS)}; got {names}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="biam-fidelity-") as tmp:
        work = Path(args.work_dir) if args.work_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        log = work / "fidelity.log"
        start = time.perf_counter()
        data = make_data(work, *SIZES["tiny" if args.dry_run else "full"], log)
        rows = []
        for name in names:
            rows.append(run_row(name, data, work, log, epochs=1 if args.dry_run else None))
            print(f"fidelity: {name}: {rows[-1]['seconds']:.0f} s", file=sys.stderr)
        table = format_table(rows)
        print(table)
        if not args.dry_run:
            rewrite_page(Path(args.page), section(table, time.perf_counter() - start))
            print(f"fidelity: rewrote the table of {args.page}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
