"""Tests of biam-convert: synthetic NUS-WIDE and Open Images layouts, record checks, kill + resume."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from biam.cli.convert import main as convert_main
from biam.data.packed import PackedDataset, load_embeddings
from biam.datasets.nus_wide.release import read_img_names
from biam.demo.synthetic import SYNTHETIC_PATHS, write_synthetic_nus_wide

REPO = Path(__file__).resolve().parents[2]
SMALL = dict(num_train=48, num_test=16, num_tags=12, num_concepts=5, overlap=2, progress=False)


@pytest.fixture(scope="module")
def nus_src(tmp_path_factory):
    src = tmp_path_factory.mktemp("nus_src")
    write_synthetic_nus_wide(src, seed=3, **SMALL)
    return src


def _shas(out):
    m = json.loads((Path(out) / "manifest.json").read_text())
    return {split: [s["sha256"] for s in e["shards"]] for split, e in m["splits"].items()}


def test_nus_wide_conversion_matches_source(nus_src, tmp_path):
    out = tmp_path / "packed"
    assert convert_main(["nus_wide", "--src", str(nus_src), "--out", str(out), "--shard-size", "20", "--no-scene",
                         "--dtype", "float32"]) == 0
    train = PackedDataset(out, "train")
    assert len(train) == 48 and len(train.shards) == 3
    assert train.num_seen == 10 and train.num_unseen == 5 and not train.has_scene
    names = read_img_names(nus_src / SYNTHETIC_PATHS["train_names"])
    assert train.names() == names
    with h5py.File(nus_src / SYNTHETIC_PATHS["train_h5"], "r") as f:
        for i in (0, 21, 47):
            got = train.read_slice(i, i + 1)
            np.testing.assert_array_equal(got["regions"][0], f[f"{names[i]}-features"][()])
            want = np.concatenate([f[f"{names[i]}-labels"][()], f[f"{names[i]}-labels_81"][()]])
            np.testing.assert_array_equal(got["labels"][0], want)
    test = PackedDataset(out, "test")
    tnames = read_img_names(nus_src / SYNTHETIC_PATHS["test_names"])
    with h5py.File(nus_src / SYNTHETIC_PATHS["test_h5"], "r") as f:
        np.testing.assert_array_equal(test.labels()[5], f[f"{tnames[5]}-labels"][()])
    seen, unseen = load_embeddings(out)
    assert seen.shape == (10, 300) and unseen.shape == (5, 300)
    train.verify(progress=False)


def test_scene_fallback_is_recorded_and_missing_weights_stop(nus_src, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # an empty cache: no weights found
    out = tmp_path / "p"
    assert convert_main(["nus_wide", "--src", str(nus_src), "--out", str(out), "--splits", "test"]) == 2
    err = capsys.readouterr().err
    assert "--vgg-weights" in err and "--scene-fallback random" in err and "--no-scene" in err
    assert not (out / "manifest.json").exists()
    assert convert_main(["nus_wide", "--src", str(nus_src), "--out", str(out), "--splits", "test",
                         "--scene-fallback", "random", "--scene-seed", "4"]) == 0
    ds = PackedDataset(out, "test")
    assert ds.manifest["scene"] == {"present": True, "source": "random-seed-4"}
    batch = ds.read_slice(0, 4)
    assert batch["scene"].shape == (4, 4096) and batch["scene"].dtype == np.float16
    assert np.isfinite(batch["scene"]).all() and (batch["scene"] >= 0).all()


def _replace(h5path, key, data):
    with h5py.File(h5path, "r+") as f:
        del f[key]
        if data is not None:
            f.create_dataset(key, data=data)


@pytest.mark.parametrize("field,data,expect", [
    ("features", np.zeros((512, 195), np.float32), "shape (512, 195), expected (512, 196)"),
    ("features", None, "missing"),
    ("labels", np.full(10, 2, np.int8), "value 2"),
    ("features", np.full((512, 196), np.nan, np.float32), "NaN"),
])
def test_bad_record_is_named(tmp_path, field, data, expect, capsys):
    src = tmp_path / "src"
    write_synthetic_nus_wide(src, seed=1, **SMALL)
    names = read_img_names(src / SYNTHETIC_PATHS["train_names"])
    bad = names[30]
    _replace(src / SYNTHETIC_PATHS["train_h5"], f"{bad}-{field}", data)
    rc = convert_main(["nus_wide", "--src", str(src), "--out", str(tmp_path / "out"), "--no-scene", "--shard-size", "16"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "nus_wide_train.h5" in err and repr(bad) in err and f"'{field}'" in err and expect in err
    # Shards before the bad record are complete and listed; the split is not marked complete.
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["splits"]["train"]["complete"] is False
    assert m["splits"]["train"]["num_images"] <= 30


def _run_convert(src, out, extra_env=None):
    path = os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH")] if p)  # carried packages stay on it
    env = dict(os.environ, PYTHONPATH=path, **(extra_env or {}))
    cmd = [sys.executable, "-m", "biam.cli.convert", "nus_wide", "--src", str(src), "--out", str(out),
           "--shard-size", "8", "--batch", "4", "--no-scene"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_killed_conversion_resumes_to_identical_result(nus_src, tmp_path):
    straight = tmp_path / "straight"
    proc = _run_convert(nus_src, straight)
    assert proc.wait(timeout=60) == 0, proc.stderr.read().decode()

    resumed = tmp_path / "resumed"
    proc = _run_convert(nus_src, resumed, {"BIAM_CONVERT_SLOWDOWN": "0.4"})
    manifest = resumed / "manifest.json"
    deadline = time.time() + 60
    while time.time() < deadline:
        if manifest.exists() and len(json.loads(manifest.read_text())["splits"].get("train", {}).get("shards", [])) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    partial = json.loads(manifest.read_text())["splits"]["train"]
    assert partial["complete"] is False and 2 <= len(partial["shards"]) < 6
    kept = {s["file"]: (resumed / s["file"]).stat().st_mtime_ns for s in partial["shards"]}

    proc = _run_convert(nus_src, resumed)
    assert proc.wait(timeout=60) == 0, proc.stderr.read().decode()
    assert _shas(resumed) == _shas(straight)
    for name in ("manifest.json", "embeddings.npz"):
        assert (resumed / name).read_bytes() == (straight / name).read_bytes()
    for name, mtime in kept.items():
        assert (resumed / name).stat().st_mtime_ns == mtime  # complete shards were kept, not rewritten
    assert sorted(p.name for p in resumed.iterdir()) == sorted(p.name for p in straight.iterdir())
    PackedDataset(resumed, "train").verify(progress=False)


def test_rerun_of_complete_conversion_and_other_source(nus_src, tmp_path, capsys):
    out = tmp_path / "o"
    args = ["nus_wide", "--src", str(nus_src), "--out", str(out), "--no-scene", "--shard-size", "16", "--splits", "test"]
    assert convert_main(args) == 0
    before = _shas(out)
    assert convert_main(args) == 0
    assert _shas(out) == before
    # Converting a different source into the same folder is refused, not mixed.
    other = tmp_path / "other"
    write_synthetic_nus_wide(other, seed=9, **SMALL)
    assert convert_main(["nus_wide", "--src", str(other), "--out", str(out), "--no-scene", "--shard-size", "16",
                         "--splits", "test"]) == 1
    assert "overwrite" in capsys.readouterr().err


def _write_openimages(root: Path, S=6, U=5):
    rng = np.random.default_rng(0)
    base = root / "OpenImages"
    (base / "2018_04").mkdir(parents=True)
    (base / "wiki_contexts").mkdir()
    seen_ids = [f"/m/s{i}" for i in range(S)]
    unseen_ids = [f"/m/u{i}" for i in range(U)]
    (base / "2018_04" / "classes-trainable.txt").write_text("\n".join(seen_ids) + "\n")
    with open(base / "2018_04" / "unseen_labels.pkl", "wb") as fh:
        pickle.dump(np.array(unseen_ids, dtype=object), fh, protocol=2)
    (base / "2018_04" / "top_400_unseen.csv").write_bytes("\ufeff3\r\n0\r\n4".encode("utf-8"))
    (base / "2018_04" / "class-descriptions.csv").write_text(
        "".join(f'{i},"Name, {i[3:]}"\n' for i in seen_ids + unseen_ids[:-1]))
    with open(base / "wiki_contexts" / "OpenImage_w2v_context_window_10_glove-wiki-gigaword-300.pkl", "wb") as fh:
        pickle.dump([rng.random((S, 300), dtype=np.float32), rng.random((U, 300), dtype=np.float32)], fh, protocol=2)
    train = base / "train_feats"
    train.mkdir()
    ids = {}
    for k in range(2):
        with h5py.File(train / f"shard_{k}.h5", "w") as f:
            ids[k] = [f"{k}{j:03x}abc" for j in range(7)]
            for i in ids[k]:
                f.create_dataset(f"{i}-features", data=rng.random((512, 196), dtype=np.float32), compression="gzip")
                f.create_dataset(f"{i}-seenlabels", data=rng.integers(-1, 2, S).astype(np.int8), compression="gzip")
    with h5py.File(base / "test.h5", "w") as f:
        for j in range(5):
            f.create_dataset(f"t{j}-features", data=rng.random((512, 196), dtype=np.float32), compression="gzip")
            f.create_dataset(f"t{j}-seenlabels", data=rng.integers(-1, 2, S).astype(np.int8))
            f.create_dataset(f"t{j}-unseenlabels", data=rng.integers(-1, 2, U).astype(np.int8))
    return train, base / "test.h5", ids


def test_openimages_conversion(tmp_path):
    train_dir, test_h5, ids = _write_openimages(tmp_path / "src")
    out = tmp_path / "out"
    assert convert_main(["openimages", "--src", str(tmp_path / "src"), "--out", str(out), "--train-dir", str(train_dir),
                         "--test-h5", str(test_h5), "--no-scene", "--shard-size", "4"]) == 0
    train = PackedDataset(out, "train")
    assert train.names() == sorted(ids[0]) + sorted(ids[1])
    assert train.labels().shape == (14, 11)
    assert (train.labels()[:, 6:] == 0).all()  # training shards have no unseen annotations: unknown
    test = PackedDataset(out, "test")
    assert len(test) == 5 and test.unseen_eval.tolist() == [3, 0, 4]
    with h5py.File(test_h5, "r") as f:
        want = np.concatenate([f["t2-seenlabels"][()], f["t2-unseenlabels"][()]])
    np.testing.assert_array_equal(test.labels()[2], want)
    desc = test.manifest["label_descriptions"]
    assert desc["seen"][0] == "Name, s0" and desc["unseen"][-1] == "/m/u4"


def test_openimages_unknown_field_is_named(tmp_path, capsys):
    train_dir, test_h5, ids = _write_openimages(tmp_path / "src")
    with h5py.File(test_h5, "r+") as f:
        f.create_dataset("t9-features", data=np.zeros((512, 196), np.float32))  # no labels for t9
    assert convert_main(["openimages", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "out"),
                         "--train-dir", str(train_dir), "--test-h5", str(test_h5), "--no-scene", "--splits", "test"]) == 1
    err = capsys.readouterr().err
    assert "test.h5" in err and "'t9'" in err and "'seenlabels'" in err


# ----------------------------------------------------------------------- ownership of --out (issue 13)
NUS_ARGS = ["--no-scene", "--shard-size", "16"]


def _files(folder):
    return {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}


def test_folder_with_other_files_is_refused_and_kept(nus_src, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    theirs = {"train-old.h5": b"user data", "test-00000.h5": b"an older run by hand", "embeddings.npz": b"mine",
              "notes.txt": b"keep me"}
    for name, data in theirs.items():
        (out / name).write_bytes(data)
    rc = convert_main(["nus_wide", "--src", str(nus_src), "--out", str(out), *NUS_ARGS])
    err = capsys.readouterr().err
    assert rc == 1
    assert "already holds files this command did not write" in err and "--overwrite" in err
    assert "embeddings.npz" in err and err.count("\n") == 1  # one message, no traceback
    assert {k: v for k, v in _files(out).items() if k in theirs} == theirs
    assert not (out / "manifest.json").exists()


def test_overwrite_replaces_only_the_commands_own_files(nus_src, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    theirs = {"train-old.h5": b"user data", "train-00000.h5.bak": b"backup", "notes.txt": b"keep me"}
    for name, data in theirs.items():
        (out / name).write_bytes(data)
    (out / "test-00000.h5").write_bytes(b"at a name the conversion writes")
    assert convert_main(["nus_wide", "--src", str(nus_src), "--out", str(out), *NUS_ARGS, "--overwrite"]) == 0
    assert PackedDataset(out, "test").names()[:1]  # the conversion's own test-00000.h5 replaced that file
    for name, data in theirs.items():
        assert (out / name).read_bytes() == data
    # The folder is now recorded by its manifest: reruns (plain or --overwrite) keep the other files too.
    assert convert_main(["nus_wide", "--src", str(nus_src), "--out", str(out), *NUS_ARGS]) == 0
    assert convert_main(["nus_wide", "--src", str(nus_src), "--out", str(out), *NUS_ARGS, "--overwrite",
                         "--shard-size", "40"]) == 0
    assert PackedDataset(out, "train").manifest["splits"]["train"]["shard_size"] == 40
    assert not (out / "train-00002.h5").exists()  # its own shard from the run before: listed, so replaced
    for name, data in theirs.items():
        assert (out / name).read_bytes() == data


def test_unlisted_shard_name_in_a_recorded_folder_is_not_replaced(nus_src, tmp_path, capsys):
    out = tmp_path / "out"
    assert convert_main(["nus_wide", "--src", str(nus_src), "--out", str(out), *NUS_ARGS, "--splits", "test"]) == 0
    (out / "train-00000.h5").write_bytes(b"placed by the user")
    assert convert_main(["nus_wide", "--src", str(nus_src), "--out", str(out), *NUS_ARGS]) == 1
    err = capsys.readouterr().err
    assert "train-00000.h5: a file of this name is in the output folder but the manifest does not list it" in err
    assert (out / "train-00000.h5").read_bytes() == b"placed by the user"


def test_second_conversion_on_the_same_folder_stops_naming_the_first(nus_src, tmp_path, capsys):
    out = tmp_path / "busy"
    first = _run_convert(nus_src, out, {"BIAM_CONVERT_SLOWDOWN": "0.5"})
    deadline = time.time() + 60
    while time.time() < deadline and not (out / "manifest.json").exists():
        time.sleep(0.05)
    assert first.poll() is None, "the first conversion ended before the second could start"
    rc = convert_main(["nus_wide", "--src", str(nus_src), "--out", str(out), "--no-scene", "--shard-size", "8",
                       "--batch", "4"])
    err = capsys.readouterr().err
    assert rc == 4  # the one exit status of every command for a folder held by another process
    assert f"is in use by another process: PID {first.pid}" in err and "biam-convert" in err
    assert first.wait(timeout=120) == 0, first.stderr.read().decode()
    manifest = json.loads((out / "manifest.json").read_text())
    assert all(e["complete"] for e in manifest["splits"].values())
    PackedDataset(out, "train").verify(progress=False)


@pytest.mark.parametrize("flag,value", [("--batch", "0"), ("--batch", "-3"), ("--shard-size", "0")])
def test_batch_and_shard_size_below_one_are_refused(nus_src, tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as info:
        convert_main(["nus_wide", "--src", str(nus_src), "--out", str(tmp_path / "o"), "--no-scene", flag, value])
    assert info.value.code == 2
    assert f"argument {flag}: {value}: must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_out_that_is_a_file_is_named(nus_src, tmp_path, capsys):
    afile = tmp_path / "packed"
    afile.write_text("not a folder")
    assert convert_main(["nus_wide", "--src", str(nus_src), "--out", str(afile), "--no-scene"]) == 1
    err = capsys.readouterr().err
    assert f"{afile} is a file, not a folder" in err and afile.read_text() == "not a folder"


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo owned",))


@pytest.mark.parametrize("kind", ["unsafe", "truncated"])
def test_bad_pickle_is_one_message_naming_it(nus_src, tmp_path, capsys, kind):
    src = tmp_path / "src"
    import shutil

    shutil.copytree(nus_src, src)
    path = src / SYNTHETIC_PATHS["test_names"]
    if kind == "unsafe":
        path.write_bytes(pickle.dumps({"img_names": [_Evil()]}, protocol=2))
    else:
        path.write_bytes(path.read_bytes()[:40])
    rc = convert_main(["nus_wide", "--src", str(src), "--out", str(tmp_path / "o"), "--no-scene", "--splits", "test"])
    err = capsys.readouterr().err
    assert rc == 1 and str(path) in err and err.count("\n") == 1
    assert ("refused to load global 'posix.system'" if kind == "unsafe" else "not a readable pickle") in err


def test_non_utf8_label_file_is_named(nus_src, tmp_path, capsys):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(nus_src, src)
    tags = src / SYNTHETIC_PATHS["tags"]
    lines = tags.read_bytes().split(b"\n")
    lines[3] = "café".encode("latin-1")
    tags.write_bytes(b"\n".join(lines))
    rc = convert_main(["nus_wide", "--src", str(src), "--out", str(tmp_path / "o"), "--no-scene"])
    err = capsys.readouterr().err
    assert rc == 1 and f"{tags}: line 4: byte 0xe9 is not UTF-8" in err


@pytest.mark.parametrize("kind", ["hostile", "list", "other_dict"])
def test_vgg_weights_that_are_not_a_state_dict(nus_src, tmp_path, capsys, kind):
    import torch

    path = tmp_path / f"{kind}.pth"
    marker = tmp_path / "ran"
    if kind == "hostile":
        class Runs:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))

        torch.save({"classifier.0.weight": Runs()}, path)
    elif kind == "list":
        torch.save([torch.zeros(3)], path)
    else:
        torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    rc = convert_main(["nus_wide", "--src", str(nus_src), "--out", str(tmp_path / "o"), "--vgg-weights", str(path)])
    err = capsys.readouterr().err
    assert rc == 2 and f"{path}: not a plain VGG19 state dict" in err
    assert "weights_only=False" not in err and "weights_only" not in err
    assert not marker.exists() and not (tmp_path / "o" / "manifest.json").exists()


def test_manifest_of_another_tool_is_not_taken_for_ours(nus_src, tmp_path, capsys):
    out = tmp_path / "project"
    out.mkdir()
    (out / "manifest.json").write_text('{"name": "my web app", "version": 3}')
    (out / "test-00000.h5").write_bytes(b"not a shard")
    assert convert_main(["nus_wide", "--src", str(nus_src), "--out", str(out), *NUS_ARGS]) == 1
    err = capsys.readouterr().err
    assert str(out / "manifest.json") in err and "format_version" in err
    assert (out / "manifest.json").read_text() == '{"name": "my web app", "version": 3}'
    assert (out / "test-00000.h5").read_bytes() == b"not a shard"
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "test-00000.h5"]  # no lock left


@pytest.mark.parametrize("name,flags", [(".biam.lock", []), ("manifest.json", []), ("train-00000.h5", ["--overwrite"]),
                                        ("embeddings.npz", ["--overwrite"]), ("manifest.json.tmp", ["--overwrite"])])
def test_links_at_every_name_convert_writes_are_refused(nus_src, tmp_path, capsys, name, flags):
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's file")
    out = tmp_path / "out"
    out.mkdir()
    (out / name).symlink_to(victim)
    rc = convert_main(["nus_wide", "--src", str(nus_src), "--out", str(out), "--no-scene", "--shard-size", "8",
                       "--batch", "4", *flags])
    err = capsys.readouterr().err
    assert rc == 1 and "symbolic link" in err and "Traceback" not in err, err
    assert victim.read_text() == "the user's file"


def _limit_files_to_200k():
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))


def test_full_disk_during_conversion_is_exit_5_naming_the_shard_and_the_rerun_completes(nus_src, tmp_path):
    """A shard that cannot fit (a file-size limit, as a full disk) is refused before HDF5 starts
    writing it (HDF5 would crash the process midway): exit 5, no traceback; the rerun finishes."""
    out = tmp_path / "out"
    path = os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH")] if p)
    cmd = [sys.executable, "-m", "biam.cli.convert", "nus_wide", "--src", str(nus_src), "--out", str(out),
           "--shard-size", "40", "--no-scene"]
    done = subprocess.run(cmd, env=dict(os.environ, PYTHONPATH=path, PYTHONDONTWRITEBYTECODE="1"),
                          preexec_fn=_limit_files_to_200k, capture_output=True, text=True, timeout=300)
    assert done.returncode == 5, done.stderr[-3000:]
    assert "biam-convert: system error:" in done.stderr and "train-00000.h5.tmp: File too large" in done.stderr
    assert "Traceback" not in done.stderr
    assert convert_main(["nus_wide", "--src", str(nus_src), "--out", str(out), "--shard-size", "40", "--no-scene"]) == 0
    PackedDataset(out, "train").verify(progress=False)
