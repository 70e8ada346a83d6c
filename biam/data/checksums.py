"""Published checksums of the release files the project knows, and a verifier.

``python -m biam.data.checksums --root datasets`` checks every known file found under the
released layout (relative to ``datasets/``) against its SHA-256 and size, says which are
missing, and exits non-zero on any mismatch. The digests were computed from the files of the
original release; see docs/reliability.md.

``python -m biam.data.checksums --packed DIR`` checks a packed dataset instead: every shard of
every split against the SHA-256 its manifest lists (the full check behind
``DATA.VERIFY_CHECKSUMS``; opening a dataset runs only the cheap checks).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional

from ..utils.io import sha256_file

__all__ = ["KNOWN_FILES", "KnownFile", "verify_file", "verify_tree", "verify_packed"]


@dataclass(frozen=True)
class KnownFile:
    sha256: str
    size: int
    what: str


# Paths relative to the datasets/ folder, as the release lays them out.
KNOWN_FILES: Dict[str, KnownFile] = {
    "NUS-WIDE/NUS_WID_Tags/TagList1k.txt": KnownFile(
        "fc676bfd97f4319a227b0ccf2996b76d7403fc180ff529e6851d53c02997670b", 8121, "NUS-WIDE 1000 tags"),
    "NUS-WIDE/ConceptsList/Concepts81.txt": KnownFile(
        "439aff2804e6104a53b7f9e4a7d634ed6e6303733d8a482260b240769ae9bf42", 612, "NUS-WIDE 81 concepts"),
    "NUS-WIDE/wiki_contexts/NUS_WIDE_pretrained_w2v_glove-wiki-gigaword-300": KnownFile(
        "ccedb1c497736aff7d0d7b6cdd40e0dd2c0ffb2b6fc24bac1c41542aa7c8f376", 1297409, "NUS-WIDE label embeddings (pickle)"),
    "NUS-WIDE/test_img_names.pkl": KnownFile(
        "2d491db983948cfde03fdb0ce83aaba779138f9fea280cc64a34fa5337e8731a", 3936532, "NUS-WIDE test image order (pickle)"),
    "OpenImages/2018_04/class-descriptions.csv": KnownFile(
        "6301d51a91632a2199060d3a0c8cd70904c95863f6867a5a7c4d24a031ee4062", 475854, "Open Images class names"),
    "OpenImages/2018_04/classes-trainable.txt": KnownFile(
        "07284fc58eae2c080fa26484cb523c562e27b5ba5958d31f2b0c30af694f4598", 71460, "Open Images 7186 seen classes"),
    "OpenImages/2018_04/top_400_unseen.csv": KnownFile(
        "cc9c8c78bb3fdc465bc5ec1c41f2eb59aa93345b890ad31027b9d6848e9453ff", 2187, "Open Images evaluated unseen columns"),
    "OpenImages/2018_04/unseen_labels.pkl": KnownFile(
        "ae47468824f22deab1ea59a00d259fa043c66a544a0cca8b75f1d90e95960d56", 48847, "Open Images 2594 unseen classes (pickle)"),
}


def verify_file(path: str, key: str) -> Optional[str]:
    """None if ``path`` matches the known file ``key``; otherwise a message naming the file."""
    known = KNOWN_FILES[key]
    size = os.path.getsize(path)
    if size != known.size:
        return f"{path}: size {size} bytes, the release's {key} has {known.size} (truncated or a different file)"
    digest = sha256_file(path)
    if digest != known.sha256:
        return f"{path}: sha256 {digest} differs from the release's {known.sha256} for {key}"
    return None


def verify_tree(root: str) -> Dict[str, List[str]]:
    """Check every known file under ``root``; returns {"ok": [...], "missing": [...], "bad": [messages]}."""
    report: Dict[str, List[str]] = {"ok": [], "missing": [], "bad": []}
    for key in sorted(KNOWN_FILES):
        path = os.path.join(root, key)
        if not os.path.isfile(path):
            report["missing"].append(path)
            continue
        problem = verify_file(path, key)
        (report["bad"] if problem else report["ok"]).append(problem or path)
    return report


def verify_packed(root: str) -> int:
    """Check every shard of every split of the packed dataset ``root``; print one line per
    split; 0 when all match, 1 (naming the first bad shard) otherwise."""
    from .packed import PackedDataset, PackedFormatError, read_manifest

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


if __name__ == "__main__":
    # `python -m biam.data.checksums`: the command lives in biam.cli.checksums.
    from biam.cli.checksums import main

    sys.exit(main())
