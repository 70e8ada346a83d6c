"""The step guard: bad steps skipped on the device, their verdicts read later in one sync.

A step whose loss is NaN, infinite or above SOLVER.MAX_LOSS has its gradients turned into NaN
(:func:`poison_bad_loss`); ``torch.amp.GradScaler`` then skips it on the device, so no step waits
for the host. :class:`StepGuard` keeps each step's verdict tensors (:meth:`StepGuard.add`) and
reads them every ``CHECK_EVERY`` steps (:meth:`StepGuard.read`: one device sync, and under DDP
one all-reduce); the trainer then counts the skipped steps and reports the bad batches
(:func:`bad_batch_message`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..utils import comm

__all__ = ["TrainingDiverged", "StepGuard", "BadStep", "poison_bad_loss", "bad_batch_message"]


class TrainingDiverged(RuntimeError):
    """A batch's loss was NaN, infinite or above SOLVER.MAX_LOSS and SOLVER.BAD_LOSS is 'stop'."""


def poison_bad_loss(loss: torch.Tensor, max_loss: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(bad, factor)``: whether ``loss`` is bad (NaN, inf or above ``max_loss``), and 1, or NaN
    when it is, to multiply the objective by. A NaN factor makes every gradient NaN, and DDP's
    all-reduce carries it to every rank, so every rank's scaler skips the same step."""
    bad = (~torch.isfinite(loss)) | (loss > max_loss)
    factor = torch.where(bad, torch.full_like(loss, float("nan")), torch.ones_like(loss))
    return bad, factor


@dataclass
class BadStep:
    """A skipped step to report: its loss, the batch's global image indices, where it was bad.

    ``here``: this rank's loss was bad; ``elsewhere``: another rank's was; neither: the loss was
    fine but the gradients were not finite."""

    loss: torch.Tensor
    index: torch.Tensor
    epoch: int
    step: int
    here: bool
    elsewhere: bool


class StepGuard:
    """The queue of steps whose skip verdict is still on the device.

    ``world``: the number of ranks (every rank adds and reads at the same steps);
    ``dynamic_scale``: float16 loss scaling, whose ordinary overflows are skipped silently.
    """

    # Steps between reads of the verdicts (one device sync, and under DDP one all-reduce, each).
    CHECK_EVERY = 20

    def __init__(self, world: int, dynamic_scale: bool):
        self.world = world
        self.dynamic_scale = dynamic_scale
        self.pending: List[Dict[str, Any]] = []

    def add(self, *, found_inf: torch.Tensor, bad: torch.Tensor, empty: Optional[torch.Tensor], loss: torch.Tensor,
            index: torch.Tensor, epoch: int, step: int) -> None:
        """Keep one step's verdict tensors: gradients not finite, loss bad, no image on any rank."""
        self.pending.append({"found_inf": found_inf, "bad": bad,
                             "empty": empty if empty is not None else torch.zeros_like(bad),
                             "loss": loss.detach(), "index": index, "epoch": epoch, "step": step})

    @property
    def overdue(self) -> bool:
        """Past the bound of pending verdicts (for callers that drive steps themselves)."""
        return len(self.pending) >= 4 * self.CHECK_EVERY

    def read(self) -> Tuple[int, List[BadStep]]:
        """Read the pending verdicts (one sync): ``(skipped steps, the bad steps to report)``."""
        if not self.pending:
            return 0, []
        pending, self.pending = self.pending, []
        flags = torch.stack([torch.stack([p["found_inf"], p["bad"], p["empty"]]) for p in pending]).float()
        if self.world > 1:
            # Which steps were bad on some rank: every rank then names the same steps, and under
            # float16 tells another rank's bad batch from an ordinary overflow.
            anywhere = comm.all_reduce_sum(flags[:, 1].clone()) > 0
        else:
            anywhere = flags[:, 1] > 0
        rows = torch.cat([flags > 0, anywhere[:, None]], dim=1).cpu().tolist()
        skipped, report = 0, []
        for p, (found_inf, here, empty, bad_somewhere) in zip(pending, rows):
            if not found_inf:
                continue
            skipped += 1
            if empty:  # no image on any rank: skipped as one process skips it, not a bad batch
                continue
            if self.dynamic_scale and not bad_somewhere:
                continue  # float16 overflow: the scaler skipped the step and lowered its scale
            report.append(BadStep(p["loss"], p["index"], p["epoch"], p["step"], here=bool(here),
                                  elsewhere=bool(bad_somewhere and not here)))
        return skipped, report


def bad_batch_message(bad: BadStep, names: Sequence[str], max_loss: float) -> str:
    """What went wrong in one bad step, naming the batch's images (``names``, unused when the
    bad loss was another rank's)."""
    if bad.elsewhere:
        return (f"epoch {bad.epoch} step {bad.step}: the loss of another rank's batch is NaN, infinite or above "
                "SOLVER.MAX_LOSS")
    problem = (f"is NaN, infinite or above SOLVER.MAX_LOSS {max_loss}" if bad.here
               else "is finite but the gradients are not")
    return f"epoch {bad.epoch} step {bad.step}: loss {bad.loss.item()} {problem}; batch images: {', '.join(names)}"
