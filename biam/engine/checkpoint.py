"""Atomic, complete checkpoints and resuming from them.

A checkpoint holds everything needed to continue a run bit for bit on the CPU: model,
optimiser, scheduler, grad scaler, RNG states, epoch, best metric and the config, and the
model's method (``method``, config ``MODEL.NAME``) and hyperparameters (``model_hparams``, the
backbone whose features it read among them; ``model_best.pth`` holds the weights and these records
too), so that loading it into another method, a model configured otherwise, or one for features of
another backbone, is an error naming both values. It is written
to a temporary file, flushed to disk and renamed, so a crash (or a full disk) at any moment
leaves the previous checkpoints intact. Names carry zero-padded epochs so they sort.
"""

from __future__ import annotations

import contextlib
import numbers
import os
import random
import re
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import torch
from torch import nn

from ..backbones import get_backbone, list_backbones
from ..data.label_encoders import LabelEncoderError, check_label_encoder, data_label_encoder
from ..modeling import DEFAULT_METHOD, load_published_state_dict, method_of
from ..utils.io import atomic_open

__all__ = [
    "checkpoint_path", "save_checkpoint", "load_checkpoint", "latest_checkpoint",
    "rng_state", "set_rng_state", "load_model_weights", "CheckpointError", "atomic_torch_save",
    "latest_owned", "check_training_state", "model_file", "check_hparams", "HPARAMS_KEY", "LABEL_ENCODER_KEY",
    "METHOD_KEY", "checkpoint_method", "check_method",
    "checkpoint_backbone", "check_backbone",
]

# Key of the model's hyperparameter record in our checkpoints and model files.
HPARAMS_KEY = "model_hparams"
# Key of the method's registered name (MODEL.NAME); a file without it is BiAM's.
METHOD_KEY = "method"
# Key of the label encoder's name (biam.data.label_encoders); a file without it: word vectors.
LABEL_ENCODER_KEY = "label_encoder"

_NAME = re.compile(r"^checkpoint_epoch_(\d{4,})\.pth$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model."""


def checkpoint_path(ckpt_dir: str, epoch: int) -> str:
    return os.path.join(ckpt_dir, f"checkpoint_epoch_{epoch:04d}.pth")


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save`` to ``path.tmp``, fsync, rename: the file is complete or absent."""
    try:
        # A failed write (disk full, interrupt) leaves no half file that looks usable.
        with atomic_open(path, "wb", fsync=True) as f:
            torch.save(obj, f)
    except BaseException as err:
        if isinstance(err, (OSError, RuntimeError)):
            # torch's zip writer reports a full disk as "unexpected pos ..."; say what it means.
            raise CheckpointError(f"{path}: write failed (disk full or file-size limit?): {err}; "
                                  "earlier checkpoints are untouched") from err
        raise


def rng_state() -> Dict[str, Any]:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        # As tensors and plain numbers: weights_only loading admits no numpy arrays.
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(_as_python_state(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_python_state(state):
    # weights_only loading returns lists where random.getstate() had tuples.
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def save_checkpoint(ckpt_dir: str, epoch: int, state: Dict[str, Any], keep: int = 3,
                    owned: Optional[List[str]] = None) -> str:
    """Write ``checkpoint_epoch_{epoch:04d}.pth`` atomically; prune this run's older ones beyond ``keep``.

    ``owned`` is the run's list of checkpoint names it wrote (its run record's list): the new name
    is appended, and only names on it are ever deleted, so checkpoints of another run in the same
    folder survive. Without ``owned`` nothing is pruned.
    """
    os.makedirs(ckpt_dir, exist_ok=True)
    path = checkpoint_path(ckpt_dir, epoch)
    atomic_torch_save(state, path)
    if owned is None:
        return path
    name = os.path.basename(path)
    if name not in owned:
        owned.append(name)
    owned.sort()
    for old in owned[:-keep]:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(ckpt_dir, old))
        owned.remove(old)
    return path


def latest_owned(ckpt_dir: str, owned: List[str]) -> Optional[str]:
    """The highest-epoch checkpoint among ``owned`` names that is complete on disk, or None."""
    present = sorted(n for n in owned if _NAME.match(n) and os.path.isfile(os.path.join(ckpt_dir, n)))
    return os.path.join(ckpt_dir, present[-1]) if present else None


def latest_checkpoint(ckpt_dir: str) -> Optional[str]:
    """The complete checkpoint with the highest epoch in ``ckpt_dir`` (temporary files ignored)."""
    if not os.path.isdir(ckpt_dir):
        return None
    names = sorted(p for p in os.listdir(ckpt_dir) if _NAME.match(p))
    return os.path.join(ckpt_dir, names[-1]) if names else None


def load_checkpoint(path: str) -> Dict[str, Any]:
    """Load a checkpoint (or a plain state dict) with ``weights_only=True``.

    Raises ``CheckpointError`` naming the file for a missing, truncated or corrupt file.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, OSError) as err:
        raise CheckpointError(
            f"{path}: cannot be read as a checkpoint (truncated or corrupt? {type(err).__name__}: {err})"
        ) from err
    except Exception as err:  # noqa: BLE001 - unpickling errors come in many types; re-raised with the file named
        raise CheckpointError(f"{path}: refused or unreadable checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict, found {type(obj).__name__}")
    return dict(obj)


def model_state_from(obj: Mapping[str, Any]) -> Mapping[str, torch.Tensor]:
    """The model's state dict inside a training checkpoint, or the object itself if it is one."""
    if "model" in obj and isinstance(obj["model"], Mapping):
        return obj["model"]
    return obj


def model_file(model: nn.Module, label_encoder: Optional[str] = None) -> Dict[str, Any]:
    """What ``model_best.pth`` holds: ``{"model": state dict, "method": name, "model_hparams": {...}}``,
    plus ``"label_encoder"`` (the name of the encoder of the training data's label embeddings,
    :func:`biam.data.label_encoders.data_label_encoder`) when given.

    ``model`` is the bare method module (no DDP / compile wrapper); ``load_model_weights`` reads
    it back. ``model_hparams`` only for a module with ``hparams()``.
    """
    out = {"model": model.state_dict(), METHOD_KEY: method_of(model) or DEFAULT_METHOD}
    if hasattr(model, "hparams"):
        out[HPARAMS_KEY] = model.hparams()
    if label_encoder is not None:
        out[LABEL_ENCODER_KEY] = label_encoder
    return out


def checkpoint_method(obj: Mapping[str, Any]) -> str:
    """The method a checkpoint's weights belong to: its ``method`` field, else BiAM (published
    files and ours from before the field)."""
    name = obj.get(METHOD_KEY)
    return name if isinstance(name, str) else DEFAULT_METHOD


def check_method(model: nn.Module, obj: Mapping[str, Any], path: str) -> None:
    """Raise ``CheckpointError`` naming both methods when ``path`` holds weights of another
    method than ``model``'s (a module no method registered is not checked)."""
    mine, theirs = method_of(model), checkpoint_method(obj)
    if mine is not None and mine != theirs:
        raise CheckpointError(f"{path}: a checkpoint of method {theirs!r}, but the model is method {mine!r} "
                              f"(MODEL.NAME); set MODEL.NAME {theirs} to use it, or give a checkpoint of {mine!r}")


def check_hparams(model: nn.Module, recorded: Any, path: str) -> None:
    """Raise ``CheckpointError`` when the hyperparameters recorded in ``path`` differ from ``model``'s.

    ``recorded`` is the file's ``model_hparams`` dict; hyperparameters it lacks are not checked.
    The message names every differing config key with the file's value and the model's.
    """
    if not isinstance(recorded, Mapping):
        raise CheckpointError(f"{path}: '{HPARAMS_KEY}' is a {type(recorded).__name__}, expected a dict")
    mine = model.hparams()
    keys = getattr(model, "HPARAM_CONFIG_KEYS", {})  # hyperparameter -> its config key, for the message
    differ = [(name, recorded[name], mine[name]) for name in mine
              if name in recorded and recorded[name] != mine[name]]
    if differ:
        lines = [f"{path}: the checkpoint was made by a model configured otherwise:"]
        lines += [f"  {keys.get(name, name)}: checkpoint {a}, config {b}" for name, a, b in differ]
        lines.append("  (set these MODEL.* keys to the checkpoint's values, e.g. MODEL.HEADS 16 for Open Images)")
        raise CheckpointError("\n".join(lines))


def checkpoint_backbone(obj: Mapping[str, Any]) -> Optional[str]:
    """The backbone whose features a checkpoint's model read, or None when it cannot be told.

    Our files record it (``model_hparams["backbone"]``). A published or older file does not: its
    input conv (``conv_3X3.body.weight``, (D_c, channels, 3, 3)) and ``scene_context_block.w_g``
    ((D_c, scene_dim, 1, 1)) widths name the registered backbone with those widths (published:
    512 and 4096, VGG19).
    """
    rec = obj.get(HPARAMS_KEY)
    if isinstance(rec, Mapping) and isinstance(rec.get("backbone"), str):
        return rec["backbone"]
    state = model_state_from(obj)
    shapes = {}
    for key in ("conv_3X3.body.weight", "scene_context_block.w_g.weight"):
        found = [v for k, v in state.items() if k.split(".", 1)[-1] == key or k == key]
        if not found or not isinstance(found[0], torch.Tensor) or found[0].dim() != 4:
            return None
        shapes[key] = int(found[0].shape[1])
    widths = (shapes["conv_3X3.body.weight"], shapes["scene_context_block.w_g.weight"])
    for name in list_backbones():
        bb = get_backbone(name)
        if (bb.channels, bb.scene_dim) == widths:
            return name
    return None


def check_backbone(model: nn.Module, obj: Mapping[str, Any], path: str) -> None:
    """Raise ``CheckpointError`` naming both backbones when ``path`` was trained on features of
    another backbone than the one ``model`` is built for (the packed data's)."""
    mine = getattr(model, "backbone", None)
    theirs = checkpoint_backbone(obj)
    if mine is None or theirs is None or mine == theirs:
        return
    raise CheckpointError(
        f"{path}: the checkpoint was trained on {theirs} features, but the model is built for {mine} features "
        f"(the packed data's backbone, or MODEL.BACKBONE); use a checkpoint trained on {mine} features, or "
        f"features extracted with --backbone {theirs}")


def load_model_weights(model: nn.Module, path: str, data_root: Optional[str] = None) -> Dict[str, Any]:
    """Load weights into ``model`` from a training checkpoint, a ``model_best.pth`` of ours or a
    published plain state dict.

    A file of another method than ``model``'s raises ``CheckpointError`` naming both
    (:func:`check_method`). A file of ours records the model's hyperparameters; one that differs from ``model``'s (e.g.
    16 heads in the file, 8 configured) raises ``CheckpointError`` naming both values; so does a
    file trained on another backbone's features (:func:`check_backbone`, also for published files). A plain
    state dict has no record: its keys and shapes are checked. Keys and shapes must match
    exactly; otherwise ``CheckpointError`` lists the missing, unexpected and mismatched keys
    with their shapes. With ``data_root`` (a packed dataset), a file whose recorded label encoder
    is not the one of that data's label embeddings raises ``CheckpointError`` naming both
    (:func:`biam.data.label_encoders.check_label_encoder`). Returns the loaded object.
    """
    obj = load_checkpoint(path)
    check_method(model, obj, path)
    if data_root is not None:
        # Label embeddings of another encoder are another space, even at the same width.
        try:
            check_label_encoder(obj.get(LABEL_ENCODER_KEY), data_label_encoder(data_root), path, str(data_root))
        except LabelEncoderError as err:
            raise CheckpointError(str(err)) from None
    check_backbone(model, obj, path)
    if HPARAMS_KEY in obj and hasattr(model, "hparams"):
        check_hparams(model, obj[HPARAMS_KEY], path)
    state = dict(model_state_from(obj))
    # DDP / torch.compile wrappers prefix keys; accept checkpoints saved from either.
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    try:
        # One key/shape comparison for every caller: the model package's strict loader.
        load_published_state_dict(model, state, source=path)
    except ValueError as err:
        raise CheckpointError(f"{err}\n  (the checkpoint does not fit the model config: check MODEL.* keys)") from None
    return obj


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def check_training_state(state: Mapping[str, Any], path: str) -> None:
    """Raise ``CheckpointError`` naming ``path`` and the field when a training checkpoint's
    fields are missing or of the wrong type (a hand-edited or foreign file), before any is used."""
    required = ("model", "optimizer", "scheduler", "scaler", "epoch", "phase", "best")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a training checkpoint (missing {', '.join(missing)}); "
                              "use MODEL.WEIGHTS to start from plain weights")

    def bad(field: str, expected: str) -> CheckpointError:
        return CheckpointError(f"{path}: field '{field}' should be {expected}, found "
                               f"{type(state[field]).__name__} {state[field]!r:.60}")

    for field in ("model", "optimizer", "scheduler", "scaler"):
        if not isinstance(state[field], Mapping):
            raise bad(field, "a dict (a state dict)")
    if not _is_int(state["epoch"]) or state["epoch"] < 0:
        raise bad("epoch", "an int >= 0")
    if state["phase"] not in ("train", "finetune"):
        raise CheckpointError(f"{path}: field 'phase' is {state['phase']!r}, should be 'train' or 'finetune'")
    best = state["best"]
    if not isinstance(best, Mapping):
        raise bad("best", "a dict {'metric': float, 'epoch': int}")
    if not isinstance(best.get("metric"), numbers.Real) or isinstance(best.get("metric"), bool):
        raise CheckpointError(f"{path}: field 'best.metric' should be a number, found {type(best.get('metric')).__name__}")
    if not _is_int(best.get("epoch")):
        raise CheckpointError(f"{path}: field 'best.epoch' should be an int, found {type(best.get('epoch')).__name__}")
    if "history" in state and not (isinstance(state["history"], list) and all(isinstance(h, Mapping) for h in state["history"])):
        raise bad("history", "a list of dicts")
    if "bad_batches" in state and not _is_int(state["bad_batches"]):
        raise bad("bad_batches", "an int")
    if "rng" in state and not isinstance(state["rng"], Mapping):
        raise bad("rng", "a dict of RNG states")
    if "config" in state and not isinstance(state["config"], str):
        raise bad("config", "the run's YAML config (a string)")
    if "run_id" in state and not isinstance(state["run_id"], str):
        raise bad("run_id", "a string")
