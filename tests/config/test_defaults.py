"""Config build order, unknown keys, type errors and cross-key checks."""

import pytest
import yaml

from biam.config import ConfigError, dump_cfg, get_cfg_defaults, load_cfg


def test_file_then_overrides_win_in_order(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("SOLVER:\n  BASE_LR: 0.01\n  BATCH_SIZE: 8\nMODEL:\n  HEADS: 4\n")
    cfg = load_cfg(str(f), ["SOLVER.BATCH_SIZE", "16"])
    assert cfg.SOLVER.BASE_LR == 0.01  # from the file
    assert cfg.SOLVER.BATCH_SIZE == 16  # the command line beats the file
    assert cfg.MODEL.HEADS == 4
    assert cfg.MODEL.CHANNEL_DIM == get_cfg_defaults().MODEL.CHANNEL_DIM  # untouched default
    assert cfg.is_frozen()


def test_unknown_key_in_file_is_an_error(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("SOLVER:\n  BASE_LRR: 0.01\n")
    with pytest.raises(ConfigError, match="BASE_LRR"):
        load_cfg(str(f))


def test_unknown_override_key_is_an_error():
    with pytest.raises(ConfigError, match="MODEL.NOPE"):
        load_cfg(None, ["MODEL.NOPE", "1"])


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigError, match="SOLVER.BATCH_SIZE"):
        load_cfg(None, ["SOLVER.BATCH_SIZE", "many"])


def test_odd_number_of_override_tokens():
    with pytest.raises(ConfigError, match="KEY VALUE pairs"):
        load_cfg(None, ["SOLVER.BATCH_SIZE"])


@pytest.mark.parametrize(
    "opts, message",
    [
        (["MODEL.HEADS", "7"], "not divisible"),
        (["MODEL.TOPK", "197"], "MODEL.TOPK"),
        (["AMP", "fp8"], "allowed values"),
        (["DATA.TRAIN_FRACTION", "0.0"], "TRAIN_FRACTION"),
        (["SOLVER.BASE_LR", "1e-4"], "MIN_LR"),
        (["SOLVER.WARMUP_EPOCHS", "50"], "WARMUP_EPOCHS"),
        (["MODEL.SCENE_HEAD_WEIGHTS", "random:abc"], "random:<int seed>"),
        (["SEED", "-1"], r"SEED = -1; must be an int in 0\.\."),
        (["SEED", str(2**32)], "SEED = 4294967296"),
        (["DTYPE", "float16"], "allowed values"),
        (["DTYPE", "float64", "AMP", "bf16"], "DTYPE = 'float64' runs without autocast"),
    ],
)
def test_cross_key_checks(opts, message):
    with pytest.raises(ConfigError, match=message):
        load_cfg(None, opts)


def test_missing_file_and_python_configs_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_cfg(str(tmp_path / "absent.yaml"))
    py = tmp_path / "evil.py"
    py.write_text("import os\nos.remove('x')\n")
    with pytest.raises(ConfigError, match="never run"):
        load_cfg(str(py))


def test_shipped_configs_load_and_round_trip(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "configs"
    names = sorted(p.name for p in root.glob("*.yaml"))
    assert {"nus_wide.yaml", "openimages.yaml", "demo.yaml"} <= set(names)
    for name in names:
        cfg = load_cfg(str(root / name))
        out = tmp_path / f"resolved-{name}"
        dump_cfg(cfg, str(out))
        again = load_cfg(str(out))
        assert yaml.safe_load(again.dump()) == yaml.safe_load(cfg.dump())


def test_paper_recipe_values():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "configs"
    nus = load_cfg(str(root / "nus_wide.yaml"))
    assert (nus.SOLVER.BASE_LR, nus.SOLVER.MAX_EPOCHS, nus.SOLVER.FINETUNE_EPOCHS, nus.SEED) == (1e-3, 40, 5, 3483)
    assert nus.DATA.TRAIN_FRACTION == 0.8 and nus.EVAL.SELECT_METRIC == "F1@5"
    oi = load_cfg(str(root / "openimages.yaml"))
    assert (oi.SOLVER.BASE_LR, oi.DATA.MAX_POSITIVES, oi.SOLVER.MAX_EPOCHS) == (1e-4, 40, 10)
    # The original's train_openimages.sh and evaluate_openimages.sh pass --heads 16; NUS-WIDE uses 8.
    assert (oi.MODEL.HEADS, nus.MODEL.HEADS) == (16, 8)
