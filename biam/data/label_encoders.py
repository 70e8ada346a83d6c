"""Label embeddings from a named encoder (word vectors or a CLIP text encoder), recorded in the file.

Two encoders make the (C, E) label matrices the datasets read:

* **word vectors** (GloVe / fastText text files), through :func:`biam.data.wordvec.label_embeddings`
  (the one reader; multi-word labels averaged);
* **a CLIP text encoder** (open_clip, the same model as the ``clip_rn50`` / ``clip_vit_b16`` image
  backbones): each label is put into prompt templates, every prompt is encoded and L2-normalised,
  the prompts of a label are averaged and normalised again -- the prompt ensemble of the CLIP paper
  (Radford et al., ICML 2021, sec. 3.1.4; its 80 ImageNet templates, or one template given).

Rows are L2-normalised. The file is the packed ``embeddings.npz`` layout (arrays ``seen`` (S, E)
and ``unseen`` (U, E), float32; docs/data_format.md) plus an array ``encoder``: the JSON record
of the encoder (``name``, ``kind``, weights or word-vector file with its SHA-256, templates).
Written as ``<packed>/embeddings.npz`` it travels with the packed data, and
:func:`packed_label_encoder` reads it back. Label spaces of two encoders are different spaces
even when their widths agree (CLIP ViT-B/16 and ViT-B/32 are both 512-d), so a model trained on
one encoder's embeddings refuses data embedded by another, by name (:func:`check_label_encoder`).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..backbones import load_backbone
from ..backbones.open_clip_common import import_open_clip
from ..utils.io import atomic_open, sha256_file
from .packed import EMBEDDINGS, read_manifest
from .wordvec import label_embeddings

__all__ = ["LabelEncoderError", "ENCODER_KEY", "WORD_VECTORS", "CLIP_TEXT", "CLIP_BACKBONES", "imagenet_templates",
           "prompts_for", "tokenize", "clip_text_embeddings", "encode_labels_clip", "encode_labels_word_vectors",
           "save_label_embeddings", "read_label_encoder", "packed_label_encoder", "data_label_encoder", "encoder_name",
           "check_label_encoder"]

PathLike = Union[str, os.PathLike]
ENCODER_KEY = "encoder"
WORD_VECTORS, CLIP_TEXT = "word-vectors", "clip-text"
CLIP_BACKBONES = ("clip_rn50", "clip_vit_b16")
IMAGENET_80 = "imagenet-80"
# What data without a record was embedded with: the released files and every earlier
# conversion used word vectors (GloVe / word2vec, 300-d).
UNRECORDED = "word vectors (not recorded)"


class LabelEncoderError(ValueError):
    """A label-embedding file's encoder record is unreadable, or data of another encoder was given."""


def imagenet_templates() -> List[str]:
    """The CLIP paper's 80 ImageNet prompt templates, ``"a photo of a {}."`` style (from open_clip)."""
    import_open_clip()
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]


def prompts_for(label: str, templates: Sequence[str]) -> List[str]:
    """The prompts of one label: ``_`` as spaces (``"ice_cream"`` -> ``"a photo of a ice cream."``)."""
    text = " ".join(label.replace("_", " ").split())
    if not text:
        raise LabelEncoderError(f"label {label!r} has no words")
    return [t.replace("{}", text) for t in templates]


def _tokenizer(arch: str):
    return import_open_clip().get_tokenizer(arch)


def tokenize(texts: Sequence[str], arch: str = "ViT-B-16") -> torch.Tensor:
    """(N, 77) int64 CLIP BPE tokens: start token, the text's tokens, end token, zero padding."""
    return _tokenizer(arch)(list(texts))


@torch.no_grad()
def clip_text_embeddings(model, labels: Sequence[str], templates: Sequence[str], arch: str,
                         batch_size: int = 256, device: Union[str, torch.device] = "cpu") -> np.ndarray:
    """(C, E) float32 L2-normalised CLIP text embeddings: per label the normalised mean of its
    normalised prompt embeddings (E: 1024 for RN50, 512 for ViT-B/16)."""
    if not templates or any("{}" not in t for t in templates):
        raise LabelEncoderError(f"every template needs a '{{}}' where the label goes, got {list(templates)[:3]}")
    tok = _tokenizer(arch)
    model = model.to(device)
    rows = []
    for label in labels:
        prompts = prompts_for(label, templates)
        feats = []
        for i in range(0, len(prompts), batch_size):
            feats.append(model.encode_text(tok(prompts[i:i + batch_size]).to(device)).float())
        f = torch.nn.functional.normalize(torch.cat(feats), dim=-1).mean(dim=0)
        rows.append(torch.nn.functional.normalize(f, dim=0).cpu())
    out = torch.stack(rows).numpy().astype(np.float32)
    if not np.isfinite(out).all():
        raise LabelEncoderError("the CLIP text encoder gave non-finite embeddings")
    return out


def encode_labels_clip(labels: Sequence[str], backbone: str, weights: Optional[PathLike] = None,
                       random_seed: Optional[int] = None, template: Optional[str] = None,
                       what: str = "biam-embed-labels", device: str = "cpu") -> Tuple[np.ndarray, dict]:
    """(C, E) embeddings of ``labels`` by the text encoder of CLIP backbone ``backbone``, and its record.

    ``weights``/``random_seed`` as for the image backbone (the same open_clip checkpoint holds both
    encoders); ``template`` one prompt template, None: the 80 ImageNet templates.
    """
    if backbone not in CLIP_BACKBONES:
        raise LabelEncoderError(f"{backbone!r} has no text encoder; CLIP backbones: {', '.join(CLIP_BACKBONES)}")
    arch = {"clip_rn50": "RN50", "clip_vit_b16": "ViT-B-16"}[backbone]
    model, source = load_backbone(backbone, weights, random_seed, what=what)
    templates = [template] if template is not None else imagenet_templates()
    matrix = clip_text_embeddings(model, labels, templates, arch, device=device)
    weights_id = source.split(":sha256:")[-1][:16] if ":sha256:" in source else source.rsplit(":", 1)[-1]
    record = {"name": f"{backbone}:{weights_id}", "kind": CLIP_TEXT, "backbone": backbone, "weights": source,
              "templates": IMAGENET_80 if template is None else template, "normalized": True,
              "dim": int(matrix.shape[1])}
    return matrix, record


def encode_labels_word_vectors(labels: Sequence[str], path: PathLike, fmt: str = "auto",
                               progress: bool = False) -> Tuple[np.ndarray, dict]:
    """(C, d) L2-normalised embeddings from a GloVe / fastText file (:mod:`biam.data.wordvec`), and its record."""
    path = Path(path)
    matrix = label_embeddings(labels, path, fmt=fmt, progress=progress)
    digest = sha256_file(path)
    record = {"name": f"{WORD_VECTORS}:{path.name}:{digest[:16]}", "kind": WORD_VECTORS, "file": path.name,
              "sha256": digest, "format": fmt, "normalized": True, "dim": int(matrix.shape[1])}
    return matrix, record


def save_label_embeddings(path: PathLike, seen: np.ndarray, unseen: np.ndarray, record: Mapping) -> Path:
    """Write ``path`` (.npz): ``seen`` (S, E), ``unseen`` (U, E) float32 and ``encoder`` (the JSON record).

    Written to a temporary name and renamed, so an interrupted run leaves the old file.
    """
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"{path}: label embeddings are written as .npz (arrays seen, unseen, encoder)")
    seen, unseen = np.asarray(seen, dtype=np.float32), np.asarray(unseen, dtype=np.float32)
    for name, arr in (("seen", seen), ("unseen", unseen)):
        if arr.ndim != 2 or not np.isfinite(arr).all():
            raise ValueError(f"{path}: embeddings '{name}': expected a finite 2-d array, got shape {arr.shape}")
    if seen.shape[1] != unseen.shape[1]:
        raise ValueError(f"{path}: seen dim {seen.shape[1]} != unseen dim {unseen.shape[1]}")
    if not isinstance(record.get("name"), str) or not record["name"]:
        raise ValueError(f"{path}: the encoder record needs a 'name'")
    arrays = {"seen": seen, "unseen": unseen, ENCODER_KEY: np.array(json.dumps(dict(record), sort_keys=True))}
    with atomic_open(path, "wb") as fh:
        # Fixed member timestamps (np.savez stamps the current time): the same embeddings give the same bytes.
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, arr in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, arr if arr.ndim == 0 else np.ascontiguousarray(arr), allow_pickle=False)
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = 0o644 << 16
                zf.writestr(info, buf.getvalue())
    return path


def read_label_encoder(path: PathLike) -> Optional[dict]:
    """The encoder record of a label-embedding .npz, or None for a file without one (word vectors)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label-embedding file not found: {path}")
    if path.suffix != ".npz":
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if ENCODER_KEY not in z.files:
                return None
            raw = z[ENCODER_KEY]
    except (OSError, ValueError) as err:
        raise LabelEncoderError(f"{path}: cannot read the label embeddings ({err})") from None
    try:
        record = json.loads(str(raw.item()) if raw.dtype.kind == "U" and raw.ndim == 0 else "")
    except ValueError:
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("name"), str):
        raise LabelEncoderError(f"{path}: field '{ENCODER_KEY}': expected a JSON object with a 'name', "
                                f"found {raw!r:.80}")
    return record


def packed_label_encoder(root: PathLike) -> Optional[dict]:
    """The encoder record of a packed dataset's embedding file (manifest field ``embeddings``)."""
    root = Path(root)
    return read_label_encoder(root / read_manifest(root).get("embeddings", EMBEDDINGS))


def data_label_encoder(root: PathLike) -> Optional[str]:
    """The encoder name of a packed dataset's label embeddings, or None when they carry no record
    (word vectors); what a checkpoint trained on it records (``label_encoder``)."""
    record = packed_label_encoder(root)
    return None if record is None else str(record["name"])


def encoder_name(record: Optional[Mapping]) -> str:
    """The name two encoders are compared by; data without a record was embedded with word vectors."""
    return UNRECORDED if record is None else str(record["name"])


def check_label_encoder(trained: Optional[str], data: Optional[str], checkpoint: str, data_root: str) -> None:
    """Refuse a checkpoint trained on one encoder's label embeddings for data embedded by another.

    ``trained``: the encoder name the checkpoint records (None: not recorded, i.e. word vectors, as
    every published and earlier checkpoint); ``data``: :func:`encoder_name` of the data's record
    (None: not recorded). Two unrecorded sides pass; an unrecorded side meets only word vectors.
    Raises :class:`LabelEncoderError` naming the checkpoint, the data and both encoders.
    """
    a, b = trained or UNRECORDED, data or UNRECORDED
    if a == b:
        return
    if UNRECORDED in (a, b) and (a if b == UNRECORDED else b).startswith(WORD_VECTORS + ":"):
        return  # an old record-less side was word vectors too
    raise LabelEncoderError(
        f"{checkpoint} was trained on label embeddings of encoder {a!r}, but the label embeddings of {data_root} "
        f"were made by encoder {b!r}; embed the labels with the checkpoint's encoder (biam-embed-labels) or train "
        "on this data")
