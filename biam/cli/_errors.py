"""The one place where command-line tools turn exceptions into exit codes and one-line messages.

Each tool lists the errors it expects (bad input, a busy folder, a stopped run) with the exit
code documented for them; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple, Type, Union

from ..config import ConfigError, load_cfg

__all__ = ["ExitOn", "run_main", "load_config", "SYSTEM_EXIT", "system_error", "describe_os_error"]

# The exit status of every command when the system refuses a read or write it needs (disk full,
# permission, I/O error): the message names the file; earlier results are left as they were.
SYSTEM_EXIT = 5


def describe_os_error(err: BaseException) -> str:
    """``FILE: No space left on device (disk full? free space and rerun: ...)`` for an OSError."""
    name = getattr(err, "filename", None)
    text = getattr(err, "strerror", None) or str(err)
    hint = " (disk full: free space, then rerun the same command)" if getattr(err, "errno", None) == 28 else ""
    return f"{name}: {text}{hint}" if name else f"{text}{hint}"


def system_error() -> "ExitOn":
    """The entry every command lists last: an OSError not listed before it -> SYSTEM_EXIT."""
    return ExitOn(OSError, SYSTEM_EXIT, "system error", describe_os_error)

ExceptionTypes = Union[Type[BaseException], Tuple[Type[BaseException], ...]]


@dataclass(frozen=True)
class ExitOn:
    """Exceptions of ``types`` end the command with exit status ``code`` and the line
    ``<prog>: <label>: <describe(err)>`` on stderr (``<prog>: <describe(err)>`` when label is None)."""

    types: ExceptionTypes
    code: int
    label: Optional[str] = "error"
    describe: Callable[[BaseException], str] = str


def run_main(prog: str, body: Callable[[], int], exits: Sequence[ExitOn],
             cleanup: Optional[Callable[[], None]] = None) -> int:
    """Run ``body()`` -> its exit status; an exception listed in ``exits`` -> that entry's code.

    The first entry whose types match wins, so list subclasses before their bases. ``cleanup``
    runs in every case (after the message is printed). Unlisted exceptions propagate.
    """
    caught = tuple(t for entry in exits for t in (entry.types if isinstance(entry.types, tuple) else (entry.types,)))
    try:
        return body()
    except caught as err:
        entry = next(e for e in exits if isinstance(err, e.types))
        label = "" if entry.label is None else f"{entry.label}: "
        print(f"{prog}: {label}{entry.describe(err)}", file=sys.stderr)
        return entry.code
    finally:
        if cleanup is not None:
            cleanup()


def load_config(prog: str, config_file: Optional[str], opts, **kwargs):
    """``load_cfg`` for a command -> ``(cfg, 0)``, or ``(None, 2)`` after ``<prog>: config error: ...``.

    Kept apart from the command's own errors: a ConfigError is a ValueError, which most
    commands map to exit status 1 once the config is loaded.
    """
    loaded = []

    def load() -> int:
        loaded.append(load_cfg(config_file, opts, **kwargs))
        return 0

    status = run_main(prog, load, [ExitOn(ConfigError, 2, "config error")])
    return (loaded[0] if loaded else None), status
