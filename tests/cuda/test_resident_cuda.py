"""The training split held on the device (``DATA.IN_MEMORY device``): the batches are the
streamed ones, gathered on the GPU, and an epoch copies nothing from the host but its row
numbers. The CPU variant (the split as tensors in RAM) runs the same comparison without a GPU."""

from __future__ import annotations

import pytest
import torch

from biam.data.loader import build_loader
from biam.data.packed import PackedDataset

CUDA_MARKS = (pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"))


@pytest.mark.parametrize("device", [pytest.param("cpu", id="cpu"), pytest.param("cuda", marks=CUDA_MARKS, id="cuda")])
def test_resident_batches_are_the_streamed_ones_with_one_host_copy_per_epoch(tiny_packed, device):
    ds = PackedDataset(tiny_packed, "train")
    kw = dict(batch_size=16, shuffle=True, seed=1, epoch=3, require_positive=ds.num_seen, float32=False)
    streamed = list(build_loader(ds, **kw))
    loader = build_loader(ds, in_memory="device", device=device, **kw)
    assert loader.where == "device" and loader.resident.regions.device.type == device
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
        torch.cuda.synchronize()
    with torch.profiler.profile(activities=activities) as prof:
        got = list(loader)
        if device == "cuda":
            torch.cuda.synchronize()
    assert len(got) == len(streamed) == len(loader)
    for a, b in zip(streamed, got):
        assert b["regions"].device.type == b["labels"].device.type == device and b["index"].device.type == "cpu"
        assert b["keep"].device.type == "cpu"
        for k in a:
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k].cpu()), k
    if device == "cuda":
        # One host-to-device copy for the whole epoch: its row numbers.
        copies = [e.name for e in prof.events() if "HtoD" in e.name]
        assert len(copies) == 1, copies
