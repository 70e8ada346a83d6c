"""The run record: what makes an ``OUTPUT_DIR`` one training run's, and what a resume may change.

``OUTPUT_DIR/run.json`` is written by rank 0 when a run starts and after every checkpoint:

    {"tool": "biam-train", "version": 1, "run_id": "<hex>", "started": "<ISO time>",
     "command": "<argv>", "config_sha256": "<hash of the result keys>", "config": "<YAML>",
     "checkpoints": ["checkpoint_epoch_0003.pth", ...], "resumes": [{...}, ...],
     "data": {"root": "<absolute DATA.ROOT>", "content_sha256": "<hash of the shards' hashes>"}}

A new run refuses a folder holding a record (or anything else) unless ``--overwrite``; a
resumed run must carry the same ``run_id`` and a config that differs only in keys that do not
change the result (:func:`config_changes`). Checkpoint pruning and ``--resume`` look only at
the checkpoints the record lists. The data is identified by content (:func:`data_identity`:
the manifest's labels and the training and test splits' shard hashes) and by absolute path, so
a relative ``DATA.ROOT`` resumed from another working directory that names other data is refused
(:func:`check_same_data`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import sys
import uuid
from typing import Any, Dict, List, Optional, Tuple

import yaml

from ..config import FREE_ON_RESUME, get_cfg_defaults
from ..data.packed import PackedFormatError, read_manifest
from ..utils.io import sha256_file

__all__ = [
    "RECORD", "RUN_FILES", "RunMismatchError", "new_record", "flatten", "config_changes", "result_hash",
    "FREE_KEYS", "data_identity", "check_same_data",
]

RECORD = "run.json"
# Names a training run writes in its OUTPUT_DIR (checkpoints/ is a folder of its own files;
# eval/ holds biam-evaluate's folders, which a run never touches).
RUN_FILES = ("config.yaml", "log.txt", "metrics.jsonl", "metrics.json", "model_best.pth", "curve.png",
             "checkpoints", "eval", "tb")

# Keys a resumed run may change, with why: none changes the weights a run ends with (on one
# device type), so the resumed run is still the same run. Each change is logged. The table is
# the config's key rules (biam.config.KEY_RULES, free_on_resume).
FREE_KEYS = FREE_ON_RESUME


class RunMismatchError(RuntimeError):
    """``--resume`` was given a checkpoint or config of another run, or a bad checkpoint field."""


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def command_line() -> str:
    return " ".join([os.path.basename(sys.argv[0] or "python")] + sys.argv[1:])


def flatten(node: Any, prefix: str = "") -> Dict[str, Any]:
    """A nested config (CfgNode or dict) -> {"SOLVER.BASE_LR": 0.001, ...}; tuples become lists."""
    out: Dict[str, Any] = {}
    for key, value in dict(node).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def result_hash(cfg) -> str:
    """SHA-256 of the config without FREE_KEYS: equal hashes, same result keys."""
    flat = flatten(cfg)
    keep = {k: v for k, v in sorted(flat.items()) if k not in FREE_KEYS}
    return hashlib.sha256(yaml.safe_dump(keep, sort_keys=True).encode("utf-8")).hexdigest()


def new_record(cfg, run_id: Optional[str] = None) -> Dict[str, Any]:
    return {
        "tool": "biam-train", "version": 1, "run_id": run_id or uuid.uuid4().hex, "started": _now(),
        "command": command_line(), "config_sha256": result_hash(cfg), "config": cfg.dump(),
        "checkpoints": [], "resumes": [], "data": data_identity(cfg),
    }


def data_identity(cfg) -> Dict[str, Any]:
    """``{"root": absolute DATA.ROOT, "content_sha256": hash or None}`` of the data a run reads.

    The content hash covers the manifest's dataset, labels and backbone, the shard hashes of
    ``DATA.TRAIN_SPLIT`` and ``DATA.TEST_SPLIT`` and the embeddings file: what the trained
    weights depend on (another split added to the folder changes nothing). None when the data
    cannot be read (the trainer then names the problem itself).
    """
    root = os.path.abspath(str(cfg.DATA.ROOT))
    try:
        manifest = read_manifest(root)
        splits = {s: [(x["file"], x["sha256"], x["num_images"]) for x in manifest["splits"][s]["shards"]]
                  for s in (cfg.DATA.TRAIN_SPLIT, cfg.DATA.TEST_SPLIT) if s in manifest["splits"]}
        emb = os.path.join(root, manifest.get("embeddings", "embeddings.npz"))
        what = {"dataset": manifest.get("dataset"), "labels": manifest["labels"], "splits": splits,
                "unseen_eval": manifest.get("unseen_eval"), "backbone": manifest.get("backbone"),
                "embeddings": sha256_file(emb) if os.path.isfile(emb) else None}
    except (PackedFormatError, OSError, KeyError, TypeError):
        return {"root": root, "content_sha256": None}
    text = json.dumps(what, sort_keys=True, ensure_ascii=False)
    return {"root": root, "content_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}


def check_same_data(record: Dict[str, Any], cfg, source: str) -> Optional[str]:
    """Refuse (RunMismatchError naming both) a resume whose data is not the run's.

    ``record``: the run record (its "data" field; records written before it existed pass).
    Returns a line to log when the same content is found at another path, else None.
    """
    saved = record.get("data")
    if not isinstance(saved, dict) or not saved.get("content_sha256"):
        return None
    now = data_identity(cfg)
    if now["content_sha256"] != saved["content_sha256"]:
        found = "unreadable" if now["content_sha256"] is None else f"content {now['content_sha256'][:12]}..."
        raise RunMismatchError(
            f"{source}: the run trained on the data at {saved.get('root')} (content {saved['content_sha256'][:12]}...), "
            f"but DATA.ROOT {cfg.DATA.ROOT} is {now['root']} ({found}): other data. Resume with DATA.ROOT "
            f"{saved.get('root')}, or start a new run for this data")
    if now["root"] != saved.get("root"):
        return f"DATA.ROOT is now {now['root']} (the run started on {saved.get('root')}): the same data by content"
    return None


def parse_saved_config(text: Any, source: str) -> Dict[str, Any]:
    """The flat config saved in a checkpoint or record (a YAML string)."""
    if not isinstance(text, str):
        raise RunMismatchError(f"{source}: field 'config' should be the run's YAML config (a string), "
                               f"found {type(text).__name__}")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise RunMismatchError(f"{source}: field 'config' is not readable YAML ({err})") from None
    if not isinstance(data, dict):
        raise RunMismatchError(f"{source}: field 'config' is not a config (expected a YAML mapping)")
    return flatten(data)


def config_changes(saved: Dict[str, Any], cfg, *, epoch: int, phase: str,
                   same_data: bool = False) -> Tuple[List[str], List[str]]:
    """Compare a run's saved flat config with the one given to ``--resume``.

    Args:
        saved: the flat config the run was saved with.
        cfg: the config given now.
        epoch, phase: the last completed epoch and its phase ("train" / "finetune"), or 0 and
            "train" when no checkpoint exists yet.
        same_data: DATA.ROOT was found to hold the run's data by content
            (:func:`check_same_data`): a changed DATA.ROOT is then allowed (the data moved).
    Returns:
        ``(refused, allowed)``: lines "KEY: saved VALUE, given VALUE (why)". A change is allowed
        only when the resumed run ends exactly where an uninterrupted run with the new config
        would: the keys in FREE_KEYS; SOLVER.FINETUNE_EPOCHS while the new total is not already
        passed; SOLVER.MAX_EPOCHS only with SOLVER.SCHEDULE constant, during training and before
        the end of both training phases (the cosine curve's shape depends on it, so epochs
        1..``epoch`` already ran on another curve).
    """
    given = flatten(cfg)
    defaults = flatten(get_cfg_defaults())
    refused, allowed = [], []
    for key in sorted(given):
        if key in saved:
            old = saved[key]
        elif key in defaults:
            old = defaults[key]  # a key added after the run was saved: it had the default behaviour
        else:
            continue
        new = given[key]
        if _same(old, new):
            continue
        line = f"{key}: saved {old!r}, given {new!r}"
        why = None if (key == "DATA.ROOT" and same_data) else _why_refused(key, old, new, saved, given, epoch, phase)
        if why is None:
            allowed.append(line)
        else:
            refused.append(f"{line} ({why})" if why else line)
    return refused, allowed


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def _why_refused(key, old, new, saved, given, epoch: int, phase: str) -> Optional[str]:
    """None if the change is allowed; else a reason ("" when the key simply changes the result)."""
    if key in FREE_KEYS:
        return None
    old_e = int(saved.get("SOLVER.MAX_EPOCHS", given["SOLVER.MAX_EPOCHS"]))
    new_e = int(given["SOLVER.MAX_EPOCHS"])
    if key == "SOLVER.FINETUNE_EPOCHS":
        if epoch <= new_e + int(new):
            return None
        return f"the checkpoint is already at epoch {epoch}, past the new end {new_e + int(new)}"
    if key == "SOLVER.MAX_EPOCHS":
        if given["SOLVER.SCHEDULE"] != "constant":
            return ("the cosine schedule's shape depends on it, so the epochs already run followed another "
                    "curve; start a new run, or add fine-tuning epochs with SOLVER.FINETUNE_EPOCHS")
        if phase != "train" or epoch >= min(old_e, new_e):
            return f"the checkpoint (epoch {epoch}, {phase}) is already at or past the end of training"
        return None
    return ""
