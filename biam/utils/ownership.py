"""Who may write into an output folder: one writer at a time, and only into folders it owns.

Every command that writes a folder of results (conversion, extraction, training, evaluation)
follows the same two rules:

* **One writer per folder.** :class:`FolderLock` holds an advisory ``fcntl.flock`` on
  ``FOLDER/.biam.lock`` for the command's lifetime (the file is removed when the command ends).
  A second command on the same folder stops at once with :class:`FolderBusyError`, naming the
  holder's PID, command and start time. The kernel drops the lock when its process dies, so the
  lock file a killed run leaves behind never blocks.
* **Only the command's own files.** :func:`check_output_folder` accepts a new or empty folder, or
  one that holds the command's *record* (the manifest for data, the run record for training). A
  folder holding anything else is refused with :class:`FolderOwnershipError`, unless the user
  passed ``--overwrite``; even then the command replaces only its own file names and deletes
  nothing it did not list in its record.
* **Never through a link.** The lock file is opened no-follow, the record read no-follow, and a
  name a record lists is accepted only when it is the command's own pattern (:data:`RECORD_NAMES`);
  every file is written by :func:`biam.utils.io.atomic_open` (no link at the name or its
  temporary), sub-folders made by :func:`biam.utils.io.ensure_subfolder`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import os
import socket
import stat
import sys
from typing import Any, Dict, Iterable, List, Optional

from .io import FolderOwnershipError, LinkRefusedError, own_name, refuse_link

__all__ = ["LOCK_NAME", "FolderBusyError", "FolderOwnershipError", "LinkRefusedError", "FolderLock",
           "check_output_folder", "claim_output", "RECORD_NAMES", "BUSY_EXIT"]

# The lock file; it is ours in every folder, so it never counts as a foreign file.
LOCK_NAME = ".biam.lock"


class FolderBusyError(RuntimeError):
    """Another live process holds the folder's lock."""


# The one exit status of every command for "another process holds this folder" (docs/reliability.md).
BUSY_EXIT = 4

# Names a record may list, per record file and field (regular expressions matched whole): a
# record edited or received from someone else never makes a command delete or replace other files.
RECORD_NAMES: Dict[str, Dict[str, str]] = {
    "run.json": {"checkpoints": r"checkpoint_epoch_\d{4,}\.pth"},
    "evaluation.json": {"files": r"config\.yaml|log\.txt|metrics\.json"},
    "biam-predict.json": {"figures": r"[^/\\]+_attention\.png"},
}


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


class FolderLock:
    """Exclusive advisory lock on ``folder`` for one command; use as a context manager.

    ``FolderLock(folder, "biam-train").acquire()`` creates ``folder`` if needed and raises
    :class:`FolderBusyError` at once when another process holds it.
    """

    def __init__(self, folder: str, command: Optional[str] = None, name: str = LOCK_NAME):
        self.folder = os.fspath(folder)
        self.command = command or " ".join([os.path.basename(sys.argv[0] or "python")] + sys.argv[1:])
        # ``name``: another lock file in ``folder`` (biam-evaluate locks one result folder of eval/).
        self.path = os.path.join(self.folder, name)
        self._fd: Optional[int] = None

    def acquire(self) -> "FolderLock":
        if self._fd is not None:
            return self
        _ensure_folder(self.folder)
        while True:
            refuse_link(self.path, "the folder's lock file")
            try:
                # No-follow: a link at the lock's name must never have its target truncated.
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
            except OSError as err:
                refuse_link(self.path, "the folder's lock file")
                raise FolderOwnershipError(f"{self.folder}: cannot create the lock file {LOCK_NAME} "
                                           f"({err.strerror}); choose a folder you can write to") from None
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise FolderOwnershipError(f"{self.path}: not a regular file where this command keeps its lock; "
                                           "move it away")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                holder = _read_holder(fd)
                os.close(fd)
                if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise FolderOwnershipError(f"{self.folder}: cannot lock {LOCK_NAME} ({err.strerror})") from None
                raise FolderBusyError(
                    f"{self.folder} is in use by another process: {holder}. Wait for it to finish, "
                    "or write to another folder") from None
            # The holder before us may have removed the file between our open and our lock:
            # a lock on a file no longer at the path locks nothing, so try again.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now(), "command": self.command}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
        except OSError as err:  # disk full: name the file
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise OSError(err.errno, err.strerror, self.path) from None
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        # Removed while still held, so no folder keeps a trace of a finished command; a process
        # that opened the old file meanwhile sees it gone after locking and starts over.
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    """The lock holder as 'PID 123 on host (command), started 2026-...' for messages."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "PID unknown (the lock file is being written)"
    return (f"PID {info.get('pid')} on {info.get('host', '?')} ({info.get('command', '?')}), "
            f"started {info.get('started', '?')}")


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _ensure_folder(folder: str) -> None:
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise FolderOwnershipError(f"{folder} is a file, not a folder; choose a folder path for the output")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise FolderOwnershipError(f"{folder}: cannot create the output folder ({err.strerror})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise FolderOwnershipError(f"{folder}: the output folder is not writable; choose another one")


def check_output_folder(folder: str, *, record: str, overwrite: bool = False,
                        ignore: Iterable[str] = (), flag: str = "--overwrite") -> Optional[Dict[str, Any]]:
    """Make sure ``folder`` may receive this command's files; return its record, if any.

    Args:
        folder: the output folder; created when missing.
        record: file name (inside ``folder``) of the JSON record this command writes there.
        overwrite: the user's explicit permission to write beside files of others.
        ignore: extra entry names that never count as foreign (besides the lock and ``record``).
        flag: how the user grants ``overwrite``, for the message.
    Returns:
        The parsed record (a dict) when the folder holds one, else None (new, empty, or
        ``overwrite`` given). Raises FolderOwnershipError for a file path, an unwritable folder,
        an unreadable record, or foreign entries without ``overwrite``.
    """
    _ensure_folder(folder)
    path = os.path.join(folder, record)
    refuse_link(path, "this command's record")
    # No command of this package makes a link in its folder, and a link at any name it may write
    # (its own names, sub-folders like checkpoints/, every name under --overwrite) could send a
    # write out of the folder: every link in it is refused, its target untouched.
    for entry in sorted(os.listdir(folder)):
        if entry != LOCK_NAME and os.path.islink(os.path.join(folder, entry)):
            refuse_link(os.path.join(folder, entry), "a name this command writes" if entry in {record, *ignore}
                        else f"a name in the output folder (this command, or {flag}, may write there)")
    if os.path.isfile(path):
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            with os.fdopen(fd, encoding="utf-8") as f:
                data = json.loads(f.read(1 << 24), parse_constant=_no_constant)
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
            raise FolderOwnershipError(f"{path}: unreadable record of an earlier run ({err}); "
                                       "move the folder aside or choose another one") from None
        if not isinstance(data, dict):
            raise FolderOwnershipError(f"{path}: not a record written by this tool (expected a JSON object)")
        for field, pattern in RECORD_NAMES.get(record, {}).items():
            names = data.get(field)
            if names is None:
                continue
            if not isinstance(names, list):
                raise FolderOwnershipError(f"{path}: field '{field}' should be a list of file names, "
                                           f"found {type(names).__name__}")
            for name in names:
                own_name(name, pattern, path, field)
        return data
    skip = {LOCK_NAME, record, *ignore}
    entries = os.listdir(folder)
    foreign: List[str] = sorted(e for e in entries if e not in skip)
    if foreign and not overwrite:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise FolderOwnershipError(
            f"{folder} already holds files this command did not write ({shown}). Choose a new or empty "
            f"folder, or pass {flag} to write beside them (only this command's own files are replaced; "
            "nothing else is deleted)")
    return None


def claim_output(out, overwrite: bool, tool: str, argv: Optional[Iterable[str]] = None):
    """Take the output folder for this run: a context manager for the whole command.

    On rank 0 (or without torchrun): :class:`FolderLock` on ``out`` (a
    second extraction there stops at once, naming this one), then the folder must hold this
    tool's ``manifest.json``, or nothing, or ``overwrite`` must be given
    (:func:`check_output_folder`). Other ranks write only below
    ``out/.parts`` and take nothing. Raises FolderBusyError / FolderOwnershipError.
    """
    if int(os.environ.get("RANK", "0") or 0) != 0:
        return contextlib.nullcontext()
    args = list(sys.argv[1:] if argv is None else argv)
    lock = FolderLock(os.fspath(out), " ".join([tool] + args)).acquire()
    try:
        refuse_link(os.path.join(os.fspath(out), ".parts"), "the ranks' parts folder")
        # .parts/ holds the ranks' shards of an interrupted torchrun extraction (ours, no manifest yet).
        check_output_folder(os.fspath(out), record="manifest.json", overwrite=overwrite, ignore=(".parts",))
    except BaseException:
        lock.release()
        raise
    return lock

