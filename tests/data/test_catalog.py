"""The dataset registry: a new dataset is one file's worth of code, then convert, train, evaluate.

The "toy" dataset below is what a user's ``my_dataset.py`` would hold: a released layout (one
``.npz`` file), its converter and its protocol (K = 2 and 4, the images with a positive, the
annotated-column mAP variants). Nothing else in the package is edited for it.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from biam.config import ConfigError, load_cfg
from biam.cli.convert import main as convert_main
from biam.data.packed import PackedDataset, PackedWriter, save_embeddings
from biam.datasets import (
    DatasetInfo, ReleasedLayout, UnknownDatasetError, get_dataset, list_datasets, register_dataset, unregister_dataset,
)
from biam.cli.evaluate import main as evaluate_main
from biam.engine.trainer import Trainer
from biam.evaluation import Protocol

from helpers import TINY_MODEL_OPTS, make_tiny_packed

TESTS = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------ the one file of a new dataset
def convert_toy(src, out, *, paths, splits=("train", "test"), shard_size=1024, dtype="float16", scene_head=None,
                scene_source=None, overwrite=False, batch=64):
    """The toy release: one npz with per split regions, scene, labels, names, plus embeddings."""
    with np.load(paths["features"]) as z:
        data = {k: z[k] for k in z.files}
    seen, unseen = list(data["seen_names"]), list(data["unseen_names"])
    for k, split in enumerate(splits):
        writer = PackedWriter(out, split, dataset="toy", seen_labels=seen, unseen_labels=unseen, shard_size=shard_size,
                              dtype=dtype, scene_source="toy-release", resume=not overwrite, overwrite=overwrite)
        if k == 0:
            save_embeddings(out, data["seen_emb"], data["unseen_emb"])
        writer.append(data[f"{split}_regions"], data[f"{split}_labels"], list(data[f"{split}_names"]),
                      scene=data[f"{split}_scene"])
        writer.close()
    return writer.manifest


TOY = DatasetInfo(
    name="toy",
    description="a toy dataset registered by a test",
    protocol=Protocol(name="toy", ks=(2, 4), rows="with_positive", annotated_metrics=True, validation_ks=(3,)),
    released=ReleasedLayout(help="toy release (one npz)", paths={"features": "toy/features.npz"}, convert=convert_toy,
                            path_flags={"features": "--features"}),
)
# ------------------------------------------------------------------------------------------


@pytest.fixture
def toy_registered():
    register_dataset(TOY)
    yield TOY
    unregister_dataset("toy")


def write_toy_release(tmp_path):
    """The toy release file, made from the tiny packed data of the other tests."""
    packed = make_tiny_packed(tmp_path / "tiny", num_train=64, num_test=40)
    arrays = {}
    for split in ("train", "test"):
        ds = PackedDataset(packed, split)
        d = ds.read_slice(0, len(ds))
        if split == "test":
            d["labels"][:8, 12:] = 0  # images unannotated on the unseen labels: ZSL keeps the others
        arrays.update({f"{split}_{k}": d[k] for k in ("regions", "scene", "labels")})
        arrays[f"{split}_names"] = np.array(d["names"], dtype=str)
        arrays["seen_names"], arrays["unseen_names"] = np.array(ds.seen_labels), np.array(ds.unseen_labels)
    from biam.data.packed import load_embeddings

    arrays["seen_emb"], arrays["unseen_emb"] = load_embeddings(packed)
    (tmp_path / "src" / "toy").mkdir(parents=True)
    np.savez(tmp_path / "src" / "toy" / "features.npz", **arrays)
    return tmp_path / "src"


def test_builtin_datasets_and_lookup_errors():
    assert list_datasets()[:3] == ["nus_wide", "openimages", "own"]
    assert get_dataset("nus_wide").protocol.ks == (3, 5) and get_dataset("openimages").num_seen == 7186
    assert get_dataset("own").released is None  # made by the extractor only
    with pytest.raises(UnknownDatasetError, match="'coco'.*'nus_wide', 'openimages', 'own'"):
        get_dataset("coco")
    with pytest.raises(ValueError, match="already registered"):
        register_dataset(get_dataset("own"))


def test_config_allows_exactly_the_registered_datasets(toy_registered):
    assert load_cfg(None, ["DATA.DATASET", "toy", "EVAL.SELECT_METRIC", "F1@3"]).DATA.DATASET == "toy"
    # The toy protocol validates at K = 3 only.
    with pytest.raises(ConfigError, match="EVAL.SELECT_METRIC = 'F1@5'.*'F1@3', 'P@3', 'R@3', 'mAP'"):
        load_cfg(None, ["DATA.DATASET", "toy"])
    unregister_dataset("toy")
    with pytest.raises(ConfigError, match="DATA.DATASET = 'toy'; allowed values: 'nus_wide', 'openimages', 'own'"):
        load_cfg(None, ["DATA.DATASET", "toy", "EVAL.SELECT_METRIC", "F1@3"])
    register_dataset(TOY)  # for the fixture's teardown


def test_a_dataset_in_one_file_converts_trains_and_evaluates(toy_registered, tmp_path, capsys):
    src = write_toy_release(tmp_path)
    packed = tmp_path / "packed"
    assert convert_main(["toy", "--src", str(src), "--out", str(packed), "--no-scene"]) == 0
    assert json.loads((packed / "manifest.json").read_text())["dataset"] == "toy"

    opts = TINY_MODEL_OPTS + ["DATA.ROOT", str(packed), "DATA.DATASET", "toy", "EVAL.SELECT_METRIC", "F1@3",
                              "SOLVER.MAX_EPOCHS", "2", "SOLVER.WARMUP_EPOCHS", "1", "SOLVER.FINETUNE_EPOCHS", "1",
                              "EVAL.START_EPOCH", "2", "EVAL.REPORT_CHANCE", "True"]
    out = tmp_path / "run"
    with Trainer(load_cfg(None, opts + ["OUTPUT_DIR", str(out)])) as trainer:
        result = trainer.run()
    # The toy protocol's K, its row rule and its mAP variants, in training's test results.
    assert {"P@2", "F1@4", "mAP", "mAP_annotated", "wmAP"} <= set(result["zsl"]) and "F1@3" not in result["zsl"]
    assert result["zsl"]["num_images"] < 40 and result["gzsl"]["num_images"] == 40
    assert {"P@2", "F1@4"} <= set(result["chance"]["zsl"])
    val = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1]["val"]
    assert set(val) == {"mAP", "P@3", "R@3", "F1@3"}  # the toy validation K

    assert evaluate_main(["--checkpoint", str(out / "model_best.pth"), *opts, "OUTPUT_DIR", str(tmp_path / "ev")]) == 0
    saved = json.loads((tmp_path / "ev" / "eval" / "test-model_best" / "metrics.json").read_text())
    assert set(saved["zsl"]) == set(result["zsl"])
    assert "F1@4" in capsys.readouterr().err or "F1@4" in (tmp_path / "ev" / "eval" / "test-model_best" / "log.txt").read_text()

    # Packed data of one dataset under another's protocol is an error naming both.
    with pytest.raises(ValueError, match="dataset 'toy' but DATA.DATASET is 'nus_wide'"):
        Trainer(load_cfg(None, TINY_MODEL_OPTS + ["DATA.ROOT", str(packed), "OUTPUT_DIR", str(tmp_path / "x")]))


def test_own_config_uses_the_nus_wide_style_protocol():
    cfg = load_cfg(str(TESTS.parent / "configs" / "own.yaml"))
    protocol = get_dataset(cfg.DATA.DATASET).protocol
    assert cfg.DATA.DATASET == "own" and (protocol.ks, protocol.rows, protocol.annotated_metrics) == ((3, 5), "all", False)
    assert protocol.num_seen is None  # the data's own label counts


def test_own_packed_data_trains_and_evaluates_with_configs_own_yaml(tmp_path, capsys):
    """What extract_own.py writes (manifest dataset "own") runs under configs/own.yaml, and only there."""
    packed = make_tiny_packed(tmp_path / "own", num_train=32, num_test=16, dataset="own")
    opts = TINY_MODEL_OPTS + ["DATA.ROOT", str(packed), "SOLVER.MAX_EPOCHS", "1", "SOLVER.WARMUP_EPOCHS", "0",
                              "SOLVER.FINETUNE_EPOCHS", "0", "DATA.TRAIN_FRACTION", "1.0", "SOLVER.MIN_LR", "0.0"]
    own_yaml = str(TESTS.parent / "configs" / "own.yaml")
    out = tmp_path / "run"
    with Trainer(load_cfg(own_yaml, opts + ["OUTPUT_DIR", str(out)])) as trainer:
        result = trainer.run()
    assert set(result["zsl"]) >= {"F1@3", "F1@5", "mAP"} and "mAP_annotated" not in result["zsl"]
    assert result["zsl"]["num_images"] == 16 and "chance" in result  # every test image; own.yaml reports chance
    ckpt = sorted((out / "checkpoints").glob("*.pth"))[-1]
    assert evaluate_main(["--config-file", own_yaml, "--checkpoint", str(ckpt), *opts,
                          "OUTPUT_DIR", str(tmp_path / "ev")]) == 0
    # The NUS-WIDE config on the same data: refused, naming both datasets.
    assert evaluate_main(["--config-file", str(TESTS.parent / "configs" / "nus_wide.yaml"), "--checkpoint", str(ckpt),
                          *opts, "OUTPUT_DIR", str(tmp_path / "ev2")]) == 1
    assert "the packed data is dataset 'own' but DATA.DATASET is 'nus_wide'" in capsys.readouterr().err
