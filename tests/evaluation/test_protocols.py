"""The NUS-WIDE and Open Images protocols, the result table and the chance level."""

import json

import numpy as np
import pytest
import torch

from biam.datasets import get_dataset
from biam.datasets.nus_wide import evaluate_nus_wide
from biam.datasets.openimages import evaluate_openimages
from biam.evaluation import (
    EvalResult,
    average_precision,
    chance_level,
    evaluate_random_baseline,
    expected_random_ap,
    f1_at_k,
)


def _nus_data(seed=0, n=400, seen=12, unseen=5):
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(n, seen + unseen, generator=g)
    labels = torch.where(torch.rand(n, seen + unseen, generator=g) < 0.15, 1, -1).to(torch.int8)
    labels[:, seen + 1] = -1  # an unseen label without a positive: counts as AP 0
    return scores, labels


def test_nus_wide_protocol_splits_and_counts_zero_ap():
    scores, labels = _nus_data()
    res = evaluate_nus_wide(scores, labels, num_seen=12, ks=(3, 5))
    d = res.to_dict()
    assert set(d) == {"zsl", "gzsl"}
    ap = average_precision(scores, labels)
    assert ap[13].item() == 0.0
    assert d["zsl"]["mAP"] == pytest.approx(ap[12:].mean().item())
    assert d["gzsl"]["mAP"] == pytest.approx(ap.mean().item())
    # ZSL top-K is among the unseen columns only.
    f1, p, r = f1_at_k(scores[:, 12:], labels[:, 12:], 3)
    assert (d["zsl"]["F1@3"], d["zsl"]["P@3"], d["zsl"]["R@3"]) == pytest.approx((f1, p, r))
    assert d["gzsl"]["F1@5"] == pytest.approx(f1_at_k(scores, labels, 5)[0])
    assert d["zsl"]["num_labels"] == 5 and d["gzsl"]["num_images"] == 400
    json.dumps(d)  # JSON-ready


def test_numpy_and_torch_inputs_agree():
    scores, labels = _nus_data(seed=1)
    a = evaluate_nus_wide(scores, labels, num_seen=12).to_dict()
    b = evaluate_nus_wide(scores.numpy(), labels.numpy(), num_seen=12).to_dict()
    assert a == b


def test_table_has_the_paper_rows_and_columns():
    scores, labels = _nus_data(seed=2)
    res = evaluate_nus_wide(scores, labels, num_seen=12)
    text = res.format_table(chance=chance_level(labels, get_dataset("nus_wide").protocol, num_seen=12))
    lines = text.splitlines()
    assert lines[0].split() == ["P@3", "R@3", "F1@3", "P@5", "R@5", "F1@5", "mAP"]
    assert lines[1].startswith("ZSL ") and lines[2].startswith("GZSL ")
    assert lines[3].startswith("ZSL chance") and lines[4].startswith("GZSL chance")
    assert f"{100 * res.metrics['zsl']['mAP']:.2f}" in lines[1]
    assert str(res) == res.format_table()


def _oi_data():
    # 6 images x (3 seen + 3 unseen). Image 4 has no +1 at all; image 5 has a +1 only on a seen
    # label; unseen column 5 is never annotated.
    labels = np.array([
        [1, -1, 0, 1, -1, 0],
        [0, 1, 0, -1, 1, 0],
        [-1, 0, 1, 1, 0, 0],
        [0, 0, -1, 0, 1, 0],
        [-1, -1, 0, -1, -1, 0],
        [1, 0, 0, -1, 0, 0],
    ], dtype=np.int8)
    rng = np.random.default_rng(0)
    scores = rng.random(labels.shape).astype(np.float32)
    return scores, labels


def test_openimages_filters_images_and_columns():
    scores, labels = _oi_data()
    res = evaluate_openimages(scores, labels, num_seen=3, ks=(1, 2), published_ap=True)
    zsl, gzsl = res.metrics["zsl"], res.metrics["gzsl"]
    # ZSL keeps images 0-3 (a +1 among unseen); GZSL keeps 0-3 and 5.
    assert zsl["num_images"] == 4 and gzsl["num_images"] == 5
    # Column 5 has no annotation: it counts 0 in the mAP over all 3 unseen columns (as the
    # original averages), is left out of mAP_annotated, and is NaN in the per-label list.
    assert zsl["num_ap_labels"] == 2 and gzsl["num_ap_labels"] == 5
    assert zsl["num_labels"] == 3 and gzsl["num_labels"] == 6
    assert np.isnan(res.per_label_ap["zsl"][2])
    zrows = np.array([0, 1, 2, 3])
    expected_zsl_ap = average_precision(scores[zrows][:, 3:5], labels[zrows][:, 3:5])
    assert zsl["mAP"] == pytest.approx(expected_zsl_ap.sum() / 3)
    assert zsl["mAP_annotated"] == pytest.approx(expected_zsl_ap.mean())
    assert zsl["mAP"] < zsl["mAP_annotated"]
    assert gzsl["mAP"] == pytest.approx(np.nansum(res.per_label_ap["gzsl"]) / 6)
    assert gzsl["mAP_annotated"] == pytest.approx(np.nanmean(res.per_label_ap["gzsl"]))
    w = (labels[zrows][:, 3:5] == 1).sum(0)
    assert zsl["wmAP"] == pytest.approx((expected_zsl_ap * w).sum() / w.sum())
    f1, p, r = f1_at_k(scores[zrows][:, 3:], labels[zrows][:, 3:], 2)
    assert (zsl["F1@2"], zsl["P@2"], zsl["R@2"]) == pytest.approx((f1, p, r))
    assert "published_pooled_mAP" in zsl and 0 <= zsl["published_pooled_mAP"] <= 1
    from biam.evaluation import openimages_published_ap

    pooled = openimages_published_ap(scores[zrows][:, 3:], labels[zrows][:, 3:])
    assert zsl["published_pooled_mAP"] == pytest.approx(pooled[:2].sum() / 3)  # column 5 counts 0
    header = str(res).splitlines()[0]
    assert "pub.pooled mAP" in header and "wmAP" in header and "mAP annot." in header
    assert "2 of them annotated" in str(res)


def _oi_published_data(seed=0, n=90, seen=30, unseen=24):
    """Open Images-like labels with every case the original's evaluation treats apart: seen and
    unseen columns never annotated, annotated columns without a positive, images without any
    positive, images with positives only among the unseen or only among the seen labels."""
    rng = np.random.default_rng(seed)
    c = seen + unseen
    annotated = rng.random((n, c)) < 0.45
    labels = np.where(annotated, np.where(rng.random((n, c)) < 0.35, 1, -1), 0).astype(np.int8)
    labels[:, [0, 1, 2, seen]] = 0  # never annotated
    for col in (3, 4, seen + 1):  # annotated, never +1
        labels[labels[:, col] == 1, col] = -1
    labels[0:5] = np.minimum(labels[0:5], 0)  # no positive at all
    labels[5:10, :seen] = np.minimum(labels[5:10, :seen], 0)  # positives only among the unseen
    labels[5:10, seen + 2] = 1
    labels[10:15, seen:] = np.minimum(labels[10:15, seen:], 0)  # positives only among the seen
    labels[10:15, 5] = 1
    return rng.random((n, c)), labels  # float64 scores: no ties


def test_openimages_published_numbers_equal_the_published_loops():
    from biam.evaluation.reference import PUBLISHED_OPENIMAGES_KS, published_loop_openimages

    scores, labels = _oi_published_data()
    res = evaluate_openimages(torch.from_numpy(scores), torch.from_numpy(labels), num_seen=30, published_ap=True)
    ours = res.metrics
    ref = published_loop_openimages(scores, labels, num_seen=30)
    assert list(ours) == ["seen", "zsl", "gzsl"]
    # The data exercise what the loops treat apart.
    assert ref["gzsl"]["num_images"] == 85  # images 0-4 have no positive
    assert ref["seen"]["num_images"] <= 80 and ref["zsl"]["num_images"] <= 80  # nor 5-9, 10-14 in SEEN, ZSL
    assert ref["seen"]["num_mean_columns"] == 27 and ref["gzsl"]["num_mean_columns"] == 50
    assert ref["zsl"]["num_mean_columns"] == 24  # ZSL: all columns, the unannotated one counting 0
    for task in ("seen", "zsl", "gzsl"):
        got, want = ours[task], ref[task]
        assert got["num_images"] == want["num_images"]
        assert (got["num_labels"] if task == "zsl" else got["num_ap_labels"]) == want["num_mean_columns"]
        for key in ("published_pooled_mAP", "published_weighted_pooled_mAP"):
            assert got[key] == pytest.approx(want[key], rel=1e-12), (task, key)
        for k in PUBLISHED_OPENIMAGES_KS[task]:
            for m in ("F1", "P", "R"):
                assert got[f"{m}@{k}"] == pytest.approx(want[f"{m}@{k}"], rel=1e-12), (task, m, k)
    # The two rules the original applies beyond ZSL's, each visible on these data: SEEN and GZSL
    # average over their annotated columns only (over all of them, GZSL would read lower) ...
    gz = ours["gzsl"]
    assert gz["published_pooled_mAP"] * gz["num_ap_labels"] / gz["num_labels"] < 0.95 * gz["published_pooled_mAP"]
    # ... and SEEN's top K is among its annotated columns (over all 30, P@1 would differ).
    rows = (labels[:, :30] == 1).any(1)
    assert f1_at_k(scores[rows][:, :30], labels[rows][:, :30], 1)[1] != pytest.approx(ours["seen"]["P@1"])
    # The weighted number is not the plain one.
    assert abs(ours["zsl"]["published_weighted_pooled_mAP"] - ours["zsl"]["published_pooled_mAP"]) > 1e-2
    header, *lines = str(res).splitlines()
    assert "pub.weighted mAP" in header and "pub.pooled mAP" in header
    assert [line.split()[0] for line in lines[:3]] == ["SEEN", "ZSL", "GZSL"]
    assert f"SEEN: {ref['seen']['num_images']} images, 30 labels, 27 of them annotated" in lines[-1]


def test_openimages_annotated_column_shown_only_where_it_differs():
    scores, labels = _oi_data()
    labels[0, 5] = 1  # now every unseen column has an annotated image
    res = evaluate_openimages(scores, labels, num_seen=3, ks=(1,))
    for task in ("zsl", "gzsl"):
        m = res.metrics[task]
        assert m["num_ap_labels"] == m["num_labels"] and m["mAP"] == pytest.approx(m["mAP_annotated"])
    assert "annot." not in str(res)


def test_openimages_row_filter_changes_ap_as_specified():
    # Row 1 has no +1 at all, so GZSL drops it, and with it the negative scoring 0.9 above the
    # only positive of column 0: AP 1.0 instead of 0.5.
    labels = np.array([[1, -1], [-1, -1], [-1, 1]], dtype=np.int8)
    scores = np.array([[0.5, 0.1], [0.9, 0.2], [0.1, 0.3]], dtype=np.float32)
    res = evaluate_openimages(scores, labels, num_seen=1, ks=(1,))
    assert res.metrics["gzsl"]["num_images"] == 2
    assert res.per_label_ap["gzsl"][0] == pytest.approx(1.0)
    assert average_precision(scores, labels)[0] == pytest.approx(0.5)


def test_protocol_errors():
    scores, labels = _nus_data()
    with pytest.raises(ValueError, match="num_seen=17"):
        evaluate_nus_wide(scores, labels, num_seen=17)
    with pytest.raises(ValueError, match="K=6 is not possible for ZSL: it has 5 labels"):
        evaluate_nus_wide(scores, labels, num_seen=12, ks=(6,))
    with pytest.raises(ValueError, match="dataset"):
        chance_level(labels, get_dataset("coco").protocol)


def test_expected_random_ap_formula_against_simulation():
    rng = np.random.default_rng(0)
    n, p = 12, 3
    labels = np.repeat(np.array([1] * p + [-1] * (n - p))[:, None], 5000, axis=1)
    sims = average_precision(rng.random(labels.shape), labels)  # 5000 random rankings at once
    assert sims.mean() == pytest.approx(expected_random_ap([p], [n])[0], abs=0.015)
    assert expected_random_ap([2], [2])[0] == pytest.approx(1.0)
    assert expected_random_ap([1], [2])[0] == pytest.approx(0.75)
    assert expected_random_ap([0], [5])[0] == 0.0


def test_random_baseline_is_near_chance_and_seeded():
    g = torch.Generator().manual_seed(9)
    labels = torch.where(torch.rand(3000, 20, generator=g) < 0.1, 1, -1).to(torch.int8)
    a = evaluate_random_baseline(labels, get_dataset("nus_wide").protocol, seed=3, num_seen=10)
    b = evaluate_random_baseline(labels, get_dataset("nus_wide").protocol, seed=3, num_seen=10)
    assert a.to_dict() == b.to_dict()
    ch = chance_level(labels, get_dataset("nus_wide").protocol, num_seen=10)
    for task in ("zsl", "gzsl"):
        assert a.metrics[task]["mAP"] == pytest.approx(ch.metrics[task]["mAP"], abs=0.01)
        assert a.metrics[task]["R@5"] == pytest.approx(ch.metrics[task]["R@5"], abs=0.03)
    assert isinstance(a, EvalResult)


def test_openimages_chance_level_averages_columns_like_the_protocol():
    _, labels = _oi_data()
    ch = chance_level(labels, get_dataset("openimages").protocol, num_seen=3, ks=(1,)).metrics["zsl"]
    # Two of the three unseen columns are annotated; the third counts 0 in mAP.
    assert ch["mAP"] == pytest.approx(ch["mAP_annotated"] * 2 / 3)


def test_protocols_come_from_the_dataset_registry():
    from biam.evaluation import Protocol, evaluate

    scores, labels = _nus_data(seed=3)
    nus = get_dataset("nus_wide").protocol
    assert evaluate(scores, labels, nus, num_seen=12).to_dict() == evaluate_nus_wide(scores, labels, num_seen=12).to_dict()
    # "own" is scored as NUS-WIDE, under its own name and with the data's seen count.
    own = evaluate(scores, labels, get_dataset("own").protocol, num_seen=12)
    assert own.dataset == "own" and own.to_dict() == evaluate_nus_wide(scores, labels, num_seen=12).to_dict()
    with pytest.raises(ValueError, match="no fixed seen-label count"):
        chance_level(labels, get_dataset("own").protocol)
    # Every image kept, annotated-column metrics: a column without annotations counts 0.
    y = labels.clone()
    y[:, 13] = 0
    p = Protocol(name="custom", ks=(2,), rows="all", annotated_metrics=True)
    zsl = evaluate(scores, y, p, num_seen=12).metrics["zsl"]
    assert zsl["num_images"] == 400 and zsl["num_ap_labels"] == 4
    assert zsl["mAP"] == pytest.approx(zsl["mAP_annotated"] * 4 / 5)
    with pytest.raises(ValueError, match="rows='some'"):
        Protocol(name="bad", ks=(3,), rows="some")


def test_protocol_tasks_are_checked_and_seen_k_needs_annotated_columns():
    from biam.evaluation import Protocol

    with pytest.raises(ValueError, match="tasks=\\('zsl',\\)"):
        Protocol(name="bad", ks=(3,), tasks=("zsl",))
    with pytest.raises(ValueError, match="f1_annotated needs annotated_metrics=True"):
        Protocol(name="bad", ks=(3,), tasks=("seen", "zsl", "gzsl"), f1_annotated=("seen",))
    with pytest.raises(ValueError, match="pooled_mean_annotated=\\('seen',\\) names a task not in"):
        Protocol(name="bad", ks=(3,), annotated_metrics=True, pooled_mean_annotated=("seen",))
    scores, labels = _oi_published_data(unseen=34)
    # 27 of the 30 seen columns are annotated: SEEN's top 28 cannot be taken among them.
    with pytest.raises(ValueError, match="K=28 is not possible for SEEN: its top K is taken among its 27 annotated"):
        evaluate_openimages(scores, labels, num_seen=30, ks=(28,))
