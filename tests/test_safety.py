"""The project's own code never runs a shell string, never unpickles without the restricted
unpickler, never loads a checkpoint with code execution allowed, never swallows every error."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(
    p for folder in ("biam", "feature_extraction", "datasets", "scripts")
    for p in (ROOT / folder).rglob("*.py")
)

FORBIDDEN = {
    r"\bos\.system\(": "os.system runs a shell string",
    r"shell\s*=\s*True": "shell=True builds a shell from a string",
    r"^\s*except\s*:": "a bare except hides every error",
    r"\bpickle\.loads?\(": "pickle.load of a file can run code; use biam.data.safe_pickle",
    r"(?<![.\w])(eval|exec)\(": "eval/exec run strings as code",
    r"yaml\.load\(": "yaml.load can build objects; use yaml.safe_load",
}


def test_sources_are_found():
    assert len(SOURCES) > 10 and any(p.name == "trainer.py" for p in SOURCES)


def test_no_forbidden_patterns():
    hits = []
    for path in SOURCES:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for pattern, why in FORBIDDEN.items():
                if re.search(pattern, line):
                    hits.append(f"{path.relative_to(ROOT)}:{number}: {why}: {line.strip()}")
    assert not hits, "\n".join(hits)


def test_every_torch_load_is_weights_only():
    hits = []
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"torch\.load\(", text):
            call = text[match.start(): text.find(")", match.start()) + 1]
            if "weights_only=True" not in call:
                line = text.count("\n", 0, match.start()) + 1
                hits.append(f"{path.relative_to(ROOT)}:{line}: {call}")
    assert not hits, "\n".join(hits)
