"""Folder locks and ownership checks, with real files and real processes."""

import json
import multiprocessing as mp
import os

import pytest

from biam.utils.ownership import (
    LOCK_NAME, FolderBusyError, FolderLock, FolderOwnershipError, check_output_folder,
)


def _hold(folder, ready, release):
    with FolderLock(folder, "holder-command"):
        ready.set()
        release.wait(20)


def test_second_writer_stops_naming_the_holder(tmp_path):
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold, args=(str(tmp_path), ready, release))
    proc.start()
    try:
        assert ready.wait(30)
        with pytest.raises(FolderBusyError) as err:
            FolderLock(str(tmp_path), "second").acquire()
        assert f"PID {proc.pid}" in str(err.value) and "holder-command" in str(err.value)
    finally:
        release.set()
        proc.join(30)
    # Released: the next writer gets it.
    with FolderLock(str(tmp_path), "third"):
        info = json.loads((tmp_path / LOCK_NAME).read_text())
        assert info["pid"] == os.getpid() and info["command"] == "third"
    assert not (tmp_path / LOCK_NAME).exists()  # a finished command leaves no lock file


def test_stale_lock_of_a_killed_process_does_not_block(tmp_path):
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold, args=(str(tmp_path), ready, release))
    proc.start()
    assert ready.wait(30)
    proc.kill()
    proc.join(30)
    assert (tmp_path / LOCK_NAME).exists()  # the file of the dead holder is still there
    with FolderLock(str(tmp_path)):
        pass


def test_check_output_folder(tmp_path):
    new = tmp_path / "new"
    assert check_output_folder(str(new), record="run.json") is None and new.is_dir()
    (new / "run.json").write_text(json.dumps({"by": "biam-train"}))
    (new / "notes.txt").write_text("mine")
    assert check_output_folder(str(new), record="run.json") == {"by": "biam-train"}

    other = tmp_path / "other"
    other.mkdir()
    (other / "paper.pdf").write_bytes(b"%PDF")
    with pytest.raises(FolderOwnershipError, match=r"paper\.pdf.*--overwrite"):
        check_output_folder(str(other), record="run.json")
    assert check_output_folder(str(other), record="run.json", overwrite=True) is None
    assert (other / "paper.pdf").read_bytes() == b"%PDF"

    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(FolderOwnershipError, match="is a file"):
        check_output_folder(str(afile), record="run.json")
    (other / "run.json").write_text("[1, 2]")
    with pytest.raises(FolderOwnershipError, match="not a record"):
        check_output_folder(str(other), record="run.json")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(FolderOwnershipError, match="not writable"):
        check_output_folder(str(ro), record="run.json")


def test_folder_that_cannot_be_created(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FolderOwnershipError, match="cannot create the output folder"):
        check_output_folder(str(tmp_path / "afile" / "run"), record="run.json")
