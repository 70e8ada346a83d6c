"""Tagging images with any label list: the :class:`Predictor` (the Python API behind ``biam-predict``).

    from biam.engine import Predictor
    p = Predictor.from_checkpoint("model_best.pth", device="cpu", weights="imagenet_weights.pth")
    result = p.tag(["photo.jpg", pil_image], ["sky", "red car"], word_vectors="glove.6B.300d.txt", k=5)
    result["photo.jpg"].labels          # [("sky", 0.91), ("red car", 0.40)], best first
    p.attention("photo.jpg", labels)    # (C, rows, cols) region scores on the backbone's grid
    p.visualize("photo.jpg", labels, "photo_attention.png", k=3)

Images (paths or PIL images) go through the extractors' pipeline (:mod:`biam.extraction`: the
backbone's resize, regions and scene feature), then through BiAM with the label embeddings
L2-normalised; each image gets its top-K labels and scores. Labels are known only through their
embeddings, so any label list works (zero-shot): names with an embedding matrix (rows in name
order; an array, a ``.npy``, or an ``.npz`` with one array or ``seen`` + ``unseen``) or a
word-vector file (:func:`biam.data.wordvec.label_embeddings`, the reader training data uses).

:class:`FigureFolder` is ``biam-predict --visualize DIR``: figures go into a folder it owns (new
or empty, or one an earlier biam-predict wrote: its record ``DIR/biam-predict.json`` lists the
figures it may replace), never into a folder holding an input image. The record lists each
figure before the figure is written, so the figures of a killed run stay ours on the rerun.
"""

from __future__ import annotations

import contextlib
import os
import sys
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm
import yaml

from ..backbones import DEFAULT_BACKBONE, check_weights_available, get_backbone
from ..config import load_cfg
from ..data import wordvec
from ..data.images import ImageFileDataset, backbone_transform, collate_images, load_image, to_rgb
from ..extraction import build_extractor
from ..modeling import build_model
from ..utils.io import atomic_open, write_json
from ..utils.ownership import LOCK_NAME, FolderLock, FolderOwnershipError, check_output_folder
from ..utils.text import read_text
from ..utils.yaml_safe import load_yaml_mapping
from .checkpoint import checkpoint_backbone, checkpoint_method, load_checkpoint, load_model_weights
from .visualize import DPI, render_attention_figure

__all__ = ["Predictor", "LabelSet", "ImageTags", "TagResult", "FigureFolder", "embed_labels", "check_label_names",
           "read_label_file", "collect_images", "predict_backbone", "sets_method", "resolve_device", "prepare_figure_folder",
           "IMAGE_EXTENSIONS", "FIGURE_RECORD", "FIGURE_SUFFIX"]

# The record of a --visualize folder (which figures biam-predict wrote there) and the figures' naming.
FIGURE_RECORD = "biam-predict.json"
FIGURE_SUFFIX = "_attention.png"

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# Characters that end a line for some reader (str.splitlines, editors) or are invisible controls:
# a label holding one would break labels.txt (one label a line) or print as something else.
_BAD_LABEL_CATEGORIES = {"Cc", "Zl", "Zp"}

ImageInput = Union[str, os.PathLike, Any]  # a path, or a PIL.Image


def _bad_char(text: str) -> Optional[str]:
    for ch in text:
        if unicodedata.category(ch) in _BAD_LABEL_CATEGORIES:
            return f"U+{ord(ch):04X} ({unicodedata.name(ch, 'a control character')})"
    return None


def check_label_names(names: Sequence[str], source: str = "labels") -> List[str]:
    """The label names as a list, or ValueError naming ``source``: no labels, a label that is
    not a non-empty string, one holding a line separator or control character, a repeated one."""
    names = list(names)
    if not names:
        raise ValueError(f"{source}: no labels given; give at least one label name")
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{source}: label {i} is {name!r}, expected a non-empty name")
        bad = _bad_char(name)
        if bad:
            raise ValueError(f"{source}: label {i} ({name!r}) holds {bad}; label names are one line of text")
    if len(set(names)) != len(names):
        raise ValueError(f"{source}: a label name appears twice")
    return names


def read_label_file(path: Union[str, os.PathLike]) -> List[str]:
    """Label names of a UTF-8 file, one a line (CRLF and a BOM allowed) -> list of str.

    Only ``\\n`` ends a line here: a line holding U+2028, U+2029, another line separator or a
    control character is refused naming the line, as are an empty line between labels, a file
    of no labels (empty, or only blank lines) and a repeated label. Raises FileNotFoundError /
    ValueError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file not found: {path}")
    lines = read_text(path).split("\n")
    labels = []
    for lineno, line in enumerate(lines, 1):
        core = line[:-1] if line.endswith("\r") else line
        core = core.strip(" \t")
        bad = _bad_char(core)
        if bad:
            raise ValueError(f"{path}: line {lineno} holds {bad} ({core!r}); label names are one line of "
                             "text each: remove the character")
        labels.append(core.strip())
    while labels and not labels[-1]:
        labels.pop()
    if not labels:
        raise ValueError(f"{path}: no labels (the file is empty or holds only blank lines); "
                         "write the label names one a line")
    for i, name in enumerate(labels):
        if not name:
            raise ValueError(f"{path}: line {i + 1} is empty (labels are one a line, no gaps)")
    return check_label_names(labels, str(path))


def collect_images(inputs: Sequence[str]) -> List[str]:
    """Files as given (a missing one is kept, to be reported as unreadable), folders searched
    recursively for image extensions, in sorted order. Raises ValueError if nothing is found."""
    out: List[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise ValueError(f"{p}: folder holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            out += found
        else:
            out.append(str(p))
    if not out:
        raise ValueError("no images given (pass image files and/or folders)")
    return out


@dataclass(frozen=True)
class LabelSet:
    """Label names and their (C, E) float32 embeddings, rows L2-normalised (zero rows only where
    a word-vector file lacks every word of a label and ``missing="zero"`` allowed it)."""

    names: List[str]
    embeddings: torch.Tensor
    source: str = ""


def _embedding_matrix(path: Path) -> np.ndarray:
    if path.suffix == ".npz" and path.is_file():
        with np.load(path, allow_pickle=False) as z:
            files = z.files
        if "seen" in files and "unseen" in files:  # a packed dataset's embeddings.npz
            return np.concatenate([wordvec.load_embedding_array(path, "seen"), wordvec.load_embedding_array(path, "unseen")])
    return wordvec.load_embedding_array(path)


def embed_labels(names: Sequence[str], embed_dim: int, *, embeddings=None, word_vectors=None, missing: str = "error",
                 labels_source: str = "labels") -> LabelSet:
    """Names -> :class:`LabelSet` with (C, ``embed_dim``) L2-normalised rows in name order.

    ``embeddings``: a (C, E) array or a ``.npy`` / ``.npz`` file; else ``word_vectors``: a GloVe /
    fastText text file (multi-word labels averaged; ``missing`` as
    :func:`biam.data.wordvec.label_embeddings`; ``"zero"`` warns, UserWarning, for the zero rows it
    gives). Shape, non-finite, zero and overflowing rows are refused naming the source and the
    label (:func:`biam.data.wordvec.normalize_rows`).
    """
    names = check_label_names(names, labels_source)
    if embeddings is not None:
        if isinstance(embeddings, (str, os.PathLike)):
            source = str(embeddings)
            vectors = _embedding_matrix(Path(embeddings))
        else:
            source = "the embeddings array"
            vectors = np.asarray(embeddings.detach().cpu() if torch.is_tensor(embeddings) else embeddings)
            if vectors.dtype.kind != "f":
                raise ValueError(f"{source}: expected float values, got {vectors.dtype}")
        allow_zero = False
    elif word_vectors is not None:
        source = str(word_vectors)
        vectors = wordvec.label_embeddings(names, word_vectors, missing=missing, normalize=False)
        allow_zero = missing == "zero"  # a label with no known word: a zero row the caller asked for
    else:
        raise ValueError("labels need embeddings: give embeddings= (an array or .npy/.npz) or word_vectors= (a file)")
    if vectors.shape != (len(names), embed_dim):
        raise ValueError(f"{source}: embeddings of shape {vectors.shape}, expected ({len(names)}, {embed_dim}) "
                         f"for the {len(names)} labels of {labels_source} (MODEL.EMBED_DIM {embed_dim})")
    rows = wordvec.normalize_rows(vectors, source, names, allow_zero=allow_zero)  # zero rows: already warned
    return LabelSet(names, torch.from_numpy(rows), source)


@dataclass
class ImageTags:
    """One image's result: ``labels`` the top-K ``(label, score)`` pairs, best first;
    ``region_scores`` (C, rows, cols) float32 of every label when asked for; ``figure`` the
    attention figure written for it, if any."""

    name: str
    labels: List[Tuple[str, float]]
    region_scores: Optional[np.ndarray] = None
    figure: Optional[str] = None


@dataclass
class TagResult:
    """:meth:`Predictor.tag`'s answer: ``images`` in input order (readable ones), ``unreadable``
    ``(name, reason)`` pairs; ``result[name]`` is that image's :class:`ImageTags`."""

    images: List[ImageTags]
    unreadable: List[Tuple[str, str]]
    top_k: int
    label_names: List[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> ImageTags:
        for entry in self.images:
            if entry.name == name:
                return entry
        raise KeyError(f"no tagged image named {name!r}")

    def as_dict(self) -> Dict[str, List[Tuple[str, float]]]:
        """``{image name: [(label, score), ...]}``."""
        return {e.name: e.labels for e in self.images}


def _is_path(item) -> bool:
    return isinstance(item, (str, os.PathLike))


def _image_name(item, index: int) -> str:
    if _is_path(item):
        return os.fspath(item)
    return getattr(item, "filename", "") or f"<image {index}>"


class _ImageInputs(Dataset):
    """Paths (read as :class:`ImageFileDataset` does: unreadable ones become records) and PIL images."""

    def __init__(self, items: Sequence[ImageInput], transform):
        self.items = list(items)
        self.files = ImageFileDataset([os.fspath(i) if _is_path(i) else "" for i in self.items], transform)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        item = self.items[index]
        if _is_path(item):
            return self.files[index]
        # 16-bit, alpha and palette images as files of them are read (biam.data.images.to_rgb).
        return self.transform(to_rgb(item, _image_name(item, index))), index


def resolve_device(device: Union[str, torch.device]) -> torch.device:
    """``"auto"`` -> a GPU when present, else the CPU; ``"cuda"``, ``"cpu"`` or a torch.device as given."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def predict_backbone(cfg, checkpoint: str):
    """The backbone that computes features for ``checkpoint``: ``MODEL.BACKBONE`` when set (a
    checkpoint of another backbone is then refused when its weights load), else the one the
    checkpoint records or its widths imply (published files: VGG19), else VGG19."""
    if cfg.MODEL.BACKBONE:
        return get_backbone(cfg.MODEL.BACKBONE)
    return get_backbone(checkpoint_backbone(load_checkpoint(checkpoint)) or DEFAULT_BACKBONE)


def sets_method(config_file: Optional[str], opts: Sequence[str]) -> bool:
    """Whether the user chose MODEL.NAME: among the ``opts`` KEY VALUE pairs or in ``config_file``.
    An unreadable file counts as not setting it (``load_cfg`` then reports it)."""
    if "MODEL.NAME" in list(opts)[0::2]:
        return True
    if not config_file:
        return False
    try:
        with open(config_file, encoding="utf-8") as f:
            loaded = load_yaml_mapping(f.read())
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError):
        return False
    model = loaded.get("MODEL")
    return isinstance(model, dict) and "NAME" in model


class Predictor:
    """A BiAM checkpoint with its backbone's feature extractor, in eval mode on one device.

    Args:
        model: the BiAM (``biam.modeling.build_model``) with its weights loaded.
        extractor: :class:`biam.extraction.FeatureExtractor` of ``backbone``.
        backbone: the :class:`biam.backbones.Backbone` (its ``grid`` shapes the region scores).
        device: where both run. ``embed_dim``: the model's label-embedding width.
        word_vectors: default word-vector file for label names given without embeddings.
    """

    def __init__(self, model, extractor, backbone, device: Union[str, torch.device] = "cpu", *, embed_dim: int,
                 word_vectors: Optional[str] = None, checkpoint: str = "", weights_source: str = ""):
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.extractor = extractor.to(self.device)
        self.backbone = backbone
        self.grid: Tuple[int, int] = tuple(backbone.grid)
        self.embed_dim = embed_dim
        self.word_vectors = word_vectors
        self.checkpoint = checkpoint
        self.weights_source = weights_source
        self.transform = backbone_transform(backbone)

    @classmethod
    def from_checkpoint(cls, checkpoint: Union[str, os.PathLike], device: Union[str, torch.device] = "auto",
                        weights: Optional[str] = None, *, random_weights: Optional[int] = None, cfg=None,
                        config_file: Optional[str] = None, opts: Sequence[str] = (),
                        word_vectors: Optional[str] = None) -> "Predictor":
        """Build the model the config describes (``cfg``, else ``config_file`` + ``opts`` KEY VALUE
        pairs, else the defaults; without ``cfg``, MODEL.NAME is the method the checkpoint records
        unless the file or ``opts`` set it), load ``checkpoint`` (ours or a published state dict) and the
        backbone it was trained on (recorded, or ``MODEL.BACKBONE``) with ImageNet ``weights``
        (a state-dict file; None: torchvision's cache) or seeded ``random_weights`` (tests).
        Raises CheckpointError, WeightsNotFoundError, FileNotFoundError, ConfigError."""
        checkpoint = os.fspath(checkpoint)
        if cfg is None:
            opts = list(opts)
            if not sets_method(config_file, opts):
                # The checkpoint knows its method (a file without the record is BiAM's).
                opts = ["MODEL.NAME", checkpoint_method(load_checkpoint(checkpoint)), *opts]
            cfg = load_cfg(config_file or None, opts)
        backbone = predict_backbone(cfg, checkpoint)
        check_weights_available(weights, random_weights, "biam-predict", backbone=backbone.name)
        model = build_model(cfg, backbone)
        load_model_weights(model, checkpoint)
        extractor, source = build_extractor(backbone.name, weights, random_weights, "biam-predict")
        return cls(model, extractor, backbone, device, embed_dim=cfg.MODEL.EMBED_DIM, word_vectors=word_vectors,
                   checkpoint=checkpoint, weights_source=source)

    def labels(self, labels, *, embeddings=None, word_vectors=None, missing: str = "error") -> LabelSet:
        """A :class:`LabelSet` as is, or names embedded with ``embeddings`` (array or file) or
        ``word_vectors`` (else the predictor's default word-vector file); see :func:`embed_labels`."""
        if isinstance(labels, LabelSet):
            return labels
        if isinstance(labels, str):
            raise TypeError("labels: a list of names (or a LabelSet), not one string")
        return embed_labels(labels, self.embed_dim, embeddings=embeddings,
                            word_vectors=word_vectors if word_vectors is not None else self.word_vectors,
                            missing=missing)

    def _scores(self, batch: torch.Tensor, label_emb: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Images (B, 3, S, S) -> (region scores (B, R, C), image scores (B, C)), as BiAM.forward."""
        regions, scene = self.extractor(batch.to(self.device))
        maps = self.model.region_scores(regions, label_emb, scene).float()  # (B, R, C), R = rows * cols
        if maps.shape[1] != self.grid[0] * self.grid[1]:
            raise RuntimeError(f"the model gave {maps.shape[1]} regions, the backbone's grid is {self.grid}")
        return maps, maps.topk(self.model.topk, dim=1).values.mean(dim=1)

    @torch.no_grad()
    def tag(self, images: Sequence[ImageInput], labels, k: int = 5, *, embeddings=None, word_vectors=None,
            missing: str = "error", region_scores: bool = False, batch_size: int = 8, workers: int = 0,
            figures: Optional["FigureFolder"] = None, progress: bool = False) -> TagResult:
        """Top-``k`` labels of every image.

        Args:
            images: paths and/or PIL images (a path that cannot be read is listed in
                ``unreadable`` with the reason; the others are still tagged).
            labels: names (embedded as :meth:`labels` says) or a :class:`LabelSet`.
            k: labels per image (at most the number of labels).
            region_scores: also return each image's (C, rows, cols) region scores.
            figures: a :class:`FigureFolder` receiving one attention figure per image.
        Returns:
            :class:`TagResult`.
        """
        if k < 1 or batch_size < 1 or workers < 0:
            raise ValueError(f"k and batch_size must be >= 1 and workers >= 0; got {k}, {batch_size}, {workers}")
        images = list(images)
        if not images:
            raise ValueError("no images given")
        label_set = self.labels(labels, embeddings=embeddings, word_vectors=word_vectors, missing=missing)
        names, label_emb = label_set.names, label_set.embeddings.to(self.device)
        k = min(k, len(names))
        rows, cols = self.grid
        loader = DataLoader(_ImageInputs(images, self.transform), batch_size=batch_size, num_workers=workers,
                            collate_fn=collate_images, shuffle=False)
        results: Dict[int, ImageTags] = {}
        unreadable: Dict[int, Tuple[str, str]] = {}
        with tqdm(total=len(images), unit="img", desc="predict", file=sys.stderr, disable=not progress) as bar:
            for batch, index, failed in loader:
                for i, u in failed:
                    unreadable[i] = (_image_name(images[i], i), u.reason)
                if len(index):
                    maps, scores = self._scores(batch, label_emb)
                    top_scores, top_idx = scores.topk(k, dim=1)
                    for b, i in enumerate(index.tolist()):
                        name = _image_name(images[i], i)
                        entry = ImageTags(name, [(names[c], float(s)) for c, s in
                                                 zip(top_idx[b].tolist(), top_scores[b].tolist())])
                        if region_scores:
                            entry.region_scores = maps[b].T.reshape(len(names), rows, cols).cpu().numpy()
                        if figures is not None:
                            shown = load_image(images[i]) if _is_path(images[i]) else to_rgb(images[i], name)
                            stem = name if _is_path(images[i]) else f"image-{i}"  # no "<", ">" in file names
                            entry.figure = figures.write(stem, shown, maps[b][:, top_idx[b]].T.cpu().numpy(),
                                                         [t[0] for t in entry.labels], [t[1] for t in entry.labels],
                                                         self.grid)
                        results[i] = entry
                bar.update(len(index) + len(failed))
        return TagResult([results[i] for i in sorted(results)], [unreadable[i] for i in sorted(unreadable)], k, names)

    def _one(self, image: ImageInput, labels, k: int, **label_kw) -> ImageTags:
        result = self.tag([image], labels, k=k, region_scores=True, **label_kw)
        if result.unreadable:
            name, reason = result.unreadable[0]
            raise ValueError(f"{name}: unreadable image ({reason})")
        return result.images[0]

    def attention(self, image: ImageInput, labels, **label_kw) -> np.ndarray:
        """(C, rows, cols) float32 region scores of one image for every label, in label order, on
        the backbone's grid (``backbone.grid``). Raises ValueError for an unreadable image."""
        return self._one(image, labels, 1, **label_kw).region_scores

    def visualize(self, image: ImageInput, labels, out_path: Union[str, os.PathLike], k: int = 5, **label_kw) -> Path:
        """Write the attention figure (the image and its top-``k`` labels' maps) of one image to
        ``out_path`` (its folder created; written whole or not at all) and return the path."""
        label_set = self.labels(labels, **label_kw)
        entry = self._one(image, label_set, k)
        order = [label_set.names.index(name) for name, _ in entry.labels]
        shown = load_image(image) if _is_path(image) else to_rgb(image, _image_name(image, 0))
        fig = render_attention_figure(shown, entry.region_scores[order], [t[0] for t in entry.labels],
                                      [t[1] for t in entry.labels])
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)  # as save_attention_figure
        with atomic_open(out_path, "wb") as fh:
            fig.savefig(fh, dpi=DPI, format="png")
        return out_path


def _figure_name(path: str, used: set) -> str:
    """``<stem>_attention.png``, numbered when the name is taken (``used``: names not to write)."""
    stem = Path(path).stem or "image"
    name, n = f"{stem}{FIGURE_SUFFIX}", 1
    while name in used:  # same file name in two folders, or a file biam-predict did not write
        name, n = f"{stem}-{n}{FIGURE_SUFFIX}", n + 1
    used.add(name)
    return name


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _own_figure_name(name) -> bool:
    return isinstance(name, str) and name.endswith(FIGURE_SUFFIX) and "/" not in name and "\\" not in name \
        and not name.startswith(".")


def prepare_figure_folder(folder: str, images: Sequence[str], overwrite: bool):
    """Lock the --visualize folder and work out which names may be written.

    Returns ``(lock, owned, taken)``: ``owned`` the figure names an earlier biam-predict wrote
    there (its record lists them; they may be replaced), ``taken`` every other entry's name
    (never written). Raises ValueError when the folder holds an input image, and
    FolderOwnershipError / FolderBusyError from :mod:`biam.utils.ownership`.
    """
    for img in images:
        if _inside(Path(img), Path(folder)):
            raise ValueError(f"--visualize {folder}: the folder holds the input image {img}; figures go to a folder "
                             "of their own (a new one, or one biam-predict wrote before)")
    lock = FolderLock(folder, "biam-predict").acquire()
    try:
        record = check_output_folder(folder, record=FIGURE_RECORD, overwrite=overwrite)
        owned = set()
        if record is not None:
            figures = record.get("figures")
            if record.get("tool") != "biam-predict" or not isinstance(figures, list):
                raise FolderOwnershipError(f"{Path(folder) / FIGURE_RECORD}: not a biam-predict record; "
                                           "choose another --visualize folder")
            owned = {f for f in figures if _own_figure_name(f)}
        for name in owned:  # a killed run's half-written temporary file of one of our figures
            tmp = os.path.join(folder, name + ".tmp")
            if os.path.isfile(tmp) and not os.path.islink(tmp):
                os.remove(tmp)
        taken = {e for e in os.listdir(folder) if e not in owned} | {LOCK_NAME, FIGURE_RECORD}
    except BaseException:
        lock.release()
        raise
    return lock, owned, taken


class FigureFolder:
    """The ``--visualize`` folder: locked, checked (:func:`prepare_figure_folder`), one figure per
    :meth:`write`, each listed in the folder's record before it is written. Use as a context
    manager (or call :meth:`close`) to release the lock."""

    def __init__(self, folder: Union[str, os.PathLike], images: Sequence[ImageInput] = (), overwrite: bool = False):
        self.folder = os.fspath(folder)
        paths = [os.fspath(i) for i in images if _is_path(i)]
        self._lock, owned, self._taken = prepare_figure_folder(self.folder, paths, overwrite)
        self.written = set(owned)

    def _record(self) -> None:
        write_json(os.path.join(self.folder, FIGURE_RECORD), {"tool": "biam-predict", "figures": sorted(self.written)})

    def write(self, image_name: str, image, region_scores: np.ndarray, labels: Sequence[str], scores: Sequence[float],
              grid: Tuple[int, int]) -> str:
        """Draw one image's figure as ``<stem>_attention.png`` (numbered when the name is taken)
        -> its path. ``region_scores``: (K, rows * cols) of the K labels shown."""
        name = _figure_name(image_name, self._taken)
        self.written.add(name)
        self._record()  # first: a run killed while drawing leaves a figure its rerun may replace
        fig = render_attention_figure(image, region_scores, labels, scores, grid=grid)
        path = os.path.join(self.folder, name)
        with atomic_open(path, "wb") as fh:
            fig.savefig(fh, dpi=DPI, format="png")
        return path

    def close(self) -> None:
        if self._lock is not None:
            with contextlib.ExitStack() as stack:
                stack.callback(self._lock.release)
                self._record()
            self._lock = None

    def __enter__(self) -> "FigureFolder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

