"""BiAM: bi-level attention for multi-label zero-shot image tagging (ICCV 2021), rebuilt."""

__version__ = "0.1.0"
