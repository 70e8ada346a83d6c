"""Readable log lines for people plus one JSON line per epoch for scripts. Rank 0 only."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from typing import Any, Dict, Optional

from . import comm
from .io import open_nofollow

__all__ = ["setup_logger", "JsonlWriter"]


def setup_logger(output_dir: Optional[str], name: str = "biam") -> logging.Logger:
    """Logger writing to stdout and ``<output_dir>/log.txt`` on rank 0; silent elsewhere."""
    logger = logging.getLogger(name)
    logger.handlers.clear()
    logger.propagate = False
    if not comm.is_main_process():
        logger.setLevel(logging.ERROR)
        logger.addHandler(logging.NullHandler())
        return logger
    logger.setLevel(logging.INFO)
    fmt = logging.Formatter("[%(asctime)s] %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    stream = logging.StreamHandler(sys.stdout)
    stream.setFormatter(fmt)
    logger.addHandler(stream)
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        fh = _NoFollowFileHandler(os.path.join(output_dir, "log.txt"), encoding="utf-8")
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    return logger


class _NoFollowFileHandler(logging.FileHandler):
    """A log file opened at once and never through a link (a link at log.txt is refused)."""

    def __init__(self, path: str, encoding: str):
        open_nofollow(path, "a", encoding=encoding).close()  # refuses a link before the handler exists
        super().__init__(path, encoding=encoding)

    def _open(self):
        return open_nofollow(self.baseFilename, self.mode, encoding=self.encoding)

    def handleError(self, record) -> None:
        # logging prints a traceback and goes on; a log that cannot be written (disk full) is an
        # error of the command instead, naming the file.
        err = sys.exc_info()[1]
        if isinstance(err, OSError):
            raise OSError(err.errno, err.strerror or str(err), self.baseFilename) from err
        super().handleError(record)


def _clean(value: Any) -> Any:
    # JSON has no NaN/inf; write null so every line stays parseable by strict readers.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class JsonlWriter:
    """Appends one JSON object per line to a file (rank 0 only), flushed at once."""

    def __init__(self, path: str):
        self.path = path

    def write(self, record: Dict[str, Any]) -> None:
        if not comm.is_main_process():
            return
        with open_nofollow(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(_clean(record), sort_keys=True) + "\n")
            f.flush()
