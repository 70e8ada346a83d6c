"""Checking files against their checksums: release files against the SHA-256 and size the
dataset folders publish (``KNOWN_FILES`` of ``biam/datasets/<name>/release.py``), and a packed
dataset's shards against the SHA-256 its manifest lists (the full check behind
``DATA.VERIFY_CHECKSUMS``; opening a dataset runs only the cheap checks). The command is
``biam-checksums`` (docs/reliability.md).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional

from ..utils.io import sha256_file
from .packed import PackedDataset, PackedFormatError, read_manifest

__all__ = ["KnownFile", "verify_file", "verify_tree", "verify_packed"]


@dataclass(frozen=True)
class KnownFile:
    """A release file as published: its SHA-256 (hex), its size in bytes and what it holds."""

    sha256: str
    size: int
    what: str


def verify_file(path: str, key: str, known: "KnownFile") -> Optional[str]:
    """None if ``path`` matches ``known`` (the release's file ``key``); otherwise a message naming the file."""
    size = os.path.getsize(path)
    if size != known.size:
        return f"{path}: size {size} bytes, the release's {key} has {known.size} (truncated or a different file)"
    digest = sha256_file(path)
    if digest != known.sha256:
        return f"{path}: sha256 {digest} differs from the release's {known.sha256} for {key}"
    return None


def verify_tree(root: str, known_files: Mapping[str, "KnownFile"]) -> Dict[str, List[str]]:
    """Check every file of ``known_files`` (paths relative to ``root``) that is under ``root``;
    returns {"ok": [...], "missing": [...], "bad": [messages]}."""
    report: Dict[str, List[str]] = {"ok": [], "missing": [], "bad": []}
    for key in sorted(known_files):
        path = os.path.join(root, key)
        if not os.path.isfile(path):
            report["missing"].append(path)
            continue
        problem = verify_file(path, key, known_files[key])
        (report["bad"] if problem else report["ok"]).append(problem or path)
    return report


def verify_packed(root: str) -> int:
    """Check every shard of every split of the packed dataset ``root``; print one line per
    split; 0 when all match, 1 (naming the first bad shard) otherwise."""
    try:
        splits = sorted(read_manifest(root)["splits"])
        for split in splits:
            ds = PackedDataset(root, split, allow_incomplete=True, check=False)
            ds.verify(progress=False)
            print(f"ok       {root}: split '{split}', {len(ds.shards)} shards")
    except PackedFormatError as err:
        print(f"BAD      {err}", file=sys.stderr)
        return 1
    return 0

