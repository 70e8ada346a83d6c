"""YAML configs read as bounded plain data: aliases, duplicate keys, non-mappings and deep nesting refused."""

import time

import pytest

from biam.config import ConfigError, load_cfg
from biam.utils.yaml_safe import YamlConfigError, load_yaml_mapping


def test_nested_aliases_are_refused_at_once(tmp_path):
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 9) + "]")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\nSOLVER:\n  BETAS: *i\n")
    started = time.time()
    with pytest.raises(ConfigError, match=r"line 2: alias \*a refused"):
        load_cfg(str(path))
    assert time.time() - started < 5


def test_duplicate_key_names_the_key_and_both_lines(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("SOLVER:\n  BASE_LR: 0.1\n  BASE_LR: 0.2\n")
    with pytest.raises(ConfigError, match=r"key 'BASE_LR' set twice: lines 2 and 3"):
        load_cfg(str(path))


@pytest.mark.parametrize("text,match", [("- a\n- b\n", "is a list, not a mapping"), ("3\n", "is a int"),
                                        ("A: " + "[" * 100 + "]" * 100 + "\n", "nested deeper than 32")])
def test_non_mapping_and_deep_documents_are_refused(tmp_path, text, match):
    path = tmp_path / "x.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_cfg(str(path))


def test_plain_config_still_loads():
    assert load_yaml_mapping("A:\n  B: [1, 2]\n") == {"A": {"B": [1, 2]}}
    assert load_yaml_mapping("") == {}
    with pytest.raises(YamlConfigError):
        load_yaml_mapping("a: 1\na: 2\n")


@pytest.mark.parametrize("opts,match", [(["SOLVER.BASE_LR", "1e999"], "must be a finite number"),
                                        (["SOLVER.WEIGHT_DECAY", "1e999"], "must be a finite number"),
                                        (["DATA.TEST_SPLIT", "../x"], "a split name holds no"),
                                        (["DATA.TRAIN_SPLIT", ".hidden"], "a split name holds no")])
def test_infinite_numbers_and_path_split_names_are_refused(opts, match):
    with pytest.raises(ConfigError, match=match):
        load_cfg(None, opts)


@pytest.mark.parametrize("value", [".inf", ".nan"])
def test_infinite_or_nan_learning_rate_in_a_file_is_refused(tmp_path, value):
    path = tmp_path / "lr.yaml"
    path.write_text(f"SOLVER:\n  BASE_LR: {value}\n")
    with pytest.raises(ConfigError, match="SOLVER.BASE_LR"):
        load_cfg(str(path))
