"""``python -m biam.benchmark``: see biam.benchmark.cli."""

from .cli import main

raise SystemExit(main())
