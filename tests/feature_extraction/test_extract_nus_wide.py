"""extract_nus_wide.py on a tiny fake release: features equal torchvision's, every written field
has its shape and dtype, labels sit in the 925 + 81 column order, unreadable images are
reported, and an interrupted run resumes to the same bytes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np

from biam.data.packed import PackedDataset, load_embeddings, read_manifest

# 3 train records (one corrupt JPEG, one missing file) and 2 test records.
TRAIN = [
    ("animal\\0001_11.jpg", [1, 0, 1, 0, 0], [0, 1, 0], "ok"),
    ("animal\\0002_12.jpg", [0, 1, 0, 1, 1], [1, 0, 1], "corrupt"),
    ("sky\\0003_13.jpg", [1, 1, 0, 0, 1], [0, 0, 1], "ok"),
    ("sky\\0004_14.jpg", [0, 0, 0, 0, 0], [1, 1, 1], "missing"),
]
TEST = [
    ("water\\0005_15.jpg", [0, 0, 1, 1, 0], [1, 0, 0], "ok"),
    ("water\\0006_16.jpg", [1, 0, 0, 0, 1], [0, 1, 1], "ok"),
]


def expected_labels(tags, concepts):
    # seen = sky, cat, car = tag columns 0, 2, 4; unseen = concepts in file order.
    return np.array([tags[0], tags[2], tags[4]] + list(concepts), dtype=np.int8) * 2 - 1


def test_release_to_packed(tmp_path, helpers, vgg_random):
    nus = helpers.make_nus_release(tmp_path / "NUS-WIDE", TRAIN, TEST)
    tags_emb, concept_emb = helpers.write_nus_embedding_pickle(tmp_path / "emb.pkl")
    out = tmp_path / "packed"
    script = helpers.load_script("extract_nus_wide")
    rc = script.main(["--nus-root", str(nus), "--embeddings", str(tmp_path / "emb.pkl"), "--out", str(out),
                      "--random-weights", "0", "--dtype", "float32", "--batch-size", "2", "--workers", "1",
                      "--shard-size", "2", "--device", "cpu"])
    assert rc == 0

    manifest = read_manifest(out)
    assert manifest["dataset"] == "nus_wide"
    assert manifest["labels"] == {"seen": helpers.NUS_SEEN, "unseen": helpers.NUS_CONCEPTS}
    assert manifest["scene"] == {"present": True, "source": "random-seed-0"}
    assert manifest["splits"]["train"]["complete"] and manifest["splits"]["test"]["complete"]

    for split, items in (("train", TRAIN), ("test", TEST)):
        ok = [(rel, t, c) for rel, t, c, kind in items if kind == "ok"]
        ds = PackedDataset(out, split)
        assert len(ds) == len(ok)
        for shard in ds.shards:  # every written field: shape and dtype
            with h5py.File(out / shard["file"], "r") as f:
                n = shard["num_images"]
                assert f["regions"].shape == (n, 512, 196) and f["regions"].dtype == np.float32
                assert f["scene"].shape == (n, 4096) and f["scene"].dtype == np.float32
                assert f["labels"].shape == (n, 6) and f["labels"].dtype == np.int8
                assert f["names"].shape == (n,) and h5py.check_string_dtype(f["names"].dtype).encoding == "utf-8"
        data = ds.read_slice(0, len(ds))
        assert list(data["names"]) == [rel.replace("\\", "_") for rel, _, _ in ok]
        np.testing.assert_array_equal(data["labels"], np.stack([expected_labels(t, c) for _, t, c in ok]))
        files = [nus / "Flickr" / Path(*rel.split("\\")) for rel, _, _ in ok]
        ref_regions, ref_scene = helpers.reference_features(vgg_random, files)
        np.testing.assert_allclose(data["regions"], ref_regions, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(data["scene"], ref_scene, rtol=1e-5, atol=1e-6)
        ds.close()

    # The corrupt and the missing image are in the report, with their reasons; the test split has none.
    rows = (out / "unreadable-train.tsv").read_text().splitlines()
    assert rows[0] == "name\tpath\treason"
    body = [r.split("\t") for r in rows[1:]]
    assert [r[0] for r in body] == ["animal_0002_12.jpg", "sky_0004_14.jpg"]
    assert "OSError" in body[0][2] and "FileNotFoundError" in body[1][2]
    assert (out / "unreadable-test.tsv").read_text() == "name\tpath\treason\n"

    seen, unseen = load_embeddings(out)
    np.testing.assert_array_equal(seen, tags_emb[[0, 2, 4]])
    np.testing.assert_array_equal(unseen, concept_emb)


def test_bad_tag_value_names_file_line_and_image(tmp_path, helpers, capsys):
    nus = helpers.make_nus_release(tmp_path / "NUS-WIDE", TRAIN[:1], TEST[:1])
    (nus / "NUS_WID_Tags" / "Train_Tags1k.dat").write_text("1\t0\t2\t0\t0\n")
    helpers.write_glove(tmp_path / "glove.txt", helpers.NUS_TAGS + ["person"])
    script = helpers.load_script("extract_nus_wide")
    rc = script.main(["--nus-root", str(nus), "--glove", str(tmp_path / "glove.txt"), "--out", str(tmp_path / "o"),
                      "--random-weights", "0", "--splits", "train"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "Train_Tags1k.dat: line 1, image 'animal_0001_11.jpg': field 'tag 2' is '2'" in err


def test_missing_vgg_weights_says_how_to_provide_them(tmp_path, helpers, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-cache"))
    nus = helpers.make_nus_release(tmp_path / "NUS-WIDE", TRAIN[:1], TEST[:1])
    helpers.write_glove(tmp_path / "glove.txt", helpers.NUS_TAGS + ["person"])
    script = helpers.load_script("extract_nus_wide")
    rc = script.main(["--nus-root", str(nus), "--glove", str(tmp_path / "glove.txt"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "--weights FILE" in err and "vgg19-dcbb9e9d.pth" in err
    assert str(tmp_path / "empty-cache" / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth") in err
    assert not (tmp_path / "o" / "manifest.json").exists()


def _run(args, **kw):
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve().parents[2] / "feature_extraction" /
                                                 "extract_nus_wide.py")] + args,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def test_resume_after_kill_gives_the_same_output(tmp_path, helpers, vgg_file):
    test_items = [(f"water\\{k:04d}_{k}.jpg", [k % 2, 1, 0, 1, 0], [0, 1, k % 2], "ok") for k in range(3)]
    nus = helpers.make_nus_release(tmp_path / "NUS-WIDE", TRAIN[:1], test_items)
    helpers.write_glove(tmp_path / "glove.txt", helpers.NUS_TAGS + ["person"])
    common = ["--nus-root", str(nus), "--glove", str(tmp_path / "glove.txt"), "--weights", str(vgg_file),
              "--splits", "test", "--batch-size", "1", "--shard-size", "1", "--workers", "0", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="2")

    # The uninterrupted reference run, in this process (saves a start-up).
    straight = tmp_path / "straight"
    assert helpers.load_script("extract_nus_wide").main(common + ["--out", str(straight)]) == 0

    # Kill a second run (SIGKILL: no clean-up code runs) once its first shard is listed.
    resumed = tmp_path / "resumed"
    proc = _run(common + ["--out", str(resumed)], env=env)
    deadline = time.time() + 120
    shards = 0
    while time.time() < deadline and proc.poll() is None:
        if (resumed / "manifest.json").is_file():
            shards = len(json.loads((resumed / "manifest.json").read_text())["splits"]["test"]["shards"])
            if shards >= 1:
                break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted = read_manifest(resumed)["splits"]["test"]
    assert not interrupted["complete"] and 1 <= len(interrupted["shards"]) < 3

    proc = _run(common + ["--out", str(resumed)], env=env)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out.decode()
    assert "resuming split 'test'" in out.decode()

    a, b = read_manifest(straight)["splits"]["test"], read_manifest(resumed)["splits"]["test"]
    assert b["complete"] and a["shards"] == b["shards"]  # same files, same SHA-256 checksums
    assert sorted(p.name for p in resumed.iterdir()) == sorted(p.name for p in straight.iterdir())


# ----------------------------------------------------------------------- ownership of --out (issue 13)
def _hold_lock(folder, ready, release):
    from biam.utils.ownership import FolderLock

    with FolderLock(folder, "extract_nus_wide.py --out elsewhere-run"):
        ready.set()
        release.wait(60)


def _glove_release(tmp_path, helpers):
    nus = helpers.make_nus_release(tmp_path / "NUS-WIDE", TRAIN[:1], TEST[:1])
    helpers.write_glove(tmp_path / "glove.txt", helpers.NUS_TAGS + ["person"])
    return ["--nus-root", str(nus), "--glove", str(tmp_path / "glove.txt"), "--random-weights", "0",
            "--splits", "test", "--workers", "0", "--device", "cpu"]


def test_out_with_other_files_is_refused_unless_overwrite(tmp_path, helpers, capsys):
    common = _glove_release(tmp_path, helpers)
    out = tmp_path / "out"
    out.mkdir()
    theirs = {"test-notes.h5": b"user", "test-00000.h5.orig": b"backup", "embeddings.npz": b"mine"}
    for name, data in theirs.items():
        (out / name).write_bytes(data)
    script = helpers.load_script("extract_nus_wide")
    assert script.main(common + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already holds files this command did not write" in err and "--overwrite" in err
    assert all((out / k).read_bytes() == v for k, v in theirs.items()) and not (out / "manifest.json").exists()
    # --overwrite: written beside them; only its own names (here embeddings.npz) are replaced.
    assert script.main(common + ["--out", str(out), "--overwrite"]) == 0
    assert len(PackedDataset(out, "test")) == 1 and load_embeddings(out)[1].shape == (3, 300)
    assert (out / "test-notes.h5").read_bytes() == b"user" and (out / "test-00000.h5.orig").read_bytes() == b"backup"


def test_second_extraction_on_the_same_out_stops_naming_the_holder(tmp_path, helpers, capsys):
    import multiprocessing as mp

    common = _glove_release(tmp_path, helpers)
    out = tmp_path / "out"
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(out), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        assert helpers.load_script("extract_nus_wide").main(common + ["--out", str(out)]) == 4  # every command's "folder held"
        err = capsys.readouterr().err
        assert f"is in use by another process: PID {holder.pid}" in err and "elsewhere-run" in err
        assert not (out / "manifest.json").exists()
    finally:
        release.set()
        holder.join(60)


def test_bad_weights_and_non_utf8_labels_are_named(tmp_path, helpers, capsys):
    import torch

    common = _glove_release(tmp_path, helpers)
    at = common.index("--random-weights")
    common = common[:at] + common[at + 2:]
    marker = tmp_path / "ran"

    class Runs:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "vgg19-evil.pth"
    torch.save({"features.0.weight": Runs()}, evil)
    script = helpers.load_script("extract_nus_wide")
    assert script.main(common + ["--weights", str(evil), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{evil}: not a plain VGG19 state dict" in err and "weights_only" not in err and not marker.exists()

    concepts = tmp_path / "NUS-WIDE" / "ConceptsList" / "Concepts81.txt"
    concepts.write_bytes(b"person\r\nw\xe4ter\r\ndog\r\n")
    assert script.main(common + ["--random-weights", "0", "--out", str(tmp_path / "o2")]) == 2
    assert f"{concepts}: line 2: byte 0xe4 is not UTF-8" in capsys.readouterr().err


def test_two_ranks_under_torchrun_lock_once_and_merge_beside_other_files(tmp_path, helpers, vgg_file):
    """Real torchrun, two gloo processes: rank 0 takes the folder (lock + ownership), the ranks'
    shards are merged in list order, and a user's file in --out (allowed by --overwrite) survives."""
    test_items = [(f"water\\{k:04d}_{k}.jpg", [k % 2, 1, 0, 1, 0], [0, 1, k % 2], "ok") for k in range(3)]
    nus = helpers.make_nus_release(tmp_path / "NUS-WIDE", TRAIN[:1], test_items)
    helpers.write_glove(tmp_path / "glove.txt", helpers.NUS_TAGS + ["person"])
    common = ["--nus-root", str(nus), "--glove", str(tmp_path / "glove.txt"), "--weights", str(vgg_file),
              "--splits", "test", "--batch-size", "1", "--shard-size", "1", "--workers", "0", "--device", "cpu"]
    straight = tmp_path / "straight"
    assert helpers.load_script("extract_nus_wide").main(common + ["--out", str(straight)]) == 0

    out = tmp_path / "two"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    script = Path(__file__).resolve().parents[2] / "feature_extraction" / "extract_nus_wide.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           *common, "--out", str(out), "--overwrite"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout.decode()[-3000:]
    assert (out / "notes.txt").read_text() == "mine" and not (out / ".parts").exists()
    a, b = PackedDataset(straight, "test"), PackedDataset(out, "test")
    assert b.names() == a.names() and len(b.shards) == 3
    np.testing.assert_array_equal(b.read_slice(0, 3)["regions"], a.read_slice(0, 3)["regions"])
