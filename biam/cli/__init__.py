"""Command-line entry points, one module per command, each ``main(argv=None) -> int``.

The console scripts (``biam-train``, ``biam-evaluate``, ``biam-convert``, ``biam-predict``), the
``python -m`` aliases (``biam.train``, ``biam.evaluate``, ``biam.data.convert``, ``biam.predict``,
``biam.data.synthetic``, ``biam.data.checksums``) and the scripts in ``feature_extraction/`` all
call these. Exceptions become exit codes in one place: :func:`biam.cli._errors.run_main`.
"""
