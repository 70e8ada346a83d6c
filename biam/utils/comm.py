"""torch.distributed helpers that fall back to a single process.

Launch with ``torchrun``: it sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT.
Without those variables everything here behaves as world size 1, so the same code runs with
one process or many.
"""

from __future__ import annotations

import datetime
import os
from typing import List

import torch
import torch.distributed as dist

__all__ = [
    "init_distributed", "destroy", "is_dist", "get_rank", "get_world_size",
    "is_main_process", "barrier", "all_gather_rows", "all_reduce_sum", "broadcast_object",
    "broadcast_module_state",
]


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def init_distributed(device_kind: str = "auto", timeout_minutes: int = 30) -> torch.device:
    """Join the process group that ``torchrun`` describes, if any, and pick this rank's device.

    Args:
        device_kind: "auto" (CUDA when present), "cuda" or "cpu".
    Returns:
        The device this process computes on. NCCL is used with CUDA, gloo on the CPU.
    """
    use_cuda = torch.cuda.is_available() if device_kind == "auto" else device_kind == "cuda"
    if device_kind == "cuda" and not torch.cuda.is_available():
        # A ValueError: the config asks for what this machine lacks (entry points print it plainly).
        raise ValueError("DEVICE is 'cuda' but no CUDA device is available (use DEVICE cpu or auto)")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not is_dist():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=datetime.timedelta(minutes=timeout_minutes),
            device_id=device if use_cuda else None,
        )
    return device


def destroy() -> None:
    if is_dist():
        dist.destroy_process_group()


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (returns a new tensor; identity for one process)."""
    if not is_dist():
        return value.clone()
    out = value.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_gather_rows(rows: torch.Tensor) -> List[torch.Tensor]:
    """Gather a (n_r, ...) tensor whose row count differs per rank; returns every rank's rows.

    Rows are padded to the largest count for the collective and trimmed afterwards.
    """
    if not is_dist():
        return [rows]
    world = get_world_size()
    count = torch.tensor([rows.shape[0]], device=rows.device, dtype=torch.long)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    counts = [int(c.item()) for c in counts]
    longest = max(counts)
    padded = rows.new_zeros((longest,) + tuple(rows.shape[1:]))
    padded[: rows.shape[0]] = rows
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return [p[:n] for p, n in zip(parts, counts)]


def broadcast_module_state(module: torch.nn.Module, src: int = 0) -> None:
    """Copy every parameter and buffer of ``module`` from rank ``src`` to all ranks (in place)."""
    if not is_dist():
        return
    with torch.no_grad():
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=src)


def broadcast_object(obj, src: int = 0):
    """Send a picklable object from ``src`` to every rank (our own objects only, never files)."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
