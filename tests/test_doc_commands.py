"""Every command shown in the docs' code blocks exists with the flags and config keys it shows.

Read from every fenced block of README.md, docs/*.md and the READMEs of datasets/,
feature_extraction/ and pretrained_weights/: each line (continuations joined, ``&&``, ``;``
and ``|`` split) that runs a console script of setup.py, ``python -m biam...``, a
``feature_extraction/`` or ``datasets/`` script, ``torchrun ... -m biam...`` or
``sh scripts/X.sh``. The command must exist; each ``--flag`` it shows must be in that command's
``--help`` (of its subcommand, for ``biam-convert nus_wide``); each ``KEY.NAME`` config key it
shows must be a key of biam/config/defaults.py. So a page cannot drift from the code.
"""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

from helpers import helps_in_one_interpreter

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "datasets").glob("*/README.md")),
         ROOT / "feature_extraction" / "README.md", ROOT / "pretrained_weights" / "README.md"]
CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


def console_scripts():
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == "console_scripts":
                    return dict(re.split(r"\s*=\s*", elt.value) for elt in value.elts)
    raise AssertionError("setup.py lists no console_scripts")


SCRIPTS = console_scripts()


def fenced_lines(path: Path):
    """(line number, command line) of every fenced block, backslash continuations joined."""
    in_fence, pending, start = False, "", 0
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_fence, pending = not in_fence, ""
            continue
        if not in_fence:
            continue
        text = line.split(" #", 1)[0].rstrip() if not line.lstrip().startswith("#") else ""
        if not pending:
            start = lineno
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        full, pending = pending + text, ""
        for part in re.split(r"&&|\|\||;|\|", full):
            if part.strip():
                yield start, part.strip()


def parse_command(line: str):
    """(the thing run, its arguments) for a line that runs one of ours, else None.

    The thing run is ("module", name), ("file", path) or ("script", path)."""
    try:
        words = shlex.split(line)
    except ValueError:
        return None
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):  # VAR=value prefixes
        words = words[1:]
    if not words:
        return None
    head = words[0]
    if head in SCRIPTS:
        return ("module", SCRIPTS[head].split(":")[0], head), words[1:]
    if head in ("python", "python3") and len(words) > 1:
        if words[1] == "-m" and len(words) > 2 and words[2].startswith("biam"):
            return ("module", words[2], words[2]), words[3:]
        if words[1].startswith(("feature_extraction/", "datasets/")) and words[1].endswith(".py"):
            return ("file", words[1], words[1]), words[2:]
    if head == "torchrun" and "-m" in words:
        i = words.index("-m")
        return ("module", words[i + 1], words[i + 1]), words[i + 2:]
    if head == "sh" and len(words) > 1 and words[1].startswith("scripts/"):
        return ("script", words[1], words[1]), words[2:]
    return None


def required_flags(text: str):
    """Options the usage line shows outside brackets and groups (argparse's required ones; a
    required group ``(--a X | --b Y)`` asks for one of several, which is not checked)."""
    usage = text.split("\n\n", 1)[0]
    depth, word, out = 0, "", []
    for ch in usage + " ":
        if ch.isspace() or ch in "[]()|":
            if word.startswith("--") and depth == 0:
                out.append(word)
            word = ""
            depth += (ch in "[(") - (ch in "])")
        else:
            word += ch
    return out


def script_target(path: str):
    """The command a script hands its own arguments ("$@") to, e.g. biam.cli.train, or None."""
    for line in (ROOT / path).read_text(encoding="utf-8").splitlines():
        found = re.search(r"(?:launch|-m)\s+(biam\.cli\.\w+)", line)
        if found and '"$@"' in line:
            return found.group(1)
    return None


def commands():
    for page in PAGES:
        if not page.is_file():
            continue
        for lineno, line in fenced_lines(page):
            parsed = parse_command(line)
            if parsed:
                yield f"{page.relative_to(ROOT).as_posix()}:{lineno}", parsed


COMMANDS = list(commands())


# --help texts answered ahead by one interpreter (see _warm_help), by (kind, target).
_HELP = {}
@lru_cache(maxsize=None)
def help_text(kind: str, target: str, sub: str = "") -> str:
    if not sub and (kind, target) in _HELP:
        code, out, err = _HELP[kind, target]
        assert code == 0, f"{target} --help: exit {code}\n{err[-2000:]}"
        return out
    args = ([sys.executable, "-m", target] if kind == "module" else [sys.executable, target]) + ([sub] if sub else [])
    done = subprocess.run(args + ["--help"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, f"{' '.join(args)} --help: exit {done.returncode}\n{done.stderr[-2000:]}"
    return done.stdout


@lru_cache(maxsize=None)
def config_keys():
    from biam.config import get_cfg_defaults

    keys = set()

    def walk(node, prefix):
        for k, v in node.items():
            name = f"{prefix}{k}"
            keys.add(name)
            if isinstance(v, dict):
                walk(v, name + ".")

    walk(get_cfg_defaults(), "")
    return keys


def test_the_docs_show_commands():
    # The reading finds the documented entry points (a regression would make every test below vacuous).
    shown = {target for _, ((_, target, _), _) in COMMANDS}
    assert {"biam.cli.train", "biam.cli.evaluate", "biam.cli.convert", "biam.cli.predict"} <= shown, shown
    assert any(kind == "script" for _, ((kind, _, _), _) in COMMANDS)


@pytest.fixture(scope="module", autouse=True)
def _warm_help():
    # Each --help imports torch: one interpreter answers them all.
    wanted = {(kind, target) for _, ((kind, target, _), _) in COMMANDS if kind != "script"}
    wanted |= {("module", t) for _, ((kind, path, _), _) in COMMANDS if kind == "script" and (t := script_target(path))}
    jobs = [[f"{kind}:{target}", kind, target, target] for kind, target in sorted(wanted)]
    for key, answer in helps_in_one_interpreter(jobs, ROOT).items():
        kind, target = key.split(":", 1)
        _HELP[kind, target] = answer


@pytest.mark.parametrize("where, command", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_documented_command_exists_with_its_flags_and_keys(where, command):
    (kind, target, shown), args = command
    kind_shown = kind
    if kind in ("script", "file"):
        assert (ROOT / target).is_file(), f"{where}: {target} does not exist"
    if kind == "script":
        # Its own arguments go to one command: the flags shown must be that command's.
        kind, target = "module", script_target(target)
        if target is None:
            assert not [a for a in args if a.startswith("--")], f"{where}: `{shown}` takes no options"
    if target is not None:
        text = help_text(kind, target)
        positional = [a for a in args if not a.startswith("-")]
        # A subcommand (biam-convert nus_wide): its own --help lists its flags.
        choices = re.search(r"\{([\w,-]+)\}", text)
        if choices and positional and positional[0] in choices.group(1).split(","):
            text = help_text(kind, target, positional[0])
        shown_flags = [a.split("=", 1)[0] for a in args if a.startswith("--")]
        for flag in shown_flags:
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), f"{where}: `{shown}` has no option {flag}"
        if "..." not in args and "--help" not in args and kind_shown != "script":
            # A command shown whole must work as shown: every required option is there.
            missing = [f for f in required_flags(text) if f not in shown_flags]
            assert not missing, f"{where}: `{shown}` lacks its required option(s) {', '.join(missing)}"
    for word in args:
        if CONFIG_KEY.match(word):
            assert word in config_keys(), f"{where}: `{shown}`: {word} is not a config key (biam/config/defaults.py)"
