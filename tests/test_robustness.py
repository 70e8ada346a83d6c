"""Robustness and safety: bad input, interrupted writes, untrusted files (docs/reliability.md).

Each test feeds one kind of bad input to the real entry point (trainer, evaluator, converter,
config loader, checkpoint writer) and checks that it is refused with a message naming the file,
the image and the field where they apply. Cases already covered elsewhere are listed in
docs/reliability.md and not repeated here.
"""

import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from biam.config import ConfigError, load_cfg
from biam.cli.convert import main as convert_main
from biam.data.packed import PackedDataset, PackedFormatError, PackedWriter, save_embeddings
from biam.datasets.nus_wide.release import read_img_names
from biam.demo.synthetic import SYNTHETIC_PATHS, write_synthetic_nus_wide
from biam.engine import checkpoint as ckpt
from biam.cli.evaluate import main as evaluate_main
from biam.engine.trainer import Trainer
from biam.modeling import build_model

from helpers import TINY_MODEL_OPTS, make_tiny_packed

REPO = Path(__file__).resolve().parents[1]

SEEN = [f"tag{i}" for i in range(12)]
UNSEEN = [f"concept{i}" for i in range(6)]
ONE_EPOCH = ["SOLVER.MAX_EPOCHS", "1", "SOLVER.WARMUP_EPOCHS", "0", "SOLVER.FINETUNE_EPOCHS", "0"]


@pytest.fixture(scope="module")
def small_packed(tmp_path_factory):
    """32 train / 16 test images in shards of 12 (train-00000..00002, test-00000..00001)."""
    return make_tiny_packed(tmp_path_factory.mktemp("robust") / "packed", num_train=32, num_test=16, shard_size=12)


@pytest.fixture
def packed_copy(small_packed, tmp_path):
    """A private copy of ``small_packed`` that a test may damage."""
    dst = tmp_path / "packed"
    shutil.copytree(small_packed, dst)
    return dst


def cfg_for(root, out, *extra):
    return load_cfg(None, TINY_MODEL_OPTS + ["DATA.ROOT", str(root), "OUTPUT_DIR", str(out), *extra])


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ----------------------------------------------------------------------- missing files and folders
def test_data_root_that_does_not_exist_is_named(tmp_path):
    missing = tmp_path / "no_such_dataset"
    with pytest.raises(PackedFormatError) as err:
        Trainer(cfg_for(missing, tmp_path / "out"))
    msg = str(err.value)
    assert str(missing / "manifest.json") in msg and "manifest not found" in msg and "biam-convert" in msg


def test_convert_src_that_does_not_exist_is_named(tmp_path, capsys):
    missing = tmp_path / "no_such_release"
    rc = convert_main(["nus_wide", "--src", str(missing), "--out", str(tmp_path / "out"), "--no-scene"])
    assert rc == 1
    err = capsys.readouterr().err
    assert f"--src {missing}: folder not found" in err
    assert not (tmp_path / "out" / "manifest.json").exists()


# ----------------------------------------------------------------------- bad records of the release
@pytest.fixture(scope="module")
def released_src(tmp_path_factory):
    """A pristine synthetic release; tests copy its train file before damaging it."""
    src = tmp_path_factory.mktemp("released")
    write_synthetic_nus_wide(src, seed=5, num_train=24, num_test=8, num_tags=12, num_concepts=5, overlap=2,
                             progress=False)
    return src


@pytest.mark.parametrize("field,data,expect", [
    ("features", np.zeros((512, 196), np.int32), "dtype int32, expected float32"),
    ("features", np.full((512, 196), np.inf, np.float32), "NaN or inf"),
    ("labels_81", None, "missing (no dataset"),
    ("labels", np.full(10, 0.5, np.float32), "value 0.5"),
    ("labels", np.full(10, -7, np.int8), "value -7"),
])
def test_released_record_of_wrong_dtype_inf_missing_key_or_bad_label(released_src, tmp_path, field, data, expect,
                                                                     capsys):
    src = tmp_path / "src"
    shutil.copytree(released_src, src)
    h5 = src / SYNTHETIC_PATHS["train_h5"]
    bad = read_img_names(src / SYNTHETIC_PATHS["train_names"])[17]
    with h5py.File(h5, "r+") as f:
        del f[f"{bad}-{field}"]
        if data is not None:
            f.create_dataset(f"{bad}-{field}", data=data)
    rc = convert_main(["nus_wide", "--src", str(src), "--out", str(tmp_path / "out"), "--no-scene",
                       "--splits", "train", "--shard-size", "8"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "nus_wide_train.h5" in err and repr(bad) in err and repr(field) in err and expect in err
    # Images before the bad one are in complete shards; the split is not marked complete.
    with pytest.raises(PackedFormatError, match="incomplete"):
        PackedDataset(tmp_path / "out", "train")


def test_packed_shard_field_of_wrong_dtype_is_named(packed_copy):
    shard = packed_copy / "train-00001.h5"
    with h5py.File(shard, "r+") as f:
        labels = f["labels"][()]
        del f["labels"]
        f.create_dataset("labels", data=labels.astype(np.float32))
    with pytest.raises(PackedFormatError) as err:
        PackedDataset(packed_copy, "train")  # every shard is checked at open (issue 13)
    msg = str(err.value)
    assert "train-00001.h5" in msg and "field 'labels'" in msg and "float32" in msg and "int8" in msg
    ds = PackedDataset(packed_copy, "train", check=False)  # unchecked: still named when read
    ds.read_slice(0, 12)  # the first shard is fine
    with pytest.raises(PackedFormatError) as err:
        ds.read_slice(12, 13)
    msg = str(err.value)
    assert "train-00001.h5" in msg and "field 'labels'" in msg and "float32" in msg and "int8" in msg


# ----------------------------------------------------------------------- labels vs embeddings vs config
def test_embedding_rows_that_do_not_match_the_label_columns(packed_copy, tmp_path):
    rng = np.random.default_rng(0)
    save_embeddings(packed_copy, rng.normal(size=(11, 300)), rng.normal(size=(6, 300)))  # manifest: 12 seen
    with pytest.raises(PackedFormatError) as err:
        Trainer(cfg_for(packed_copy, tmp_path / "out"))
    msg = str(err.value)
    assert "embeddings.npz" in msg and "'seen'" in msg and "(11, 300)" in msg and "12 seen labels" in msg


def test_embeddings_of_the_wrong_width(small_packed, tmp_path):
    with pytest.raises(ValueError) as err:
        Trainer(cfg_for(small_packed, tmp_path / "out", "MODEL.EMBED_DIM", "200"))
    msg = str(err.value)
    assert "embeddings.npz" in msg and "300-d" in msg and "MODEL.EMBED_DIM is 200" in msg
    assert "set MODEL.EMBED_DIM 300" in msg  # says how to fix it


def test_k_larger_than_the_label_count_is_named(tmp_path):
    """Two unseen labels cannot give F1@3 for ZSL: said before any training, not a wrong number."""
    root = make_tiny_packed(tmp_path / "few", num_train=16, num_test=8, num_unseen=2, shard_size=64)
    cfg = cfg_for(root, tmp_path / "out", "DATA.TRAIN_FRACTION", "1.0", *ONE_EPOCH)
    with pytest.raises(ValueError, match="2 evaluated unseen labels.*K = 3, 5") as err:
        Trainer(cfg)
    assert str(root) in str(err.value)
    assert not (tmp_path / "out" / "checkpoints" / "checkpoint_epoch_0001.pth").exists()


# ----------------------------------------------------------------------- empty splits
def test_empty_split_and_empty_training_subset(small_packed, packed_copy, tmp_path):
    PackedWriter(packed_copy, "empty", dataset="nus_wide", seen_labels=SEEN, unseen_labels=UNSEEN, shard_size=40,
                 scene_source="random-test").close()
    assert len(PackedDataset(packed_copy, "empty")) == 0
    with pytest.raises(ValueError, match="split 'empty' has no images"):
        Trainer(cfg_for(packed_copy, tmp_path / "a", "DATA.TRAIN_SPLIT", "empty"))
    # 1% of 32 images rounds to none left for training.
    with pytest.raises(ValueError, match="TRAIN_FRACTION 0.01 keeps 0 for training"):
        Trainer(cfg_for(small_packed, tmp_path / "b", "DATA.TRAIN_FRACTION", "0.01"))


# ----------------------------------------------------------------------- corrupt shards and checksums
def test_truncated_shard_is_named_by_the_trainer(packed_copy, tmp_path):
    shard = packed_copy / "train-00001.h5"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(PackedFormatError) as err:
        Trainer(cfg_for(packed_copy, tmp_path / "out", *ONE_EPOCH)).run()  # since issue 13: at open, before training
    msg = str(err.value)
    assert str(shard) in msg and "truncated or corrupt" in msg
    assert ckpt.latest_checkpoint(str(tmp_path / "out" / "checkpoints")) is None  # nothing half-trained saved


def test_truncated_shard_and_foreign_checkpoint_in_the_evaluator(packed_copy, tmp_path, capsys):
    cfg = cfg_for(packed_copy, tmp_path / "out")
    weights = tmp_path / "model.pth"
    torch.save(build_model(cfg).state_dict(), weights)
    opts = TINY_MODEL_OPTS + ["DATA.ROOT", str(packed_copy), "OUTPUT_DIR", str(tmp_path / "out")]
    # A checkpoint of another model config: the keys and both shapes are named.
    other = tmp_path / "other.pth"
    torch.save(build_model(cfg_for(packed_copy, tmp_path / "o", "MODEL.CHANNEL_DIM", "32")).state_dict(), other)
    assert evaluate_main(["--checkpoint", str(other), *opts]) == 1
    err = capsys.readouterr().err
    assert "other.pth: state dict does not fit the model" in err
    assert "conv_3X3.body.weight: file (32, 512, 3, 3), model (16, 512, 3, 3)" in err
    # A shard of the test split cut in half on disk: the shard is named, no metrics are written.
    shard = packed_copy / "test-00001.h5"
    shard.write_bytes(shard.read_bytes()[:4096])
    assert evaluate_main(["--checkpoint", str(weights), *opts]) == 1
    err = capsys.readouterr().err
    assert str(shard) in err and "cannot open shard" in err
    assert not (tmp_path / "out" / "eval" / "test-model" / "metrics.json").exists()  # evaluation's own folder
    # The data is checked before anything is written (issue 23): no record of a failed evaluation.
    assert not (tmp_path / "out" / "eval" / "test-model").exists()


def test_changed_shard_fails_the_checksums_when_asked(packed_copy, tmp_path):
    shard = packed_copy / "test-00000.h5"
    with h5py.File(shard, "r+") as f:  # still a valid HDF5 file: only the checksum can tell
        f["regions"][3, 0, 0] = 7.0
    Trainer(cfg_for(packed_copy, tmp_path / "plain"))  # not verified unless asked
    with pytest.raises(PackedFormatError) as err:
        Trainer(cfg_for(packed_copy, tmp_path / "checked", "DATA.VERIFY_CHECKSUMS", "True"))
    msg = str(err.value)
    assert str(shard) in msg and "sha256" in msg and "differs from the manifest" in msg


# ----------------------------------------------------------------------- checkpoints
def test_truncated_checkpoint_given_to_resume_is_named(small_packed, tmp_path):
    path = tmp_path / "checkpoint_epoch_0003.pth"
    torch.save({"model": {"w": torch.ones(1000)}, "epoch": 3}, path)
    path.write_bytes(path.read_bytes()[:700])
    with pytest.raises(ckpt.CheckpointError) as err:
        Trainer(cfg_for(small_packed, tmp_path / "out"), resume=str(path))
    assert str(path) in str(err.value) and "truncated or corrupt" in str(err.value)


_WRITE_NEXT = textwrap.dedent("""
    import sys
    import torch
    from biam.engine import checkpoint as ckpt

    try:
        ckpt.save_checkpoint(sys.argv[1], 2, {"epoch": 2, "w": torch.ones(1_000_000)}, keep=3)
    except ckpt.CheckpointError as err:
        print(f"WRITE FAILED {type(err).__name__}: {err}")
        sys.exit(5)
    print("WRITTEN")
""")


def _small_file_limit():
    # Runs in the child before exec: writes past 256 KB fail with EFBIG instead of killing it.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))


def test_full_disk_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path):
    """A real write failure (file-size limit, as on a full disk) in a separate process."""
    d = tmp_path / "checkpoints"
    ckpt.save_checkpoint(str(d), 1, {"epoch": 1, "w": torch.arange(100, dtype=torch.float32)})
    first = d / "checkpoint_epoch_0001.pth"
    before = sha256(first)
    path = os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH")] if p)  # carried packages stay on it
    env = dict(os.environ, PYTHONPATH=path, PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run([sys.executable, "-c", _WRITE_NEXT, str(d)], preexec_fn=_small_file_limit, env=env,
                          capture_output=True, text=True, timeout=120)
    # torch's zip writer reports the failed write (EFBIG) as a RuntimeError; save_checkpoint
    # turns it into a CheckpointError that names the file and the likely cause.
    assert done.returncode == 5, done.stdout + done.stderr[-2000:]
    assert "WRITE FAILED CheckpointError" in done.stdout and "WRITTEN" not in done.stdout
    assert "checkpoint_epoch_0002.pth: write failed (disk full or file-size limit?)" in done.stdout
    assert sorted(os.listdir(d)) == ["checkpoint_epoch_0001.pth"]  # no half file, no .tmp left
    assert sha256(first) == before
    assert ckpt.latest_checkpoint(str(d)) == str(first)
    state = ckpt.load_checkpoint(str(first))
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.arange(100, dtype=torch.float32))


# ----------------------------------------------------------------------- untrusted config files
def test_yaml_config_with_a_python_tag_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "X"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f'SOLVER:\n  BASE_LR: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(ConfigError) as err:
        load_cfg(str(evil))
    assert "python/object/apply:os.system" in str(err.value)
    assert not marker.exists()


def _file_limit(size):
    # As on a disk that is full after a kilobyte or two: writes past ``size`` fail with EFBIG.
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    return limit


def _run_limited(module, *args, size=2048):
    path = os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH")] if p)
    env = dict(os.environ, PYTHONPATH=path, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, "-m", module, *args], preexec_fn=_file_limit(size), env=env,
                          capture_output=True, text=True, timeout=300)


def test_full_disk_during_train_and_evaluate_is_a_named_error_with_exit_5(small_packed, tmp_path):
    from biam.cli.train import main as train_main

    opts = [*TINY_MODEL_OPTS, *ONE_EPOCH, "EVAL.START_EPOCH", "1", "DATA.ROOT", str(small_packed)]
    done = _run_limited("biam.cli.train", *opts, "OUTPUT_DIR", str(tmp_path / "full"))
    assert done.returncode == 5, done.stderr[-3000:]
    assert "biam-train: system error:" in done.stderr and "File too large" in done.stderr
    assert str(tmp_path / "full") in done.stderr  # the file is named
    assert "Traceback" not in done.stderr
    # An earlier evaluation survives an evaluation that fails on a full disk, byte for byte.
    out = tmp_path / "run"
    assert train_main([*opts, "OUTPUT_DIR", str(out)]) == 0
    assert evaluate_main(["--checkpoint", str(out / "model_best.pth"), *opts, "OUTPUT_DIR", str(out)]) == 0
    folder = out / "eval" / "test-model_best"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    done = _run_limited("biam.cli.evaluate", "--checkpoint", str(out / "model_best.pth"), *opts, "OUTPUT_DIR", str(out),
                        size=1200)  # its config.yaml (1.2 KB) does not fit
    assert done.returncode == 5, done.stderr[-3000:]
    assert "biam-evaluate: system error:" in done.stderr and "Traceback" not in done.stderr
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(os.listdir(out / "eval")) == ["test-model_best"]  # no staging folder left
