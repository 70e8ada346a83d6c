"""The fidelity runs' table: made from the runs, written only between the page's markers, and
the page's table lists every row the command runs."""

import torch

from biam.benchmark import fidelity


def _row(name, zsl, weights):
    metrics = {"zsl": {"mAP": zsl, "F1@3": 0.25}, "gzsl": {"mAP": 0.5, "F1@3": 0.4}}
    return {"name": name, "metrics": metrics, "loss_train": 0.1, "loss_finetune": 0.2, "weights": weights}


def test_table_reports_metrics_in_percent_and_the_weight_difference_from_the_defaults():
    w = {"a": torch.zeros(3), "n": torch.zeros(1, dtype=torch.long)}
    moved = {"a": torch.tensor([0.0, -0.5, 0.25]), "n": torch.ones(1, dtype=torch.long)}
    table = fidelity.format_table([_row("defaults", 0.3512, w), _row("`SEED 3484`", 0.2, moved),
                                   _row("`MODEL.ATTENTION published`", 0.3512, dict(w))])
    lines = table.splitlines()
    assert lines[2].startswith("| defaults | 35.12 | 25.00 | 50.00 | 40.00 | 0.10000 | 0.20000 | 0 |")
    assert lines[3].endswith("| 0.5 |")  # integer buffers do not count
    assert lines[4].endswith("| 0 (bitwise equal) |")


def test_only_the_text_between_the_markers_is_rewritten(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(f"head\n{fidelity.BEGIN}\nold\n{fidelity.END}\ntail\n")
    fidelity.rewrite_page(page, "new table")
    assert page.read_text() == f"head\n{fidelity.BEGIN}\nnew table\n{fidelity.END}\ntail\n"
    bare = tmp_path / "bare.md"
    bare.write_text("no markers\n")
    try:
        fidelity.rewrite_page(bare, "x")
    except ValueError as err:
        assert "markers" in str(err)
    else:
        raise AssertionError("a page without markers must be refused")
    assert bare.read_text() == "no markers\n"


def test_the_page_holds_the_table_of_every_row():
    text = fidelity.PAGE.read_text(encoding="utf-8")
    section = text.split(fidelity.BEGIN, 1)[1].split(fidelity.END, 1)[0]
    assert "python -m biam.benchmark.fidelity" in section and "at commit" in section
    names = [line.split(" | ")[0].lstrip("| ") for line in section.splitlines() if line.startswith("| ")][1:]
    assert names == list(fidelity.ROWS)
