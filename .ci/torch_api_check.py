"""Maintainer tooling: every dotted torch. / F. / nn. name the given folders use, resolved in the
torch this interpreter imports (to rehearse another torch, e.g. the lent GPU machine's 2.11).
    python .ci/torch_api_check.py biam tests feature_extraction scripts
Prints the names that do not resolve and the files that use them; exit code 1 when there are any.
Keyword arguments are not checked here: the test suite run under that torch checks them."""
import importlib
import re
import sys
from pathlib import Path
import torch
import torch.nn.functional as F
from torch import nn
roots = {"torch": torch, "F": F, "nn": nn}
names = {}
for folder in sys.argv[1:]:
    for p in Path(folder).rglob("*.py"):
        for m in re.finditer(r"(?<![\w.])((?:torch|F|nn)(?:\.[A-Za-z_]\w*)+)", p.read_text()):
            names.setdefault(m.group(1), set()).add(str(p))
bad = []
for name in sorted(names):
    parts = name.split(".")
    obj = roots[parts[0]]
    ok = True
    for i, a in enumerate(parts[1:], 1):
        if hasattr(obj, a):
            obj = getattr(obj, a)
            continue
        try:  # a submodule not yet imported
            obj = importlib.import_module(".".join(["torch"] + parts[1:i + 1]) if parts[0] == "torch" else "x")
        except ImportError:
            ok = False
            break
    if not ok:
        bad.append((name, sorted(names[name])[:3]))
print(f"torch {torch.__version__}: {len(names)} dotted names checked, {len(bad)} unresolved")
for name, files in bad:
    print(f"  unresolved: {name} (in {', '.join(files)})")
sys.exit(1 if bad else 0)
