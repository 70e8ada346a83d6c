"""From image files to BiAM inputs: the one image -> feature pipeline of the project.

Everything that turns pixels into features goes through here, so that the feature extractors
(``feature_extraction/``) and ``biam-predict`` compute exactly what the released features hold
(see docs/data_format.md):

* resize to the backbone's input size (no crop), ImageNet mean/std normalisation;
* the backbone's region extractor -> (B, C, rows, cols), stored channel-major as
  (B, C, rows * cols), region index = row * cols + col;
* the scene feature (B, scene_dim) through the backbone's frozen scene head.

The backbone comes from the registry :mod:`biam.backbones` (``--backbone``; default VGG19 conv5_4:
224x224 input, 512 x 14 x 14 regions, fc7 scene feature of 4096 through
:class:`biam.modeling.SceneHead`, as the released features were made).

Images are read in DataLoader workers by :class:`ImageFileDataset`; an image that cannot be read
comes back as an :class:`Unreadable` marker so that the main process records it (path + reason)
instead of crashing or silently dropping it.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.utils.data import Dataset

from .backbones import DEFAULT_BACKBONE, Backbone, get_backbone, list_backbones
from .utils.io import atomic_open, sha256_file

__all__ = [
    "IMAGE_SIZE", "IMAGENET_MEAN", "IMAGENET_STD", "VGG19_FILENAME", "VGG19_SHA256_PREFIX",
    "WeightsNotFoundError", "Unreadable", "ImageFileDataset", "collate_images", "image_transform",
    "load_image", "torchvision_cache_file", "load_vgg19", "load_backbone", "FeatureExtractor",
    "add_weight_arguments", "add_backbone_argument", "vgg19_from_args", "backbone_from_args",
]

IMAGE_SIZE = 224  # VGG19's; other backbones state theirs (biam.backbones)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's file name for the ImageNet VGG19 weights; "dcbb9e9d" = first hex digits of its SHA-256.
VGG19_FILENAME = "vgg19-dcbb9e9d.pth"
VGG19_SHA256_PREFIX = "dcbb9e9d"

PathLike = Union[str, os.PathLike]


class WeightsNotFoundError(RuntimeError):
    """No backbone weights were given and torchvision's cache holds none (message says what to do)."""


# --------------------------------------------------------------------------------------------- #
# Images
# --------------------------------------------------------------------------------------------- #
def image_transform(size: int = IMAGE_SIZE):
    """PIL RGB image (any size) -> float32 tensor (3, size, size), ImageNet-normalised.

    Resized to 224x224 without keeping the aspect ratio and without a crop, as the released
    features were made.
    """
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize((size, size)),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def load_image(path: PathLike):
    """Open an image file fully and return it as an RGB ``PIL.Image``.

    Raises ``OSError`` (missing file, truncated or corrupt data, not an image; PIL's
    ``UnidentifiedImageError`` is one) or ``ValueError``/``Image.DecompressionBombError``.
    ``load()`` is forced here so that a truncated file fails now, not later in a transform.
    """
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        return img.convert("RGB")


@dataclass(frozen=True)
class Unreadable:
    """Marker a dataset item carries instead of a tensor when its image could not be read.

    ``path``: the file; ``reason``: the exception type and message.
    """

    path: str
    reason: str


def _read_errors():
    from PIL import Image

    # Everything PIL and the OS raise for bad files; anything else is a bug and must surface.
    return (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class ImageFileDataset(Dataset):
    """Image files -> ``(tensor (3, 224, 224) float32, index)``, or ``(Unreadable, index)``.

    Args:
        paths: image files, in output order; ``index`` is the position in this list.
        transform: PIL image -> tensor (default :func:`image_transform`).

    Safe to hand to DataLoader workers (holds only paths). Use :func:`collate_images` as the
    DataLoader's ``collate_fn``.
    """

    def __init__(self, paths: Sequence[PathLike], transform=None):
        self.paths = [os.fspath(p) for p in paths]
        self.transform = transform if transform is not None else image_transform()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.paths[index]
        try:
            img = load_image(path)
        except _read_errors() as err:
            return Unreadable(path, f"{type(err).__name__}: {err}"), index
        return self.transform(img), index


def collate_images(items) -> Tuple[torch.Tensor, torch.Tensor, List[Tuple[int, Unreadable]]]:
    """Batch ``ImageFileDataset`` items.

    Input: a list of ``(tensor (3, H, W) | Unreadable, index)``.
    Output: ``images`` (n, 3, H, W) float32 of the readable items, ``indices`` (n,) int64 of those
    items, and ``failed``: list of ``(index, Unreadable)`` for the others, in input order.
    """
    good = [(x, i) for x, i in items if not isinstance(x, Unreadable)]
    failed = [(i, x) for x, i in items if isinstance(x, Unreadable)]
    if good:
        images = torch.stack([x for x, _ in good])
    else:
        images = torch.empty((0, 3, IMAGE_SIZE, IMAGE_SIZE))
    indices = torch.tensor([i for _, i in good], dtype=torch.int64)
    return images, indices, failed


# --------------------------------------------------------------------------------------------- #
# Backbone weights
# --------------------------------------------------------------------------------------------- #
def torchvision_cache_file(filename: str = VGG19_FILENAME) -> Path:
    """Where torchvision keeps (and looks for) an ImageNet weights file (default VGG19's) here."""
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _missing_weights_message(what: str, backbone: Backbone = None) -> str:
    bb = backbone or get_backbone(DEFAULT_BACKBONE)
    label = "VGG19" if bb.name == "vgg19" else bb.name
    return (
        f"{what}: no {label} ImageNet weights available. Provide them in one of two ways:\n"
        f"  * pass --weights FILE (or --vgg-weights FILE for biam-predict), FILE being torchvision's\n"
        f"    {bb.weights_file} (e.g. pretrained_weights/{bb.weights_file}), or\n"
        f"  * put that file where torchvision's cache expects it: {torchvision_cache_file(bb.weights_file)}\n"
        f"How to obtain and verify the file on a machine with network: pretrained_weights/README.md.\n"
        f"For tests and smoke runs only, --random-weights SEED (--random-vgg SEED) uses a seeded random {label}."
    )


def load_backbone(name: str = DEFAULT_BACKBONE, weights: Optional[PathLike] = None,
                  random_seed: Optional[int] = None, what: str = "feature extraction") -> Tuple[nn.Module, str]:
    """Build backbone ``name``'s torchvision network (eval mode, frozen) and say where its weights came from.

    Same contract as :func:`load_vgg19` for any registered backbone: ``weights`` None means
    torchvision's cache file of the backbone's usual name, if present; ``random_seed`` asks for a
    seeded random network. Returns ``(net, source)``, source e.g.
    ``"resnet101-state-dict:resnet101-cd907fc2.pth:sha256:..."`` or ``"random-seed-0"``.
    """
    bb = get_backbone(name)
    if name == "vgg19":
        return load_vgg19(weights, random_seed, what=what)
    if weights is None and random_seed is not None:
        return bb.load_net(None, int(random_seed)), f"random-seed-{int(random_seed)}"
    check_weights_available(weights, random_seed, what, backbone=name)
    path = Path(weights) if weights is not None else torchvision_cache_file(bb.weights_file)
    net = bb.load_net(path, None)
    from .data.packed import sha256_file

    return net, f"{name}-state-dict:{path.name}:sha256:{sha256_file(path)[:16]}"


def load_vgg19(weights: Optional[PathLike] = None, random_seed: Optional[int] = None,
               what: str = "feature extraction") -> Tuple[nn.Module, str]:
    """Build torchvision's VGG19 in eval mode and say where its weights came from.

    Args:
        weights: a VGG19 state dict file (loaded with ``weights_only=True``); None: torchvision's
            cache file :func:`torchvision_cache_file`, if present.
        random_seed: explicit request for a seeded random VGG19 (tests, smoke runs); only used
            when ``weights`` is None.
        what: the tool's name, for the error message.
    Returns:
        ``(vgg, source)``: the model (parameters frozen) and a string for the manifest, e.g.
        ``"vgg19-state-dict:vgg19-dcbb9e9d.pth:sha256:dcbb9e9d..."`` or ``"random-seed-0"``.
    Raises:
        WeightsNotFoundError with instructions when nothing is available; FileNotFoundError /
        RuntimeError / ValueError naming the file when it is missing, unreadable or not VGG19.
    """
    from torchvision.models import vgg19

    if weights is None and random_seed is not None:
        # torchvision initialises from the global generator: seeding it makes the net reproducible.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(random_seed))
            vgg = vgg19(weights=None)
        source = f"random-seed-{int(random_seed)}"
    else:
        path = Path(weights) if weights is not None else torchvision_cache_file()
        if not path.is_file():
            if weights is not None:
                raise FileNotFoundError(f"VGG19 weights file not found: {path}\n" + _missing_weights_message(what))
            raise WeightsNotFoundError(_missing_weights_message(what))
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as err:
            raise ValueError(weights_error_message(path, err)) from None
        if not isinstance(state, dict):
            raise ValueError(f"{path}: expected a VGG19 state dict, found {type(state).__name__}")
        # Built on the meta device: the 143M-parameter random init (seconds) would be overwritten anyway.
        with torch.device("meta"):
            vgg = vgg19(weights=None)
        try:
            vgg.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as err:
            raise ValueError(f"{path}: not a torchvision VGG19 state dict ({err})") from err
        # Content, not path: a resumed run on another machine must record the same source.

        source = f"vgg19-state-dict:{path.name}:sha256:{sha256_file(path)[:16]}"
    vgg.requires_grad_(False)
    return vgg.eval(), source


def weights_error_message(path: PathLike, err: BaseException, what: str = "VGG19",
                          filename: str = VGG19_FILENAME) -> str:
    """One line for a weights file that ``torch.load(weights_only=True)`` or the model refused.

    Names the file and says it is not a plain state dict. torch's own advice to retry with
    ``weights_only=False`` (which would run whatever code the file holds) is left out.
    """
    import re

    if isinstance(err, pickle.UnpicklingError):
        found = re.search(r"GLOBAL (\S+?)[ .]*(?:whose|was|$)", str(err), re.M)
        kind = ("it holds objects other than tensors" + (f" ({found.group(1)})" if found else "")
                + ", refused without running them")
    else:
        text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "weights_only" not in ln]
        detail = lines[0] if lines else type(err).__name__
        for prefix in (f"{path}: ", f"{os.fspath(path)}: "):
            detail = detail[len(prefix):] if detail.startswith(prefix) else detail
        kind = detail if len(detail) <= 240 else detail[:237] + "..."
    return (f"{path}: not a plain {what} state dict ({kind}); use torchvision's {filename} "
            "(see pretrained_weights/README.md)")


def check_weights_available(weights: Optional[PathLike], random_seed: Optional[int], what: str,
                            backbone: str = DEFAULT_BACKBONE) -> None:
    """Fail early (before hours of work) when :func:`load_backbone` would find no weights.

    Raises WeightsNotFoundError / FileNotFoundError with the instructions of :func:`load_vgg19`.
    """
    if weights is None and random_seed is not None:
        return
    bb = get_backbone(backbone)
    label = "VGG19" if bb.name == "vgg19" else bb.name
    path = Path(weights) if weights is not None else torchvision_cache_file(bb.weights_file)
    if not path.is_file():
        if weights is not None:
            raise FileNotFoundError(f"{label} weights file not found: {path}\n" + _missing_weights_message(what, bb))
        raise WeightsNotFoundError(_missing_weights_message(what, bb))


def add_weight_arguments(parser, weights_flag: str = "--weights", random_flag: str = "--random-weights") -> None:
    """Add ``--weights FILE`` and ``--random-weights SEED`` (or other spellings) to an argparse parser."""
    parser.add_argument(weights_flag, default=None, metavar="FILE",
                        help=f"the backbone's ImageNet state dict (VGG19: {VGG19_FILENAME}); default: torchvision's "
                             f"cache ({torchvision_cache_file().parent})")
    parser.add_argument(random_flag, type=int, default=None, metavar="SEED",
                        help="use seeded random backbone weights instead (tests and smoke runs only; recorded in the "
                             "manifest)")


def add_backbone_argument(parser) -> None:
    """Add ``--backbone NAME`` (a registered backbone, default vgg19) to an argparse parser."""
    parser.add_argument("--backbone", choices=list_backbones(), default=DEFAULT_BACKBONE,
                        help="feature extractor (default vgg19: conv5_4 at 224x224, 512 x 14 x 14 regions, fc7 scene "
                             "feature, as the released features; resnet101: layer4 at 448x448, 2048 x 14 x 14, pooled "
                             "scene feature); recorded in the manifest, see docs/own_data.md")


# --------------------------------------------------------------------------------------------- #
# Features
# --------------------------------------------------------------------------------------------- #
class FeatureExtractor(nn.Module):
    """Region features and scene features of normalised images, for one registered backbone.

    Built from the backbone's torchvision network (:func:`load_backbone`): ``body`` = its region
    extractor and ``scene_head`` = its scene head, so both come from the same weights (VGG19:
    ``vgg.features[:-1]`` and ``SceneHead.from_torchvision(vgg)``). Always in eval mode, no gradients.

    Input: images (B, 3, S, S) float32, ImageNet-normalised, S = the backbone's input size.
    Output: ``regions`` (B, C, rows * cols) float32 channel-major (region = row * cols + col) and
    ``scene`` (B, scene_dim) float32 (VGG19: (B, 512, 196) and (B, 4096)).
    """

    def __init__(self, net: nn.Module, backbone: Union[str, Backbone] = DEFAULT_BACKBONE):
        super().__init__()
        self.backbone = get_backbone(backbone) if isinstance(backbone, str) else backbone
        self.body = self.backbone.region_extractor(net)
        self.scene_head = self.backbone.scene_head(net)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "FeatureExtractor":
        # Frozen feature pipeline: never enter training mode.
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        bb = self.backbone
        size = bb.input_size
        if images.dim() != 4 or images.shape[1:] != (3, size, size):
            raise ValueError(f"FeatureExtractor ({bb.name}) expects (B, 3, {size}, {size}) images, "
                             f"got {tuple(images.shape)}")
        fmap = self.body(images)
        if fmap.shape[1:] != (bb.channels, *bb.grid):
            raise RuntimeError(f"backbone {bb.name}: its region extractor gave {tuple(fmap.shape[1:])}, "
                               f"its registry entry states {(bb.channels, *bb.grid)}")
        regions = fmap.flatten(2).float()
        scene = self.scene_head(fmap).float()
        return regions, scene


def vgg19_from_args(weights: Optional[str], random_seed: Optional[int], what: str) -> Tuple[FeatureExtractor, str]:
    """:func:`load_vgg19` then :class:`FeatureExtractor`; returns ``(extractor, source)``."""
    return backbone_from_args(DEFAULT_BACKBONE, weights, random_seed, what)


def backbone_from_args(name: str, weights: Optional[str], random_seed: Optional[int],
                       what: str) -> Tuple[FeatureExtractor, str]:
    """:func:`load_backbone` then :class:`FeatureExtractor`; returns ``(extractor, source)``."""
    net, source = load_backbone(name, weights, random_seed, what=what)
    return FeatureExtractor(net, name), source


# --------------------------------------------------------------------------------------------- #
# Image list -> packed split (shared by feature_extraction/extract_*.py)
# --------------------------------------------------------------------------------------------- #
REPORT_HEADER = "name\tpath\treason\n"


def report_path(out_root: PathLike, split: str) -> Path:
    """``<out_root>/unreadable-<split>.tsv``: the images of a split that could not be read."""
    return Path(out_root) / f"unreadable-{split}.tsv"


def _atomic_write_text(path: Path, text: str) -> None:
    with atomic_open(path, "w", fsync=True) as fh:
        fh.write(text)


def _report_lines(rows) -> str:
    # Tabs and newlines inside a reason would break the table; flatten them.
    clean = (lambda s: str(s).replace("\t", " ").replace("\r", " ").replace("\n", " "))
    return "".join(f"{clean(n)}\t{clean(p)}\t{clean(r)}\n" for n, p, r in rows)


def _rank_range(n: int, rank: int, world: int) -> Tuple[int, int]:
    # Contiguous blocks in rank order, so that concatenating the ranks' shards keeps list order.
    return (n * rank) // world, (n * (rank + 1)) // world


class SparseLabels:
    """Label rows kept sparse (Open Images train: 1.7M images x 9780 labels would be 17 GB dense).

    Args: ``num_images``, ``num_labels``; ``indptr`` (N + 1,) int64 and ``cols`` (nnz,) int64,
    ``vals`` (nnz,) int8 in CSR order (image i's entries at ``indptr[i]:indptr[i+1]``).
    ``labels[idx]`` with an int array ``idx`` (n,) gives dense int8 rows (n, num_labels), 0 where
    nothing is stored.
    """

    def __init__(self, num_images: int, num_labels: int, indptr, cols, vals):
        import numpy as np

        self.shape = (int(num_images), int(num_labels))
        self.indptr = np.asarray(indptr, dtype=np.int64)
        self.cols = np.asarray(cols, dtype=np.int64)
        self.vals = np.asarray(vals, dtype=np.int8)
        if self.indptr.shape != (num_images + 1,) or self.indptr[-1] != len(self.cols) or len(self.cols) != len(self.vals):
            raise ValueError("SparseLabels: indptr/cols/vals do not describe a CSR matrix")

    def __getitem__(self, idx):
        import numpy as np

        idx = np.atleast_1d(np.asarray(idx, dtype=np.int64))
        out = np.zeros((len(idx), self.shape[1]), dtype=np.int8)
        for r, i in enumerate(idx):
            a, b = self.indptr[i], self.indptr[i + 1]
            out[r, self.cols[a:b]] = self.vals[a:b]
        return out


@dataclass
class SplitSpec:
    """What to extract for one split.

    ``paths`` (N,) image files; ``names`` (N,) unique image names without '/'; ``labels``
    (N, S + U) int8 in {-1, 0, +1}, seen columns first: a numpy array or any object with
    ``.shape`` whose ``labels[int64 index array]`` gives dense rows (e.g. :class:`SparseLabels`); ``seen``/``unseen`` label names;
    ``unseen_eval`` evaluated unseen indices (None: all); ``dataset`` manifest dataset name;
    ``extra`` more manifest fields (sources of the labels).
    """

    split: str
    dataset: str
    paths: Sequence[str]
    names: Sequence[str]
    labels: "object"
    seen: Sequence[str]
    unseen: Sequence[str]
    unseen_eval: Optional[Sequence[int]] = None
    extra: Optional[dict] = None

    def check(self) -> None:
        n = len(self.paths)
        shape = tuple(self.labels.shape)
        if len(self.names) != n or shape != (n, len(self.seen) + len(self.unseen)):
            raise ValueError(f"split '{self.split}': {n} paths, {len(self.names)} names, labels of shape "
                             f"{shape}; expected ({n}, {len(self.seen) + len(self.unseen)})")
        seen_names = {}
        for i, name in enumerate(self.names):
            if not name or "/" in name:
                raise ValueError(f"split '{self.split}': image {self.paths[i]}: field 'name' {name!r} is empty or holds '/'")
            if name in seen_names:
                raise ValueError(f"split '{self.split}': image name {name!r} occurs twice "
                                 f"({self.paths[seen_names[name]]} and {self.paths[i]})")
            seen_names[name] = i


def extract_split(
    spec: SplitSpec,
    out_root: PathLike,
    *,
    weights: Optional[str],
    random_seed: Optional[int],
    batch_size: int = 32,
    num_workers: int = 4,
    shard_size: int = 4096,
    dtype: str = "float16",
    device: str = "auto",
    overwrite: bool = False,
    tool: str = "feature extraction",
    backbone: str = DEFAULT_BACKBONE,
) -> dict:
    """Compute features of every image of ``spec`` and write them as one packed split.

    ``backbone``: a registered backbone name (:mod:`biam.backbones`); the manifest records it and a
    resumed run must use the same one. ``weights``/``random_seed`` are that backbone's.

    Resumable: complete shards of an earlier run are kept (checksums verified) and extraction
    restarts after the last stored image. Under ``torchrun`` each rank extracts a contiguous
    block of the list into ``<out_root>/.parts/<split>/rank-<r>-of-<W>/``; after a barrier rank 0
    moves the shards into ``out_root`` in rank order and writes the one manifest.

    Output: a summary dict ``{"split", "listed", "written", "unreadable", "report", "skipped_complete"}``
    (on rank 0 the totals over all ranks). Unreadable images (missing, truncated, corrupt, not an
    image) are listed with their reason in :func:`report_path` and counted in the summary.
    """
    import numpy as np
    from tqdm import tqdm
    from torch.utils.data import DataLoader

    from .data.packed import PackedDataset, PackedWriter, read_manifest
    from .utils import comm

    spec.check()
    out_root = Path(out_root)
    dev = comm.init_distributed(device, timeout_minutes=24 * 60)
    rank, world = comm.get_rank(), comm.get_world_size()
    summary = {"split": spec.split, "listed": len(spec.paths), "written": 0, "unreadable": 0,
               "report": str(report_path(out_root, spec.split)), "skipped_complete": False}

    final_manifest = out_root / "manifest.json"
    if not overwrite and final_manifest.is_file():
        entry = read_manifest(out_root)["splits"].get(spec.split)
        if entry is not None and entry.get("complete"):
            summary.update(skipped_complete=True, written=entry["num_images"])
            if rank == 0:
                print(f"{tool}: split '{spec.split}' of {out_root} is already complete "
                      f"({entry['num_images']} images); nothing to do (--overwrite starts it over)")
            return summary

    extractor, source = backbone_from_args(backbone, weights, random_seed, what=tool)
    extractor = extractor.to(dev)
    start, stop = _rank_range(len(spec.paths), rank, world)
    root = out_root if world == 1 else out_root / ".parts" / spec.split / f"rank-{rank}-of-{world}"
    writer = PackedWriter(
        root, spec.split, dataset=spec.dataset, seen_labels=spec.seen, unseen_labels=spec.unseen,
        unseen_eval=spec.unseen_eval, shard_size=shard_size, dtype=dtype, scene_source=source,
        resume=not overwrite, overwrite=overwrite, extra=spec.extra, backbone=backbone,
    )
    names = list(spec.names[start:stop])
    dataset = ImageFileDataset(spec.paths[start:stop], image_transform(extractor.backbone.input_size))
    failures: List[Tuple[int, Unreadable]] = []
    resume_at = 0
    if writer.num_images:
        resume_at, failures = _resume_point(PackedDataset(root, spec.split, allow_incomplete=True).names(),
                                            names, dataset, root)
        print(f"{tool} (rank {rank}): resuming split '{spec.split}' after {writer.num_images} stored images "
              f"(image {start + resume_at} of the list)")
    # (Re)opening a writer marks the split incomplete; running the (maybe empty) rest and closing
    # it makes it complete again and rebuilds the report either way.
    todo = torch.utils.data.Subset(dataset, range(resume_at, len(dataset)))
    loader = DataLoader(todo, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_images,
                        pin_memory=dev.type == "cuda", shuffle=False)
    bar = tqdm(total=len(dataset), initial=resume_at, unit="img", dynamic_ncols=True,
               desc=f"{spec.split}" + (f" rank {rank}" if world > 1 else ""))
    with bar:
        for images, local, failed in loader:
            failures.extend(failed)
            if len(local):
                regions, scene = extractor(images.to(dev, non_blocking=True))
                idx = local.numpy()
                writer.append(regions.cpu().numpy(), np.asarray(spec.labels[start + idx], dtype=np.int8), [names[i] for i in idx],
                              scene=scene.cpu().numpy())
            bar.update(len(local) + len(failed))
            if failed:
                bar.set_postfix(unreadable=len(failures))
    writer.close()
    rows = [(names[i], u.path, u.reason) for i, u in sorted(failures, key=lambda t: t[0])]
    _atomic_write_text(report_path(root, spec.split), REPORT_HEADER + _report_lines(rows))

    if world > 1:
        comm.barrier()
        if rank == 0:
            _merge_parts(out_root, spec, world, shard_size, dtype, source, overwrite, backbone)
        comm.barrier()
    if rank == 0:
        entry = read_manifest(out_root)["splits"][spec.split]
        report = report_path(out_root, spec.split)
        with open(report, encoding="utf-8") as fh:
            unreadable = sum(1 for _ in fh) - 1
        summary.update(written=entry["num_images"], unreadable=unreadable)
        print(f"{tool}: split '{spec.split}': {summary['listed']} images listed, {summary['written']} written, "
              f"{unreadable} unreadable" + (f" (listed with reasons in {report})" if unreadable else "")
              + f"; {backbone} weights: {source}")
    return summary


def _resume_point(stored: List[str], names: List[str], dataset: "ImageFileDataset", root: Path):
    """Where a resumed run continues, and the unreadable images before that point.

    ``stored``: names already in complete shards; ``names``: this rank's list. Output:
    ``(position after the last stored image, [(index, Unreadable), ...] of skipped images)``.
    The skipped images are read again so their reasons reach the report.
    """
    where = {n: i for i, n in enumerate(names)}
    pos = [where.get(n, -1) for n in stored]
    if any(p < 0 for p in pos) or any(b <= a for a, b in zip(pos, pos[1:])):
        raise RuntimeError(f"{root}: the stored shards were written from a different image list "
                           "(names missing or out of order); use a fresh output directory or --overwrite")
    resume_at = pos[-1] + 1
    kept = set(pos)
    failures = []
    for i in range(resume_at):
        if i not in kept:
            item, _ = dataset[i]
            reason = item.reason if isinstance(item, Unreadable) else "unreadable in an earlier run, readable now: rerun with --overwrite"
            failures.append((i, Unreadable(dataset.paths[i], reason)))
    return resume_at, failures


def _merge_parts(out_root: Path, spec: SplitSpec, world: int, shard_size: int, dtype: str, source: str,
                 overwrite: bool = False, backbone: str = DEFAULT_BACKBONE) -> None:
    """Rank 0, after the barrier: move every rank's shards into ``out_root`` in rank order, write
    one manifest listing them (checksums carried over) and one report, then drop ``.parts``.
    A file at a target shard name that the manifest does not list is refused unless ``overwrite``."""
    import json
    import shutil

    from .data.packed import PackedFormatError, PackedWriter, read_manifest, shard_filename

    parts = [out_root / ".parts" / spec.split / f"rank-{r}-of-{world}" for r in range(world)]
    # Opening a writer on the final root checks that labels/dtype/scene agree with what is there
    # and deletes the shards of this split that its manifest lists (this tool's own files, from an
    # earlier run); its manifest dict is the base of the new one.
    base = PackedWriter(out_root, spec.split, dataset=spec.dataset, seen_labels=spec.seen,
                        unseen_labels=spec.unseen, unseen_eval=spec.unseen_eval, shard_size=shard_size,
                        dtype=dtype, scene_source=source, resume=False, overwrite=overwrite, extra=spec.extra,
                        backbone=backbone).manifest
    if not overwrite:
        count = sum(len(read_manifest(part)["splits"][spec.split]["shards"]) for part in parts)
        for k in range(count):
            if os.path.lexists(out_root / shard_filename(spec.split, k)):
                raise PackedFormatError(
                    f"{out_root / shard_filename(spec.split, k)}: a file of this name is in the output folder but "
                    "the manifest does not list it; move it away, or pass --overwrite to replace it")
    shards, total, report = [], 0, REPORT_HEADER
    for part in parts:
        entry = read_manifest(part)["splits"][spec.split]
        if not entry.get("complete"):
            raise PackedFormatError(f"{part}: split '{spec.split}' incomplete after the barrier")
        for shard in entry["shards"]:
            target = shard_filename(spec.split, len(shards))
            os.replace(part / shard["file"], out_root / target)
            shards.append({"file": target, "num_images": shard["num_images"], "sha256": shard["sha256"]})
            total += shard["num_images"]
        with open(report_path(part, spec.split), encoding="utf-8") as fh:
            report += "".join(fh.readlines()[1:])
    base["splits"][spec.split] = {"num_images": total, "complete": True, "shard_size": shard_size, "shards": shards}
    _atomic_write_text(out_root / "manifest.json", json.dumps(base, indent=1, ensure_ascii=False) + "\n")
    read_manifest(out_root)  # the same checks the readers apply
    _atomic_write_text(report_path(out_root, spec.split), report)
    shutil.rmtree(out_root / ".parts" / spec.split)
    if not any((out_root / ".parts").iterdir()):  # other splits may still be in progress there
        (out_root / ".parts").rmdir()


def claim_output(out: PathLike, overwrite: bool, tool: str):
    """Take the output folder for this run: a context manager for the whole command.

    On rank 0 (or without torchrun): :class:`biam.utils.ownership.FolderLock` on ``out`` (a
    second extraction there stops at once, naming this one), then the folder must hold this
    tool's ``manifest.json``, or nothing, or ``overwrite`` must be given
    (:func:`biam.utils.ownership.check_output_folder`). Other ranks write only below
    ``out/.parts`` and take nothing. Raises FolderBusyError / FolderOwnershipError.
    """
    import contextlib
    import sys

    from .utils.ownership import FolderLock, check_output_folder

    if int(os.environ.get("RANK", "0") or 0) != 0:
        return contextlib.nullcontext()
    lock = FolderLock(os.fspath(out), " ".join([tool] + sys.argv[1:])).acquire()
    try:
        # .parts/ holds the ranks' shards of an interrupted torchrun extraction (ours, no manifest yet).
        check_output_folder(os.fspath(out), record="manifest.json", overwrite=overwrite, ignore=(".parts",))
    except BaseException:
        lock.release()
        raise
    return lock


def add_label_embedding_arguments(parser, embeddings_help: str, glove_help: str) -> None:
    """``--embeddings PICKLE`` or ``--glove FILE.txt`` (one required), and ``--glove-missing``."""
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--embeddings", metavar="PICKLE", help=embeddings_help)
    group.add_argument("--glove", metavar="FILE.txt", help=glove_help)
    parser.add_argument("--glove-missing", choices=("error", "skip-word", "zero"), default="error",
                        help="labels with words the GloVe file lacks: error (default), average the known words, "
                             "or a zero row")


def add_extraction_arguments(parser) -> None:
    """Options shared by the feature extractors: output, weights, batching, sharding, device."""
    parser.add_argument("--out", required=True, metavar="DIR", help="packed dataset directory to write (manifest.json, shards)")
    add_backbone_argument(parser)
    add_weight_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per forward pass (default 32)")
    parser.add_argument("--workers", type=int, default=4, metavar="N",
                        help="DataLoader worker processes decoding images (default 4; 0 = in the main process)")
    parser.add_argument("--shard-size", type=int, default=4096, metavar="N",
                        help="images per shard file (default 4096); a resumed run must use the same value")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16",
                        help="stored feature dtype (default float16, as the trainer reads it)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                        help="auto: this rank's GPU when there is one (default)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start the split over instead of resuming / skipping a complete one, and allow an "
                             "--out folder holding files this tool did not record; only the files this command "
                             "writes (manifest.json, embeddings.npz, <split>-NNNNN.h5, unreadable-<split>.tsv) "
                             "are replaced, nothing else is deleted")


def check_extraction_arguments(parser, args) -> None:
    """Reject impossible values of :func:`add_extraction_arguments` options via ``parser.error``."""
    for flag, value, low in (("--batch-size", args.batch_size, 1), ("--workers", args.workers, 0),
                             ("--shard-size", args.shard_size, 1)):
        if value < low:
            parser.error(f"{flag} must be >= {low}, got {value}")
    if args.weights is not None and args.random_weights is not None:
        parser.error("give either --weights FILE or --random-weights SEED, not both")


def run_split(spec: SplitSpec, args, tool: str) -> dict:
    """:func:`extract_split` with the options of :func:`add_extraction_arguments`."""
    return extract_split(spec, args.out, weights=args.weights, random_seed=args.random_weights,
                         batch_size=args.batch_size, num_workers=args.workers, shard_size=args.shard_size,
                         dtype=args.dtype, device=args.device, overwrite=args.overwrite, tool=tool,
                         backbone=getattr(args, "backbone", DEFAULT_BACKBONE))
