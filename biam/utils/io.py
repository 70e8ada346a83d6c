"""Small file helpers."""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Iterator, IO

__all__ = ["atomic_open", "write_json"]


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", encoding: str = "utf-8") -> Iterator[IO]:
    """Open ``path + ".tmp"`` for writing and rename it over ``path`` when the block succeeds.

    Readers never see half a file; on an exception the temporary file is removed and ``path``
    is left as it was. ``mode`` is "w" (text, ``encoding``) or "wb".
    """
    tmp = f"{path}.tmp"
    kwargs = {} if "b" in mode else {"encoding": encoding}
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path.tmp`` and rename: readers never see half a file."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
