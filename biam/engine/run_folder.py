"""A training run's OUTPUT_DIR: the lock, the run record, and the checks before resuming.

:class:`RunFolder` decides on rank 0, before anything is written, whether this run may use the
folder (docs/training.md, "One run per OUTPUT_DIR"), which checkpoint ``--resume`` continues
from and whether the config given may continue it (:func:`biam.engine.run_record.config_changes`).
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Dict, List, Optional

from ..utils import comm
from ..utils.io import write_json
from ..utils.ownership import FolderBusyError, FolderLock, FolderOwnershipError, check_output_folder
from . import checkpoint as ckpt
from .run_record import (
    RECORD, RUN_FILES, RunMismatchError, _now, check_same_data, command_line, config_changes, data_identity,
    new_record, parse_saved_config, result_hash,
)

__all__ = ["RunFolder", "shared_outcome"]

# The refusals rank 0 may raise while preparing the folder; the other ranks raise the same.
_REFUSALS = (FolderBusyError, FolderOwnershipError, RunMismatchError, ckpt.CheckpointError)


def shared_outcome(fn: Callable[[], Any], world: int) -> Any:
    """Run ``fn`` on rank 0 and give every rank its result, or raise its error everywhere
    (a refusal on rank 0 alone would leave the other ranks waiting at the next barrier)."""
    result, error = None, None
    if comm.is_main_process():
        try:
            result = fn()
        except _REFUSALS as err:
            error = err
    if world > 1:
        result, remote = comm.broadcast_object((result, None if error is None else (type(error).__name__, str(error))))
        if error is None and remote is not None:
            error = {c.__name__: c for c in _REFUSALS}[remote[0]](remote[1])
    if error is not None:
        raise error
    return result


class RunFolder:
    """OUTPUT_DIR of one training run: its lock (rank 0), its record and the resume decision.

    ``record`` is the run record (``run.json``): written by :meth:`write_record` on rank 0 and
    broadcast to the other ranks by the trainer. After :meth:`prepare` with a resume,
    ``resume_path`` is the accepted checkpoint (None: nothing to resume) and ``resume_state``
    its loaded contents.
    """

    def __init__(self, cfg):
        self.cfg = cfg
        self.out_dir = cfg.OUTPUT_DIR
        self.ckpt_dir = os.path.join(self.out_dir, "checkpoints")
        self.lock: Optional[FolderLock] = None
        self.record: Dict[str, Any] = {}
        self.resume_path: Optional[str] = None
        self.resume_state: Optional[Dict[str, Any]] = None

    def prepare(self, resume: Optional[str], overwrite: bool) -> List[str]:
        """Rank 0: lock OUTPUT_DIR and decide whether this run may write there.

        * A new run takes a new or empty folder, or the folder of a run that never saved a
          checkpoint. A folder holding a run record or any other file is refused unless
          ``overwrite``; then the run writes its own file names only and its record lists only
          its own checkpoints, so nothing of the earlier run is pruned or resumed.
        * ``--resume`` needs the folder's record, or a folder with no checkpoints yet (a new
          folder, maybe with ``--resume FILE`` of another folder's run); :meth:`check_resume`
          checks the checkpoint and the config.
        Returns lines to log once the logger exists.
        """
        cfg = self.cfg
        self.lock = FolderLock(self.out_dir, "biam-train " + " ".join(sys.argv[1:])).acquire()
        notes: List[str] = []
        ignore = RUN_FILES if resume is not None else ()
        record = check_output_folder(self.out_dir, record=RECORD, overwrite=overwrite, ignore=ignore)
        if record is not None and (record.get("tool") != "biam-train" or not isinstance(record.get("checkpoints"), list)):
            raise FolderOwnershipError(f"{os.path.join(self.out_dir, RECORD)}: not a biam-train run record; "
                                       "choose another OUTPUT_DIR")
        if resume is None:
            if record is not None and (record["checkpoints"] or os.path.exists(os.path.join(self.out_dir, "model_best.pth"))):
                if not overwrite:
                    raise FolderOwnershipError(
                        f"OUTPUT_DIR {self.out_dir} holds the run started {record.get('started', '?')} "
                        f"({record.get('command', '?')}), with checkpoints {', '.join(record['checkpoints']) or 'none'}. "
                        "Pass --resume to continue that run, choose another OUTPUT_DIR for a new one, or pass "
                        "--overwrite to start a new run there (it replaces files of the same names; the earlier "
                        "run's other checkpoints stay, and are never pruned or resumed)")
                notes.append(f"--overwrite: starting a new run in {self.out_dir} over the run started "
                             f"{record.get('started', '?')}")
            elif record is not None:
                notes.append(f"{self.out_dir}: the earlier run there saved no checkpoint; starting a new run")
            for name in ("metrics.jsonl", "log.txt"):
                # A new run's log and per-epoch lines start empty, never appended to another run's.
                if os.path.isfile(os.path.join(self.out_dir, name)):
                    os.remove(os.path.join(self.out_dir, name))
            self.record = new_record(cfg)
            self.write_record()
            return notes
        if record is None and ckpt.latest_checkpoint(self.ckpt_dir) is not None:
            raise FolderOwnershipError(
                f"OUTPUT_DIR {self.out_dir} holds checkpoints but no run record ({RECORD}), so --resume cannot tell "
                "which run they belong to; continue one in a new OUTPUT_DIR with --resume FILE")
        # Written once the checkpoint and the config are accepted (nothing is written before).
        fresh = record is None  # a folder without a run yet: no run id to compare
        self.record = record if record is not None else new_record(cfg)
        return notes + self.check_resume(resume, fresh)

    def write_record(self) -> None:
        """Rank 0: rewrite OUTPUT_DIR/run.json (after the start and after each checkpoint)."""
        if comm.is_main_process() and self.record:
            write_json(os.path.join(self.out_dir, RECORD), self.record)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def check_resume(self, resume: str, fresh: bool = False) -> List[str]:
        """Rank 0, before anything is written: choose the checkpoint and check it is this run's.

        ``resume``: "last" (the newest checkpoint the run record lists) or a file; ``fresh``: the
        folder holds no run yet. Refuses (RunMismatchError) a checkpoint of another run and a
        config that differs from the saved one in a key that changes the result, listing each key
        with both values; raises CheckpointError naming the file and the field for missing or
        mistyped fields. Returns the allowed changes as lines to log; keeps the checkpoint in
        ``resume_path`` / ``resume_state``.
        """
        record_path = os.path.join(self.out_dir, RECORD)
        if resume not in ("", "last"):
            path = resume
            if not os.path.isfile(path):
                raise ckpt.CheckpointError(f"--resume: checkpoint not found: {path}")
        elif fresh:
            path = None
        else:
            path = ckpt.latest_owned(self.ckpt_dir, self.record["checkpoints"])
        self.resume_path, self.resume_state = path, None
        record_config = None if fresh else self.record.get("config")
        # The run's data by content (refused naming both when other data): then DATA.ROOT may have
        # moved. A new folder's record, or one written before the field, proves nothing.
        same_data = False
        if not fresh and isinstance(self.record.get("data"), dict) and self.record["data"].get("content_sha256"):
            check_same_data(self.record, self.cfg, record_path)
            same_data = True
        if path is None:
            if record_config is None:
                return []
            return self.check_config(parse_saved_config(record_config, record_path), record_path, 0, "train", same_data)
        state = ckpt.load_checkpoint(path)
        ckpt.check_training_state(state, path)
        run_id = state.get("run_id")
        if run_id is not None and not fresh and run_id != self.record.get("run_id"):
            raise RunMismatchError(
                f"--resume {path}: this checkpoint belongs to run {run_id}, but OUTPUT_DIR {self.out_dir} holds run "
                f"{self.record.get('run_id')} (started {self.record.get('started', '?')}); resume it in its own "
                "OUTPUT_DIR, or give a new OUTPUT_DIR to continue it there")
        if "config" in state:
            saved, source = parse_saved_config(state["config"], path), path
        elif record_config is not None:
            saved, source = parse_saved_config(record_config, record_path), record_path
        else:
            raise RunMismatchError(f"{path}: the checkpoint holds no config, so --resume cannot check it is the same "
                                   "run; start a new run with MODEL.WEIGHTS to use its weights")
        allowed = self.check_config(saved, source, int(state["epoch"]), state["phase"], same_data)
        if run_id is not None:
            self.record["run_id"] = run_id  # a run continued in a new folder stays the same run
        self.resume_state = state
        return allowed

    def check_config(self, saved: Dict[str, Any], source: str, epoch: int, phase: str,
                     same_data: bool = False) -> List[str]:
        """Refuse a config that changes the result; record and return the allowed changes.
        ``same_data``: DATA.ROOT holds the run's data by content, so its path may differ."""
        refused, allowed = config_changes(saved, self.cfg, epoch=epoch, phase=phase, same_data=same_data)
        if refused:
            raise RunMismatchError(
                f"--resume: the config differs from the run's ({source}) in keys that change the result:\n  "
                + "\n  ".join(refused)
                + "\nGive the run's own config (its config.yaml) to continue it, or start a new run in another OUTPUT_DIR")
        self.record.setdefault("resumes", []).append({"started": _now(), "command": command_line(), "from_epoch": epoch,
                                                      "changed": allowed})
        self.record["config"] = self.cfg.dump()
        self.record["config_sha256"] = result_hash(self.cfg)
        if same_data:
            self.record["data"] = data_identity(self.cfg)  # the new absolute path, the same content
        return [f"--resume: changed {line}" for line in allowed]
