"""OUTPUT_DIR belongs to one run: refusals, --overwrite, the folder lock, resume checks, clean errors.

Real runs on a tiny packed dataset, real second processes holding the locks; every check compares
files byte for byte before and after.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from biam.config import load_cfg
from biam.engine import checkpoint as ckpt
from biam.engine.run_record import RunMismatchError
from biam.cli import evaluate as evaluate_cli
from biam.cli.train import main
from biam.engine.trainer import Trainer

from helpers import TINY_MODEL_OPTS

TESTS = Path(__file__).resolve().parents[1]

SHORT = ["SOLVER.MAX_EPOCHS", "2", "SOLVER.FINETUNE_EPOCHS", "0", "EVAL.TEST_AFTER_FINETUNE", "False"]


def args_for(data_root, out, *extra):
    return [*TINY_MODEL_OPTS, "DATA.ROOT", str(data_root), "OUTPUT_DIR", str(out), *extra]


def snapshot(folder):
    """Every file under ``folder`` (bytes), but the lock file, whose holder line each try rewrites."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*"))
            if p.is_file() and p.name != ".biam.lock"}


def _child_env():
    """This environment with the checkout first on PYTHONPATH (what was there stays after it: on
    a machine whose yacs comes from a folder of carried wheels, say)."""
    path = [str(TESTS.parent), os.environ.get("PYTHONPATH")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in path if p))


def _wait_for(cond, what, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _hold_lock(folder):
    """A real second process holding FolderLock on ``folder`` until killed."""
    code = ("import sys, time; from biam.utils.ownership import FolderLock; "
            "FolderLock(sys.argv[1], 'holder-for-test').acquire(); print('locked', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True,
                            env=_child_env())
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_new_run_refuses_an_earlier_run_and_overwrite_replaces_only_its_own_names(tiny_packed, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(args_for(tiny_packed, out, *SHORT, "KEEP_CHECKPOINTS", "1")) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["tool"] == "biam-train" and record["checkpoints"] == ["checkpoint_epoch_0002.pth"]
    assert {"run_id", "started", "command", "config", "config_sha256"} <= set(record)
    before = snapshot(out)
    assert {"checkpoints/checkpoint_epoch_0002.pth", "model_best.pth", "metrics.json", "metrics.jsonl",
            "config.yaml", "log.txt"} <= set(before)

    # A new run (another seed) in the same folder is refused; nothing of the earlier run changes.
    capsys.readouterr()
    assert main(args_for(tiny_packed, out, *SHORT, "SEED", "7")) == 1
    err = capsys.readouterr().err
    assert "holds the run started" in err and "--resume" in err and "--overwrite" in err and "another OUTPUT_DIR" in err
    assert snapshot(out) == before

    # biam-evaluate on the run's folder writes its own subfolder, never the run's results or config.
    assert evaluate_cli.main([*TINY_MODEL_OPTS, "DATA.ROOT", str(tiny_packed), "OUTPUT_DIR", str(out),
                              "--checkpoint", str(out / "model_best.pth")]) == 0
    after_eval = snapshot(out)
    assert {k: v for k, v in after_eval.items() if not k.startswith("eval/")} == before
    assert {"eval/test-model_best/metrics.json", "eval/test-model_best/config.yaml",
            "eval/test-model_best/evaluation.json"} <= set(after_eval)

    # --overwrite: a one-epoch run replaces the names it writes; the earlier run's epoch-2
    # checkpoint is not its own, so it is neither pruned nor resumed.
    assert main(args_for(tiny_packed, out, *SHORT, "SEED", "7", "SOLVER.MAX_EPOCHS", "1", "SOLVER.WARMUP_EPOCHS", "0",
                         "EVAL.START_EPOCH", "1", "KEEP_CHECKPOINTS", "1", "--overwrite")) == 0
    assert (out / "checkpoints" / "checkpoint_epoch_0002.pth").read_bytes() == before["checkpoints/checkpoint_epoch_0002.pth"]
    new_record = json.loads((out / "run.json").read_text())
    assert new_record["run_id"] != record["run_id"] and new_record["checkpoints"] == ["checkpoint_epoch_0001.pth"]
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    assert after_eval["eval/test-model_best/metrics.json"] == (out / "eval/test-model_best/metrics.json").read_bytes()
    trainer = Trainer(load_cfg(None, args_for(
        tiny_packed, out, *SHORT, "SEED", "7", "SOLVER.MAX_EPOCHS", "1", "SOLVER.WARMUP_EPOCHS", "0",
        "EVAL.START_EPOCH", "1", "KEEP_CHECKPOINTS", "1")), resume="last")
    assert trainer.start_epoch == 2  # from its own epoch 1, not the earlier run's epoch 2
    trainer.close()


def test_new_run_refuses_a_folder_with_other_files_unless_overwrite(tiny_packed, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    (out / "metrics.json").write_text('{"mine": 1}')
    assert main(args_for(tiny_packed, out, *SHORT, "SOLVER.MAX_EPOCHS", "1", "SOLVER.WARMUP_EPOCHS", "0")) == 1
    err = capsys.readouterr().err
    assert "metrics.json" in err and "notes.txt" in err and "--overwrite" in err
    assert sorted(os.listdir(out)) == ["metrics.json", "notes.txt"]  # untouched, no lock left
    assert main(args_for(tiny_packed, out, *SHORT, "SOLVER.MAX_EPOCHS", "1", "SOLVER.WARMUP_EPOCHS", "0",
                         "--overwrite")) == 0
    assert (out / "notes.txt").read_text() == "my notes"  # not a training file: never touched


def test_output_dir_that_is_a_file_is_named(tiny_packed, tmp_path, capsys):
    target = tmp_path / "a_file"
    target.write_text("x")
    assert main(args_for(tiny_packed, target, *SHORT)) == 1
    err = capsys.readouterr().err
    assert str(target) in err and "is a file" in err and "Traceback" not in err
    assert target.read_text() == "x"


def test_second_training_and_evaluation_stop_at_once_naming_the_holder(tiny_packed, tmp_path, capsys):
    out = tmp_path / "busy"
    first = subprocess.Popen([sys.executable, "-m", "biam.cli.train", *args_for(tiny_packed, out, "SOLVER.MAX_EPOCHS", "200")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=_child_env())
    try:
        _wait_for(lambda: (out / "checkpoints" / "checkpoint_epoch_0001.pth").exists(), "the first run's epoch 1")
        before = json.loads((out / "run.json").read_text())
        started = time.time()
        assert main(args_for(tiny_packed, out, "--resume")) == 4
        assert time.time() - started < 30  # stops at once instead of waiting or training
        err = capsys.readouterr().err
        assert f"PID {first.pid}" in err and "biam-train" in err and "started" in err
        assert json.loads((out / "run.json").read_text())["run_id"] == before["run_id"]
    finally:
        first.kill()
        first.wait()
    # The killed holder's lock is released by the kernel: resuming now works.
    trainer = Trainer(load_cfg(None, args_for(tiny_packed, out, "SOLVER.MAX_EPOCHS", "200")),
                      resume="last")
    assert trainer.start_epoch >= 2
    trainer.close()

    weights = tmp_path / "w.pth"
    torch.save(ckpt.load_checkpoint(ckpt.latest_owned(str(out / "checkpoints"), trainer.record["checkpoints"]))["model"],
               weights)
    eval_args = [*TINY_MODEL_OPTS, "DATA.ROOT", str(tiny_packed), "OUTPUT_DIR", str(tmp_path / "ev"),
                 "--checkpoint", str(weights)]
    holder = _hold_lock(tmp_path / "ev" / "eval" / "test-w")
    try:
        assert evaluate_cli.main(eval_args) == 4
        assert f"PID {holder.pid}" in capsys.readouterr().err
        assert not (tmp_path / "ev" / "eval" / "test-w" / "metrics.json").exists()
    finally:
        holder.kill()
        holder.wait()
    assert evaluate_cli.main(eval_args) == 0


def _short_run(tiny_packed, out, *extra):
    cfg_args = args_for(tiny_packed, out, "SOLVER.MAX_EPOCHS", "3", "SOLVER.FINETUNE_EPOCHS", "0",
                        "EVAL.TEST_AFTER_FINETUNE", "False", *extra)
    assert main(cfg_args) == 0
    return cfg_args


def test_resume_refuses_result_changing_keys_and_logs_the_others(tiny_packed, tmp_path):

    out = tmp_path / "run"
    base = _short_run(tiny_packed, out)
    os.remove(out / "checkpoints" / "checkpoint_epoch_0003.pth")  # as if killed after epoch 2
    before = snapshot(out)
    with pytest.raises(RunMismatchError) as err:
        Trainer(load_cfg(None, base + ["SOLVER.BASE_LR", "0.002", "SEED", "7"]), resume="last")
    msg = str(err.value)
    assert "SOLVER.BASE_LR: saved 0.001, given 0.002" in msg and "SEED: saved 3483, given 7" in msg
    # More epochs change the cosine curve the first epochs already ran on: refused, saying why.
    with pytest.raises(RunMismatchError, match=r"SOLVER.MAX_EPOCHS: saved 3, given 6 \(the cosine schedule"):
        Trainer(load_cfg(None, base + ["SOLVER.MAX_EPOCHS", "6"]), resume="last")
    assert snapshot(out) == before  # refusals change nothing
    # Keys that do not change the result may change; each change is logged and recorded.
    trainer = Trainer(load_cfg(None, base + ["EVAL.BATCH_SIZE", "16", "SOLVER.FINETUNE_EPOCHS", "1",
                                             "KEEP_CHECKPOINTS", "5"]), resume="last")
    assert trainer.start_epoch == 3
    trainer.run()
    log = (out / "log.txt").read_text()
    assert "--resume: changed EVAL.BATCH_SIZE: saved 32, given 16" in log
    assert "--resume: changed SOLVER.FINETUNE_EPOCHS: saved 0, given 1" in log
    # Epoch 3 ran twice (before the "kill" and after the resume) but is listed once.
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    resumes = json.loads((out / "run.json").read_text())["resumes"]
    assert len(resumes) == 1 and resumes[0]["from_epoch"] == 2 and len(resumes[0]["changed"]) == 3


def test_resume_refuses_a_checkpoint_of_another_run_and_names_mistyped_fields(tiny_packed, tmp_path, capsys):

    a, b = tmp_path / "a", tmp_path / "b"
    args_a = _short_run(tiny_packed, a)
    args_b = _short_run(tiny_packed, b)
    foreign = ckpt.latest_checkpoint(str(a / "checkpoints"))
    with pytest.raises(RunMismatchError, match="belongs to run"):
        Trainer(load_cfg(None, args_b), resume=foreign)
    # A checkpoint whose epoch is a string and best a list: the file and the field are named.
    state = ckpt.load_checkpoint(foreign)
    for field, value, expect in (("epoch", "3", "field 'epoch' should be an int"),
                                 ("best", [0.5], "field 'best' should be a dict")):
        odd = dict(state, **{field: value})
        path = a / "checkpoints" / f"odd_{field}.pth"
        torch.save(odd, path)
        capsys.readouterr()
        assert main(args_a + ["--resume", str(path)]) == 1
        err = capsys.readouterr().err
        assert str(path) in err and expect in err and "Traceback" not in err


def test_training_split_without_a_positive_seen_label_fails_before_training(tmp_path, capsys):
    import h5py

    from helpers import make_tiny_packed

    root = make_tiny_packed(tmp_path / "packed", num_train=32, num_test=16, shard_size=20)
    for shard in sorted(root.glob("train-*.h5")):
        with h5py.File(shard, "r+") as f:
            labels = f["labels"][:]
            labels[:, :12] = -1  # no image has a seen label
            f["labels"][...] = labels
    out = tmp_path / "run"
    assert main(args_for(root, out, *SHORT)) == 1
    err = capsys.readouterr().err
    assert "split 'train'" in err and "none of the 26 training images" in err and "12 seen labels" in err
    assert not (out / "metrics.jsonl").exists() or (out / "metrics.jsonl").read_text() == ""


def test_hostile_or_wrong_scene_head_weights_are_named(tmp_path, capsys):
    from helpers import make_tiny_packed

    root = make_tiny_packed(tmp_path / "packed", num_train=24, num_test=16, shard_size=64, scene=False)

    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())

    torch.save({"classifier.0.weight": Evil()}, tmp_path / "evil.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    for name, expect in (("evil.pth", "objects other than tensors"), ("list.pth", "expected a state dict")):
        assert main(args_for(root, tmp_path / f"run_{name}", *SHORT, "MODEL.SCENE_HEAD_WEIGHTS", str(tmp_path / name))) == 1
        err = capsys.readouterr().err
        assert f"MODEL.SCENE_HEAD_WEIGHTS = {tmp_path / name}" in err and expect in err
        assert "weights_only" not in err and "Traceback" not in err


# ------------------------------------------------------------- links, hostile records, failed reruns
def _eval(data_root, out, weights, *extra):
    return evaluate_cli.main([*TINY_MODEL_OPTS, "DATA.ROOT", str(data_root), "OUTPUT_DIR", str(out),
                              "--checkpoint", str(weights), *extra])


@pytest.fixture(scope="module")
def one_run(tiny_packed, tmp_path_factory):
    out = tmp_path_factory.mktemp("links") / "run"
    assert main(args_for(tiny_packed, out, *SHORT, "SOLVER.MAX_EPOCHS", "1", "SOLVER.WARMUP_EPOCHS", "0",
                         "EVAL.START_EPOCH", "1")) == 0
    return out


def test_links_at_the_lock_record_and_subfolders_are_refused_by_train(tiny_packed, one_run, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's file")
    for name in (".biam.lock", "config.yaml"):
        out = tmp_path / f"new-{name}"
        out.mkdir()
        (out / name).symlink_to(victim)
        assert main(args_for(tiny_packed, out, *SHORT)) == 1
        assert "Traceback" not in capsys.readouterr().err
    # --resume of a copied run whose checkpoints/ and log.txt are links: refused, nothing written there.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("checkpoints", "log.txt"):
        copy = tmp_path / f"copy-{name}"
        copy.mkdir()
        for entry in one_run.iterdir():
            if entry.is_file() and entry.name != name:
                (copy / entry.name).write_bytes(entry.read_bytes())
        (copy / name).symlink_to(elsewhere if name == "checkpoints" else victim)
        assert main(args_for(tiny_packed, copy, *SHORT, "--resume")) == 1
        err = capsys.readouterr().err
        assert f"{copy / name}: a symbolic link" in err and "Traceback" not in err
    assert victim.read_text() == "the user's file" and os.listdir(elsewhere) == []


@pytest.mark.parametrize("name", ["../../victim.pth", "/tmp/victim.pth", "model_best.pth"])
def test_hostile_run_record_is_refused_before_anything_is_deleted(tiny_packed, one_run, tmp_path, capsys, name):
    copy = tmp_path / "copy"
    (copy / "checkpoints").mkdir(parents=True)
    for entry in one_run.iterdir():
        if entry.is_file():
            (copy / entry.name).write_bytes(entry.read_bytes())
    record = json.loads((copy / "run.json").read_text())
    record["checkpoints"] = [name]
    (copy / "run.json").write_text(json.dumps(record))
    before = snapshot(copy)
    assert main(args_for(tiny_packed, copy, *SHORT, "--resume")) == 1
    err = capsys.readouterr().err
    assert "field 'checkpoints'" in err and repr(name) in err
    assert snapshot(copy) == before


def test_failed_evaluation_leaves_the_earlier_one_and_each_checkpoint_content_has_its_folder(
        tiny_packed, one_run, tmp_path, capsys):
    out = tmp_path / "ev"
    weights = one_run / "model_best.pth"
    assert _eval(tiny_packed, out, weights) == 0
    folder = out / "eval" / "test-model_best"
    before = snapshot(folder)
    assert json.loads(before["evaluation.json"])["weights_sha256"]
    # A mistyped DATA.ROOT stops before anything is written.
    assert _eval(tmp_path / "no-such-data", out, weights) == 1
    assert snapshot(folder) == before and sorted(os.listdir(out / "eval")) == ["test-model_best"]
    # The same content again: the same folder, replaced as a whole (the record names this run).
    assert _eval(tiny_packed, out, weights) == 0
    assert sorted(os.listdir(out / "eval")) == ["test-model_best"]
    assert json.loads(snapshot(folder)["metrics.json"]) == json.loads(before["metrics.json"])
    # Another file of the same name: its own folder; the first evaluation is untouched.
    other = tmp_path / "other" / "model_best.pth"
    other.parent.mkdir()
    state = torch.load(weights, map_location="cpu", weights_only=True)
    first = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][first] = state["model"][first] + 1
    torch.save(state, other)
    kept = snapshot(folder)
    assert _eval(tiny_packed, out, other) == 0
    names = sorted(os.listdir(out / "eval"))
    assert len(names) == 2 and names[0] == "test-model_best" and names[1].startswith("test-model_best-")
    assert snapshot(folder) == kept
    # A link at the evaluation folder or at eval/ itself: refused, the target untouched.
    target = tmp_path / "target"
    target.mkdir()
    linked = tmp_path / "linked"
    (linked / "eval").mkdir(parents=True)
    (linked / "eval" / "test-model_best").symlink_to(target)
    assert _eval(tiny_packed, linked, weights) == 1
    (tmp_path / "linked2").mkdir()
    (tmp_path / "linked2" / "eval").symlink_to(target)
    assert _eval(tiny_packed, tmp_path / "linked2", weights) == 1
    assert "a symbolic link" in capsys.readouterr().err and os.listdir(target) == []


def test_resume_identifies_the_data_by_content_not_by_a_relative_path(tiny_packed, tmp_path, monkeypatch, capsys):
    import shutil

    import h5py

    from biam.data.packed import PackedDataset

    # Two working directories with a "data" folder each: the same relative DATA.ROOT, other data.
    first, second = tmp_path / "a", tmp_path / "b"
    shutil.copytree(tiny_packed, first / "data")
    shutil.copytree(tiny_packed, second / "data")
    shard = second / "data" / "train-00000.h5"
    with h5py.File(shard, "r+") as f:  # other data: one label flipped, the manifest's hash updated
        f["labels"][0, 0] = 0 if int(f["labels"][0, 0]) == 1 else 1
    manifest = json.loads((second / "data" / "manifest.json").read_text())
    from biam.utils.io import sha256_file
    manifest["splits"]["train"]["shards"][0]["sha256"] = sha256_file(shard)
    (second / "data" / "manifest.json").write_text(json.dumps(manifest))
    PackedDataset(second / "data", "train").verify(progress=False)
    out = tmp_path / "run"
    monkeypatch.chdir(first)
    assert main(args_for("data", out, *SHORT)) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["data"]["root"] == str(first / "data") and len(record["data"]["content_sha256"]) == 64
    before = snapshot(out)
    monkeypatch.chdir(second)
    capsys.readouterr()
    assert main(args_for("data", out, *SHORT, "SOLVER.FINETUNE_EPOCHS", "1", "--resume")) == 1
    err = capsys.readouterr().err
    assert str(first / "data") in err and str(second / "data") in err and "other data" in err
    assert snapshot(out) == before
    # The same content at another path (the data moved) resumes, and says so.
    third = tmp_path / "c"
    shutil.copytree(first / "data", third / "data")
    monkeypatch.chdir(third)
    assert main(args_for("data", out, *SHORT, "SOLVER.FINETUNE_EPOCHS", "1", "--resume")) == 0
    assert "the same data by content" in capsys.readouterr().out


def test_mistyped_data_root_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(args_for(tmp_path / "no-such-data", out, *SHORT)) == 1
    assert "manifest not found" in capsys.readouterr().err and not out.exists()


def test_resume_with_a_moved_data_root_of_the_same_content_continues(tiny_packed, tmp_path, capsys):
    import shutil

    import numpy as np

    from biam.data.packed import load_embeddings, save_embeddings

    out = tmp_path / "run"
    base = args_for(tiny_packed, out, *SHORT)
    assert main(base) == 0
    os.remove(out / "checkpoints" / "checkpoint_epoch_0002.pth")  # as if killed after epoch 1
    moved = tmp_path / "elsewhere" / "packed"
    shutil.copytree(tiny_packed, moved)
    # Other data at a new path (other label embeddings): refused naming both paths, nothing written.
    other = tmp_path / "other"
    shutil.copytree(tiny_packed, other)
    seen, unseen = load_embeddings(other)
    save_embeddings(other, np.flip(seen, 0).copy(), unseen)
    before = snapshot(out)
    with pytest.raises(RunMismatchError) as err:
        Trainer(load_cfg(None, args_for(other, out, *SHORT)), resume="last")
    assert str(tiny_packed) in str(err.value) and str(other) in str(err.value) and "other data" in str(err.value)
    assert snapshot(out) == before
    # The same content moved: the changed DATA.ROOT string is accepted and the new path recorded.
    trainer = Trainer(load_cfg(None, args_for(moved, out, *SHORT)), resume="last")
    assert trainer.start_epoch == 2
    trainer.run()
    record = json.loads((out / "run.json").read_text())
    assert record["data"]["root"] == str(moved) and record["resumes"][0]["changed"][0].startswith("DATA.ROOT: ")
    assert "--resume: changed DATA.ROOT" in (out / "log.txt").read_text()
