"""``biam-checksums``: verify release files (or a packed dataset) against their SHA-256.

Exit status: 0 all present files match; 1 a file differs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ..data.checksums import verify_packed, verify_tree
from ..datasets import known_release_files


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="biam-checksums",
        description="Verify the release files under a datasets/ folder against their published SHA-256 "
                    "(exit 1 if any differs; missing files are listed, not errors).",
    )
    parser.add_argument("--root", default="datasets", help="the datasets/ folder (default: datasets)")
    parser.add_argument("--packed", metavar="DIR", default=None,
                        help="check a packed dataset (biam-convert output) instead: every shard's SHA-256 "
                             "against its manifest")
    args = parser.parse_args(argv)
    if args.packed is not None:
        return verify_packed(args.packed)
    report = verify_tree(args.root, known_release_files())
    for path in report["ok"]:
        print(f"ok       {path}")
    for path in report["missing"]:
        print(f"missing  {path}")
    for message in report["bad"]:
        print(f"BAD      {message}", file=sys.stderr)
    print(f"{len(report['ok'])} ok, {len(report['bad'])} bad, {len(report['missing'])} not present")
    return 1 if report["bad"] else 0


if __name__ == "__main__":
    sys.exit(main())
