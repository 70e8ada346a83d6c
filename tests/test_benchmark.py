"""biam-benchmark: structure of its report, its loss and its data builders (no timing checks)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from biam import benchmark as bm
from biam.data.packed import PackedDataset
from biam.modeling import ranking_loss


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    """One --tiny run, in this process, with its JSON report read back."""
    root = tmp_path_factory.mktemp("bench")
    out = root / "report.json"
    torch.set_num_threads(2)
    assert bm.main(["--tiny", "--in-process", "--data-dir", str(root / "data"), "--out", str(out)]) == 0
    return json.loads(out.read_text(encoding="utf-8"))


def test_report_has_every_section(tiny_report):
    for key in ("meta", "table", "data", "training", "training_openimages", "evaluation", "memory"):
        assert key in tiny_report
    meta = tiny_report["meta"]
    assert meta["mode"] == "tiny" and meta["device"] == "cpu"
    assert meta["machine"]["cores"] >= 1 and meta["machine"]["cpu"]
    assert "--tiny" in meta["command"] and meta["date"]
    assert set(tiny_report["evaluation"]) == {"eval_nus", "eval_oi", "testpass"}
    for part in ("data", "training"):
        assert set(tiny_report[part]) == {"original", "ours"}
    for way in ("original", "ours"):
        prof = tiny_report["training"][way]["profile"]
        assert prof and all({"op", "self_ms", "share", "calls"} <= set(r) for r in prof)
    sections = {r["section"] for r in tiny_report["table"]}
    assert sections == {"data", "training", "evaluation", "memory"}


def test_table_ratios_agree_with_ours_and_original(tiny_report):
    for row in tiny_report["table"]:
        assert row["ours"] > 0 and row["original"] > 0
        # Ratios are "times faster for ours": rates divide one way, seconds and bytes the other.
        want = row["ours"] / row["original"] if row["unit"] == "img/s" else row["original"] / row["ours"]
        if row["section"] == "data":  # the median of per-round ratios, not the ratio of the medians
            want = tiny_report["data"]["ours"]["ratio_to_original"]["median"]
        assert row["ratio"] == pytest.approx(want)
        if row["goal"].startswith("ratio >= "):
            assert row["met"] == (row["ratio"] >= float(row["goal"].split()[-1]))
        elif row["goal"] == "ratio > 1":
            assert row["met"] == (row["ratio"] > 1.0)
        else:
            assert row["met"] is None
    # The table's figures are the ones of the detailed sections.
    data = tiny_report["data"]
    row = next(r for r in tiny_report["table"] if r["section"] == "data")
    assert row["ours"] == data["ours"]["images_per_s"] and row["original"] == data["original"]["images_per_s"]
    best = max(("workers0", "workers2"), key=lambda w: data["ours"][w]["ratio_to_original"]["median"])
    assert data["ours"]["best"] == best and data["ours"]["images_per_s"] == data["ours"][best]["images_per_s"]
    assert data["ours"]["ratio_to_original"] == data["ours"][best]["ratio_to_original"]
    ev = tiny_report["evaluation"]["eval_oi"]["original"]
    assert ev["extrapolated"] and ev["loop_columns"] < ev["columns"]
    assert ev["seconds"] == pytest.approx(ev["ap_loop_seconds"] * ev["columns"] / ev["loop_columns"]
                                          + ev["f1_loop_seconds"] * ev["rows"] / ev["f1_rows"])


def test_tiny_mode_runs_every_path_of_the_cuda_mode(tiny_report):
    """The whole epoch, the largest-batch search and the extrapolated original test pass are
    the CUDA mode's own code; --tiny runs them on the CPU."""
    ours, orig = tiny_report["training"]["ours"], tiny_report["training"]["original"]
    assert ours["epoch_images"] > 0 and ours["epoch_seconds"] > 0
    assert ours["epoch_images_per_s"] == pytest.approx(ours["epoch_images"] / ours["epoch_seconds"])
    assert orig["epoch_seconds_extrapolated"] == pytest.approx(48 / orig["images_per_s"])
    big = ours["largest_batch"]
    assert big["batch"] == 8 and [t["batch"] for t in big["tried"]] == [8] and "limit" in big["stopped"]
    assert big["best_batch"] == 8 and big["best_images_per_s"] == big["images_per_s"]
    # The same trainer's next epoch with the images held on the device (the CPU here).
    assert ours["epoch_where"] == "disk" and ours["resident_epoch_images"] == ours["epoch_images"]
    assert ours["resident_epoch_seconds"] > 0 and ours["resident_load_seconds"] > 0
    assert ours["resident_bytes"] == 48 * (512 * 196 * 2 + 4096 * 2 + bm.NUM_SEEN + bm.NUM_UNSEEN)  # float16 + int8
    names = [r["name"] for r in tiny_report["table"] if r["section"] == "training"]
    assert names == ["training steps, batch 4", "whole epoch (48 images)",
                     f"whole epoch, images held on the cpu ({ours['epoch_images']:,})", "largest batch that fits (8)",
                     "steps, Open Images shapes (7186 labels)"]
    resident = next(r for r in tiny_report["table"] if r["name"].startswith("whole epoch, images held"))
    assert resident["ours"] == ours["resident_epoch_seconds"] and resident["met"] is None  # no goal on a CPU
    tp = tiny_report["evaluation"]["testpass"]["original"]
    assert tp["extrapolated"] and tp["measured_images"] == 16 and tp["images"] == 24
    assert tiny_report["meta"]["complete"] and tiny_report["failures"] == []


def test_open_images_variant_trains_on_its_own_shapes(tiny_report, tmp_path):
    oi = tiny_report["training_openimages"]
    assert oi["ours"]["labels"] == oi["original"]["labels"] == bm.OI_SEEN
    assert oi["ours"]["images"] > 0 and oi["original"]["images"] > 0
    # Both layouts of the variant hold the released Open Images keys and a packed openimages split.
    ids = ["0000a", "0000b"]
    bm.write_released_openimages(tmp_path / "oi.h5", ids, seed=0)
    import h5py

    with h5py.File(tmp_path / "oi.h5", "r") as f:
        assert sorted(f) == ["0000a-features", "0000a-seenlabels", "0000b-features", "0000b-seenlabels"]
        y = f["0000a-seenlabels"][()]
        assert y.shape == (bm.OI_SEEN,) and (y == 1).any() and (y == 0).mean() > 0.9  # sparse, as annotated
    bm.write_packed(tmp_path / "packed", "train", 8, seed=0, openimages=True)
    ds = PackedDataset(tmp_path / "packed", "train")
    assert ds.manifest["dataset"] == "openimages" and ds.num_labels == bm.OI_SEEN + bm.OI_UNSEEN


def test_data_figure_is_a_median_of_per_round_ratios(tiny_report):
    """Both ways of the data part are measured in one process, window by window; each way's
    rate is its median window, the ratio the median of the rounds' ratios, and the spread of
    those ratios is in the report; an epoch start (worker start-up) is never inside a timed window."""
    data = tiny_report["data"]
    windows = bm.SIZES["tiny"].data_windows
    for res in (data["original"], data["ours"]["workers0"], data["ours"]["workers2"]):
        rates = res["window_rates"]
        assert len(rates) == windows and all(r > 0 for r in rates)
        assert res["images_per_s"] == pytest.approx(float(np.median(rates)))
        assert res["spread"] == pytest.approx(max(rates) / min(rates))
        assert res["images"] >= len(rates) * (bm.SIZES["tiny"].data_images // len(rates))
    for w in ("workers0", "workers2"):
        got = data["ours"][w]["ratio_to_original"]
        want = bm.pair_ratios(data["ours"][w]["window_rates"], data["original"]["window_rates"])
        # pytest.approx takes flat values only (pytest 9 refuses a nested dict): key by key.
        assert sorted(got) == sorted(want)
        for key, value in want.items():
            assert got[key] == pytest.approx(value), key
        assert len(got["pair_ratios"]) == windows
        assert got["min"] <= got["q1"] <= got["median"] <= got["q3"] <= got["max"]
    assert data["ours"]["torch_threads"] == 1
    row = next(r for r in tiny_report["table"] if r["section"] == "data")
    assert row["ratio"] == data["ours"]["ratio_to_original"]["median"]
    assert f"median of {windows} per-round ratios" in row["note"] and "quartiles" in row["note"]


def test_pair_ratios_on_given_rates():
    # Round 4's original window was slowed by a burst of load (a 2x ratio): the median ignores it.
    ours, original = [100.0, 200.0, 330.0, 90.0, 50.0], [10.0, 20.0, 30.0, 10.0, 25.0]
    r = bm.pair_ratios(ours, original)
    assert r["pair_ratios"] == pytest.approx([10, 10, 11, 9, 2])
    assert r["median"] == pytest.approx(10) and r["min"] == pytest.approx(2) and r["max"] == pytest.approx(11)
    assert r["q1"] == pytest.approx(9) and r["q3"] == pytest.approx(10)
    assert r["spread"] == pytest.approx(5.5) and r["iqr_relative"] == pytest.approx(0.1)
    # The ratio of the two medians (100 / 20 = 5) is what load drift between rounds gives instead.
    assert float(np.median(ours)) / float(np.median(original)) == pytest.approx(5)
    # A load change that slows both ways of a round alike leaves the figure where it was.
    slowed = bm.pair_ratios([x / 3 for x in ours[:2]] + ours[2:], [x / 3 for x in original[:2]] + original[2:])
    assert slowed["median"] == pytest.approx(r["median"]) and slowed["pair_ratios"] == pytest.approx(r["pair_ratios"])
    with pytest.raises(ValueError, match="as many windows"):
        bm.pair_ratios([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="positive"):
        bm.pair_ratios([1.0, 0.0], [1.0, 1.0])


def test_steady_rates_warm_up_untimed_reads_and_gc():
    """Per source: ``warmup_batches`` untimed first, then per round 2 + ``prefetched`` untimed and
    the window's batches; the garbage collector is back on afterwards."""
    import gc
    from dataclasses import replace

    sizes = replace(bm.SIZES["tiny"], data_windows=4, data_images=12, data_window_s=0.0, data_warmup_s=0.0)
    served = {"a": 0, "b": 0}

    def counting(name):
        def make():
            while True:
                served[name] += 1
                yield 1
        return make

    res = bm.steady_rates({"a": counting("a"), "b": counting("b")}, sizes, batch=1, prefetched={"b": 4},
                          settle_s={"b": 0.001}, warmup_batches={"a": 7})
    assert served["a"] == 7 + 4 * (2 + 3) and served["b"] == 2 + 4 * (2 + 4 + 3)
    assert res["a"]["images"] == res["b"]["images"] == 4 * 3
    assert gc.isenabled()


def test_windows_that_meet_an_epoch_start_are_dropped_and_remeasured():
    from dataclasses import replace

    sizes = replace(bm.SIZES["tiny"], data_windows=4, data_images=8, data_window_s=0.0, data_warmup_s=0.0)

    def epochs(length):
        def make():
            while True:
                yield None  # where a new epoch's start-up would be
                for _ in range(length):
                    yield 1
        return make

    res = bm.steady_rates({"short": epochs(5), "endless": lambda: iter(lambda: 1, None)}, sizes, batch=1)
    assert len(res["short"]["window_rates"]) == len(res["endless"]["window_rates"]) == 4
    assert res["short"]["windows_dropped_at_epoch_start"] > 0
    assert res["endless"]["windows_dropped_at_epoch_start"] == 0
    assert res["short"]["images"] == res["endless"]["images"] == 4 * 2
    # An epoch too short for even one window is an error, not an endless loop.
    with pytest.raises(RuntimeError, match="epoch is too short"):
        bm.steady_rates({"tiny": epochs(3)}, sizes, batch=1)


def test_a_failing_part_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    def broken(ctx, way):
        raise ValueError("injected fault")

    monkeypatch.setitem(bm.PART_FUNCS, "eval_nus", broken)
    out = tmp_path / "r.json"
    code = bm.main(["--tiny", "--in-process", "--parts", "eval_nus,eval_oi", "--data-dir", str(tmp_path / "d"),
                    "--out", str(out)])
    report = json.loads(out.read_text(encoding="utf-8"))
    assert code == 1
    assert [(f["part"], f["way"]) for f in report["failures"]] == [("eval_nus", "original"), ("eval_nus", "ours")]
    assert "injected fault" in report["failures"][0]["error"]
    assert report["evaluation"]["eval_oi"]["ours"]["seconds"] > 0  # the next part still ran
    assert [r["name"] for r in report["table"] if r["section"] == "evaluation"] == [
        "Open Images metrics (AP 7586 + F1@10,20)"]
    assert report["meta"]["complete"]


def test_report_is_written_after_every_part_and_a_slow_part_times_out(tmp_path):
    updates = []
    args = bm.parse_args(["--tiny", "--in-process", "--parts", "eval_oi", "--data-dir", str(tmp_path / "d")])
    final = bm.run_benchmark(args, log=lambda m: None, on_update=updates.append)
    assert [u["meta"]["complete"] for u in updates] == [False, False] and final["meta"]["complete"]
    assert updates[0]["table"] == [] and set(updates[0]["evaluation"]["eval_oi"]) == {"original"}
    assert [r["name"] for r in updates[1]["table"]][0].startswith("Open Images metrics")
    # A real subprocess stopped by --part-timeout: recorded as a failure, the run still ends.
    args = bm.parse_args(["--tiny", "--parts", "eval_nus", "--part-timeout", "0.2", "--data-dir", str(tmp_path / "d")])
    report = bm.run_benchmark(args, log=lambda m: None)
    assert len(report["failures"]) == 2 and all("stopped after 0.2 s" in f["error"] for f in report["failures"])
    # A spent --budget starts nothing more: parts are listed as skipped, and the exit code says so.
    code = bm.main(["--tiny", "--parts", "eval_nus,eval_oi", "--budget", "1", "--data-dir", str(tmp_path / "d"),
                    "--out", str(tmp_path / "b.json")])
    report = json.loads((tmp_path / "b.json").read_text(encoding="utf-8"))
    assert code == 1 and report["skipped"] == ["eval_nus (original)", "eval_nus (ours)", "eval_oi (original)",
                                               "eval_oi (ours)"]
    assert report["evaluation"] == {} and report["meta"]["complete"]


def test_a_missed_goal_says_by_how_much():
    parts = {"testpass": {"ours": {"images": 100, "seconds": 8.0, "max_memory_allocated": 2**20},
                          "original": {"seconds": 400.0, "extrapolated": False, "max_memory_allocated": 2**21}}}
    row = bm.goal_rows(parts, "cuda")[0]
    assert row["goal"] == "ours < 5 s" and row["met"] is False and row["short_by"] == pytest.approx(8 / 5)
    assert row["ratio"] == pytest.approx(50.0)
    assert "NO (1.60x short)" in bm.format_table([row])
    parts["testpass"]["ours"]["seconds"] = 4.0
    row = bm.goal_rows(parts, "cuda")[0]
    assert row["met"] is True and row["short_by"] is None


def test_published_loss_equals_ours():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(6, 40, generator=gen, dtype=torch.float64) * 2
    labels = torch.where(torch.rand(6, 40, generator=gen) < 0.2, 1, -1).to(torch.int8)
    labels[:, 5] = 0  # a column unknown everywhere
    labels[3] = -1  # an image without a positive is dropped
    labels[1, :3] = 0
    a = bm.published_ranking_loss(scores, labels)
    b = ranking_loss(scores, labels, reduction="mean_positive")  # the benchmark drops positive-less images
    assert float(a) == pytest.approx(float(b), rel=1e-6)


def test_repeated_shard_split_is_a_valid_packed_dataset(tmp_path):
    bm.write_packed(tmp_path, "train", 0, seed=0, shard_size=8, repeat_to=21)
    ds = PackedDataset(tmp_path, "train")
    assert len(ds) == 21 and len(ds.shards) == 3
    part = ds.read_slice(6, 18, fields=["regions", "labels"])
    assert part["regions"].shape == (12, 512, 196)
    # Shards 0 and 1 are the same file (hard link), so image 2 and image 10 are equal.
    a = ds.read_slice(2, 3, fields=["regions"])["regions"]
    b = ds.read_slice(10, 11, fields=["regions"])["regions"]
    assert np.array_equal(a, b)


def test_released_batches_read_every_name(tmp_path):
    names = [f"img {i}.jpg" for i in range(10)]
    bm.write_released(tmp_path / "f.h5", names, bm.NUM_SEEN, seed=0)
    src = bm.ReleasedBatches(tmp_path / "f.h5", names, batch=4, shuffle=False)
    it = iter(src)
    shapes = [next(it) for _ in range(3)]
    src.close()
    assert [r.shape[0] for r, _ in shapes] == [4, 4, 2]
    assert shapes[0][0].dtype == torch.float32 and shapes[0][1].shape == (4, bm.NUM_SEEN)


def test_goals_table_in_the_docs_equals_the_code():
    """docs/benchmarks.md ("Goals") is the one table of goals; report.GOALS must say the same."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    section = text.split("\n## Goals\n", 1)[1].split("\n## ", 1)[0]
    documented = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            documented[cells[0].split("`")[1]] = (cells[1], cells[2])
    assert documented == {key: (bm.goal_text(g["cpu"]), bm.goal_text(g["cuda"])) for key, g in bm.GOALS.items()}


# ------------------------------------------------------------------ the prepared GPU check
ROOT = Path(__file__).resolve().parents[1]


def run_sh(script, *args, env=None, timeout=600):
    import os
    import subprocess
    import sys

    full_env = dict(os.environ, PYTHON=sys.executable, **(env or {}))
    return subprocess.run(["sh", str(ROOT / ".ci" / script), *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=ROOT)


def test_gpu_check_plan_fits_one_device_call():
    """The prepared GPU check's plan: its parts in order, each with a time limit, the whole
    budget 5 minutes (a rerun fits in the 15 minutes of device time); a dry run gets longer
    limits; an unknown part is refused."""
    import subprocess
    import sys

    from biam.benchmark import gpu_check as gc

    done = subprocess.run([sys.executable, "-m", "biam.benchmark.gpu_check", "unused", "--plan"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [l.split()[0] for l in lines[:4]] == ["tests", "train", "eval", "bench"]
    assert "budget 300 s" in lines[-1] and "beside train, eval" in lines[0]
    args = gc.parse_args(["out"])
    assert args.budget <= 5 * 60 and not args.dry_run
    assert gc.expected_whole(list(gc.PARTS)) < args.budget
    dry = gc.parse_args(["out", "--dry-run"])
    assert [s["limit_s"] for s in gc.plan(dry)] == [round(gc.PART_LIMITS[p] * gc.DRY_RUN_SLACK) for p in gc.PARTS]
    with pytest.raises(SystemExit, match="unknown part 'gpu'"):
        gc.plan(gc.parse_args(["out", "--parts", "tests,gpu"]))
    assert not (ROOT / "unused").exists()  # --plan runs nothing


def test_gpu_check_comparisons_apply_their_tolerances():
    from biam.benchmark import gpu_check as gc

    ref = {"losses": [2.0, 1.0], "metrics": {"zsl": {"mAP": 0.5}, "gzsl": {"mAP": 0.2}}}
    close = {"losses": [2.01, 1.004], "metrics": {"zsl": {"mAP": 0.505}, "gzsl": {"mAP": 0.2}}}
    c = gc.compare_runs(close, ref, *gc.TOLERANCES["fp32"])
    assert c["passed"] and c["max_loss_rel_diff"] == pytest.approx(0.005) and c["max_metric_abs_diff"] == pytest.approx(0.005)
    far = {"losses": [2.0, 1.2], "metrics": ref["metrics"]}
    assert not gc.compare_runs(far, ref, *gc.TOLERANCES["bf16_compile"])["passed"]  # 20% off in epoch 2
    assert not gc.compare_runs({"losses": [2.0], "metrics": ref["metrics"]}, ref, 1.0, 1.0)["passed"]


def test_gpu_check_keeps_the_carried_packages_on_the_path_of_its_commands(monkeypatch):
    """On the GPU machine yacs comes from the wheels' folder on PYTHONPATH: every command the
    check starts keeps it there, after the working tree."""
    from biam.benchmark import gpu_check as gc

    monkeypatch.setenv("PYTHONPATH", "/tmp/site-x")
    assert gc.child_env()["PYTHONPATH"].split(":") == [str(ROOT), "/tmp/site-x"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the run without a GPU")
def test_gpu_check_refuses_without_gpu_and_its_dry_run_reports_each_part(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "biam.benchmark.gpu_check", str(tmp_path / "real")],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and "no CUDA device" in done.stderr and "--dry-run" in done.stderr
    assert not (tmp_path / "real" / "gpu_check.json").exists()
    # The dry run's cheapest part (the CUDA tests, which skip cleanly here) through the whole
    # driver and the device command, its wheels replaced by none (they install nothing here).
    out = tmp_path / "dry"
    done = subprocess.run([sys.executable, "-m", "biam.benchmark.gpu_check", str(out), "--dry-run", "--parts", "tests"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["complete"] and report["meta"]["dry_run"] and report["meta"]["machine"]["yacs"]
    tests = report["parts"]["tests"]
    assert tests["status"] == "ok" and tests["passed"] and tests["failures"] == tests["errors"] == 0
    assert tests["tests"] == tests["skipped"] >= 9  # every CUDA-marked test skipped, none failed
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["gpu_check.json", "gpu_check.log", "logs/tests.log"]  # at most 7 come back from the device


def test_device_command_is_documented_and_fits_the_device_tool():
    """docs/benchmarks.md gives the device call: a command under 2000 characters, the .whl
    folder carried (and ignored by git), a time limit that covers the check's budget and leaves
    time for a rerun within 15 minutes of device time."""
    import re

    from biam.benchmark import gpu_check as gc

    text = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    call = json.loads(re.search(r"```json\n(\{\"command\".*?\})\n```", text, re.S).group(1))
    assert call["command"] == "sh .ci/device_check.sh" and len(call["command"]) < 2000
    assert call["carry"] == [".whl"] and "/.whl/" in (ROOT / ".gitignore").read_text().splitlines()
    assert gc.DEFAULT_BUDGET + 20 <= call["timeout_s"] <= 6 * 60
    script = (ROOT / ".ci" / "device_check.sh").read_text()
    assert "--no-index --no-deps --no-compile --no-cache-dir --upgrade --target" in script
    assert "python3 -m biam.benchmark.gpu_check" in script


def test_device_command_says_what_it_needs(tmp_path):
    done = run_sh("device_check.sh", env={"OUT": ""})
    assert done.returncode != 0 and "set OUT" in done.stderr
    # Without the carried wheels it stops before the check, saying why, in its log under OUT.
    (tmp_path / "wheels").mkdir()
    done = run_sh("device_check.sh", env={"OUT": str(tmp_path / "out"), "DEVICE_SITE": str(tmp_path / "site"),
                                          "DEVICE_WHEELS": str(tmp_path / "wheels")}, timeout=120)
    assert done.returncode == 3 and "did not install" in done.stderr
    assert "did not install" in (tmp_path / "out" / "gpu_check.log").read_text()
    assert not (tmp_path / "site").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_gpu_benchmark_script_says_when_there_is_no_gpu(tmp_path):
    done = run_sh("benchmark_gpu.sh", str(tmp_path / "bench"))
    assert done.returncode != 0
    assert "no CUDA device" in done.stderr and "python -m biam.benchmark" in done.stderr
    assert not (tmp_path / "bench").exists()  # nothing half-made


def test_doc_option_writes_the_table_between_its_markers_only(tmp_path):
    # A real (tiny) run of one part with --doc: the markers' content is replaced by how the
    # figures were made and the table, every other byte of the page is kept.
    page = tmp_path / "page.md"
    before, after = "# Title\n\nkept text\n\n", "\n\nkept after\n"
    page.write_text(before + "<!-- benchmark-cpu:begin -->\nold figures\n<!-- benchmark-cpu:end -->" + after)
    assert bm.main(["--tiny", "--parts", "eval_nus", "--doc", str(page)]) == 0
    text = page.read_text()
    assert text.startswith(before + "<!-- benchmark-cpu:begin -->\nMade by `python -m biam.benchmark --tiny --parts eval_nus")
    assert text.endswith("<!-- benchmark-cpu:end -->" + after)
    assert "old figures" not in text and "at commit " in text
    assert "| evaluation | NUS-WIDE metrics" in text and "load average" in text
    # A page without the markers is refused before anything runs, and left as it was.
    bare = tmp_path / "bare.md"
    bare.write_text("no markers\n")
    assert bm.main(["--tiny", "--parts", "eval_nus", "--doc", str(bare)]) == 2
    assert bare.read_text() == "no markers\n"
    assert bm.main(["--tiny", "--doc", str(tmp_path / "missing.md")]) == 2
