"""The float dtype of a computation: float32 by default, float64 when the weights are float64.

The model, the loss and batch norm compute in float32 even when autocast hands them bfloat16 or
float16 tensors; with the ``DTYPE float64`` config (a numerical check, docs/training.md) they
must stay in float64 throughout, so they widen to the wider of the two instead of casting.
"""

import torch

__all__ = ["at_least_float32", "float32_or_wider"]


def float32_or_wider(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """``t`` as float32, or unchanged if it is float64 already (same shape)."""
    return t.to(float32_or_wider(t.dtype))
