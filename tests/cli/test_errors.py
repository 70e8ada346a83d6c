"""biam.cli._errors.run_main: the one map from exceptions to exit codes and one-line messages."""

import pytest

from biam.cli._errors import ExitOn, load_config, run_main
from biam.utils.ownership import FolderBusyError


class Special(ValueError):
    pass


EXITS = (
    ExitOn(Special, 3, "stopped"),
    ExitOn(FolderBusyError, 4),
    ExitOn((ValueError, KeyError), 1, describe=lambda err: f"{err} (check the input)"),
    ExitOn(OSError, 5, label=None),
)


def raising(exc):
    def body():
        raise exc
    return body


def test_the_body_status_passes_through_and_cleanup_runs(capsys):
    cleaned = []
    assert run_main("tool", lambda: 0, EXITS, cleanup=lambda: cleaned.append(1)) == 0
    assert run_main("tool", lambda: 7, EXITS, cleanup=lambda: cleaned.append(2)) == 7
    assert cleaned == [1, 2] and capsys.readouterr().err == ""


@pytest.mark.parametrize("exc, code, line", [
    (Special("bad loss"), 3, "tool: stopped: bad loss"),             # a subclass listed before its base wins
    (FolderBusyError("held by PID 1"), 4, "tool: error: held by PID 1"),
    (ValueError("x.h5: field 'labels'"), 1, "tool: error: x.h5: field 'labels' (check the input)"),
    (KeyError("k"), 1, "tool: error: 'k' (check the input)"),
    (PermissionError("no write"), 5, "tool: no write"),              # label None: no "error:" part
])
def test_listed_errors_give_their_code_and_one_line(exc, code, line, capsys):
    cleaned = []
    assert run_main("tool", raising(exc), EXITS, cleanup=lambda: cleaned.append(1)) == code
    assert capsys.readouterr().err == line + "\n"
    assert cleaned == [1]  # cleanup after the error too


def test_unlisted_errors_keep_their_traceback_and_still_clean_up():
    cleaned = []
    with pytest.raises(ZeroDivisionError):
        run_main("tool", raising(ZeroDivisionError("bug")), EXITS, cleanup=lambda: cleaned.append(1))
    assert cleaned == [1]
    with pytest.raises(RuntimeError):
        run_main("tool", raising(RuntimeError("bug")), [])


def test_load_config_maps_a_config_error_to_status_2(capsys):
    cfg, status = load_config("biam-train", None, ["SOLVER.NO_SUCH_KEY", "1"])
    assert cfg is None and status == 2
    err = capsys.readouterr().err
    assert err.startswith("biam-train: config error: ") and "NO_SUCH_KEY" in err
    cfg, status = load_config("biam-train", None, ["SEED", "3"])
    assert status == 0 and cfg.SEED == 3
