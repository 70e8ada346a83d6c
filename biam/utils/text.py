"""Reading the small text files users and the release hand us: UTF-8 (a BOM allowed), with the
file, line and byte named when they are not."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List

__all__ = ["read_text", "read_lines", "not_utf8_where"]


def not_utf8_where(path: os.PathLike) -> str:
    """Where a file stops being UTF-8, as ``"line L: byte 0xXX"`` (reads it line by line; for
    error messages only)."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                return f"line {lineno}: byte 0x{raw[err.start]:02x}"
    return "a byte"


def read_text(path: os.PathLike) -> str:
    """The whole text file as str (UTF-8, a leading BOM dropped); ValueError naming the file,
    line and byte when it is not UTF-8."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: {not_utf8_where(path)} is not UTF-8 (label and list files are read as "
                         "UTF-8; convert the file, e.g. with iconv -t UTF-8)") from None


def read_lines(path: os.PathLike) -> List[str]:
    """Non-empty lines of a text label file, stripped (handles CRLF and a UTF-8 BOM).

    Raises ``FileNotFoundError`` naming the file; ``ValueError`` for an empty line between
    entries (which would shift every later label by one).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file not found: {path}")
    lines = [ln.strip() for ln in read_text(path).splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    for i, ln in enumerate(lines):
        if not ln:
            raise ValueError(f"{path}: line {i + 1} is empty (labels are one a line, no gaps)")
    return lines

