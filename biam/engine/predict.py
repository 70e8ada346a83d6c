"""``biam-predict``: tag images with any label list, optionally with attention figures.

    biam-predict photo.jpg photos/ --labels labels.txt --glove glove.6B.300d.txt \
        --checkpoint pretrained_weights/model_best_nus.pth [--top-k 5] [--json] [--visualize figs/] \
        [--config-file configs/nus_wide.yaml] [MODEL.HEADS 8 ...]

Images (files, and folders searched recursively) go through the extractors' pipeline
(:mod:`biam.extraction`: the backbone's resize, regions and scene feature), then through BiAM
with the label embeddings L2-normalised; each image gets its top-K labels and scores. Labels
are known only through their embeddings, so any label list works (zero-shot): ``--labels``
(one name a line) with ``--embeddings`` (.npy/.npz rows in label order) or ``--glove`` (a GloVe
text file; multi-word labels averaged).

Outputs never replace a file biam-predict did not write: ``--visualize DIR`` writes
``<image stem>_attention.png`` figures into a folder it owns (new or empty, or one an earlier
biam-predict wrote: its record ``DIR/biam-predict.json`` lists the figures it may replace), never
into a folder holding an input image; ``--output FILE`` refuses an input image and an existing
file unless ``--overwrite``.

Exit status: 0 all images tagged; 1 some images could not be read (they are listed, with the
reason, on stderr and under "unreadable" in the JSON; the others are still tagged); 2 bad input
or a refused output path; 4 another biam-predict is writing the same --visualize folder.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np
import torch

from ..backbones import DEFAULT_BACKBONE, check_weights_available, get_backbone
from ..config import load_cfg
from ..data import wordvec as emb
from ..data.images import ImageFileDataset, backbone_transform, collate_images, load_image
from ..data.packed import l2_normalize
from ..extraction import build_extractor
from ..modeling import build_model
from ..utils.io import atomic_open, write_json
from ..utils.ownership import LOCK_NAME, FolderLock, FolderOwnershipError, check_output_folder
from ..utils.text import read_lines
from .checkpoint import checkpoint_backbone, load_checkpoint, load_model_weights
from .visualize import save_attention_figure

__all__ = ["run", "split_inputs", "collect_images", "load_label_embeddings", "IMAGE_EXTENSIONS",
           "FIGURE_RECORD", "FIGURE_SUFFIX"]

# The record of a --visualize folder (which figures biam-predict wrote there) and the figures' naming.
FIGURE_RECORD = "biam-predict.json"
FIGURE_SUFFIX = "_attention.png"

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


def split_inputs(tokens: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Positional tokens -> (input paths, KEY VALUE overrides).

    A token that looks like a config key (``MODEL.TOPK``: upper case, dotted) and is not an
    existing path starts an override; the token after it is its value.
    """
    paths, opts = [], []
    it = iter(tokens)
    for tok in it:
        if _CONFIG_KEY.match(tok) and not Path(tok).exists():
            value = next(it, None)
            if value is None:
                raise ValueError(f"config override {tok} has no value")
            opts += [tok, value]
        else:
            paths.append(tok)
    return paths, opts


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


def load_label_embeddings(args, names: List[str], embed_dim: int) -> torch.Tensor:
    """(C, embed_dim) float32 label embeddings, rows L2-normalised, in the order of ``names``."""
    if args.embeddings:
        path = Path(args.embeddings)
        if path.suffix == ".npz" and path.is_file():
            with np.load(path, allow_pickle=False) as z:
                files = z.files
            if "seen" in files and "unseen" in files:
                vectors = np.concatenate([emb.load_embedding_array(path, "seen"), emb.load_embedding_array(path, "unseen")])
            else:
                vectors = emb.load_embedding_array(path)
        else:
            vectors = emb.load_embedding_array(path)
        source = str(path)
    else:
        try:
            vectors = emb.build_from_glove(names, args.glove, missing=args.glove_missing)
        except UnicodeDecodeError as err:
            raise ValueError(f"--glove {args.glove}: not UTF-8 text (byte {err.start}: {err.reason})") from None
        source = str(args.glove)
    if vectors.shape != (len(names), embed_dim):
        raise ValueError(f"{source}: embeddings of shape {vectors.shape}, expected ({len(names)}, {embed_dim}) "
                         f"for the {len(names)} labels of {args.labels} (MODEL.EMBED_DIM {embed_dim})")
    zero = np.flatnonzero(np.linalg.norm(vectors, axis=1) == 0)
    if len(zero):
        print(f"biam-predict: warning: label(s) {[names[i] for i in zero]} have zero embeddings and score "
              "the same for every image", file=sys.stderr)
    return torch.from_numpy(l2_normalize(vectors))


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
            owned = {f for f in figures if isinstance(f, str) and f.endswith(FIGURE_SUFFIX) and "/" not in f}
        taken = {e for e in os.listdir(folder) if e not in owned} | {LOCK_NAME, FIGURE_RECORD}
    except BaseException:
        lock.release()
        raise
    return lock, owned, taken


def _write_figure_record(folder: str, figures: set) -> None:
    write_json(os.path.join(folder, FIGURE_RECORD), {"tool": "biam-predict", "figures": sorted(figures)})


def _format_table(results: list, unreadable: list) -> str:
    lines = []
    for r in results:
        lines.append(r["image"])
        width = max(len(t["label"]) for t in r["labels"]) if r["labels"] else 0
        for rank, t in enumerate(r["labels"], 1):
            lines.append(f"  {rank:>2}  {t['label']:<{width}}  {t['score']:.4f}")
    for u in unreadable:
        lines.append(f"{u['image']}\n  unreadable: {u['reason']}")
    return "\n".join(lines) + "\n"


def _predict_loop(args, images, names, loader, extractor, model, label_emb, k, results, unreadable, used_names,
                  written, load_image) -> None:
    """Tag every batch; write each figure under a name not in ``used_names`` and add it to ``written``."""
    from tqdm import tqdm

    device = label_emb.device
    with torch.no_grad(), tqdm(total=len(images), unit="img", desc="predict", file=sys.stderr) as bar:
        for batch, index, failed in loader:
            for i, u in failed:
                unreadable[i] = {"image": images[i], "reason": u.reason}
            if len(index):
                regions, scene = extractor(batch.to(device))
                maps = model.region_scores(regions, label_emb, scene).float()  # (B, R, C), VGG19: R = 196
                scores = maps.topk(model.topk, dim=1).values.mean(dim=1)  # as BiAM.forward
                top_scores, top_idx = scores.topk(k, dim=1)
                for b, i in enumerate(index.tolist()):
                    entry = {"image": images[i], "labels": [
                        {"label": names[c], "score": float(s)} for c, s in zip(top_idx[b].tolist(), top_scores[b].tolist())]}
                    if args.visualize:
                        fig_name = _figure_name(images[i], used_names)
                        fig = Path(args.visualize) / fig_name
                        save_attention_figure(load_image(images[i]), maps[b][:, top_idx[b]].cpu().numpy(),
                                              [t["label"] for t in entry["labels"]],
                                              [t["score"] for t in entry["labels"]], fig)
                        written.add(fig_name)
                        entry["figure"] = str(fig)
                    results[i] = entry
            bar.update(len(index) + len(failed))



def run(args) -> int:
    """Tag the images of parsed ``biam-predict`` arguments -> exit status (0, or 1 if some were unreadable)."""
    inputs, opts = split_inputs(args.opts)
    cfg = load_cfg(args.config_file or None, opts)
    images = collect_images(inputs)
    if args.output:
        out = Path(args.output)
        if any(out.resolve() == Path(img).resolve() for img in images):
            raise ValueError(f"--output {out} is one of the input images; choose another file name")
        if out.is_dir():
            raise ValueError(f"--output {out} is a folder; give a file name")
        if out.exists() and not args.overwrite:
            raise ValueError(f"--output {out} already exists; choose a new file name, or pass --overwrite to replace it")
    fig_lock, owned, used_names = None, set(), set()
    if args.visualize:
        # Checked and locked before the model loads: a refused folder fails at once.
        fig_lock, owned, used_names = prepare_figure_folder(args.visualize, images, args.overwrite)
    written = set(owned)
    try:
        return _tag(args, cfg, images, used_names, written)
    finally:
        if fig_lock is not None:
            _write_figure_record(args.visualize, written)
            fig_lock.release()


def predict_backbone(cfg, checkpoint: str):
    """The backbone that computes features for ``checkpoint``: ``MODEL.BACKBONE`` when set (a
    checkpoint of another backbone is then refused when its weights load), else the one the
    checkpoint records or its widths imply (published files: VGG19), else VGG19."""
    if cfg.MODEL.BACKBONE:
        return get_backbone(cfg.MODEL.BACKBONE)
    return get_backbone(checkpoint_backbone(load_checkpoint(checkpoint)) or DEFAULT_BACKBONE)


def _tag(args, cfg, images, used_names: set, written: set) -> int:
    from torch.utils.data import DataLoader

    try:
        names = read_lines(args.labels)
    except UnicodeDecodeError as err:
        raise ValueError(f"--labels {args.labels}: not UTF-8 text (byte {err.start}: {err.reason}); "
                         "save the label list as UTF-8, one label a line") from None
    if len(set(names)) != len(names):
        raise ValueError(f"{args.labels}: a label name appears twice")
    backbone = predict_backbone(cfg, args.checkpoint)
    check_weights_available(args.vgg_weights, args.random_vgg, "biam-predict", backbone=backbone.name)
    label_emb = load_label_embeddings(args, names, cfg.MODEL.EMBED_DIM)

    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    model = build_model(cfg, backbone)
    load_model_weights(model, args.checkpoint)
    model = model.to(device).eval()
    extractor, vgg_source = build_extractor(backbone.name, args.vgg_weights, args.random_vgg, "biam-predict")
    extractor = extractor.to(device)
    label_emb = label_emb.to(device)
    k = min(args.top_k, len(names))

    loader = DataLoader(ImageFileDataset(images, backbone_transform(backbone)), batch_size=args.batch_size,
                        num_workers=args.workers,
                        collate_fn=collate_images, shuffle=False)
    results: dict = {}
    unreadable: dict = {}
    _predict_loop(args, images, names, loader, extractor, model, label_emb, k, results, unreadable, used_names,
                  written, load_image)

    ordered = [results[i] for i in sorted(results)]
    bad = [unreadable[i] for i in sorted(unreadable)]
    if args.json:
        text = json.dumps({"checkpoint": str(args.checkpoint), "vgg_weights": vgg_source, "top_k": k,
                           "results": ordered, "unreadable": bad}, indent=1, ensure_ascii=False) + "\n"
    else:
        text = _format_table(ordered, bad)
    if args.output:
        with atomic_open(args.output, "w") as f:  # complete or absent, never half a file
            f.write(text)
    else:
        sys.stdout.write(text)
    for u in bad:
        print(f"biam-predict: unreadable image {u['image']}: {u['reason']}", file=sys.stderr)
    print(f"biam-predict: {len(ordered)} of {len(images)} images tagged" +
          (f", {len(bad)} unreadable" if bad else "") + (f"; figures in {args.visualize}" if args.visualize else ""),
          file=sys.stderr)
    return 1 if bad else 0
