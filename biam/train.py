"""``python -m biam.train``: the same command as ``biam-train`` (see :mod:`biam.cli.train`)."""

import sys

from .cli.train import main

if __name__ == "__main__":
    sys.exit(main())
