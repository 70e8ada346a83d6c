"""Batch norm with statistics over all processes, on any device.

``nn.SyncBatchNorm`` only runs on CUDA. ``GlobalBatchNorm2d`` computes the same statistics on
the CPU (gloo) too: per-channel sums, sums of squares and counts are summed over ranks with the
autograd-aware ``torch.distributed.nn.functional.all_reduce``, so the backward pass is exact.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from .precision import float32_or_wider

__all__ = ["GlobalBatchNorm2d", "convert_to_global_bn"]


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the batches of every rank.

    Input/output: (B, C, H, W), B may be 0 on some ranks. Eval mode and single-process runs
    behave as BatchNorm2d; with several ranks the statistics are those of the ranks' batches
    put together, as one process with the whole global batch computes them (up to float
    summation order: sums and sums of squares in float32).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        # Sums in float64: the variance as E[x^2] - mean^2 loses digits to cancellation in
        # float32, while one process's BatchNorm accumulates in double on the CPU.
        xf = x.double()
        count = torch.tensor([xf.numel() / xf.shape[1]], dtype=torch.float64, device=x.device)
        stats = torch.cat([xf.sum(dim=(0, 2, 3)), (xf * xf).sum(dim=(0, 2, 3)), count])
        stats = all_reduce(stats)  # sum over ranks, gradients flow back to every rank
        c = x.shape[1]
        n = stats[-1]
        # A rank may hold no image (its share of the global batch is empty or all dropped): it
        # still joins the all-reduce, adding zeros. Only when no rank holds one (count 0) are
        # the statistics undefined; then the running statistics stay as they are, as in one
        # process, which skips such a step. No host sync: everything stays on the device.
        has = n > 0
        denom = n.clamp(min=1.0)
        mean = stats[:c] / denom
        var = stats[c:2 * c] / denom - mean * mean  # biased, as BatchNorm normalises with
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                unbiased = var.detach() * n / (n - 1).clamp(min=1.0)
                mean_f, unbiased_f = mean.detach().to(self.running_mean.dtype), unbiased.to(self.running_var.dtype)
                self.running_mean.copy_(torch.where(has, self.running_mean * (1 - m) + mean_f * m, self.running_mean))
                self.running_var.copy_(torch.where(has, self.running_var * (1 - m) + unbiased_f * m, self.running_var))
                self.num_batches_tracked.add_(has.long())
        scale = torch.rsqrt(var + self.eps)
        wide = float32_or_wider(x.dtype)  # float64 under DTYPE float64
        y = (x.to(wide) - mean.to(wide)[None, :, None, None]) * scale.to(wide)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def convert_to_global_bn(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d in ``module`` by a GlobalBatchNorm2d with the same state."""
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, GlobalBatchNorm2d):
        first = next(iter(module.state_dict().values()))
        new = GlobalBatchNorm2d(module.num_features, eps=module.eps, momentum=module.momentum,
                                affine=module.affine, track_running_stats=module.track_running_stats,
                                device=first.device, dtype=first.dtype)  # float64 stays float64
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, convert_to_global_bn(child))
    return module
