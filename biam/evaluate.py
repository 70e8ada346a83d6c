"""``python -m biam.evaluate``: the same command as ``biam-evaluate`` (see :mod:`biam.cli.evaluate`)."""

import sys

from .cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
