"""AP, F1@K, weighted mAP and the published pooled AP against hand-worked and direct values."""

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from biam.evaluation import average_precision, f1_at_k, f1_at_ks, openimages_published_ap, weighted_map
from biam.evaluation import metrics as metrics_module
from biam.evaluation.reference import (
    published_loop_average_precision,
    published_loop_f1_at_k,
    published_loop_pooled_openimages_ap,
)


def direct_ap(scores, labels):
    """The definition with the tie rule spelled out: for each positive p, precision over the
    counted entries scoring >= p."""
    s, y = np.asarray(scores, np.float64), np.asarray(labels)
    out = []
    for c in range(s.shape[1]):
        keep = y[:, c] != 0
        sc, yc = s[keep, c], y[keep, c]
        pos = np.flatnonzero(yc == 1)
        if pos.size == 0:
            out.append(0.0)
            continue
        out.append(np.mean([(yc[sc >= sc[i]] == 1).sum() / (sc >= sc[i]).sum() for i in pos]))
    return np.array(out)


# ----------------------------------------------------------------------------- hand-worked
def test_ap_hand_worked_example():
    # Ranking +, -, +, -, + : precisions 1/1, 2/3, 3/5 -> AP = (1 + 2/3 + 3/5) / 3.
    scores = np.array([[0.9], [0.8], [0.7], [0.6], [0.5]], dtype=np.float32)
    labels = np.array([[1], [-1], [1], [-1], [1]], dtype=np.int8)
    ap = average_precision(scores, labels)
    assert isinstance(ap, np.ndarray) and ap.dtype == np.float64
    assert ap[0] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)


def test_zero_labels_are_ignored():
    scores = np.array([[0.9], [0.8], [0.7], [0.6]], dtype=np.float32)
    # The 0 entry ranks first; counting it as a negative would give 0.5 + ...; it must vanish.
    labels = np.array([[0], [1], [-1], [1]], dtype=np.int8)
    assert average_precision(scores, labels)[0] == pytest.approx((1 + 2 / 3) / 2)


def test_label_without_positive_gets_zero():
    scores = torch.rand(20, 3)
    labels = torch.tensor([[1, -1, 0]] * 20, dtype=torch.int8)
    labels[0, 1] = 0
    ap = average_precision(scores, labels)
    assert ap.dtype == torch.float64
    assert ap[0].item() == 1.0 and ap[1].item() == 0.0 and ap[2].item() == 0.0


def test_ties_follow_the_documented_rule():
    # Negative tied with the first positive ranks above it: precisions 1/2, 2/3 -> 7/12.
    scores = np.array([[0.5], [0.5], [0.2], [0.1]], dtype=np.float32)
    labels = np.array([[1], [-1], [1], [-1]])
    assert average_precision(scores, labels)[0] == pytest.approx((1 / 2 + 2 / 3) / 2)
    # Two tied positives both get the precision at the end of their block (2/3 each).
    scores = np.array([[0.5], [0.5], [0.5], [0.1]], dtype=np.float32)
    labels = np.array([[1], [1], [-1], [-1]])
    assert average_precision(scores, labels)[0] == pytest.approx(2 / 3)


def test_ap_with_many_ties_matches_direct_and_sklearn():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 6, size=(300, 7)).astype(np.float32)
    labels = rng.choice([-1, 0, 1], size=(300, 7), p=[0.5, 0.2, 0.3])
    ours = average_precision(scores, labels)
    np.testing.assert_allclose(ours, direct_ap(scores, labels), rtol=1e-12)
    for c in range(7):
        keep = labels[:, c] != 0
        ref = average_precision_score(labels[keep, c] == 1, scores[keep, c])
        assert ours[c] == pytest.approx(ref, rel=1e-9)


def test_ap_matches_sklearn_random_without_ties():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((2000, 12)).astype(np.float64)
    labels = np.where(rng.random((2000, 12)) < 0.1, 1, -1)
    ours = average_precision(scores, labels)
    ref = [average_precision_score(labels[:, c] == 1, scores[:, c]) for c in range(12)]
    np.testing.assert_allclose(ours, ref, rtol=1e-10)


@pytest.mark.parametrize("zero_fraction", [0.0, 0.3, 0.95])  # dense path, dense with zeros, sparse path
def test_fast_ap_equals_reference_loop(zero_fraction):
    g = torch.Generator().manual_seed(2)
    n, c = 3000, 40
    scores = torch.randn(n, c, generator=g)
    r = torch.rand(n, c, generator=g)
    labels = torch.where(r < 0.05, 1, -1)
    labels[torch.rand(n, c, generator=g) < zero_fraction] = 0
    ours = average_precision(scores, labels.to(torch.int8)).numpy()
    np.testing.assert_allclose(ours, published_loop_average_precision(scores, labels), rtol=1e-10)


def test_clustered_positives_exercise_the_exact_search():
    # Most positives crowd one grid cell (one far outlier stretches the range); negatives lie
    # between them, so the bisection inside a cell decides the counts.
    rng = np.random.default_rng(3)
    pos = np.concatenate([rng.random(200) * 1e-3, [1000.0]])
    neg = rng.random(500) * 1.2e-3
    scores = np.concatenate([pos, neg])[:, None].astype(np.float64)
    labels = np.concatenate([np.ones(201), -np.ones(500)])[:, None]
    np.testing.assert_allclose(average_precision(scores, labels), direct_ap(scores, labels), rtol=1e-12)


def test_extreme_and_negative_scores():
    scores = np.array([[-3e38], [3e38], [0.0], [-0.0], [1e-45], [-1e-45]], dtype=np.float32)
    labels = np.array([[1], [-1], [1], [-1], [-1], [1]])
    np.testing.assert_allclose(average_precision(scores, labels), direct_ap(scores, labels))


def test_chunking_gives_the_same_result():
    g = torch.Generator().manual_seed(4)
    scores = torch.rand(500, 37, generator=g)
    labels = torch.where(torch.rand(500, 37, generator=g) < 0.1, 1, -1).to(torch.int8)
    one = average_precision(scores, labels, chunk_size=37)
    for size in (1, 5, 16):
        assert torch.equal(average_precision(scores, labels, chunk_size=size), one)
    f_one = f1_at_ks(scores, labels, (1, 3), chunk_size=500)
    assert f1_at_ks(scores, labels, (1, 3), chunk_size=7) == f_one


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64, torch.int32])
def test_low_precision_and_integer_scores(dtype):
    g = torch.Generator().manual_seed(5)
    scores32 = (torch.rand(400, 6, generator=g) * 50).round()  # exactly representable in all dtypes
    labels = torch.where(torch.rand(400, 6, generator=g) < 0.2, 1, -1)
    expected = direct_ap(scores32.numpy(), labels.numpy())
    got = average_precision(scores32.to(dtype), labels)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    assert f1_at_k(scores32.to(dtype), labels, 2)[1] == pytest.approx(f1_at_k(scores32, labels, 2)[1])


def test_float64_keeps_differences_float32_would_lose():
    scores = np.array([[1.0 + 1e-12], [1.0], [0.5]], dtype=np.float64)
    labels = np.array([[-1], [1], [-1]])
    assert average_precision(scores, labels)[0] == pytest.approx(0.5)


def test_ap_bad_input_errors():
    with pytest.raises(ValueError, match="differ in shape"):
        average_precision(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="-1, 0 or \\+1"):
        average_precision(np.zeros((3, 2)), np.full((3, 2), 2))
    with pytest.raises(ValueError, match="NaN or infinite"):
        average_precision(np.array([[np.nan], [1.0]]), np.array([[1], [-1]]))
    with pytest.raises(ValueError, match="chunk_size"):
        average_precision(np.zeros((3, 2)), np.ones((3, 2)), chunk_size=0)
    with pytest.raises(TypeError, match="numpy"):
        average_precision([[0.1]], [[1]])


# ------------------------------------------------------------------------------------ F1@K
def test_f1_hand_worked_example():
    scores = np.array([[0.9, 0.8, 0.1, 0.0], [0.1, 0.2, 0.3, 0.9]], dtype=np.float32)
    labels = np.array([[1, -1, 1, -1], [1, 0, -1, 1]])
    # top-2: image 0 -> cols 0 (+), 1 (-); image 1 -> cols 3 (+), 2 (-). TP = 2.
    f1, p, r = f1_at_k(scores, labels, 2)
    assert p == pytest.approx(2 / 4) and r == pytest.approx(2 / 4) and f1 == pytest.approx(0.5)
    f1, p, r = f1_at_k(scores, labels, 1)
    assert (p, r) == (pytest.approx(1.0), pytest.approx(0.5))
    assert f1 == pytest.approx(2 * 1.0 * 0.5 / 1.5)


def test_f1_no_hits_is_zero_and_k_too_large_raises():
    scores = np.array([[0.9, 0.1]])
    assert f1_at_k(scores, np.array([[-1, 1]]), 1) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="K=3 is larger than the 2 labels"):
        f1_at_k(scores, np.array([[-1, 1]]), 3)


def test_f1_equals_reference_loop():
    g = torch.Generator().manual_seed(6)
    scores = torch.rand(700, 25, generator=g)
    labels = torch.where(torch.rand(700, 25, generator=g) < 0.1, 1, -1)
    labels[torch.rand(700, 25, generator=g) < 0.2] = 0
    for k in (1, 3, 5):
        assert f1_at_k(scores, labels, k) == pytest.approx(published_loop_f1_at_k(scores, labels, k))


def test_f1_column_mask_takes_the_top_k_among_the_kept_columns():
    g = torch.Generator().manual_seed(7)
    scores = torch.rand(300, 20, generator=g)
    labels = torch.where(torch.rand(300, 20, generator=g) < 0.2, 1, -1)
    cols = torch.rand(20, generator=g) < 0.6
    rows = torch.rand(300, generator=g) < 0.7
    got = f1_at_ks(scores, labels, (1, 4), row_mask=rows, col_mask=cols, chunk_size=64)
    want = f1_at_ks(scores[rows][:, cols], labels[rows][:, cols], (1, 4))
    every_column = f1_at_ks(scores, labels, (1, 4), row_mask=rows)
    for k in (1, 4):
        assert got[k] == pytest.approx(want[k]) and got[k] != pytest.approx(every_column[k])
    with pytest.raises(ValueError, match=f"K=20 is larger than the {int(cols.sum())} labels kept by col_mask"):
        f1_at_ks(scores, labels, (20,), col_mask=cols)
    with pytest.raises(ValueError, match="col_mask must be a bool vector of the 20 columns"):
        f1_at_ks(scores, labels, (1,), col_mask=cols[:5])


# ----------------------------------------------------------------------- weighted / pooled
def test_weighted_map():
    labels = np.array([[1, 1], [1, -1], [1, -1]])
    assert weighted_map(np.array([0.5, 1.0]), labels) == pytest.approx((3 * 0.5 + 1 * 1.0) / 4)
    assert weighted_map(np.array([0.5]), np.array([[-1]])) == 0.0


def test_published_pooled_ap_spec_example():
    labels = np.array([[1, -1], [1, -1], [-1, 1]])
    scores = np.array([[0.9, 0.5], [0.8, 0.4], [0.1, 0.3]], dtype=np.float32)
    np.testing.assert_allclose(average_precision(scores, labels), [1.0, 1 / 3])
    # Pooled ranking of all 6 entries: + + - - + -  ->  (1 + 1 + 3/5) / 3 = 0.8667 for both.
    np.testing.assert_allclose(openimages_published_ap(scores, labels), [2.6 / 3, 2.6 / 3])
    np.testing.assert_allclose(published_loop_pooled_openimages_ap(scores, labels), [2.6 / 3, 2.6 / 3])


def test_published_pooled_ap_equals_loop_and_chunking():
    g = torch.Generator().manual_seed(7)
    scores = torch.rand(200, 15, generator=g)
    labels = torch.where(torch.rand(200, 15, generator=g) < 0.3, 1, -1)
    labels[torch.rand(200, 15, generator=g) < 0.8] = 0
    ref = published_loop_pooled_openimages_ap(scores, labels)
    np.testing.assert_allclose(openimages_published_ap(scores, labels).numpy(), ref, rtol=1e-12)
    np.testing.assert_allclose(openimages_published_ap(scores, labels, max_pooled_entries=10).numpy(), ref,
                               rtol=1e-12)


def test_grid_constant_does_not_change_results(monkeypatch):
    g = torch.Generator().manual_seed(8)
    scores = torch.rand(800, 9, generator=g)
    labels = torch.where(torch.rand(800, 9, generator=g) < 0.1, 1, -1)
    base = average_precision(scores, labels)
    for cells in (1, 64):
        monkeypatch.setattr(metrics_module, "_CELLS_PER_POSITIVE", cells)
        assert torch.allclose(average_precision(scores, labels), base, rtol=1e-12, atol=0)


def test_parallel_chunks_restore_threads_and_raise_worker_errors():
    torch.set_num_threads(2)
    scores = torch.rand(50, 8)
    scores[3, 6] = float("nan")
    labels = torch.where(torch.rand(50, 8) < 0.3, 1, -1)
    with pytest.raises(ValueError, match="label columns 6..6"):
        average_precision(scores, labels, chunk_size=1)
    assert torch.get_num_threads() == 2
    with pytest.raises(ValueError, match="NaN or infinite"):
        f1_at_k(scores, labels, 2, chunk_size=2)
    assert torch.get_num_threads() == 2
