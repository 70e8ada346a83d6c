"""NUS-WIDE images (official release) -> packed features, labels and embeddings.

    python feature_extraction/extract_nus_wide.py --nus-root datasets/NUS-WIDE \
        --embeddings datasets/NUS-WIDE/wiki_contexts/NUS_WIDE_pretrained_w2v_glove-wiki-gigaword-300 \
        --out datasets/NUS-WIDE/packed [--splits train test] [--weights pretrained_weights/vgg19-dcbb9e9d.pth]

Several GPUs: ``torchrun --nproc_per_node 4 feature_extraction/extract_nus_wide.py ...``.
The expected release layout is described in datasets/NUS-WIDE/README.md. Labels are +1/-1 in
the 925 + 81 column order: seen = the tags of TagList1k.txt that are not concepts, in tag-file
order (from Train_Tags1k.dat / Test_Tags1k.dat), then the 81 concepts of Concepts81.txt in file
order (from the ground-truth files Labels_<concept>_<Split>.txt).
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

try:
    import biam  # noqa: F401
except ImportError:
    # Run from a checkout without `pip install -e .`: the package lives one folder up.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from biam import features  # noqa: E402
from biam.data import embeddings as emb  # noqa: E402
from biam.data.packed import PackedFormatError, save_embeddings  # noqa: E402
from biam.data.released import RecordError, nus_wide_label_names, read_lines  # noqa: E402
from biam.utils import comm  # noqa: E402
from biam.utils.ownership import FolderBusyError, FolderOwnershipError  # noqa: E402

TOOL = "extract_nus_wide"
SPLIT_FILES = {"train": ("TrainImagelist.txt", "Train_Tags1k.dat", "Train"),
               "test": ("TestImagelist.txt", "Test_Tags1k.dat", "Test")}
# The ground-truth archive unpacks to Groundtruth/TrainTestLabels; a flattened copy is accepted too.
GROUNDTRUTH_DIRS = ("Groundtruth/TrainTestLabels", "TrainTestLabels")


def parse_image_list(path: Path, flickr: Path) -> Tuple[List[str], List[str]]:
    """``ImageList/<Split>Imagelist.txt`` -> (image files, image names), one per line in order.

    Lines look like ``actor\\0001_2124494179.jpg`` (backslashes as in the release; a full
    ``C:\\...\\Flickr\\actor\\...`` path is cut after its last ``Flickr`` part). The file is
    ``flickr/actor/0001_2124494179.jpg``; the name is the relative path with '/' -> '_'
    (``actor_0001_2124494179.jpg``), as in the released feature files.
    """
    paths, names = [], []
    for lineno, line in enumerate(read_lines(path), 1):
        parts = [p for p in line.replace("\\", "/").split("/") if p]
        if "Flickr" in parts:
            parts = parts[len(parts) - parts[::-1].index("Flickr"):]
        if not parts or any(p in (".", "..") for p in parts):
            raise RecordError(f"{path}: line {lineno}: field 'image path' {line!r} is not a relative image path")
        paths.append(str(flickr.joinpath(*parts)))
        names.append("_".join(parts))
    return paths, names


def read_binary_matrix(path: Path, rows: int, cols: int, names: Sequence[str]) -> np.ndarray:
    """A 0/1 text matrix (one image per line, values separated by tabs/spaces) -> (rows, cols) int8.

    Errors name the file, the line, the image and the field (column) at fault.
    """
    from tqdm import tqdm

    if not path.is_file():
        raise FileNotFoundError(f"tag matrix not found: {path}")
    out = np.empty((rows, cols), dtype=np.int8)
    n = 0
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(tqdm(fh, total=rows, desc=f"read {path.name}", unit="row", leave=False), 1):
            # Values are single digits: dropping the separators leaves one byte per column.
            digits = raw.translate(None, b" \t\r\n")
            if not digits:
                continue
            if n >= rows:
                raise RecordError(f"{path}: more than {rows} rows (the image list has {rows} images)")
            row = np.frombuffer(digits, dtype=np.uint8).astype(np.int16) - ord("0")
            if len(row) != cols or not np.isin(row, (0, 1)).all():
                bad = int(np.flatnonzero(~np.isin(row, (0, 1)))[0]) if len(row) == cols else None
                raise RecordError(
                    f"{path}: line {lineno}, image {names[n]!r}: "
                    + (f"{len(raw.split())} values, expected {cols} (one per tag)" if bad is None
                       else f"field 'tag {bad}' is {raw.split()[bad].decode(errors='replace')!r}, expected 0 or 1"))
            out[n] = row
            n += 1
    if n != rows:
        raise RecordError(f"{path}: {n} rows, the image list has {rows} images")
    return out


def read_concept_column(path: Path, rows: int, names: Sequence[str]) -> np.ndarray:
    """``Labels_<concept>_<Split>.txt`` (one 0/1 a line) -> (rows,) int8."""
    if not path.is_file():
        raise FileNotFoundError(f"ground-truth file not found: {path}")
    lines = read_lines(path)
    if len(lines) != rows:
        raise RecordError(f"{path}: {len(lines)} lines, the image list has {rows} images")
    out = np.empty(rows, dtype=np.int8)
    for i, v in enumerate(lines):
        if v not in ("0", "1"):
            raise RecordError(f"{path}: line {i + 1}, image {names[i]!r}: field 'label' is {v!r}, expected 0 or 1")
        out[i] = int(v)
    return out


def groundtruth_dir(root: Path) -> Path:
    for rel in GROUNDTRUTH_DIRS:
        if (root / rel).is_dir():
            return root / rel
    raise FileNotFoundError(f"{root}: no ground-truth folder ({' or '.join(GROUNDTRUTH_DIRS)}); "
                            "see datasets/NUS-WIDE/README.md")


def build_split(root: Path, split: str, tags_total: int, seen_idx: np.ndarray, concepts: List[str],
                seen: List[str]) -> features.SplitSpec:
    """Image files, names and (N, S + U) int8 +1/-1 labels of one split of the release."""
    list_file, tag_file, suffix = SPLIT_FILES[split]
    paths, names = parse_image_list(root / "ImageList" / list_file, root / "Flickr")
    n = len(names)
    tags = read_binary_matrix(root / "NUS_WID_Tags" / tag_file, n, tags_total, names)
    gt = groundtruth_dir(root)
    unseen = np.stack([read_concept_column(gt / f"Labels_{c}_{suffix}.txt", n, names) for c in concepts], axis=1)
    labels = np.concatenate([tags[:, seen_idx], unseen], axis=1).astype(np.int8) * 2 - 1
    return features.SplitSpec(
        split=split, dataset="nus_wide", paths=paths, names=names, labels=labels, seen=seen, unseen=concepts,
        extra={"source": {"tool": "feature_extraction/extract_nus_wide.py", "nus_root": str(root)}},
    )


def load_label_embeddings(args, tags_path: Path, seen_idx: np.ndarray, seen: List[str], concepts: List[str]):
    """(seen (S, D), unseen (U, D)) float32 raw rows from the released pickle or a GloVe file."""
    if args.embeddings:
        return emb.read_nus_wide_embeddings(args.embeddings, seen_idx, num_tags=len(read_lines(tags_path)),
                                            num_concepts=len(concepts))
    vectors = emb.build_from_glove(seen + concepts, args.glove, missing=args.glove_missing)
    return vectors[: len(seen)], vectors[len(seen):]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="extract_nus_wide.py",
        description="NUS-WIDE release (images, image lists, tags, ground truth) -> packed features "
                    "(VGG19 conv5_4 regions + fc7 scene), +1/-1 labels (925 seen tags, 81 concepts) and embeddings. "
                    "Resumable; several GPUs through torchrun.")
    parser.add_argument("--nus-root", required=True, metavar="DIR",
                        help="the unpacked release (Flickr/, ImageList/, NUS_WID_Tags/, ConceptsList/, Groundtruth/); "
                             "see datasets/NUS-WIDE/README.md")
    parser.add_argument("--splits", nargs="+", choices=sorted(SPLIT_FILES), default=["train", "test"],
                        help="splits to extract (default: train test)")
    features.add_label_embedding_arguments(
        parser,
        embeddings_help="released embedding pickle [tags (1000, 300), concepts (81, 300)] "
                        "(wiki_contexts/NUS_WIDE_pretrained_w2v_glove-wiki-gigaword-300)",
        glove_help="GloVe text file; multi-word labels are averaged")
    features.add_extraction_arguments(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    features.check_extraction_arguments(parser, args)
    root = Path(args.nus_root)
    try:
        features.check_weights_available(args.weights, args.random_weights, TOOL, backbone=args.backbone)
        # Rank 0 takes --out (lock + ownership check) before joining the others: a refusal exits
        # at once, and torchrun then stops the other ranks.
        with features.claim_output(args.out, args.overwrite, TOOL):
            # Join torchrun's process group first (long timeout: ranks may finish hours apart on resume).
            comm.init_distributed(args.device, timeout_minutes=24 * 60)
            tags_path = root / "NUS_WID_Tags" / "TagList1k.txt"
            seen, concepts, seen_idx = nus_wide_label_names(tags_path, root / "ConceptsList" / "Concepts81.txt")
            tags_total = len(read_lines(tags_path))
            vec_seen, vec_unseen = load_label_embeddings(args, tags_path, seen_idx, seen, concepts)
            for split in args.splits:
                spec = build_split(root, split, tags_total, seen_idx, concepts, seen)
                features.run_split(spec, args, TOOL)
            if comm.is_main_process():
                save_embeddings(args.out, vec_seen, vec_unseen)
    except (features.WeightsNotFoundError, FileNotFoundError, RecordError, PackedFormatError, KeyError, ValueError,
            FolderBusyError, FolderOwnershipError, pickle.UnpicklingError) as err:
        print(f"{TOOL}: error: {err}", file=sys.stderr)
        return 2
    finally:
        comm.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
