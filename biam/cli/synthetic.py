"""``biam-synthetic``: write a small learnable NUS-WIDE-like dataset in the released layout (the demo's data)."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ..demo import synthetic
from ..demo.synthetic import write_synthetic_nus_wide


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="biam-synthetic", description=synthetic.__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (gets the released NUS-WIDE/ layout)")
    p.add_argument("--num-train", type=int, default=1500)
    p.add_argument("--num-test", type=int, default=500)
    p.add_argument("--num-tags", type=int, default=60)
    p.add_argument("--num-concepts", type=int, default=15)
    p.add_argument("--overlap", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    paths = write_synthetic_nus_wide(a.out, num_train=a.num_train, num_test=a.num_test, num_tags=a.num_tags,
                                     num_concepts=a.num_concepts, overlap=a.overlap, seed=a.seed)
    print(f"wrote synthetic NUS-WIDE layout under {a.out} ({len(paths)} files); "
          f"convert it with: biam-convert nus_wide --src {a.out} --out <packed dir>")
    return 0


if __name__ == "__main__":
    sys.exit(main())
