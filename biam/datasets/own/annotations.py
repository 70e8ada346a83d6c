"""A tagged-image dataset of your own, described by files people have (see docs/own_data.md).

Inputs
------
* a folder of images (any layout below it; paths in the annotation file are relative to it);
* an annotation file, one image per record:

  - **CSV** (``.csv``, UTF-8, header row required): columns ``image`` and ``tags``, optionally
    ``split``; other columns are ignored. Tags are separated by ``;`` (the CSV's own comma stays
    free for the columns): ``photos/0001.jpg,dog;grass;frisbee``. Quote a field holding a comma
    as CSV does (``"a, b.jpg"``).
  - **JSON lines** (``.jsonl`` / ``.ndjson``, UTF-8): one object a line,
    ``{"image": "photos/0001.jpg", "tags": ["dog", "grass"], "split": "train"}`` (``split``
    optional).

  Tags are stripped of surrounding spaces and are case-sensitive; an empty tag (``dog;;grass``,
  a trailing ``;``) is ignored and a tag repeated in one record counts once. An image with no
  tag is allowed: in the test split it is a true negative for every label; in the train split
  the loss skips an image without a seen positive (the count is in :attr:`OwnDataset.notes`).
  Image paths use ``/`` (a ``\\`` is read as ``/``); absolute paths and ``..`` are refused.

* the seen/unseen split of the labels, either

  - given: a seen file and/or an unseen file (UTF-8, one label a line). With both, every tag of
    the data must be in one of them; with one, the other side is every other tag of the data; or
  - chosen by a seeded rule over the tags of the data: a fraction ``f`` of them (``round(f * L)``,
    at least 1 and at most L - 1) becomes unseen, either ``"random"`` (uniformly: labels ordered
    by ``sha256(f"{seed}\\0unseen\\0{label}")``) or ``"rarest"`` (fewest images first, ties
    ordered by that same hash).

* the train/test split of the images, either given (a ``split`` column/key with values
  ``train`` / ``test`` in every record, or a train list and a test list: files of image paths,
  one a line) or made by a seeded rule: a fraction ``f`` of the images (``round(f * N)``, at
  least 1 and at most N - 1) goes to test, the images ordered by
  ``sha256(f"{seed}\\0test\\0{image}")``.

Both seeded rules hash each item on its own, so they give the same result on every machine and
Python/NumPy version, and adding an image or a label does not move the others.

Output
------
:class:`OwnDataset`: label names (seen then unseen: file order for given lists, otherwise sorted
by code point) and per split the relative image paths and an int8 label matrix (N, S + U) with
+1 present and -1 absent, seen columns first -- the layout of NUS-WIDE's labels, which the
NUS-WIDE evaluation protocol reads. As in NUS-WIDE, the train split keeps its unseen columns and
images; training reads only the seen columns. :meth:`OwnDataset.split_spec` hands a split to the
feature extractor (:func:`biam.extraction.extract_split`).

Errors (:class:`OwnDataError`) name the file and line of the record at fault.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ...data.splits import SplitSpec
from ...utils.text import split_lines

__all__ = [
    "TAG_SEPARATOR", "SPLITS", "UNSEEN_RULES", "OwnDataError", "Record", "OwnSplit", "OwnDataset",
    "read_annotations", "read_label_file", "read_image_list", "hash_order", "choose_unseen",
    "choose_test", "image_name", "build_own_dataset",
]

TAG_SEPARATOR = ";"
SPLITS = ("train", "test")
UNSEEN_RULES = ("random", "rarest")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
# How many offending records an error lists before "... and N more".
MAX_LISTED = 20


class OwnDataError(ValueError):
    """An input file of an own dataset is missing or malformed (message names file and line)."""


@dataclass(frozen=True)
class Record:
    """One annotated image: relative POSIX ``image`` path, its ``tags``, the ``split`` it names
    (None when the file has no split) and ``where`` it was read (``"file:line"``)."""

    image: str
    tags: Tuple[str, ...]
    split: Optional[str]
    where: str


def _listed(items: Sequence[str]) -> str:
    shown = "; ".join(items[:MAX_LISTED])
    return shown + (f"; ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


def _decode(path: Path, what: str) -> str:
    """Whole file as text (UTF-8, BOM dropped); a decoding error names the line."""
    if not path.is_file():
        raise OwnDataError(f"{what} not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise OwnDataError(f"{path}: cannot read the {what} ({err.strerror or err})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise OwnDataError(f"{path}:{line}: not UTF-8 ({err.reason} at byte {err.start}); "
                           "save the file as UTF-8") from None


def _image_path(raw, where: str) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise OwnDataError(f"{where}: field 'image' is empty or not a string ({raw!r})")
    text = raw.strip().replace("\\", "/")
    pure = PurePosixPath(text)
    parts = [p for p in pure.parts if p != "."]
    if pure.is_absolute() or ".." in parts or not parts or (len(text) > 1 and text[1] == ":"):
        raise OwnDataError(f"{where}: field 'image' {raw!r} must be a path relative to the image folder "
                           "(no leading '/', drive letter or '..')")
    return "/".join(parts)


def _tags(items: Iterable[str], where: str) -> Tuple[str, ...]:
    out: Dict[str, None] = {}
    for t in items:
        t = t.strip()
        # A tag becomes one line of labels.txt: a control character or a Unicode line or
        # paragraph separator (U+2028, U+2029, ...) would split it into two labels there.
        bad = next((c for c in t if unicodedata.category(c) in ("Cc", "Zl", "Zp", "Cs")), None)
        if bad is not None:
            raise OwnDataError(f"{where}: tag {t!r} holds the character U+{ord(bad):04X} "
                               f"({unicodedata.name(bad, 'a control character')}); tags are printable text")
        if t:
            out[t] = None
    return tuple(out)


def _split_value(raw, where: str) -> str:
    value = raw.strip() if isinstance(raw, str) else raw
    if value not in SPLITS:
        raise OwnDataError(f"{where}: field 'split' is {raw!r}, expected one of {', '.join(SPLITS)}")
    return value


def _read_csv(path: Path) -> List[Record]:
    reader = csv.reader(io.StringIO(_decode(path, "annotation file"), newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise OwnDataError(f"{path}:1: empty file; expected a header row 'image,tags' (optionally ',split')") from None
    except csv.Error as err:
        raise OwnDataError(f"{path}:1: not readable as CSV ({err})") from None
    cols = [h.strip().lower() for h in header]
    for name in ("image", "tags"):
        if name not in cols:
            raise OwnDataError(f"{path}:1: the header row {header!r} has no column '{name}' "
                               "(the first row must name the columns: image,tags[,split])")
    for name in ("image", "tags", "split"):
        if cols.count(name) > 1:
            raise OwnDataError(f"{path}:1: column '{name}' occurs {cols.count(name)} times in the header")
    i_img, i_tags = cols.index("image"), cols.index("tags")
    i_split = cols.index("split") if "split" in cols else None
    records = []
    while True:
        # A quoted field may run over several lines: a record is named by the line it starts on.
        where = f"{path}:{reader.line_num + 1}"
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            raise OwnDataError(f"{where}: not readable as CSV ({err})") from None
        if not row:
            continue  # a blank line is no record
        if len(row) != len(header):
            hint = " (a field runs over several lines: an unclosed quote?)" if any("\n" in f for f in row) else ""
            raise OwnDataError(f"{where}: {len(row)} fields, the header has {len(header)} ({', '.join(header)}){hint}")
        records.append(Record(
            image=_image_path(row[i_img], where),
            tags=_tags(row[i_tags].split(TAG_SEPARATOR), where),
            split=None if i_split is None else _split_value(row[i_split], where),
            where=where))
    return records


def _lines(path: Path, what: str) -> List[str]:
    """The file's lines, split at "\n" only: another line break (U+2028, ...) is refused naming the line."""
    text = _decode(path, what)
    try:
        return split_lines(text, path)
    except ValueError as err:
        raise OwnDataError(str(err)) from None


def _read_jsonl(path: Path) -> List[Record]:
    records = []
    for lineno, line in enumerate(_lines(path, "annotation file"), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise OwnDataError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(obj, dict):
            raise OwnDataError(f"{where}: expected an object {{\"image\": ..., \"tags\": [...]}}, found {type(obj).__name__}")
        if "image" not in obj or "tags" not in obj:
            raise OwnDataError(f"{where}: field '{'image' if 'image' not in obj else 'tags'}' is missing")
        tags = obj["tags"]
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise OwnDataError(f"{where}: field 'tags' must be a list of strings, found {tags!r}")
        records.append(Record(image=_image_path(obj["image"], where), tags=_tags(tags, where),
                              split=_split_value(obj["split"], where) if "split" in obj else None, where=where))
    return records


def read_annotations(path: os.PathLike) -> List[Record]:
    """Records of a ``.csv`` or ``.jsonl``/``.ndjson`` annotation file, in file order.

    Checks each record (fields, image path, split value) and that no image occurs twice, and
    that either every record names its split or none does.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        records = _read_csv(path)
    elif suffix in JSONL_SUFFIXES:
        records = _read_jsonl(path)
    else:
        raise OwnDataError(f"{path}: unknown annotation format '{path.suffix}'; use .csv or .jsonl")
    if not records:
        raise OwnDataError(f"{path}: no records")
    first: Dict[str, str] = {}
    for r in records:
        if r.image in first:
            raise OwnDataError(f"{r.where}: image {r.image!r} is listed twice (first at {first[r.image]})")
        first[r.image] = r.where
    with_split = [r.split is not None for r in records]
    if any(with_split) and not all(with_split):
        odd = records[with_split.index(not with_split[0])]
        raise OwnDataError(f"{odd.where}: image {odd.image!r}: field 'split' is "
                           f"{'missing' if odd.split is None else 'present'} while {records[0].where} "
                           f"{'has one' if with_split[0] else 'has none'}; give it for every record or for none")
    return records


def _read_lines(path: os.PathLike, what: str) -> List[Tuple[str, str]]:
    """Non-blank stripped lines of a UTF-8 file as ``(value, "file:line")``; repeats are errors."""
    path = Path(path)
    out, first = [], {}
    for lineno, line in enumerate(_lines(path, what), 1):
        value = line.strip()
        if not value:
            continue
        where = f"{path}:{lineno}"
        if value in first:
            raise OwnDataError(f"{where}: {value!r} is listed twice (first at line {first[value]})")
        first[value] = lineno
        out.append((value, where))
    if not out:
        raise OwnDataError(f"{path}: the {what} is empty")
    return out


def read_label_file(path: os.PathLike) -> List[str]:
    """Labels of a label file (UTF-8, one a line, blank lines ignored), in file order."""
    return [v for v, _ in _read_lines(path, "label file")]


def read_image_list(path: os.PathLike) -> List[Tuple[str, str]]:
    """Image paths of a train/test list (one a line) as ``(relative POSIX path, "file:line")``."""
    return [(_image_path(v, where), where) for v, where in _read_lines(path, "image list")]


def hash_order(items: Iterable[str], seed: int, salt: str) -> List[str]:
    """``items`` sorted by ``sha256(f"{seed}\\0{salt}\\0{item}")``: a seeded shuffle that is the
    same everywhere and keeps each item's rank independent of the other items."""
    def key(item: str):
        return hashlib.sha256(f"{seed}\0{salt}\0{item}".encode("utf-8")).hexdigest(), item

    return sorted(items, key=key)


def _count(total: int, fraction: float, what: str) -> int:
    if not 0.0 < fraction < 1.0:
        raise OwnDataError(f"{what} fraction must be in (0, 1), got {fraction}")
    if total < 2:
        raise OwnDataError(f"{what}: {total} item(s); at least 2 are needed to split")
    return min(max(int(round(fraction * total)), 1), total - 1)


def choose_unseen(counts: Dict[str, int], fraction: float, rule: str, seed: int) -> List[str]:
    """Unseen labels chosen from ``counts`` ({label: images carrying it}) by ``rule``
    ("random" or "rarest", see the module docstring); returned sorted by code point."""
    if rule not in UNSEEN_RULES:
        raise OwnDataError(f"unseen rule must be one of {UNSEEN_RULES}, got {rule!r}")
    k = _count(len(counts), fraction, "unseen-label")
    order = hash_order(counts, seed, "unseen")
    if rule == "rarest":
        rank = {label: i for i, label in enumerate(order)}
        order = sorted(counts, key=lambda label: (counts[label], rank[label]))
    return sorted(order[:k])


def choose_test(images: Sequence[str], fraction: float, seed: int) -> set:
    """The set of test images: the first ``round(fraction * N)`` of :func:`hash_order`."""
    k = _count(len(images), fraction, "test-image")
    return set(hash_order(images, seed, "test")[:k])


def image_name(path: str) -> str:
    """Name stored for an image in the packed dataset: its relative path with '/' -> '_'."""
    return path.replace("/", "_")


@dataclass
class OwnSplit:
    """One split: ``images`` (N,) relative paths, ``labels`` (N, S + U) int8 +1/-1, ``rows`` (N,)
    where each record was read (``"file:line"``)."""

    name: str
    images: List[str]
    labels: np.ndarray
    rows: List[str]


@dataclass
class OwnDataset:
    """Label names, the splits, how they were made (``source``) and ``notes`` worth reading
    (labels without positives, images the training loss skips)."""

    images_root: Path
    seen: List[str]
    unseen: List[str]
    splits: Dict[str, OwnSplit]
    source: dict = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    def split_spec(self, split: str, dataset: str = "own"):
        """The :class:`biam.data.splits.SplitSpec` of ``split`` (image files joined to the folder)."""
        s = self.splits[split]
        return SplitSpec(split=split, dataset=dataset, paths=[str(self.images_root / p) for p in s.images],
                         names=[image_name(p) for p in s.images], labels=s.labels, seen=list(self.seen),
                         unseen=list(self.unseen), extra={"source": self.source})

    def summary(self) -> str:
        """A few lines: label and image counts per split, then the notes."""
        lines = [f"{len(self.seen)} seen labels, {len(self.unseen)} unseen labels"]
        for name, s in self.splits.items():
            pos = (s.labels == 1).sum(axis=0)
            lines.append(f"{name}: {len(s.images)} images, {int(pos[:len(self.seen)].sum())} seen and "
                         f"{int(pos[len(self.seen):].sum())} unseen positives")
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def _label_split(records: List[Record], seen_file, unseen_file, unseen_fraction, unseen_rule, seed):
    tags_in_data: Dict[str, int] = {}
    for r in records:
        for t in r.tags:
            tags_in_data[t] = tags_in_data.get(t, 0) + 1
    if seen_file is None and unseen_file is None:
        if unseen_fraction is None:
            raise OwnDataError("no seen/unseen split of the labels: give a seen and/or an unseen label file, "
                               "or an unseen fraction (with a rule and a seed)")
        unseen = choose_unseen(tags_in_data, unseen_fraction, unseen_rule, seed)
        chosen = set(unseen)
        seen = sorted(t for t in tags_in_data if t not in chosen)
        return seen, unseen, {"rule": unseen_rule, "fraction": unseen_fraction, "seed": seed}
    if unseen_fraction is not None:
        raise OwnDataError("give either label files or an unseen fraction, not both")
    lists = {}
    for side, path in (("seen", seen_file), ("unseen", unseen_file)):
        if path is not None:
            lists[side] = read_label_file(path)
    if "seen" in lists and "unseen" in lists:
        both = sorted(set(lists["seen"]) & set(lists["unseen"]))
        if both:
            raise OwnDataError(f"{seen_file} and {unseen_file}: label(s) in both files: {_listed([repr(b) for b in both])}")
        known = set(lists["seen"]) | set(lists["unseen"])
        stray = [f"{r.where}: image {r.image!r}: tag {t!r}" for r in records for t in r.tags if t not in known]
        if stray:
            raise OwnDataError(f"{len(stray)} tag(s) are in neither {seen_file} nor {unseen_file} "
                               f"(add them to one, or remove them from the annotations): {_listed(stray)}")
    else:
        given = "seen" if "seen" in lists else "unseen"
        taken = set(lists[given])
        lists["unseen" if given == "seen" else "seen"] = sorted(t for t in tags_in_data if t not in taken)
    source = {"rule": "files", "seen_file": None if seen_file is None else str(seen_file),
              "unseen_file": None if unseen_file is None else str(unseen_file)}
    return lists["seen"], lists["unseen"], source


def _image_split(records: List[Record], train_list, test_list, test_fraction, seed) -> Tuple[List[str], dict]:
    has_column = records[0].split is not None
    given = [x for x in (train_list, test_list) if x is not None]
    if len(given) == 1:
        raise OwnDataError("give both a train list and a test list, or neither")
    if sum([has_column, bool(given), test_fraction is not None]) > 1:
        given_as = [w for w, on in (("a 'split' field in the annotations", has_column), ("train/test lists", given),
                                    ("a test fraction", test_fraction is not None)) if on]
        raise OwnDataError(f"the train/test split is given more than once ({', '.join(given_as)}); keep one")
    if has_column:
        return [r.split for r in records], {"rule": "field"}
    if given:
        where = {r.image: i for i, r in enumerate(records)}
        out: List[Optional[str]] = [None] * len(records)
        for split, path in (("train", train_list), ("test", test_list)):
            for image, at in read_image_list(path):
                if image not in where:
                    raise OwnDataError(f"{at}: image {image!r} is not in the annotation file")
                i = where[image]
                if out[i] is not None:
                    raise OwnDataError(f"{at}: image {image!r} is in both the train and the test list")
                out[i] = split
        lacking = [f"{r.where}: {r.image!r}" for r, s in zip(records, out) if s is None]
        if lacking:
            raise OwnDataError(f"{len(lacking)} image(s) are in neither {train_list} nor {test_list}: {_listed(lacking)}")
        return out, {"rule": "lists", "train_list": str(train_list), "test_list": str(test_list)}
    if test_fraction is None:
        raise OwnDataError("no train/test split: add a 'split' field to the annotations, give train/test lists, "
                           "or a test fraction (with a seed)")
    test = choose_test([r.image for r in records], test_fraction, seed)
    return ["test" if r.image in test else "train" for r in records], {"rule": "fraction", "fraction": test_fraction,
                                                                       "seed": seed}


def build_own_dataset(annotations: os.PathLike, images_root: os.PathLike, *, seen_file=None, unseen_file=None,
                      unseen_fraction: Optional[float] = None, unseen_rule: str = "random", train_list=None,
                      test_list=None, test_fraction: Optional[float] = None, seed: int = 0,
                      check_images: bool = True) -> OwnDataset:
    """Read and check everything; see the module docstring for the rules.

    Input: the annotation file, the image folder, the label split (files, or fraction + rule +
    seed), the image split (a ``split`` field, lists, or fraction + seed). ``check_images``:
    every listed image must be a file (one error lists all that are not).
    Output: :class:`OwnDataset`. Raises :class:`OwnDataError`.
    """
    images_root = Path(images_root)
    if not images_root.is_dir():
        raise OwnDataError(f"image folder not found: {images_root}")
    records = read_annotations(annotations)
    names: Dict[str, Record] = {}
    for r in records:
        other = names.setdefault(image_name(r.image), r)
        if other is not r:
            raise OwnDataError(f"{r.where}: image {r.image!r} and {other.where}: image {other.image!r} get the same "
                               f"stored name {image_name(r.image)!r} ('/' becomes '_'); rename one")
    if check_images:
        missing = [f"{r.where}: {r.image!r}" for r in records if not (images_root / r.image).is_file()]
        if missing:
            raise OwnDataError(f"{len(missing)} image file(s) listed in {annotations} are not in {images_root}: "
                               f"{_listed(missing)}")
    seen, unseen, label_source = _label_split(records, seen_file, unseen_file, unseen_fraction, unseen_rule, seed)
    if not seen or not unseen:
        raise OwnDataError(f"the label split leaves {len(seen)} seen and {len(unseen)} unseen labels; "
                           "zero-shot tagging needs at least one of each")
    split_of, split_source = _image_split(records, train_list, test_list, test_fraction, seed)
    column = {t: j for j, t in enumerate(list(seen) + list(unseen))}
    splits, notes = {}, []
    for split in SPLITS:
        chosen = [r for r, s in zip(records, split_of) if s == split]
        if not chosen:
            raise OwnDataError(f"split '{split}' has no images")
        labels = np.full((len(chosen), len(column)), -1, dtype=np.int8)
        for i, r in enumerate(chosen):
            labels[i, [column[t] for t in r.tags]] = 1
        splits[split] = OwnSplit(split, [r.image for r in chosen], labels, [r.where for r in chosen])
    s = len(seen)
    train_pos = (splits["train"].labels == 1).sum(axis=0)
    test_pos = (splits["test"].labels == 1).sum(axis=0)
    skipped = int(((splits["train"].labels[:, :s] == 1).sum(axis=1) == 0).sum())
    if skipped:
        notes.append(f"{skipped} train image(s) have no seen tag; the training loss skips them")
    for what, cols, pos, where in (("seen", range(s), train_pos, "train"),
                                   ("unseen", range(s, len(column)), test_pos, "test")):
        empty = [(list(seen) + list(unseen))[j] for j in cols if pos[j] == 0]
        if empty:
            notes.append(f"{len(empty)} {what} label(s) have no {where} image: {_listed([repr(e) for e in empty])}")
    source = {"annotations": str(annotations), "images": str(images_root), "labels": label_source,
              "split": split_source}
    return OwnDataset(images_root, list(seen), list(unseen), splits, source, notes)
