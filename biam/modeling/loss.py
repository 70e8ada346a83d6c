"""The pairwise ranking loss of the paper, in O(B x C) memory.

The original's function: for each image, every (positive p, negative n) pair contributes
max(0, 1 + s_n - s_p); the image loss is that sum over the number of pairs that contribute
(+1e-8); the batch loss is the mean over all B images of the batch, so an image without a
positive label counts 0 in it. (Its training loop drops such images from the batch before the
forward, so the loss it trains with is the mean over the images that have a positive;
``biam-train`` drops them the same way.) The original materialises (B, C, C) tensors: 1.65e9
entries (6.6 GB in float32) for 32 images x 7186 labels.
Here each positive's sum over negatives is read off the negative scores sorted in descending
order with a running sum:

    sum_{n: s_n > s_p - 1} (1 + s_n - s_p) = cnt_p * (1 - s_p) + (sum of the cnt_p largest s_n)

which has the same value and, through autograd of sort/cumsum/gather, the same gradient
(d/ds_p = -cnt_p, d/ds_n = number of positives whose margin n violates). Every tensor is
(B, C) or smaller.
"""

from __future__ import annotations

import torch

from ..utils.precision import at_least_float32

__all__ = ["ranking_loss", "REDUCTIONS"]


REDUCTIONS = ("mean", "mean_positive", "sum", "none")


def ranking_loss(scores: torch.Tensor, labels: torch.Tensor, margin: float = 1.0,
                 reduction: str = "mean") -> torch.Tensor:
    """Pairwise ranking loss.

    Args:
        scores: (B, C) float scores (any float dtype; computed in float32/float64).
        labels: (B, C) integer labels in {-1, 0, +1}; 0 entries take part in no pair.
        margin: the 1 of max(0, 1 + s_n - s_p).
        reduction: how the B per-image losses become the result:
            "mean": the original function's mean over all B images (an image without a +1
                label, or with no -1 label, counts 0);
            "mean_positive": the mean over the images with a +1 label (0 if there is none);
                equal to "mean" on a batch whose images all have one, as in training;
            "sum": their sum (for a caller that divides by a count of its own, e.g. across ranks);
            "none": the (B,) per-image losses.
    Returns:
        A float32 tensor (float64 for float64 scores): a scalar, or (B,) for "none"; attached to
        the graph even when it is 0.
    """
    if scores.shape != labels.shape or scores.dim() != 2:
        raise ValueError(f"scores {tuple(scores.shape)} and labels {tuple(labels.shape)} must both be (B, C)")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(map(repr, REDUCTIONS))}, got {reduction!r}")
    s = at_least_float32(scores)
    pos = labels > 0
    neg = labels < 0
    # Masks instead of boolean indexing: no data-dependent shapes or host syncs, so the loss
    # compiles into one graph and never waits on the GPU.
    keep = pos.any(dim=1)

    # Negative scores, largest first; non-negatives become -inf and so sit last and never count.
    neg_desc = torch.where(neg, s, torch.full_like(s, float("-inf"))).sort(dim=1, descending=True).values
    # cnt_p = #{n : s_n > s_p - margin} = #{n : -s_n < margin - s_p}; searchsorted needs an
    # ascending sequence, and -neg_desc is one. Ties exactly at the margin contribute 0 and are
    # not counted, as in the published "pairs with a positive contribution".
    count = torch.searchsorted((-neg_desc).detach().contiguous(), (margin - s).detach().contiguous(), right=False)
    # Running sums in float64: count * (1 - s_p) and the sum of the top negatives can be large
    # and cancel (7186 labels), so float32 would lose digits the (B, C, C) sum keeps.
    finite = torch.where(torch.isfinite(neg_desc), neg_desc, torch.zeros_like(neg_desc)).double()
    top_sums = torch.cat([torch.zeros_like(finite[:, :1]), finite.cumsum(dim=1)], dim=1)
    active_sum = top_sums.gather(1, count)
    count_f = count.to(torch.float64)
    per_pos = count_f * (margin - s.double()) + active_sum
    per_pos = torch.where(pos, per_pos, torch.zeros_like(per_pos))
    pairs = torch.where(pos, count_f, torch.zeros_like(count_f)).sum(dim=1)
    per_image = per_pos.sum(dim=1) / (pairs + 1e-8)
    if reduction == "none":
        return per_image.to(s.dtype)
    if reduction == "sum":
        return per_image.sum().to(s.dtype)
    if reduction == "mean_positive":
        return (per_image.sum() / keep.sum().clamp(min=1)).to(s.dtype)
    return (per_image.sum() / max(per_image.shape[0], 1)).to(s.dtype)
