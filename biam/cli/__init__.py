"""Command-line entry points, one module per command, each ``main(argv=None) -> int``.

Every command is a console script of ``setup.py`` (``biam-train``, ``biam-evaluate``,
``biam-convert``, ``biam-predict``, ``biam-checksums``, ``biam-synthetic``, ``biam-demo-shapes``,
``biam-extract-nus-wide``, ``biam-extract-openimages``, ``biam-extract-own``); ``python -m
biam.cli.<command>`` runs the same ``main`` (``torchrun -m biam.cli.train`` for several
processes), and the scripts in ``feature_extraction/`` are thin shims over the extractors.
Exceptions become exit codes in one place: :func:`biam.cli._errors.run_main`. Nothing below
this package imports it.
"""
