"""``python -m biam.evaluate``: see ``biam.engine.evaluator``."""

import sys

from .engine.evaluator import main

if __name__ == "__main__":
    sys.exit(main())
