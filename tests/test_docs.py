"""The docs stand alone and name only things that exist.

(a) No tracked file outside tests/ cites files users do not have (the development "SPEC" or
    the ../shared folder). (b) Every code reference in README.md and docs/*.md resolves: a
    repository file path, a ``tests/...py::test_name``, a dotted ``biam.x.y`` name, a called
    ``name()`` (defined somewhere in the package), and every relative Markdown link.
"""

from __future__ import annotations

import builtins
import importlib
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# docs/benchmarks.md holds measured figures and is rewritten whole by the benchmark work.
SKIP_DOCS = {"docs/benchmarks.md"}
# Folders of this repository that a path in the docs may start with.
REPO_DIRS = ("biam/", "tests/", "scripts/", "configs/", "docs/", "feature_extraction/", "datasets/", ".ci/")
CODE_SUFFIXES = (".py", ".sh", ".yaml", ".md")
# Calls of other libraries' functions that the docs may name.
FOREIGN = {"torch", "np", "numpy", "nn", "F", "os", "json", "h5py", "yaml", "math", "random", "pickle", "sys",
           "time", "tqdm", "ceil", "floor", "sqrt", "exp", "log", "nonzero", "argsort", "topk", "sha256", "hashlib", "dist", "plt",
           "matplotlib", "argparse", "pathlib", "Path", "cv2", "PIL", "Image",
           "print", "len", "range", "open", "float", "int", "str", "list", "dict", "sorted", "max", "min", "sum",
           "model", "optimizer", "scaler", "torchvision", "tensorboard", "self", "super", "cfg", "loader"}


def tracked_files():
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / line for line in out.splitlines() if line]


def doc_files():
    files = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
    return [f for f in files if f.relative_to(ROOT).as_posix() not in SKIP_DOCS]


def code_spans(text: str):
    """Inline code spans (single backticks) outside fenced blocks, with their line numbers."""
    in_fence = False
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        for span in re.findall(r"(?<!`)`([^`\n]+)`(?!`)", line):
            yield lineno, span.strip()


def fenced_references(text: str):
    """In fenced blocks: names imported from biam and ``name()`` written with empty parentheses
    (as the package map in docs/architecture.md lists functions)."""
    in_fence = False
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
            continue
        if not in_fence:
            continue
        imp = re.match(r"\s*from (biam[\w.]*) import ([\w, ]+)", line)
        if imp:
            for name in imp.group(2).split(","):
                yield lineno, f"{imp.group(1)}.{name.strip()}"
        for name in re.findall(r"(?<![\w.])([A-Za-z_]\w*)\(\)", line):
            yield lineno, f"{name}()"


def test_no_file_cites_the_development_spec_or_shared_folder():
    offenders = []
    for path in tracked_files():
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("tests/") or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary files
        for lineno, line in enumerate(text.splitlines(), 1):
            if re.search(r"\bSPEC\b", line) or "../shared" in line or "SPEC.md" in line:
                offenders.append(f"{rel}:{lineno}: {line.strip()[:100]}")
    assert not offenders, "references to files users do not have:\n" + "\n".join(offenders)


def _defined_names():
    names = set()
    pattern = re.compile(r"^[ \t]*(?:async[ \t]+)?(?:def|class)[ \t]+(\w+)|^[ \t]*(\w+)[ \t]*(?::[^=\n]*)?=", re.M)
    for folder in ("biam", "scripts", "feature_extraction", "datasets"):
        for path in (ROOT / folder).rglob("*.py"):
            for m in pattern.finditer(path.read_text(encoding="utf-8")):
                names.add(m.group(1) or m.group(2))
    return names


def _resolve_dotted(name: str) -> bool:
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def check_span(span: str, defined) -> str:
    """'' when ``span`` resolves (or is not a code reference), else why not."""
    test_ref = re.fullmatch(r"([\w/]+\.py)::(\w+)(?:\[.*\])?", span)
    if test_ref:
        file, func = test_ref.groups()
        if not file.startswith("tests/"):
            file = "tests/" + file  # a table of tests may leave out the tests/ folder
        if not (ROOT / file).is_file():
            return f"{file} does not exist"
        if not re.search(rf"^\s*def {func}\b", (ROOT / file).read_text(encoding="utf-8"), re.M):
            return f"{file} has no test {func}"
        return ""
    path = span.split("::")[0].split(" ")[0].rstrip(",.:;")
    if "/" in path and path.startswith(REPO_DIRS) and path.endswith(CODE_SUFFIXES) and "*" not in path \
            and "<" not in path:
        return "" if (ROOT / path).exists() else f"{path} does not exist"
    dotted = re.fullmatch(r"(biam(?:\.\w+)+)(?:\(.*\))?", span)
    if dotted:
        return "" if _resolve_dotted(dotted.group(1)) else f"{dotted.group(1)} cannot be imported"
    call = re.fullmatch(r"([A-Za-z_][\w.]*)\(.*\)", span)
    if call:
        parts = call.group(1).split(".")
        if parts[0] in FOREIGN or parts[0] in dir(builtins) or parts[-1].startswith("__"):
            return ""
        return "" if parts[-1] in defined else f"{parts[-1]} is defined nowhere in the package"
    return ""


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_code_references_in_docs_exist(doc):
    defined = _defined_names()
    text = doc.read_text(encoding="utf-8")
    problems = []
    for lineno, span in list(code_spans(text)) + list(fenced_references(text)):
        why = check_span(span, defined)
        if why:
            problems.append(f"{doc.name}:{lineno}: `{span}`: {why}")
    for lineno, line in enumerate(text.splitlines(), 1):
        for target in re.findall(r"\]\(([^)\s]+)\)", line):
            target = target.split("#")[0]
            if not target or re.match(r"[a-z]+:", target):
                continue  # an anchor in the page, or a web address
            if not (doc.parent / target).exists():
                problems.append(f"{doc.name}:{lineno}: link {target} does not exist")
    assert not problems, "\n".join(problems)


def test_the_checker_catches_wrong_names():
    """The check itself: each kind of wrong reference is reported, right ones are not."""
    defined = _defined_names()
    assert check_span("get_cfg()", defined)
    assert not check_span("get_cfg_defaults()", defined)
    assert check_span("tests/modeling/test_biam.py", defined)
    assert not check_span("tests/modeling/test_biam_reference.py", defined)
    assert check_span("tests/engine/test_trainer.py::test_no_such_test", defined)
    assert check_span("biam.engine.trainer.NoSuchName", defined)
    assert not check_span("biam.engine.trainer.Trainer", defined)
    assert not check_span("biam/engine/schedule.py", defined)
    fenced = list(fenced_references("```\nconfig/defaults.py   get_cfg(), load_cfg()\n```\n"))
    assert [span for _, span in fenced] == ["get_cfg()", "load_cfg()"]
