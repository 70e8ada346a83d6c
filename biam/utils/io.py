"""Small file helpers: the one way to write inside an owned folder, and the one file hash.

Every file a command writes goes through :func:`atomic_open` (or :func:`write_json`): the data
goes to ``NAME.tmp``, created exclusively and without following a link (``O_CREAT | O_EXCL |
O_NOFOLLOW``), and is renamed over ``NAME`` when complete. A symbolic link at ``NAME``, at
``NAME.tmp`` or at a sub-folder (:func:`ensure_subfolder`) is refused with
:class:`LinkRefusedError` before anything is written, so a write never lands outside the folder
the user named, and the link's target is never touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
from typing import Any, Iterable, Iterator, IO, Optional, Union

__all__ = [
    "atomic_open", "write_json", "sha256_file", "FolderOwnershipError", "LinkRefusedError", "refuse_link",
    "ensure_subfolder", "open_nofollow", "remove_own", "own_name",
]

PathLike = Union[str, os.PathLike]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class FolderOwnershipError(RuntimeError):
    """The output path is a file, is not writable, or holds files this command did not write."""


class LinkRefusedError(FolderOwnershipError):
    """A name a command would write (a file, its temporary, a sub-folder) is a symbolic link."""


def refuse_link(path: PathLike, what: str = "a file this command writes") -> None:
    """Raise :class:`LinkRefusedError` when ``path`` is a symbolic link (its target untouched)."""
    path = os.fspath(path)
    if os.path.islink(path):
        raise LinkRefusedError(
            f"{path}: a symbolic link (to {os.readlink(path)!r}) at {what}; this command never "
            "writes through a link. Remove the link, or choose another output folder")


def ensure_subfolder(path: PathLike) -> str:
    """Create the sub-folder ``path`` of an owned folder (no link, no file there). Returns it."""
    path = os.fspath(path)
    refuse_link(path, "a sub-folder of the output")
    if os.path.exists(path) and not os.path.isdir(path):
        raise FolderOwnershipError(f"{path}: is a file where this command keeps a folder; move it away")
    os.makedirs(path, exist_ok=True)
    refuse_link(path, "a sub-folder of the output")  # made by someone else meanwhile
    return path


def _open_new(path: str, binary: bool, encoding: str) -> IO:
    """``path`` created exclusively, never through a link (an existing name is an error)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)
    return os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": encoding}))


def open_nofollow(path: PathLike, mode: str = "a", encoding: str = "utf-8") -> IO:
    """Open ``path`` for writing ("w", "a", "wb", "ab") without following a link at it.

    For files written in place (logs, per-epoch lines). A link is refused with
    :class:`LinkRefusedError`; a regular file is opened as ``open`` would.
    """
    path = os.fspath(path)
    refuse_link(path)
    flags = os.O_WRONLY | os.O_CREAT | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    flags |= os.O_APPEND if "a" in mode else os.O_TRUNC
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as err:
        if os.path.islink(path):
            refuse_link(path)
        raise err
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FolderOwnershipError(f"{path}: not a regular file; this command writes only its own files")
    binary = "b" in mode
    return os.fdopen(fd, ("ab" if "a" in mode else "wb") if binary else ("a" if "a" in mode else "w"),
                     **({} if binary else {"encoding": encoding}))


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "w", encoding: str = "utf-8", fsync: bool = False) -> Iterator[IO]:
    """Open ``path + ".tmp"`` for writing and rename it over ``path`` when the block succeeds.

    Readers never see half a file; on an exception the temporary file is removed and ``path``
    is left as it was. ``mode`` is "w" (text, ``encoding``) or "wb". ``fsync``: flush the data
    to disk before the rename, so that after a crash the name never points at lost data.
    A link at ``path`` or at the temporary name is refused (:class:`LinkRefusedError`); a
    regular file left at the temporary name by a killed run is this function's own and removed.
    """
    path = os.fspath(path)
    tmp = f"{path}.tmp"
    refuse_link(path)
    refuse_link(tmp, "this command's temporary file")
    if os.path.lexists(tmp):
        if not os.path.isfile(tmp):
            raise FolderOwnershipError(f"{tmp}: not a regular file where this command puts its temporary file")
        os.remove(tmp)
    created = False
    try:
        try:
            f = _open_new(tmp, "b" in mode, encoding)
        except FileExistsError:
            refuse_link(tmp, "this command's temporary file")
            raise FolderOwnershipError(f"{tmp}: appeared while this command was writing; is another "
                                       "process writing here?") from None
        created = True
        try:
            with f:
                yield f
                if fsync:
                    f.flush()
                    os.fsync(f.fileno())
        except OSError as err:
            if err.filename is None and err.errno is not None:
                # A failed write (disk full) names no file: name the one that was being written.
                raise OSError(err.errno, err.strerror or str(err), path) from err
            raise
        refuse_link(path)  # rename would replace a link made meanwhile, never write through it
        os.replace(tmp, path)
        created = False
    finally:
        if created:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)


def write_json(path: PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path.tmp`` and rename: readers never see half a file."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)


def own_name(name: Any, pattern: str, folder: PathLike, field: str) -> str:
    """``name`` (read from a record) if it is a plain file name of the command's own ``pattern``.

    Names with a separator, ``..``, an absolute path, or not matching ``pattern`` (a regular
    expression matched whole) are refused: a record received from someone else, or edited, never
    decides which files outside the command's own a later command deletes or replaces.
    """
    ok = (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
          and "\0" not in name and re.fullmatch(pattern, name) is not None)
    if not ok:
        raise FolderOwnershipError(f"{folder}: record field '{field}' names {name!r}, which is not one of this "
                                   f"command's own files (expected a name matching {pattern!r} inside the folder); "
                                   "the record was edited or is not this tool's: move the folder aside")
    return name


def remove_own(folder: PathLike, names: Iterable[str], pattern: Optional[str] = None, field: str = "files") -> None:
    """Remove files ``names`` of ``folder`` (its own, checked against ``pattern``); a link is
    removed as a link (its target untouched), a missing name skipped."""
    for name in names:
        if pattern is not None:
            own_name(name, pattern, folder, field)
        with contextlib.suppress(FileNotFoundError):
            path = os.path.join(os.fspath(folder), name)
            if os.path.isdir(path) and not os.path.islink(path):
                raise FolderOwnershipError(f"{path}: is a folder where the record lists a file; move it away")
            os.remove(path)


def sha256_file(path: PathLike, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in 4 MB pieces (bounded memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
