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


# ------------------------------------------------------------ the one table of key rules
def _key_comments():
    """``{key: the comment block above it}`` read from biam/config/defaults.py."""
    import re
    from pathlib import Path

    src = (Path(__file__).resolve().parents[2] / "biam" / "config" / "defaults.py").read_text(encoding="utf-8")
    comments, block = {}, []
    for line in src.splitlines():
        if line.startswith("#"):
            block.append(line)
            continue
        m = re.match(r"^_C\.([A-Z0-9_.]+) = ", line)
        if m and not line.endswith("CN()"):  # a section, not a key
            comments[m.group(1)] = "\n".join(block)
        block = []
    return comments


def _default(key):
    node = get_cfg_defaults()
    for part in key.split("."):
        node = node[part]
    return node


def test_every_key_has_a_comment_and_every_rule_a_key():
    from biam.config import KEY_RULES

    comments = _key_comments()
    flat = {}

    def walk(node, prefix):
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                flat[f"{prefix}{k}"] = v

    walk(get_cfg_defaults(), "")
    assert set(comments) == set(flat)
    assert all(text.strip() for text in comments.values()), [k for k, t in comments.items() if not t.strip()]
    assert set(KEY_RULES) <= set(flat)


def test_allowed_values_and_bounds_come_from_the_table_and_its_comments_say_them():
    from biam.config import KEY_RULES

    comments = _key_comments()
    for key, rule in KEY_RULES.items():
        for value in rule.allowed:
            assert f'"{value}"' in comments[key], f"{key}: the comment above it does not name {value!r}"
        if rule.allowed:
            with pytest.raises(ConfigError, match=f"{key} = 'nope'; allowed values: "
                                                  + ", ".join(repr(v) for v in rule.allowed)):
                load_cfg(None, [key, "nope"])
        if rule.bound:
            negative = "-1.0" if isinstance(_default(key), float) else "-1"
            with pytest.raises(ConfigError, match=f"{key} = {negative}; must be"):
                load_cfg(None, [key, negative])


def test_the_keys_free_on_resume_are_the_tables_and_the_docs_list_them():
    import re
    from pathlib import Path

    from biam.config import FREE_ON_RESUME
    from biam.engine import run_record

    # The resume comparison reads its keys from this table (run_record.FREE_KEYS is FREE_ON_RESUME).
    assert run_record.FREE_KEYS is FREE_ON_RESUME and set(run_record.FREE_KEYS) == set(FREE_ON_RESUME)
    text = (Path(__file__).resolve().parents[2] / "docs" / "training.md").read_text(encoding="utf-8")
    always = text.split("  * always:", 1)[1].split("\n  * ", 1)[0]
    assert set(re.findall(r"`([A-Z][A-Z0-9_.]*)`", always)) == set(FREE_ON_RESUME)


def test_channels_last_reads_the_bool_of_earlier_configs(tmp_path):
    assert load_cfg(None, []).CHANNELS_LAST == "auto"
    assert load_cfg(None, ["CHANNELS_LAST", "True"]).CHANNELS_LAST == "auto"
    assert load_cfg(None, ["CHANNELS_LAST", "False"]).CHANNELS_LAST == "off"
    old = tmp_path / "old.yaml"
    old.write_text("CHANNELS_LAST: false\nSOLVER:\n  BASE_LR: 0.002\n")
    cfg = load_cfg(str(old))
    assert (cfg.CHANNELS_LAST, cfg.SOLVER.BASE_LR) == ("off", 0.002)
