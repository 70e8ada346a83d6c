"""``biam-benchmark`` / ``python -m biam.benchmark``: its options and its printed summary."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from .common import PARTS, SIZES, WAYS, check_markers, commit_label, rewrite_between
from .harness import run_benchmark, run_child, write_report
from .report import format_table, load_average, markdown_section

DESCRIPTION = "``biam-benchmark``: our way of working measured side by side with the original's, in one run."


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="biam-benchmark", description=DESCRIPTION)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="smaller counts (about 2.5 minutes on 2 quiet CPU cores)")
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
    p.add_argument("--batch-search", type=int, default=-1,
                   help="largest batch the largest-batch search tries (0: no search; default: the mode's)")
    p.add_argument("--part-timeout", type=float, default=0.0,
                   help="stop a (part, way) subprocess after this many seconds and go on (0: no limit)")
    p.add_argument("--budget", type=float, default=0.0,
                   help="seconds for the whole run, data building included: each (part, way) gets at most "
                        "what is left, and none starts once it is spent (0: no limit)")
    p.add_argument("--doc", default="", metavar="PAGE",
                   help="also write the table into PAGE (docs/benchmarks.md) between its markers "
                        "<!-- benchmark-DEVICE:begin --> and <!-- benchmark-DEVICE:end -->, with the command, "
                        "date, commit and machine; nothing else of the page changes")
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark; exit code 0, or 1 when a part failed or was skipped (the report lists it)."""
    args = parse_args(argv)
    if args.child:
        return run_child(args)
    marks = (f"<!-- benchmark-{args.device}:begin -->", f"<!-- benchmark-{args.device}:end -->")
    if args.doc:  # checked before the run, which takes minutes
        try:
            check_markers(Path(args.doc), *marks)
        except (OSError, ValueError) as err:
            print(f"biam-benchmark: --doc: {err}", file=sys.stderr)
            return 2
    commit = commit_label()  # the code measured: read before the run, which takes minutes
    start, load = time.perf_counter(), load_average()
    on_update = (lambda r: write_report(args.out, r)) if args.out else None
    report = run_benchmark(args, on_update=on_update)
    m = report["meta"]
    print(f"\nBiAM benchmark, mode {m['mode']} on {m['machine']['gpu'] or m['machine']['cpu']} "
          f"({m['machine']['cores']} cores), {m['date']}")
    print(format_table(report["table"]))
    ratio = report["data"].get("ours", {}).get("ratio_to_original")
    if ratio:
        # How steady the data figure is: its per-round ratios (windows next to each other in time).
        print(f"data ratio: median of {len(ratio['pair_ratios'])} per-round ratios {ratio['median']:.3g}x; "
              f"min {ratio['min']:.3g}, quartiles {ratio['q1']:.3g}-{ratio['q3']:.3g}, max {ratio['max']:.3g}")
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
        write_report(args.out, report)
        print(f"wrote {args.out}")
    if args.doc:
        rewrite_between(Path(args.doc), *marks, markdown_section(report, commit, time.perf_counter() - start, load))
        print(f"wrote the {args.device} table of {args.doc}")
    return 1 if report["failures"] or report["skipped"] else 0

