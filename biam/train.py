"""``python -m biam.train``: see ``biam.engine.trainer``."""

import sys

from .engine.trainer import main

if __name__ == "__main__":
    sys.exit(main())
