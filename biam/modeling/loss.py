"""The pairwise ranking loss of SPEC section 5, in O(B x C) memory.

Published: for each image, every (positive p, negative n) pair contributes
max(0, 1 + s_n - s_p); the image loss is that sum over the number of pairs that contribute
(+1e-8); the batch loss is the mean over images that have a positive label. The published code
materialises a (B, C, C) tensor, 1.6 GB of float32 for 32 images x 7186 labels. Here each
positive's sum over negatives is read off sorted negative scores with prefix sums:

    sum_{n: s_n > s_p - 1} (1 + s_n - s_p) = cnt_p * (1 - s_p) + sum_{n: s_n > s_p - 1} s_n

which has the same value and, through autograd of sort/cumsum/gather, the same gradient.
"""

from __future__ import annotations

import torch

__all__ = ["ranking_loss"]


def ranking_loss(scores: torch.Tensor, labels: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Pairwise ranking loss.

    Args:
        scores: (B, C) float scores.
        labels: (B, C) integer labels in {-1, 0, +1}; 0 entries take part in no pair.
    Returns:
        A scalar float32 tensor. Images without any +1 label are left out of the mean; if no
        image has one, the loss is 0 (still attached to the graph).
    """
    if scores.shape != labels.shape or scores.dim() != 2:
        raise ValueError(f"scores {tuple(scores.shape)} and labels {tuple(labels.shape)} must both be (B, C)")
    s = scores.float()
    pos = labels > 0
    neg = labels < 0
    keep = pos.any(dim=1)
    if not bool(keep.any()):
        return s.sum() * 0.0
    s, pos, neg = s[keep], pos[keep], neg[keep]

    # Negatives sorted ascending; non-negatives become -inf and so sit first and never count.
    neg_sorted, _ = torch.where(neg, s, torch.full_like(s, float("-inf"))).sort(dim=1)
    finite = torch.where(torch.isfinite(neg_sorted), neg_sorted, torch.zeros_like(neg_sorted))
    # prefix[:, j] = sum of the j smallest entries; suffix from j = total - prefix[:, j].
    prefix = torch.cat([torch.zeros_like(finite[:, :1]), finite.cumsum(dim=1)], dim=1)
    num_cols = s.shape[1]

    threshold = (s - margin).contiguous()
    # Entries <= s_p - margin contribute nothing (max(0, .) is 0 there, with zero gradient).
    first_active = torch.searchsorted(neg_sorted.detach().contiguous(), threshold.detach(), right=True)
    count = (num_cols - first_active).to(s.dtype)
    active_sum = prefix[:, -1:] - prefix.gather(1, first_active)
    per_pos = count * (margin - s) + active_sum
    per_pos = torch.where(pos, per_pos, torch.zeros_like(per_pos))
    pairs = torch.where(pos, count, torch.zeros_like(count)).sum(dim=1)
    per_image = per_pos.sum(dim=1) / (pairs + 1e-8)
    return per_image.mean()
