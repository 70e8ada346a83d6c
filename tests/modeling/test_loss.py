"""ranking_loss against the direct (B, C, C) pairwise formulation of the original release."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from biam.modeling import ranking_loss


def reference_loss(scores: torch.Tensor, labels: torch.Tensor, positive_only: bool = False) -> torch.Tensor:
    """The original's formulation, (B, C, C): pair[b, p, n] = max(0, 1 + s_n - s_p) for
    labels[b, p] = +1, labels[b, n] = -1; per image sum / (#pairs > 0 + 1e-8); mean over all
    images of the batch (``positive_only``: over the images with a positive, what its training
    loop gets by dropping the others first). Columns that are 0 in the whole batch are dropped
    first, as the original does (they take part in no pair, so this cannot change the value)."""
    used = (labels != 0).any(dim=0)
    s, y = scores[:, used], labels[:, used]
    if positive_only:
        keep = (y > 0).any(dim=1)
        s, y = s[keep], y[keep]
    if s.shape[0] == 0:
        return scores.sum() * 0.0
    diff = 1 + s[:, None, :] - s[:, :, None]  # [b, p, n] = 1 + s_n - s_p
    mask = (y > 0)[:, :, None] & (y < 0)[:, None, :]
    pair = torch.relu(diff) * mask
    per_image = pair.sum(dim=(1, 2)) / ((pair > 0).sum(dim=(1, 2)) + 1e-8)
    return per_image.mean()


def _random_batch(b, c, seed, p_pos=0.1, p_zero=0.3, quantised=False):
    gen = torch.Generator().manual_seed(seed)
    if quantised:
        # Multiples of 0.25: many ties at exactly the margin (s_n = s_p - 1) and equal scores.
        scores = torch.randint(-8, 9, (b, c), generator=gen).double() / 4
    else:
        scores = torch.randn(b, c, generator=gen, dtype=torch.float64) * 1.5
    u = torch.rand(b, c, generator=gen)
    labels = torch.where(u < p_pos, 1, torch.where(u < p_pos + p_zero, 0, -1)).to(torch.int8)
    return scores, labels


def _value_and_grad(fn, scores, labels):
    s = scores.clone().requires_grad_(True)
    loss = fn(s, labels)
    (grad,) = torch.autograd.grad(loss, s)
    return loss.detach(), grad


@pytest.mark.parametrize("quantised", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_value_and_gradient_equal_pairwise_reference(seed, quantised):
    scores, labels = _random_batch(6, 40, seed, quantised=quantised)
    labels[0] = torch.where(labels[0] > 0, torch.zeros_like(labels[0]), labels[0])  # no positive
    labels[1] = torch.where(labels[1] < 0, torch.zeros_like(labels[1]), labels[1])  # no negative
    labels[1, 0] = 1
    labels[2] = 0  # nothing annotated
    labels[:, 5] = 0  # a column unknown everywhere
    ref, ref_grad = _value_and_grad(reference_loss, scores, labels)
    ours, grad = _value_and_grad(ranking_loss, scores.float(), labels)
    assert ours.dtype == torch.float32 and ref > 0.1
    torch.testing.assert_close(ours.double(), ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-7)
    # The other mean, over the images with a positive, against the reference of that mean.
    ref_p, ref_grad_p = _value_and_grad(lambda s, y: reference_loss(s, y, positive_only=True), scores, labels)
    ours_p, grad_p = _value_and_grad(lambda s, y: ranking_loss(s, y, reduction="mean_positive"), scores.float(), labels)
    torch.testing.assert_close(ours_p.double(), ref_p, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad_p.double(), ref_grad_p, rtol=1e-5, atol=1e-7)
    assert ours_p > ours  # two of the six images count 0 in the original's mean
    # Images without a positive take no part: their gradient is exactly 0.
    assert torch.all(grad[0] == 0) and torch.all(grad[2] == 0)
    # An image with positives and no negatives stays in the mean with loss 0 (published: 0/1e-8).
    assert torch.all(grad[1] == 0)


def test_ties_at_the_margin_are_neither_summed_nor_counted():
    # s_n = s_p - 1 exactly: contribution 0, not a "pair with a positive contribution".
    scores = torch.tensor([[2.0, 1.0, 1.5, 0.0]])
    labels = torch.tensor([[1, -1, -1, -1]], dtype=torch.int8)
    # Pairs: (2, 1) -> 0 (tie), (2, 1.5) -> 0.5, (2, 0) -> 0; loss = 0.5 / 1.
    ours, grad = _value_and_grad(ranking_loss, scores, labels)
    assert ours.item() == pytest.approx(0.5, abs=1e-7)
    ref, ref_grad = _value_and_grad(reference_loss, scores, labels)
    assert ref.item() == pytest.approx(0.5, abs=1e-7)
    torch.testing.assert_close(grad, ref_grad)
    torch.testing.assert_close(grad, torch.tensor([[-1.0, 0.0, 1.0, 0.0]]))


def test_no_positive_anywhere_gives_zero_attached_to_graph():
    scores = torch.randn(3, 7, requires_grad=True)
    labels = -torch.ones(3, 7, dtype=torch.int8)
    loss = ranking_loss(scores, labels)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(scores.grad == 0)


def test_default_mean_is_over_all_images_and_the_other_means_have_their_names():
    scores = torch.tensor([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0]])
    labels = torch.tensor([[1, -1], [1, -1], [-1, -1]], dtype=torch.int8)
    # Two images with loss 1 each; the third has no positive and counts 0 in the original's mean.
    assert ranking_loss(scores, labels).item() == pytest.approx(2.0 / 3.0)
    assert reference_loss(scores.double(), labels).item() == pytest.approx(2.0 / 3.0)
    assert ranking_loss(scores, labels, reduction="mean_positive").item() == pytest.approx(1.0)
    assert ranking_loss(scores, labels, reduction="sum").item() == pytest.approx(2.0)
    assert ranking_loss(scores, labels, reduction="none").tolist() == pytest.approx([1.0, 1.0, 0.0])
    # Once the images without a positive are dropped (as the trainer does) the two means agree.
    assert ranking_loss(scores[:2], labels[:2]).item() == ranking_loss(scores[:2], labels[:2], reduction="mean_positive").item()
    with pytest.raises(ValueError, match="reduction"):
        ranking_loss(scores, labels, reduction="average")


def test_shape_errors():
    with pytest.raises(ValueError, match=r"must both be \(B, C\)"):
        ranking_loss(torch.zeros(2, 3), torch.zeros(2, 4, dtype=torch.int8))


def test_large_scores_keep_precision():
    # Large, nearly equal scores: count * (1 - s_p) and the top sums cancel; float64 sums keep it.
    gen = torch.Generator().manual_seed(4)
    scores = 50.0 + torch.randn(2, 3000, generator=gen, dtype=torch.float64)
    labels = torch.where(torch.rand(2, 3000, generator=gen) < 0.02, 1, -1).to(torch.int8)
    ours = ranking_loss(scores.float(), labels).double()
    ref = reference_loss(scores.float().double(), labels)
    # Measured: 5e-8 here; a running sum from the smallest negatives up (total - prefix) is off
    # by 2e-6, which this tolerance rejects.
    torch.testing.assert_close(ours, ref, rtol=0, atol=5e-7)


_MEMORY_PROBE = textwrap.dedent(
    """
    import sys
    import torch
    from biam.modeling import ranking_loss
    torch.set_num_threads(2)

    def rss_kb(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
        raise RuntimeError(field + " not in /proc/self/status")

    def peak_growth_mb(fn):
        before = rss_kb("VmRSS:")
        with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current RSS
            f.write("5")
        fn()
        return (rss_kb("VmHWM:") - before) / 1024

    def batch(b, c):
        gen = torch.Generator().manual_seed(0)
        scores = torch.randn(b, c, generator=gen).requires_grad_(True)
        labels = torch.where(torch.rand(b, c, generator=gen) < 0.01, 1, -1).to(torch.int8)
        return scores, labels

    def ours(b, c):
        scores, labels = batch(b, c)
        ranking_loss(scores, labels).backward()

    def pairwise(b, c):
        s, y = batch(b, c)
        s = s.detach()
        d = torch.relu(1 + s[:, None, :] - s[:, :, None]) * ((y > 0)[:, :, None] & (y < 0)[:, None, :])
        float(d.sum())

    # argv: b c for ours, then b c for the pairwise form; one line of two numbers (MB).
    b1, c1, b2, c2 = map(int, sys.argv[1:5])
    print(peak_growth_mb(lambda: ours(b1, c1)), peak_growth_mb(lambda: pairwise(b2, c2)))
    """
)


def _probe(b: int, c: int, b_pairwise: int, c_pairwise: int) -> tuple:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError as err:
        pytest.skip(f"cannot reset the peak-RSS counter here ({err}); memory not measured")
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(b), str(c), str(b_pairwise), str(c_pairwise)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert out.returncode == 0, out.stderr
    ours, pairwise = map(float, out.stdout.strip().splitlines()[-1].split())
    return ours, pairwise


def test_memory_of_a_full_open_images_batch_is_small():
    """32 images x 7186 labels, forward and backward: (B, C, C) float32 would be 6.6 GB.
    Measured: ~35 MB for ranking_loss; ~400 MB for the pairwise form on 32 x 1000 labels."""
    peak, pairwise = _probe(32, 7186, 32, 1000)
    assert peak < 100, f"ranking_loss grew peak RSS by {peak:.0f} MB"
    # The probe is able to see a (B, C, C) tensor: 32 x 1000 x 1000 is 32 M entries.
    assert pairwise > 150, f"probe failed to see the pairwise tensors ({pairwise:.0f} MB)"


def test_float64_scores_keep_float64_and_lower_precision_is_computed_in_float32():
    """DTYPE float64 runs the loss in float64 (docs/distributed.md); bf16 scores give float32."""
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(4, 9, generator=g, dtype=torch.float64)
    labels = torch.randint(-1, 2, (4, 9), generator=g)
    labels[:, 0] = 1
    exact = ranking_loss(scores, labels)
    assert exact.dtype == torch.float64
    assert ranking_loss(scores.to(torch.bfloat16), labels).dtype == torch.float32
    assert float(ranking_loss(scores.float(), labels)) == pytest.approx(float(exact), rel=1e-6)
