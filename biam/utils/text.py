"""Reading the small text files users and the release hand us: UTF-8 (a BOM allowed), with the
file, line and byte named when they are not."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List

__all__ = ["read_text", "read_lines", "split_lines", "not_utf8_where"]


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


# What str.splitlines ends a line at besides "\n" and "\r\n": in a file of one entry a line,
# each would split an entry in two silently (a label file shifted by one).
_OTHER_LINE_BREAKS = {"\r": "CARRIAGE RETURN", "\x0b": "LINE TABULATION", "\x0c": "FORM FEED",
                      "\x1c": "FILE SEPARATOR", "\x1d": "GROUP SEPARATOR", "\x1e": "RECORD SEPARATOR",
                      "\x85": "NEXT LINE", "\u2028": "LINE SEPARATOR", "\u2029": "PARAGRAPH SEPARATOR"}


def split_lines(text: str, path: os.PathLike) -> List[str]:
    """``text`` split at ``\n`` (a ``\r`` before it dropped) -> lines; ValueError naming ``path``,
    the line and the character for any other line break (U+2028, U+2029, U+0085, a lone CR, ...)."""
    lines = text.split("\n")
    for lineno, line in enumerate(lines, 1):
        line = line[:-1] if line.endswith("\r") else line
        lines[lineno - 1] = line
        bad = next((c for c in line if c in _OTHER_LINE_BREAKS), None)
        if bad is not None:
            raise ValueError(f"{path}: line {lineno} holds U+{ord(bad):04X} ({_OTHER_LINE_BREAKS[bad]}), which some "
                             "readers take for a line end; entries are one a line: remove the character")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    return lines


def read_lines(path: os.PathLike) -> List[str]:
    """Non-empty lines of a text label file, stripped (handles CRLF and a UTF-8 BOM).

    Raises ``FileNotFoundError`` naming the file; ``ValueError`` for an empty line between
    entries (which would shift every later label by one) and for a line holding another line
    break than ``\n`` / ``\r\n`` (:func:`split_lines`), naming the line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file not found: {path}")
    lines = [ln.strip() for ln in split_lines(read_text(path), path)]
    while lines and not lines[-1]:
        lines.pop()
    for i, ln in enumerate(lines):
        if not ln:
            raise ValueError(f"{path}: line {i + 1} is empty (labels are one a line, no gaps)")
    return lines
