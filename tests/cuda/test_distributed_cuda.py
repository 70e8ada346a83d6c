"""A one-process NCCL group: our collectives (gather of uneven rows, broadcasts, sums) and a DDP
training step equal to the same step without DDP. The gloo variant runs the same test on the CPU."""

from __future__ import annotations


import pytest
import torch
import torch.distributed as dist
from torch import nn

from biam.config import load_cfg
from biam.data.packed import PackedDataset
from biam.engine.runtime import build_label_space
from biam.modeling import build_model, ranking_loss
from biam.utils import comm

from helpers import TINY_MODEL_OPTS

CUDA_MARKS = (pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"))


@pytest.fixture
def group(request, tmp_path):
    """A world-size-1 process group of the requested backend, destroyed afterwards."""
    backend = request.param
    device = torch.device("cuda", 0) if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1,
                            device_id=device if backend == "nccl" else None)
    try:
        yield device
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("group", [pytest.param("gloo", id="gloo-cpu"),
                                   pytest.param("nccl", marks=CUDA_MARKS, id="nccl-cuda")], indirect=True)
def test_one_process_group_collectives_and_ddp_step(group, tiny_packed):
    device = group
    assert comm.is_dist() and comm.get_world_size() == 1 and comm.is_main_process()
    # Collectives as the trainer and evaluator use them.
    rows = torch.arange(12, dtype=torch.float32, device=device).reshape(4, 3)
    labels = torch.tensor([[1, -1], [0, 1], [-1, -1]], dtype=torch.int8, device=device)
    assert torch.equal(torch.cat(comm.all_gather_rows(rows)), rows)
    assert torch.equal(torch.cat(comm.all_gather_rows(labels)), labels)
    assert torch.equal(torch.cat(comm.all_gather_rows(rows[:0])), rows[:0])
    assert comm.broadcast_object({"path": "x.pth"}) == {"path": "x.pth"}
    assert float(comm.all_reduce_sum(torch.tensor(2.5, device=device))) == 2.5
    comm.barrier()

    # One DDP step equals the same step on the bare model (the world's mean over one rank).
    cfg = load_cfg(None, TINY_MODEL_OPTS + ["DATA.ROOT", str(tiny_packed), "MODEL.ATTN_DROPOUT", "0.0",
                                            "MODEL.SCENE_DROPOUT", "0.0"])
    torch.manual_seed(0)
    bare = build_model(cfg).to(device)
    twin = build_model(cfg).to(device)
    twin.load_state_dict(bare.state_dict())
    comm.broadcast_module_state(twin)
    init = {k: v.clone() for k, v in bare.state_dict().items()}
    ddp = nn.parallel.DistributedDataParallel(twin, device_ids=[device.index] if device.type == "cuda" else None)
    ds = PackedDataset(tiny_packed, "train")
    space = build_label_space(ds, device, cfg.MODEL.EMBED_DIM)
    batch = ds.read_slice(0, 16)
    ds.close()
    regions = torch.as_tensor(batch["regions"]).float().to(device)
    scene = torch.as_tensor(batch["scene"]).float().to(device)
    y = torch.as_tensor(batch["labels"])[:, :space.num_seen].to(device)
    for model in (bare, ddp):
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        loss = ranking_loss(model(regions, space.seen, scene), y)
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
    after_bare, after_ddp = bare.state_dict(), twin.state_dict()
    for k, v in after_bare.items():
        assert torch.allclose(after_ddp[k].float(), v.float(), rtol=1e-5, atol=1e-6), k
    assert any(not torch.equal(v, init[k]) for k, v in after_bare.items())  # the step did move the weights
