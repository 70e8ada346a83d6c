"""The prepared GPU check of docs/benchmarks.md ("GPU check"): CUDA correctness and speed in one
device call of about 5 minutes, leaving what it measured under OUT even if cut short.

    python -m biam.benchmark.gpu_check OUT [--dry-run] [--budget S] [--parts tests,train,eval,bench] [--plan]

On the lent GPU machine it runs through ``.ci/device_check.sh``, which installs the carried
wheels (yacs, ...) into a folder on PYTHONPATH first. Parts (each in its own processes, each
stopped at its time limit, the whole bounded by --budget):

1. tests: ``pytest -m cuda tests/cuda`` (bf16 + compile training, the split held on the GPU,
   the on-device bad-step skip, evaluation and extraction against the CPU, a 1-process NCCL
   group with a DDP step). It runs in the background, beside parts 2 and 3 (they take little
   of the GPU); part 4, the timings, starts only once it is done.
2. train: the demo (configs/demo.yaml on the data scripts/demo.sh makes, dropout off) from one
   seed in CPU float32 (the reference, run beside the others), CUDA float32 eager and CUDA bf16
   + torch.compile; per-epoch losses and final test metrics compared with stated tolerances.
3. eval: one checkpoint of part 2 evaluated on CUDA (float32, and the default bf16) and on the
   CPU: every metric within 1e-3.
4. bench: ``biam.benchmark --device cuda --parts testpass,train`` (a 107,859-image test pass,
   goal < 5 s; a NUS-WIDE-sized epoch read from the files, goal < 30 s, and again with the
   images held on the GPU, goal < 10 s; the original's way beside each); its data is built in
   the background from the start.

What comes back (7 files, no deeper than OUT/logs/): OUT/gpu_check.json (rewritten after every
step, ``complete`` false until the end; each failing command's last lines are in it),
OUT/gpu_check.log (this driver's progress), OUT/bench.json (the benchmark's own report, also
rewritten as it goes) and one log per part in OUT/logs/ (tests, train, eval, bench). Runs and
data go to a work folder (a temporary one unless --work), removed at the end.

``--dry-run`` runs every part on the CPU at reduced size: the "CUDA" runs become CPU runs
(float32 eager, and bf16 autocast eager: torch.compile on a 2-core CPU takes about 40 s per graph, minutes a run), the
benchmark runs ``--tiny`` (the CUDA mode's code paths on the CPU, the resident epoch included),
and the CUDA tests skip. Exit code 0 when every part ran and passed its checks, 1 otherwise,
2 when there is no GPU and no --dry-run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parents[2]
PARTS = ("tests", "train", "eval", "bench")
# Seconds each part may take at most on the GPU (it also gets no more than what is left of
# --budget); the estimates are what docs/benchmarks.md expects on one H100/H200. "tests" runs
# beside "train" and "eval", so the whole is about max(tests, train + eval) + bench.
PART_LIMITS = {"tests": 150, "train": 150, "eval": 45, "bench": 200}
ESTIMATES = {"tests": 100, "train": 100, "eval": 25, "bench": 160}
DEFAULT_BUDGET = 300.0
DRY_RUN_BUDGET = 1500.0
# A dry run on a 2-core CPU is slower than the GPU run it rehearses: its limits are this much longer.
DRY_RUN_SLACK = 3.0
# Tolerances of part 2 against the CPU float32 run (see docs/benchmarks.md, "GPU check"):
# (per-epoch mean loss, relative; final test metrics, absolute on fractions).
TOLERANCES = {"fp32": (1e-2, 0.01), "bf16_compile": (0.10, 0.05)}
EVAL_TOLERANCE = 1e-3
NO_DROPOUT = ["MODEL.ATTN_DROPOUT", "0.0", "MODEL.SCENE_DROPOUT", "0.0"]
# The benchmark's share of part 4: its timed steps per way, and no largest-batch search (its
# recompiles for new shapes take a minute the check does not have).
BENCH_OPTIONS = ["--steps", "30", "--batch-search", "0"]
TAIL_CHARS = 2500


def expected_whole(parts: List[str]) -> int:
    """Estimated seconds of the given parts on the GPU: tests overlap train + eval."""
    fg = sum(ESTIMATES[p] for p in parts if p in ("train", "eval"))
    return max(ESTIMATES["tests"] if "tests" in parts else 0, fg) + (ESTIMATES["bench"] if "bench" in parts else 0)


class Check:
    """The run's state: where it writes, how much time is left, and the report so far."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out = Path(args.out)
        self.logs = self.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.t0 = time.monotonic()
        self.work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="biam-gpu-check-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.own_work = not args.work
        self.device = "cpu" if args.dry_run else "cuda"
        self.report: Dict[str, Any] = {
            "meta": {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                     "command": " ".join(["python3", "-m", "biam.benchmark.gpu_check"] + list(args.argv)),
                     "dry_run": args.dry_run, "budget_s": args.budget, "machine": machine(),
                     "part_limits_s": dict(PART_LIMITS), "estimates_s": dict(ESTIMATES)},
            "parts": {}, "complete": False}
        self.save()

    def left(self) -> float:
        return self.args.budget - (time.monotonic() - self.t0)

    def save(self) -> None:
        tmp = self.out / "gpu_check.json.tmp"
        tmp.write_text(json.dumps(self.report, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.out / "gpu_check.json")  # a reader never sees half a report

    def log(self, msg: str) -> None:
        line = f"[{time.monotonic() - self.t0:6.1f} s] {msg}"
        print(line, flush=True)
        with open(self.out / "gpu_check.log", "a", encoding="utf-8") as f:
            f.write(line + "\n")


def machine() -> Dict[str, Any]:
    """Python, torch, CUDA, the GPU as nvidia-smi names it, and where yacs came from (the carried wheel)."""
    import platform

    import torch

    info: Dict[str, Any] = {"python": platform.python_version(), "executable": sys.executable,
                            "torch": torch.__version__, "torch_cuda": torch.version.cuda, "cores": os.cpu_count(),
                            "cuda": torch.cuda.is_available(), "pythonpath": os.environ.get("PYTHONPATH", "")}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        free, total = torch.cuda.mem_get_info(0)
        info["gpu_memory_gib"] = {"free": round(free / 2**30, 1), "total": round(total / 2**30, 1)}
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
        info["nvidia_smi"] = (done.stdout or done.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as err:
        info["nvidia_smi"] = f"not run: {err}"
    # yacs and open_clip (with ftfy, wcwidth) come from the carried wheels; the rest from the image,
    # where only names are listed ahead (open_clip needs timm >= 1.0.17, say): the versions found.
    for name in ("yacs", "numpy", "h5py", "yaml", "open_clip", "ftfy", "wcwidth", "timm", "regex",
                 "huggingface_hub", "safetensors"):
        try:
            mod = __import__(name)
            version = getattr(mod, "__version__", None) or dist_version(name)
            info[name] = f"{version} at {Path(mod.__file__).parent}"
        except Exception as err:  # noqa: BLE001 - an import that fails in any way is what this records
            info[name] = f"not importable: {type(err).__name__}: {err}"
    return info


def dist_version(module: str) -> str:
    """The installed distribution's version of ``module`` (yacs has no ``__version__``), or "?"."""
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return "?"


def child_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """This environment with the working tree first on PYTHONPATH; what was there (the carried
    wheels' folder on the GPU machine) stays after it."""
    path = [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(REPO)]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(path), PYTHONUNBUFFERED="1", **(extra or {}))


def start(cmd: List[str], log: Path, env: Optional[Dict[str, str]] = None, header: str = "") -> subprocess.Popen:
    """Start ``cmd`` in its own process group, its output appended to ``log``."""
    f = open(log, "a", encoding="utf-8")
    f.write(f"\n==== {header or cmd[0]}: {' '.join(cmd)}\n")
    f.flush()
    try:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
                                env=child_env(env))
    finally:
        f.close()  # the child holds its own copy of the descriptor


def finish(proc: subprocess.Popen, timeout: float) -> Dict[str, Any]:
    """Wait up to ``timeout`` s; past it, stop the process group this script started."""
    t0 = time.monotonic()
    try:
        rc = proc.wait(timeout=max(1.0, timeout))
        status = "ok" if rc == 0 else f"exit code {rc}"
    except subprocess.TimeoutExpired:
        stop(proc)
        status = f"stopped after {timeout:.0f} s"
    return {"status": status, "wait_seconds": time.monotonic() - t0}


def stop(proc: subprocess.Popen) -> None:
    """End the process group of ``proc`` (one this script started): TERM, then KILL after 10 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def tail(path: Path, chars: int = TAIL_CHARS, since: int = 0) -> str:
    """The last ``chars`` characters of ``path`` after byte ``since`` ("" when it cannot be read)."""
    try:
        with open(path, "rb") as f:
            f.seek(since)
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return text[-chars:]


def run(check: Check, name: str, cmd: List[str], timeout: float, log: str, env=None) -> Dict[str, Any]:
    """Run one command into OUT/logs/<log>.log; a failure keeps the log's end in the report."""
    t0 = time.monotonic()
    path = check.logs / f"{log}.log"
    check.log(f"{name}: {' '.join(cmd)}")
    size = path.stat().st_size if path.exists() else 0
    res = finish(start(cmd, path, env, header=name), timeout)
    res["seconds"] = time.monotonic() - t0
    res["log"] = f"logs/{log}.log"
    if res["status"] != "ok":
        res["log_tail"] = tail(path, since=size)  # this command's lines only
    check.log(f"{name}: {res['status']} in {res['seconds']:.1f} s")
    return res


# ----------------------------------------------------------------------------------- parts
def tests_cmd(check: Check) -> List[str]:
    return [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests/cuda", "-p", "no:cacheprovider",
            f"--junitxml={check.work / 'tests.xml'}"]


def tests_result(check: Check, res: Dict[str, Any]) -> Dict[str, Any]:
    xml = check.work / "tests.xml"
    if xml.is_file():
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        res.update(counts, failed=[c.get("classname", "") + "::" + c.get("name", "") for c in suite.iter("testcase")
                                   if c.find("failure") is not None or c.find("error") is not None])
    # Without a GPU every test skips (that is the dry run's check: they skip cleanly).
    res["passed"] = res["status"] == "ok" and not res.get("failed")
    if not res["passed"]:
        res["log_tail"] = tail(check.logs / "tests.log")
    return res


def demo_data(check: Check, limit: float) -> Dict[str, Any]:
    """The demo's data, made as scripts/demo.sh makes it (reduced in a dry run)."""
    demo = check.work / "demo"
    # The dry run keeps the demo's 200 test images, so that its metric differences are on the same scale.
    n_train, n_test = (120, 200) if check.args.dry_run else (600, 200)
    t0 = time.monotonic()
    steps = [
        [sys.executable, "-m", "biam.cli.synthetic", "--out", str(demo / "released"), "--seed", "0",
         "--num-train", str(n_train), "--num-test", str(n_test)],
        [sys.executable, "-m", "biam.cli.convert", "nus_wide", "--src", str(demo / "released"), "--out",
         str(demo / "packed"), "--scene-fallback", "random", "--overwrite"],
    ]
    for i, cmd in enumerate(steps):
        r = run(check, f"train-data{i + 1}", cmd, limit - (time.monotonic() - t0), "train")
        if r["status"] != "ok":
            return {"status": r["status"], "log": r["log"], "log_tail": r.get("log_tail", "")}
    return {"status": "ok", "root": str(demo / "packed"), "images": [n_train, n_test],
            "seconds": time.monotonic() - t0}


def train_cmd(check: Check, root: str, out: Path, opts: List[str]) -> List[str]:
    extra = ["SOLVER.MAX_EPOCHS", "2"] if check.args.dry_run else []
    return [sys.executable, "-m", "biam.cli.train", "--config-file", str(REPO / "configs" / "demo.yaml"),
            "DATA.ROOT", root, "OUTPUT_DIR", str(out), "PLOT_CURVE", "False", *NO_DROPOUT, *extra, *opts]


def read_run(out: Path) -> Dict[str, Any]:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    metrics = json.loads((out / "metrics.json").read_text())
    where = [line.split(" held ", 1)[1].strip() for line in (out / "log.txt").read_text().splitlines()
             if "training images held" in line]
    return {"losses": [x["loss"] for x in lines], "seconds_per_epoch": [x.get("seconds") for x in lines],
            "images_per_s": [x.get("images_per_s") for x in lines], "images_held": where,
            "metrics": {s: {k: v for k, v in metrics[s].items() if isinstance(v, float)} for s in ("zsl", "gzsl")}}


def compare_runs(got: Dict[str, Any], ref: Dict[str, Any], loss_tol: float, metric_tol: float) -> Dict[str, Any]:
    """Per-epoch loss (relative) and final metric (absolute) differences against the reference."""
    if len(got["losses"]) != len(ref["losses"]):
        return {"passed": False, "why": f"{len(got['losses'])} epochs against {len(ref['losses'])}"}
    loss_rel = max(abs(a - b) / abs(b) for a, b in zip(got["losses"], ref["losses"]))
    metric_abs = max(abs(got["metrics"][s][k] - ref["metrics"][s][k]) for s in ref["metrics"] for k in ref["metrics"][s])
    return {"max_loss_rel_diff": loss_rel, "max_metric_abs_diff": metric_abs, "loss_tolerance": loss_tol,
            "metric_tolerance": metric_tol, "passed": loss_rel <= loss_tol and metric_abs <= metric_tol}


def part_train(check: Check, limit: float) -> Dict[str, Any]:
    t0 = time.monotonic()
    data = demo_data(check, limit)
    res: Dict[str, Any] = {"data": data, "runs": {}, "comparisons": {}}
    if data["status"] != "ok":
        res.update(status="data failed", passed=False)
        return res
    root = data["root"]
    runs_dir = check.work / "runs"
    # "cuda" runs become CPU runs in a dry run; compile stays off on the CPU (inductor's C++
    # build takes minutes on 2 cores), so the dry run's second run is bf16 autocast eager.
    dev = check.device
    variants = {
        "cpu_fp32": ["DEVICE", "cpu", "AMP", "off", "COMPILE", "off"],
        "fp32": ["DEVICE", dev, "AMP", "off", "COMPILE", "off"],
        "bf16_compile": ["DEVICE", dev, "AMP", "bf16", "COMPILE", "off" if check.args.dry_run else "on"],
    }
    # On a GPU machine the CPU reference runs beside the CUDA runs, on a third of the cores (the
    # CUDA tests and the benchmark's data building use the others); in a dry run (all on the
    # CPU) it runs first, alone. Its log goes to the work folder and is appended to train.log
    # when it ends (two processes never write one log).
    cores = str(max(1, (os.cpu_count() or 2) // 3))
    ref_log = check.work / "train-cpu_fp32.log"
    ref_started = time.monotonic()
    ref_proc = start(train_cmd(check, root, runs_dir / "cpu_fp32", variants["cpu_fp32"]), ref_log,
                     env=None if check.args.dry_run else {"OMP_NUM_THREADS": cores}, header="train-cpu_fp32")
    check.log(f"train-cpu_fp32: started{'' if check.args.dry_run else f' beside the others ({cores} threads)'}")
    if check.args.dry_run:
        ref_result = finish(ref_proc, limit - (time.monotonic() - t0))
        ref_result["seconds"] = time.monotonic() - ref_started
    for name in ("fp32", "bf16_compile"):
        left = limit - (time.monotonic() - t0)
        r = run(check, f"train-{name}", train_cmd(check, root, runs_dir / name, variants[name]), left, "train")
        res["runs"][name] = dict(r, overrides=variants[name])
        check.report["parts"]["train"] = dict(res, status="running")
        check.save()
    if check.args.dry_run:
        r = ref_result
    else:
        r = finish(ref_proc, limit - (time.monotonic() - t0))
        r["seconds"] = time.monotonic() - ref_started
    with open(check.logs / "train.log", "a", encoding="utf-8") as f:
        f.write(tail(ref_log, 200_000))
    r.update(log="logs/train.log", overrides=variants["cpu_fp32"])
    if r["status"] != "ok":
        r["log_tail"] = tail(ref_log)
    check.log(f"train-cpu_fp32: {r['status']} in {r['seconds']:.1f} s")
    res["runs"]["cpu_fp32"] = r
    for name, r in res["runs"].items():
        if r["status"] == "ok":
            r.update(read_run(runs_dir / name))
    ref = res["runs"]["cpu_fp32"]
    if ref["status"] == "ok":
        for name in ("fp32", "bf16_compile"):
            if res["runs"][name]["status"] == "ok":
                res["comparisons"][name] = compare_runs(res["runs"][name], ref, *TOLERANCES[name])
    res["passed"] = len(res["comparisons"]) == 2 and all(c["passed"] for c in res["comparisons"].values())
    res["status"] = "ok"
    # Part 3 evaluates a checkpoint of these runs.
    for name in ("fp32", "cpu_fp32", "bf16_compile"):
        ckpts = sorted((runs_dir / name / "checkpoints").glob("checkpoint_epoch_*.pth"))
        if ckpts:
            res["checkpoint"] = str(ckpts[-1])
            break
    return res


def part_eval(check: Check, limit: float) -> Dict[str, Any]:
    ckpt = check.report["parts"].get("train", {}).get("checkpoint")
    root = check.report["parts"].get("train", {}).get("data", {}).get("root")
    if not ckpt or not root:
        return {"status": "no checkpoint from part train", "passed": False}
    t0 = time.monotonic()
    dev = check.device
    # In a dry run the "CUDA" evaluations are CPU ones: another batch size, and bf16 autocast.
    variants = {
        "cpu_fp32": ["DEVICE", "cpu", "AMP", "off"],
        "fp32": ["DEVICE", dev, "AMP", "off"] + (["EVAL.BATCH_SIZE", "37"] if check.args.dry_run else []),
        "default_bf16": ["DEVICE", dev, "AMP", "bf16" if check.args.dry_run else "auto"],
    }
    res: Dict[str, Any] = {"checkpoint": ckpt, "runs": {}, "comparisons": {}}
    for name, opts in variants.items():
        out = check.work / "eval" / name
        cmd = [sys.executable, "-m", "biam.cli.evaluate", "--config-file", str(REPO / "configs" / "demo.yaml"),
               "DATA.ROOT", root, "OUTPUT_DIR", str(out), "--checkpoint", ckpt, *opts]
        r = run(check, f"eval-{name}", cmd, limit - (time.monotonic() - t0), "eval")
        if r["status"] == "ok":
            # biam-evaluate writes its own folder, named by the split and the weights file.
            m = json.loads((out / "eval" / f"test-{Path(ckpt).stem}" / "metrics.json").read_text())
            r["metrics"] = {s: {k: v for k, v in m[s].items() if isinstance(v, float)} for s in ("zsl", "gzsl")}
        res["runs"][name] = dict(r, overrides=opts)
    ref = res["runs"]["cpu_fp32"].get("metrics")
    for name in ("fp32", "default_bf16"):
        got = res["runs"][name].get("metrics")
        if ref and got:
            diff = max(abs(got[s][k] - ref[s][k]) for s in ref for k in ref[s])
            res["comparisons"][name] = {"max_metric_abs_diff": diff, "tolerance": EVAL_TOLERANCE,
                                        "passed": diff <= EVAL_TOLERANCE}
    # The criterion is float32's; bf16's difference is reported beside it.
    res["passed"] = res["comparisons"].get("fp32", {}).get("passed", False)
    res["status"] = "ok"
    return res


def bench_args(check: Check) -> List[str]:
    mode = ["--tiny", "--device", "cpu"] if check.args.dry_run else ["--device", "cuda"]
    return [sys.executable, "-m", "biam.benchmark", *mode, "--data-dir", str(check.work / "bench")]


def part_bench(check: Check, limit: float, builder: Optional[subprocess.Popen]) -> Dict[str, Any]:
    t0 = time.monotonic()
    res: Dict[str, Any] = {}
    if builder is not None:
        b = finish(builder, limit)
        res["data_build"] = dict(b, log="logs/bench.log")
    left = limit - (time.monotonic() - t0)
    out = check.out / "bench.json"
    # The benchmark's own --budget makes it end with its report inside what is left.
    inner = f"{max(5.0, left - 15):.0f}"
    r = run(check, "bench", bench_args(check) + BENCH_OPTIONS + ["--parts", "testpass,train", "--out", str(out),
                                                                 "--budget", inner, "--part-timeout", inner],
            left, "bench")
    res.update(r)
    if out.is_file():
        report = json.loads(out.read_text())
        res["table"] = report.get("table", [])
        res["failures"] = report.get("failures", [])
        res["skipped"] = report.get("skipped", [])
        goals = [row for row in res["table"] if row.get("met") is not None]
        res["goals_met"] = {row["name"]: row["met"] for row in goals}
    if check.args.dry_run:
        # --tiny's figures mean nothing: the dry run checks that every path ran and reported.
        res["passed"] = r["status"] == "ok" and bool(res.get("table")) and not res.get("failures")
    else:
        res["passed"] = r["status"] == "ok" and bool(res.get("goals_met")) and all(res["goals_met"].values())
    return res


# --------------------------------------------------------------------------------- driver
def plan(args: argparse.Namespace) -> List[Dict[str, Any]]:
    parts = [p for p in args.parts.split(",") if p]
    for p in parts:
        if p not in PARTS:
            raise SystemExit(f"gpu_check: unknown part {p!r} (choose from {', '.join(PARTS)})")
    slack = DRY_RUN_SLACK if args.dry_run else 1.0
    return [{"part": p, "limit_s": round(PART_LIMITS[p] * slack), "estimate_s": ESTIMATES[p],
             "beside": "train, eval" if p == "tests" else ""} for p in parts]


def parse_args(argv=None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m biam.benchmark.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="folder for gpu_check.json, gpu_check.log, bench.json and logs/ (created)")
    p.add_argument("--dry-run", action="store_true",
                   help="every part on the CPU at reduced size (CUDA runs become CPU runs; CUDA tests skip)")
    p.add_argument("--budget", type=float, default=None,
                   help=f"seconds for the whole check: each part gets at most what is left (default "
                        f"{DEFAULT_BUDGET:.0f}; with --dry-run {DRY_RUN_BUDGET:.0f})")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma list, in order ({', '.join(PARTS)})")
    p.add_argument("--work", default="", help="folder for the data and runs (default: a temporary one, removed)")
    p.add_argument("--plan", action="store_true", help="print the parts, limits and estimates, and run nothing")
    args = p.parse_args(argv)
    if args.budget is None:
        args.budget = DRY_RUN_BUDGET if args.dry_run else DEFAULT_BUDGET
    args.argv = argv
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    steps = plan(args)
    names = [s["part"] for s in steps]
    if args.plan:
        for s in steps:
            beside = f"  (beside {s['beside']})" if s["beside"] else ""
            print(f"{s['part']:<6} limit {s['limit_s']:>4} s  estimate on one H100/H200 {s['estimate_s']:>4} s{beside}")
        print(f"total: budget {args.budget:.0f} s, estimate {expected_whole(names)} s"
              + (" (dry run: CPU, reduced sizes)" if args.dry_run else ""))
        return 0
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device is visible to torch; use --dry-run for the CPU rehearsal",
                  file=sys.stderr)
            return 2
    check = Check(args)
    limits = {s["part"]: s["limit_s"] for s in steps}
    check.report["meta"]["part_limits_s"] = limits
    check.log(f"gpu check{' (dry run, CPU, reduced sizes)' if args.dry_run else ''}: "
              f"parts {args.parts}, budget {args.budget:.0f} s, work {check.work}")
    builder = tests_proc = None
    tests_started = 0.0
    try:
        if "bench" in names:
            # The benchmark's data (no parts: it only builds) is written while the other parts run.
            builder = start(bench_args(check) + ["--parts", ""], check.logs / "bench.log", header="bench-data")
        if "tests" in names:
            tests_started = time.monotonic()
            tests_proc = start(tests_cmd(check), check.logs / "tests.log", header="tests")
            check.report["parts"]["tests"] = {"status": "running", "log": "logs/tests.log"}
            check.log(f"== part tests started in the background (at most {min(limits['tests'], check.left()):.0f} s)")
            check.save()
        funcs = {"train": part_train, "eval": part_eval}
        for name in [n for n in names if n != "tests"]:
            if name == "bench" and tests_proc is not None:
                # The timings run alone: first the CUDA tests end (or reach their limit).
                tests_proc = finish_tests(check, tests_proc, tests_started, limits["tests"])
            limit = min(limits[name], check.left())
            if limit < 10:
                check.report["parts"][name] = {"status": "skipped: budget spent", "passed": False}
                check.log(f"{name}: skipped, budget spent")
                check.save()
                continue
            check.log(f"== part {name} (at most {limit:.0f} s)")
            t0 = time.monotonic()
            check.report["parts"][name] = {"status": "running"}
            check.save()
            try:
                if name == "bench":
                    res = part_bench(check, limit, builder)
                    builder = None
                else:
                    res = funcs[name](check, limit)
            except Exception as err:  # noqa: BLE001 - recorded in the report; the next part still runs
                res = {"status": f"error: {type(err).__name__}: {err}", "passed": False}
            res["part_seconds"] = time.monotonic() - t0
            check.report["parts"][name] = res
            check.log(f"== part {name}: {res['status']}, passed {res.get('passed')} in {res['part_seconds']:.1f} s")
            check.save()
        if tests_proc is not None:
            tests_proc = finish_tests(check, tests_proc, tests_started, limits["tests"])
    finally:
        for proc in (builder, tests_proc):
            if proc is not None and proc.poll() is None:
                stop(proc)
        if check.own_work:
            shutil.rmtree(check.work, ignore_errors=True)
    # Parts in the order asked for, whatever order they ended in.
    check.report["parts"] = {n: check.report["parts"][n] for n in names if n in check.report["parts"]}
    check.report["complete"] = True
    check.report["meta"]["seconds"] = time.monotonic() - check.t0
    check.save()
    print(summary(check.report))
    return 0 if all(p.get("passed") for p in check.report["parts"].values()) else 1


def finish_tests(check: Check, proc: subprocess.Popen, started: float, limit: float) -> None:
    """Wait for the background CUDA tests (until their limit, or the budget), record them; returns None."""
    left = min(limit - (time.monotonic() - started), check.left())
    res = finish(proc, max(1.0, left))
    res["seconds"] = time.monotonic() - started
    res["part_seconds"] = res["seconds"]
    res["log"] = "logs/tests.log"
    res = tests_result(check, res)
    check.report["parts"]["tests"] = res
    check.log(f"== part tests: {res['status']}, passed {res['passed']} in {res['seconds']:.1f} s "
              f"({res.get('tests', '?')} tests, {res.get('skipped', '?')} skipped, {len(res.get('failed', []))} failed)")
    check.save()
    return None


def summary(report: Dict[str, Any]) -> str:
    lines = [f"gpu check{' (dry run)' if report['meta']['dry_run'] else ''}: {report['meta'].get('seconds', 0):.0f} s"]
    for name, p in report["parts"].items():
        lines.append(f"  {name:<6} {p.get('status')}, passed {p.get('passed')}, {p.get('part_seconds', 0):.0f} s")
        for cname, c in p.get("comparisons", {}).items():
            lines.append("         " + cname + ": " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                                               for k, v in c.items()))
        for gname, met in p.get("goals_met", {}).items():
            lines.append(f"         goal {gname}: {'met' if met else 'NOT met'}")
        for f in p.get("failed", []):
            lines.append(f"         FAILED {f}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
