#!/bin/sh
# Maintainer tooling: download into .whl/ (ignored by git) the wheels that the lent GPU machine's
# image lacks, for .ci/device_check.sh to install there offline (that machine reaches no registry).
#   sh .ci/device_wheels.sh          # run here, where pip reaches PyPI; then name .whl in `carry`
# The image (.ci/device_image_packages.txt) has torch 2.11, torchvision, numpy, h5py, tqdm,
# matplotlib, pillow, pyyaml, pytest, but not yacs (every `import biam` needs it), nor the
# optional CLIP extra's open-clip-torch with ftfy and wcwidth. Python 3.12 wheels for x86-64,
# one version of each (two would stop the install there); each wheel's Requires-Dist is
# printed and checked against the image's list and the other wheels: a missing one is named and
# the script fails.
set -eu
cd "$(dirname -- "$0")/.."
py=${PYTHON:-python3}
wheels="yacs==0.1.8 open-clip-torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4"
mkdir -p .whl
# A wheel of these names at another version (an older run) would be a second version: remove it.
for spec in $wheels; do
    name=$(printf '%s' "${spec%%==*}" | tr '-' '_')
    version=${spec#*==}
    for f in .whl/*.whl; do
        [ -e "$f" ] || continue
        base=$(basename "$f")
        stem=$(printf '%s' "$base" | cut -d- -f1 | tr '-' '_' | tr 'A-Z' 'a-z')
        fver=$(printf '%s' "$base" | cut -d- -f2)
        if [ "$stem" = "$(printf '%s' "$name" | tr 'A-Z' 'a-z')" ] && [ "$fver" != "$version" ]; then
            echo "device_wheels: removing $f (another version than $spec)"
            rm -f -- "$f"
        fi
    done
done
# shellcheck disable=SC2086
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $wheels
"$py" - .ci/device_image_packages.txt .whl <<'EOF'
"""List every carried wheel's requirements (extras skipped) and fail on one that neither the
image nor another wheel provides, or on two versions of one name."""
import re
import sys
import zipfile
from pathlib import Path


def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


image = {norm(l.strip()) for l in Path(sys.argv[1]).read_text().splitlines() if l.strip() and not l.startswith("#")}
wheels = sorted(Path(sys.argv[2]).glob("*.whl"))
carried = {}
for w in wheels:
    name = norm(w.name.split("-")[0])
    if name in carried:
        sys.exit(f"device_wheels: two versions of {name}: {carried[name].name} and {w.name}")
    carried[name] = w
missing = []
total = 0
for name, w in carried.items():
    total += w.stat().st_size
    with zipfile.ZipFile(w) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        reqs = [l.split(":", 1)[1].strip() for l in z.read(meta).decode().splitlines() if l.startswith("Requires-Dist:")]
    plain = [r for r in reqs if "extra ==" not in r]
    print(f"{w.name} ({w.stat().st_size / 2**20:.1f} MiB): requires {', '.join(plain) or 'nothing'}")
    for r in plain:
        dep = norm(re.split(r"[ ;<>=!~\[(]", r, maxsplit=1)[0])
        if dep not in image and dep not in carried:
            missing.append(f"{dep} (needed by {w.name})")
print(f"{len(carried)} wheels, {total / 2**20:.1f} MiB in .whl/ (the working tree that travels may take 64 MiB)")
if missing:
    sys.exit("device_wheels: missing on the GPU machine and not carried: " + "; ".join(missing))
EOF
