"""``biam-compare``: one table of several evaluated runs or methods on one dataset and protocol.

    biam-compare output/nus_biam_vgg19 output/nus_biam_clip/eval/test-model_best \\
        zero-shot=output/nus_clip_zeroshot --json output/compare.json

Each argument is a finished ``biam-evaluate`` folder (``metrics.json`` + ``config.yaml``) or a run
folder whose ``eval/`` holds them (every one is a row), optionally prefixed with ``NAME=`` for the
row's name. Nothing is re-run: the rows are what ``biam-evaluate`` wrote, so the table shows
exactly the numbers each evaluation reported. All rows must be one dataset, one test split and the
same test data (the packed manifest's labels and test shard hashes); otherwise the command refuses,
naming both. The columns are the dataset's protocol's (NUS-WIDE: P/R/F1 at K = 3 and 5 and mAP, for
ZSL and GZSL, as the paper's tables); the markdown table is printed, ``--json FILE`` also writes it
as JSON. See docs/methods.md.

Exit status: 0 printed; 2 bad input (no metrics, mixed datasets or data); 5 a system error (disk full,
permission), the file named.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import yaml

from ..backbones import DEFAULT_BACKBONE
from ..data.label_encoders import LabelEncoderError, encoder_name, packed_label_encoder
from ..data.packed import PackedFormatError, read_manifest
from ..datasets import get_dataset
from ..utils.io import write_json
from ._errors import ExitOn, run_main, system_error

PROG = "biam-compare"
TASK_ORDER = ("seen", "zsl", "gzsl")
_EXTRA = ("mAP_annotated", "wmAP", "published_pooled_mAP")


class CompareError(ValueError):
    """An argument is not an evaluation folder, or the rows are not one dataset/protocol/data."""


def evaluation_folders(path: os.PathLike) -> List[Path]:
    """The evaluation folders of ``path``: itself (``metrics.json`` + ``config.yaml``) or ``eval/*``."""
    path = Path(path)
    if (path / "metrics.json").is_file() and (path / "config.yaml").is_file() and not (path / "eval").is_dir():
        return [path]
    found = sorted(p.parent for p in (path / "eval").glob("*/metrics.json")) if (path / "eval").is_dir() else []
    if not found:
        raise CompareError(f"{path}: neither a biam-evaluate folder (metrics.json, config.yaml) nor a run folder "
                           "with eval/<split>-<checkpoint>/metrics.json")
    return found


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CompareError(f"{path}: cannot read ({err})") from None
    if not isinstance(obj, dict):
        raise CompareError(f"{path}: expected a JSON object, found {type(obj).__name__}")
    return obj


def _config(path: Path) -> dict:
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise CompareError(f"{path}: cannot read ({err})") from None
    if not isinstance(cfg, dict):
        raise CompareError(f"{path}: expected a YAML mapping")
    return cfg


def _data_identity(root: str, split: str) -> Tuple[Optional[tuple], str, Optional[str], str]:
    """(identity of the test data or None, backbone name, label encoder, note) from a packed root."""
    try:
        manifest = read_manifest(root)
    except PackedFormatError:
        return None, "?", None, f"{root} not readable here: data compared by path only"
    labels = manifest["labels"]
    shards = manifest["splits"].get(split, {}).get("shards", [])
    ident = (tuple(labels["seen"]), tuple(labels["unseen"]), tuple(manifest.get("unseen_eval") or ()),
             tuple(s.get("sha256", "") for s in shards))
    backbone = (manifest.get("backbone") or {}).get("name", DEFAULT_BACKBONE)  # manifests before the field
    try:
        encoder = encoder_name(packed_label_encoder(root))
    except (LabelEncoderError, FileNotFoundError, PackedFormatError):
        encoder = None
    return ident, backbone, encoder, ""


def collect_row(folder: Path, name: Optional[str]) -> dict:
    """One row: the evaluation folder's metrics, what it evaluated and on which data."""
    metrics = _read_json(folder / "metrics.json")
    cfg = _config(folder / "config.yaml")
    data, model = cfg.get("DATA", {}) or {}, cfg.get("MODEL", {}) or {}
    if not any(t in metrics for t in ("zsl", "gzsl")):
        raise CompareError(f"{folder / 'metrics.json'}: no 'zsl'/'gzsl' results")
    root, split = str(data.get("ROOT", "")), str(data.get("TEST_SPLIT", "test"))
    ident, backbone, encoder, note = _data_identity(root, split)
    method = str(model.get("NAME") or "biam")
    weights = str(model.get("WEIGHTS") or "")
    default_name = f"{method} ({model.get('BACKBONE') or backbone})" + (f" {Path(weights).stem}" if weights else "")
    return {"name": name or default_name, "folder": str(folder), "method": method,
            "backbone": model.get("BACKBONE") or backbone, "label_encoder": encoder, "checkpoint": weights or None,
            "dataset": str(data.get("DATASET", "")), "split": split, "data_root": root, "note": note,
            "metrics": {t: metrics[t] for t in TASK_ORDER if t in metrics}, "_ident": ident}


def check_same_protocol(rows: Sequence[dict]) -> None:
    """All rows one dataset, split and test data; raises :class:`CompareError` naming the two that differ."""
    first = rows[0]
    for row in rows[1:]:
        for key, what in (("dataset", "DATA.DATASET"), ("split", "DATA.TEST_SPLIT")):
            if row[key] != first[key]:
                raise CompareError(f"{row['folder']} evaluated {what} {row[key]!r}, {first['folder']} {first[key]!r}: "
                                   "one table compares one dataset and protocol")
        a, b = first["_ident"], row["_ident"]
        same = (a == b) if a is not None and b is not None else os.path.abspath(first["data_root"]) == \
            os.path.abspath(row["data_root"])
        if not same:
            raise CompareError(f"{row['folder']} and {first['folder']} were evaluated on different test data "
                               f"({row['data_root']} vs {first['data_root']}: labels or test shards differ)")


def columns(dataset: str, rows: Sequence[dict]) -> List[Tuple[str, str]]:
    """(task, metric) columns: the protocol's P/R/F1 at each K, then mAP (and annotated variants present)."""
    ks = get_dataset(dataset).protocol.ks
    tasks = [t for t in TASK_ORDER if any(t in r["metrics"] for r in rows)]
    cols = []
    for task in tasks:
        for k in ks:
            cols += [(task, f"P@{k}"), (task, f"R@{k}"), (task, f"F1@{k}")]
        cols.append((task, "mAP"))
        cols += [(task, m) for m in _EXTRA if any(m in r["metrics"].get(task, {}) for r in rows)]
    return cols


def _cell(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * float(value):.1f}"


def to_markdown(rows: Sequence[dict], cols: Sequence[Tuple[str, str]]) -> str:
    """A markdown table, values in percent with one decimal (as the paper's tables)."""
    head = ["method"] + [f"{t.upper()} {m}" for t, m in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * len(cols)) + "|"]
    for r in rows:
        lines.append("| " + " | ".join([r["name"].replace("|", "/")] + [_cell(r["metrics"].get(t, {}).get(m))
                                                                        for t, m in cols]) + " |")
    return "\n".join(lines)


def compare(paths: Sequence[str]) -> dict:
    """``[NAME=]FOLDER`` arguments -> the table as a dict (``dataset``, ``split``, ``ks``, ``columns``, ``rows``)."""
    rows: List[dict] = []
    for arg in paths:
        name, sep, rest = arg.partition("=")
        name, where = (name, rest) if sep and name and not Path(arg).exists() else (None, arg)
        found = evaluation_folders(where)
        for folder in found:
            rows.append(collect_row(folder, name if name is None or len(found) == 1 else f"{name} {folder.name}"))
    if not rows:
        raise CompareError("nothing to compare")
    check_same_protocol(rows)
    dataset = rows[0]["dataset"]
    try:
        cols = columns(dataset, rows)
    except (KeyError, ValueError) as err:
        raise CompareError(f"{rows[0]['folder']}: DATA.DATASET {dataset!r}: {err}") from None
    for r in rows:
        r.pop("_ident")
    return {"dataset": dataset, "split": rows[0]["split"], "ks": list(get_dataset(dataset).protocol.ks),
            "columns": [f"{t}.{m}" for t, m in cols], "values": "fractions in [0, 1] (the table shows percent)",
            "rows": rows}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="One table (markdown, and JSON with --json) of several finished biam-evaluate folders or run "
                    "folders (their eval/*), with the dataset protocol's columns (NUS-WIDE: P/R/F1 at K=3 and 5 and "
                    "mAP, ZSL and GZSL). The rows must be one dataset, split and test data. See docs/methods.md.")
    parser.add_argument("folders", nargs="+", metavar="[NAME=]FOLDER",
                        help="an evaluation folder (metrics.json, config.yaml) or a run folder; NAME= names the row")
    parser.add_argument("--json", metavar="FILE", default=None, help="also write the table as JSON to FILE")
    args = parser.parse_args(argv)

    def body() -> int:
        table = compare(args.folders)
        cols = [tuple(c.split(".", 1)) for c in table["columns"]]
        print(f"{table['dataset']} [{table['split']}], values in %:")
        print(to_markdown(table["rows"], cols))
        for r in table["rows"]:
            if r["note"]:
                print(f"note: {r['name']}: {r['note']}", file=sys.stderr)
        if args.json:
            write_json(args.json, table)
            print(f"{PROG}: wrote {args.json}")
        return 0

    return run_main(PROG, body, (ExitOn((CompareError, FileNotFoundError), 2), system_error()))


if __name__ == "__main__":
    sys.exit(main())
