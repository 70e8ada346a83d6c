"""Small file helpers: the one atomic write and the one file hash of the package."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from typing import Any, Iterator, IO, Union

__all__ = ["atomic_open", "write_json", "sha256_file"]

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "w", encoding: str = "utf-8", fsync: bool = False) -> Iterator[IO]:
    """Open ``path + ".tmp"`` for writing and rename it over ``path`` when the block succeeds.

    Readers never see half a file; on an exception the temporary file is removed and ``path``
    is left as it was. ``mode`` is "w" (text, ``encoding``) or "wb". ``fsync``: flush the data
    to disk before the rename, so that after a crash the name never points at lost data.
    """
    tmp = f"{os.fspath(path)}.tmp"
    kwargs = {} if "b" in mode else {"encoding": encoding}
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_json(path: PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path.tmp`` and rename: readers never see half a file."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)


def sha256_file(path: PathLike, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in 4 MB pieces (bounded memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
