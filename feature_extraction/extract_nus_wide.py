"""``python feature_extraction/extract_nus_wide.py ...``: the same command as ``biam-extract-nus-wide``
(:mod:`biam.cli.extract_nus_wide`; ``--help`` lists its options). Needs the package installed: ``pip install -e .``."""
import sys

try:
    from biam.cli.extract_nus_wide import main
except ModuleNotFoundError as err:
    if err.name != "biam":
        raise
    sys.exit("extract_nus_wide.py: the biam package is not importable; install it first with "
             "'pip install -e .' in the repository root (see README.md)")

if __name__ == "__main__":
    sys.exit(main(prog="extract_nus_wide.py"))
