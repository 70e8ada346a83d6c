"""biam-compare reads finished biam-evaluate folders (here: two checkpoints of one tiny run) into one
table with the protocol's columns, markdown and JSON, and refuses rows of another dataset or data."""

from __future__ import annotations

import json
import shutil

import pytest

from biam.cli.compare import main as compare_main
from biam.cli.evaluate import main as evaluate_main
from biam.cli.train import main as train_main

from helpers import TINY_MODEL_OPTS


@pytest.fixture(scope="module")
def evaluated(tiny_packed, tmp_path_factory):
    run = tmp_path_factory.mktemp("compare") / "run"
    opts = TINY_MODEL_OPTS + ["DATA.ROOT", str(tiny_packed), "SOLVER.MAX_EPOCHS", "2", "SOLVER.FINETUNE_EPOCHS", "0",
                              "EVAL.START_EPOCH", "2"]
    assert train_main([*opts, "OUTPUT_DIR", str(run)]) == 0
    for epoch in (1, 2):
        ckpt = run / "checkpoints" / f"checkpoint_epoch_{epoch:04d}.pth"
        assert evaluate_main(["--checkpoint", str(ckpt), *opts, "OUTPUT_DIR", str(run)]) == 0
    return run


def test_one_table_of_two_checkpoints(evaluated, tmp_path, capsys):
    folders = sorted((evaluated / "eval").iterdir())
    assert len(folders) == 2
    out = tmp_path / "table.json"
    assert compare_main([f"first={folders[0]}", str(folders[1]), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    header = [line for line in printed.splitlines() if line.startswith("| method")][0]
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert cells == ["method"] + [f"{t} {m}" for t in ("ZSL", "GZSL")
                                  for m in ("P@3", "R@3", "F1@3", "P@5", "R@5", "F1@5", "mAP")]
    table = json.loads(out.read_text())
    assert table["dataset"] == "nus_wide" and table["ks"] == [3, 5] and len(table["rows"]) == 2
    assert table["rows"][0]["name"] == "first" and table["rows"][0]["method"] == "biam"
    for row, folder in zip(table["rows"], folders):
        saved = json.loads((folder / "metrics.json").read_text())
        assert row["metrics"]["zsl"] == saved["zsl"]  # exactly what biam-evaluate wrote
        line = [ln for ln in printed.splitlines() if ln.startswith(f"| {row['name']} |")][0]
        assert line.split("|")[8].strip() == f"{100 * saved['zsl']['mAP']:.1f}"  # ZSL mAP column
    # A run folder stands for all its evaluations.
    assert compare_main([str(evaluated)]) == 0
    assert capsys.readouterr().out.count("| biam (vgg19)") == 2


def test_rows_of_another_dataset_or_data_are_refused(evaluated, tmp_path, capsys):
    first = sorted((evaluated / "eval").iterdir())[0]
    other = tmp_path / "other"
    shutil.copytree(first, other)
    cfg = (other / "config.yaml").read_text().replace("DATASET: nus_wide", "DATASET: openimages")
    (other / "config.yaml").write_text(cfg)
    assert compare_main([str(first), str(other)]) == 2
    err = capsys.readouterr().err
    assert "DATA.DATASET 'openimages'" in err and "'nus_wide'" in err

    moved = tmp_path / "moved"
    shutil.copytree(first, moved)
    data = tmp_path / "data"
    from helpers import make_tiny_packed

    make_tiny_packed(data, seed=5)
    (moved / "config.yaml").write_text((moved / "config.yaml").read_text().replace(
        str(json.loads((first / "evaluation.json").read_text())["data_root"]), str(data)))
    assert compare_main([str(first), str(moved)]) == 2
    assert "different test data" in capsys.readouterr().err
    assert compare_main([str(tmp_path / "nothing")]) == 2
