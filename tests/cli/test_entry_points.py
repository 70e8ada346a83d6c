"""Every documented command answers --help with exit status 0, from one home: biam/cli/."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import helps_in_one_interpreter

ROOT = Path(__file__).resolve().parents[2]


def console_scripts():
    """``name=module:function`` entries of setup.py, read from its source (what pip installs)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == "console_scripts":
                    return [tuple(re.split(r"\s*=\s*", elt.value)) for elt in value.elts]
    raise AssertionError("setup.py lists no console_scripts")


def run(args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


SCRIPTS = console_scripts()
# `python -m biam.cli.<command>` (what torchrun -m runs) prints the console script's name.
ALIASES = [(target.split(":")[0], name) for name, target in SCRIPTS if target.startswith("biam.cli.")]
FILES = ["feature_extraction/extract_nus_wide.py", "feature_extraction/extract_openimages.py",
         "feature_extraction/extract_own.py", "datasets/OpenImages/download_imgs.py"]


@pytest.fixture(scope="module")
def helps():
    """Every command's ``--help``: the console scripts and files in one interpreter, each
    ``python -m`` alias in its own (runpy's double-import warning is only seen in a fresh one)."""
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    batch = [[f"script:{name}", "script", target, name] for name, target in SCRIPTS]
    batch += [[f"file:{path}", "file", path, path] for path in FILES]
    aliases = {("alias", module): ["-m", module, "--help"] for module, _ in ALIASES}
    with ThreadPoolExecutor(3) as pool:
        batch_job = pool.submit(helps_in_one_interpreter, batch, ROOT)
        done = dict(zip(aliases, pool.map(run, aliases.values())))
        answers = batch_job.result()
    for key, (code, out, err) in answers.items():
        kind, name = key.split(":", 1)
        done[kind, name] = SimpleNamespace(returncode=code, stdout=out, stderr=err)
    return done


def test_console_scripts_are_the_documented_ones():
    names = {name for name, _ in SCRIPTS}
    assert names == {"biam-train", "biam-evaluate", "biam-convert", "biam-predict", "biam-benchmark", "biam-checksums",
                     "biam-synthetic", "biam-demo-shapes", "biam-extract-nus-wide", "biam-extract-openimages",
                     "biam-extract-own", "biam-embed-labels", "biam-compare"}
    for name, target in SCRIPTS:
        if name != "biam-benchmark":  # the benchmark keeps its own module
            assert target.startswith("biam.cli.") and target.endswith(":main"), (name, target)


@pytest.mark.parametrize("name, target", SCRIPTS)
def test_console_script_answers_help(name, target, helps):
    done = helps["script", name]
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(f"usage: {name}"), done.stdout[:200]


@pytest.mark.parametrize("module, prog", ALIASES)
def test_python_m_alias_answers_help(module, prog, helps):
    done = helps["alias", module]
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(f"usage: {prog}"), done.stdout[:200]
    assert "RuntimeWarning" not in done.stderr  # runpy warns when a module is imported twice


@pytest.mark.parametrize("script", FILES)
def test_scripts_answer_help(script, helps):
    done = helps["file", script]
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(f"usage: {Path(script).name}"), done.stdout[:200]


def test_extraction_script_without_the_package_says_how_to_install_it():
    # -I: no PYTHONPATH, no script folder on sys.path; -S: no site-packages (so no `pip install -e .`).
    done = run(["-I", "-S", "feature_extraction/extract_own.py", "--help"])
    assert done.returncode == 1
    assert "biam package is not importable" in done.stderr and "pip install -e ." in done.stderr
    assert "Traceback" not in done.stderr


def test_no_entry_point_edits_sys_path():
    files = [*(ROOT / "biam").rglob("*.py"), *(ROOT / "feature_extraction").glob("*.py")]
    offenders = [str(p.relative_to(ROOT)) for p in files if "sys.path.insert" in p.read_text(encoding="utf-8")
                 or "sys.path.append" in p.read_text(encoding="utf-8")]
    assert offenders == []


def test_library_modules_hold_no_command_line_main():
    # The commands live in biam/cli/ (and the benchmark's in biam/benchmark/); no library module
    # parses arguments or runs as a script.
    for path in (ROOT / "biam").rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(("biam/cli/", "biam/benchmark/")):
            continue
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
        defs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert not defs & {"main", "parse_args", "build_parser", "_parser"}, (rel, defs)
        assert "__main__" not in text and "import argparse" not in text, rel
