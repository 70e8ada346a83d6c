"""``biam-train`` (``python -m biam.cli.train``, ``torchrun -m biam.cli.train``): train BiAM on a packed dataset.

Exit status: 0 done; 1 bad data, checkpoint or output folder; 2 config error; 3 training
stopped (diverged); 4 another process is writing the same OUTPUT_DIR; 5 the system refused a
read or write (disk full, permission, I/O error: the message names the file).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..config import add_config_arguments
from ..data.packed import PackedDataset, PackedFormatError
from ..engine import checkpoint as ckpt
from ..engine.run_record import RECORD, RunMismatchError, check_same_data
from ..engine.trainer import Trainer, TrainingDiverged
from ..utils import comm
from ..utils.ownership import FolderBusyError, FolderOwnershipError
from ._errors import ExitOn, load_config, run_main, system_error

EXITS = (
    ExitOn(TrainingDiverged, 3, "training stopped"),
    ExitOn(FolderBusyError, 4),
    ExitOn((PackedFormatError, ckpt.CheckpointError, FileNotFoundError, ValueError, MemoryError,
            FolderOwnershipError, RunMismatchError), 1),
    system_error(),
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="biam-train",
        description="Train BiAM with the paper's recipe on a packed dataset (see configs/ and docs/training.md). "
                    "Run under torchrun for several GPUs or machines. OUTPUT_DIR belongs to one run: its record "
                    "OUTPUT_DIR/run.json says which, and a second process on the same OUTPUT_DIR stops at once.",
    )
    add_config_arguments(parser)
    parser.add_argument("--resume", nargs="?", const="last", default=None, metavar="CKPT",
                        help="continue this OUTPUT_DIR's run from its last checkpoint, or from CKPT; the config "
                             "must match the run's except keys that do not change the result (docs/training.md)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run in an OUTPUT_DIR that holds an earlier run or other files: files of "
                             "the run's own names (run.json, config.yaml, log.txt, metrics.json[l], model_best.pth, curve.png, "
                             "checkpoints/checkpoint_epoch_NNNN.pth) are replaced, nothing else is deleted")
    # Options may come before, between or after the KEY VALUE overrides.
    return parser.parse_intermixed_args(argv)


def check_inputs(cfg, resume) -> list:
    """What is checked before the Trainer writes anything: the data's manifest and both splits
    (a mistyped DATA.ROOT leaves OUTPUT_DIR as it was), and for ``--resume`` that DATA.ROOT holds
    the run's data by content (:func:`biam.engine.run_record.check_same_data`). Returns lines to print."""
    for split in (cfg.DATA.TRAIN_SPLIT, cfg.DATA.TEST_SPLIT):
        PackedDataset(cfg.DATA.ROOT, split, check=False)  # the manifest only; the Trainer checks the shards
    path = os.path.join(cfg.OUTPUT_DIR, RECORD)
    if resume is None or not os.path.isfile(path) or os.path.islink(path):
        return []
    try:
        with open(path, encoding="utf-8") as f:
            record = json.loads(f.read(1 << 24))
    except (OSError, ValueError, RecursionError):
        return []  # the Trainer's ownership check names an unreadable record
    note = check_same_data(record, cfg, path) if isinstance(record, dict) else None
    return [note] if note else []


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg, status = load_config("biam-train", args.config_file or None, args.opts)
    if status:
        return status
    trainer = None

    def body() -> int:
        nonlocal trainer
        # Every rank reads the same files, so every rank stops alike; rank 0 prints.
        for line in check_inputs(cfg, args.resume):
            if os.environ.get("RANK", "0") == "0":
                print(f"biam-train: {line}")
        trainer = Trainer(cfg, resume=args.resume, overwrite=args.overwrite)
        trainer.run()
        return 0

    def cleanup() -> None:
        if trainer is not None:
            trainer.close()
        comm.destroy()

    return run_main("biam-train", body, EXITS, cleanup)


if __name__ == "__main__":
    sys.exit(main())
