"""``biam-demo-shapes``: write the generated tagged-image dataset of coloured shapes
(:mod:`biam.demo.shapes`) that ``scripts/demo_own_data.sh`` and docs/own_data.md use.

Exit status: 0 written; 2 a refused --out folder or bad option values.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ..demo.shapes import generate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biam-demo-shapes",
        description="Write a small tagged-image dataset of coloured shapes (images, tags.csv, seen.txt, unseen.txt, "
                    "a GloVe-format word-vector file) for the worked example of docs/own_data.md.")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="new or empty folder (or one this command wrote before: its files are replaced)")
    parser.add_argument("--num-images", type=int, default=100, metavar="N", help="images to draw (default 100)")
    parser.add_argument("--num-test", type=int, default=None, metavar="N",
                        help="of which test images, listed in test.txt (default 30%%); the others go to train.txt")
    parser.add_argument("--size", type=int, default=96, metavar="PX", help="image side in pixels (default 96, >= 32)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same files (default 0)")
    parser.add_argument("--format", choices=("png", "jpg"), default="png", help="image file format (default png)")
    parser.add_argument("--dim", type=int, default=300, metavar="D",
                        help="word-vector width (default 300, the model's default MODEL.EMBED_DIM)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        info = generate(args.out, num_images=args.num_images, num_test=args.num_test, size=args.size, seed=args.seed,
                        image_format=args.format, dim=args.dim)
    except (FileExistsError, ValueError) as err:
        print(f"shapes_demo: error: {err}", file=sys.stderr)
        return 2
    print(f"shapes_demo: wrote {info['num_images']} images ({info['num_test']} test), {len(info['seen'])} seen and {len(info['unseen'])} "
          f"unseen tags to {args.out}")
    return 0



if __name__ == "__main__":
    sys.exit(main())
