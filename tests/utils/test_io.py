"""The one way to write inside an owned folder: never through a link, names from records checked."""

import json
import os

import pytest

from biam.utils.io import (FolderOwnershipError, LinkRefusedError, atomic_open, ensure_subfolder, open_nofollow,
                           own_name, write_json)
from biam.utils.ownership import FolderLock, check_output_folder


@pytest.fixture()
def victim(tmp_path):
    path = tmp_path / "victim.txt"
    path.write_text("the user's file")
    return path


def test_link_at_the_target_or_temporary_name_is_refused_and_the_target_untouched(tmp_path, victim):
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").symlink_to(victim)
    with pytest.raises(LinkRefusedError, match="run.json: a symbolic link"):
        write_json(out / "run.json", {"a": 1})
    os.remove(out / "run.json")
    (out / "run.json.tmp").symlink_to(victim)
    with pytest.raises(LinkRefusedError, match="temporary file"):
        write_json(out / "run.json", {"a": 1})
    assert victim.read_text() == "the user's file"
    assert not (out / "run.json").exists()


def test_stale_regular_temporary_is_replaced_and_a_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "m.json"
    write_json(path, {"v": 1})
    (tmp_path / "m.json.tmp").write_text("half of a killed run")
    with pytest.raises(RuntimeError):
        with atomic_open(path) as f:
            f.write("partial")
            raise RuntimeError("stop")
    assert json.loads(path.read_text()) == {"v": 1} and not (tmp_path / "m.json.tmp").exists()
    write_json(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 2}


def test_appended_file_and_subfolder_links_are_refused(tmp_path, victim):
    (tmp_path / "log.txt").symlink_to(victim)
    with pytest.raises(LinkRefusedError):
        open_nofollow(tmp_path / "log.txt", "a")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "checkpoints").symlink_to(elsewhere)
    with pytest.raises(LinkRefusedError, match="sub-folder"):
        ensure_subfolder(tmp_path / "checkpoints")
    assert victim.read_text() == "the user's file" and os.listdir(elsewhere) == []


def test_lock_file_that_is_a_link_is_refused_and_its_target_untouched(tmp_path, victim):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".biam.lock").symlink_to(victim)
    with pytest.raises(LinkRefusedError, match=".biam.lock"):
        FolderLock(str(out), "test").acquire()
    assert victim.read_text() == "the user's file"


@pytest.mark.parametrize("name", ["../outside.pth", "/etc/passwd", "checkpoints/../x.pth", "notes.txt", "", 3])
def test_hostile_names_in_a_run_record_are_refused(tmp_path, name):
    with pytest.raises(FolderOwnershipError, match="not one of this command's own files"):
        own_name(name, r"checkpoint_epoch_\d{4,}\.pth", tmp_path, "checkpoints")
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"tool": "biam-train", "checkpoints": ["checkpoint_epoch_0001.pth", name]}))
    with pytest.raises(FolderOwnershipError, match="field 'checkpoints'"):
        check_output_folder(str(out), record="run.json")


def test_links_in_a_folder_are_refused_at_own_names_and_under_overwrite(tmp_path, victim):
    out = tmp_path / "out"
    out.mkdir()
    (out / "other").symlink_to(victim)
    with pytest.raises(LinkRefusedError, match="other: a symbolic link"):
        check_output_folder(str(out), record="run.json")
    with pytest.raises(LinkRefusedError, match="--overwrite"):
        check_output_folder(str(out), record="run.json", overwrite=True)
    # A folder holding this command's record: a link at a sub-folder name (checkpoints/) is refused too.
    (out / "run.json").write_text('{"tool": "biam-train", "checkpoints": []}')
    os.remove(out / "other")
    (out / "checkpoints").symlink_to(tmp_path)
    with pytest.raises(LinkRefusedError, match="checkpoints: a symbolic link"):
        check_output_folder(str(out), record="run.json")
    os.remove(out / "checkpoints")
    os.remove(out / "run.json")
    (out / "run.json").symlink_to(victim)
    with pytest.raises(LinkRefusedError, match="record"):
        check_output_folder(str(out), record="run.json")
    assert victim.read_text() == "the user's file"
