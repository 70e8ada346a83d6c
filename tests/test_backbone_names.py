"""The backbone owns its grid: outside biam/backbones/, no code names 14, 196 or "vgg19".

Every Python token of biam/ is read (``tokenize``): a NUMBER 14 or 196, or a string literal
holding "vgg19", is a backbone's shape or name written where the registry should be asked
(``get_backbone(name).grid``, ``.num_regions``, ``DEFAULT_BACKBONE``). Docstrings and comments may
still give VGG19 shapes as examples. The allow-list below names each exception and its reason.
"""

import ast
import io
import tokenize
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "biam"

# file -> why it may name a VGG19 shape or name.
ALLOWED = {
    "biam/demo/synthetic.py": "generates data in the original release's layout, VGG19 features of 512 x 196",
    "biam/cli/_extract.py": "the --backbone help text describes the default backbone's output",
    "biam/cli/predict.py": "the --vgg-weights help text gives the VGG19 weights file name as an example",
}


def _docstring_lines(tree: ast.AST) -> set:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            lines.update(range(node.lineno, node.end_lineno + 1))
    return lines


def backbone_literals(source: str):
    """``[(line, token)]``: the NUMBER 14/196 and the strings holding "vgg19" outside docstrings."""
    skip = _docstring_lines(ast.parse(source))
    string_types = {tokenize.STRING} | ({tokenize.FSTRING_MIDDLE} if hasattr(tokenize, "FSTRING_MIDDLE") else set())
    found = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.start[0] in skip:
            continue
        if (tok.type == tokenize.NUMBER and tok.string in ("14", "196")) or \
                (tok.type in string_types and "vgg19" in tok.string):
            found.append((tok.start[0], tok.string))
    return found


def test_the_scan_finds_literals_in_code_not_in_docstrings_or_comments():
    src = 'def f(x):\n    """(B, 512, 196) VGG19 "vgg19" features."""\n    # 14 x 14\n    return x.view(14, 14), "vgg19"\n'
    assert backbone_literals(src) == [(4, "14"), (4, "14"), (4, '"vgg19"')]
    assert backbone_literals('name = f"{a}-vgg19"\n')  # f-strings too
    assert backbone_literals("n = 140 + 1.96\n") == []


def test_nothing_outside_a_backbone_names_its_grid_or_name():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("biam/backbones/") or rel in ALLOWED:
            continue
        for line, token in backbone_literals(path.read_text(encoding="utf-8")):
            problems.append(f"{rel}:{line}: {token}")
    assert not problems, ("backbone shapes or names outside biam/backbones/ (ask the registry: "
                          "get_backbone(name).grid / .num_regions, DEFAULT_BACKBONE):\n" + "\n".join(problems))
