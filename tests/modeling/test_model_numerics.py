"""Parameter names, checkpoint loading, autocast, channels_last, torch.compile and training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from biam.modeling import BiAM, build_model, load_published_state_dict, ranking_loss

# SPEC section 4: keys of the published checkpoints, with the shapes for D_c = 256.
PUBLISHED_SHAPES = {
    "conv_3X3.body.weight": (256, 512, 3, 3),
    "conv_3X3.body.bias": (256,),
    "conv_3X3.bn.weight": (256,),
    "conv_3X3.bn.bias": (256,),
    "conv_3X3.bn.running_mean": (256,),
    "conv_3X3.bn.running_var": (256,),
    "conv_3X3.bn.num_batches_tracked": (),
    **{f"region_context_block.w_{n}.weight": (256, 256, 1, 1) for n in "qkvo"},
    **{f"region_context_block.w_{n}.bias": (256,) for n in "qkvo"},
    "region_context_block.sub_network.conv1.weight": (512, 256, 1, 1),
    "region_context_block.sub_network.conv1.bias": (512,),
    "region_context_block.sub_network.conv2.weight": (256, 512, 1, 1),
    "region_context_block.sub_network.conv2.bias": (256,),
    "scene_context_block.w_g.weight": (256, 4096, 1, 1),
    "scene_context_block.w_g.bias": (256,),
    "scene_context_block.gcff.body.weight": (256, 256, 3, 3),
    "scene_context_block.gcff.body.bias": (256,),
    "scene_context_block.gcff.bn.weight": (256,),
    "scene_context_block.gcff.bn.bias": (256,),
    "scene_context_block.gcff.bn.running_mean": (256,),
    "scene_context_block.gcff.bn.running_var": (256,),
    "scene_context_block.gcff.bn.num_batches_tracked": (),
    "scene_context_block.channel_conv.body.weight": (256, 256, 1, 1),
    "scene_context_block.channel_conv.body.bias": (256,),
    "W.weight": (512, 300),
    "W.bias": (512,),
    "conv_1X1.body.weight": (512, 512, 1, 1),
    "conv_1X1.body.bias": (512,),
}


def _inputs(batch, classes, seed=0, feature_dim=512, scene_dim=4096, embed_dim=300):
    gen = torch.Generator().manual_seed(seed)
    regions = torch.relu(torch.randn(batch, feature_dim, 14, 14, generator=gen) * 2 - 1)
    scene = torch.relu(torch.randn(batch, scene_dim, generator=gen))
    emb = F.normalize(torch.randn(classes, embed_dim, generator=gen), dim=1)
    return regions, emb, scene


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    model = BiAM(**kw)
    # Non-trivial BN statistics, so a loading bug in the buffers shows up in the scores.
    with torch.no_grad():
        for bn in (model.conv_3X3.bn, model.scene_context_block.gcff.bn):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
    return model.eval()


def test_keys_shapes_and_parameter_count():
    model = BiAM()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == PUBLISHED_SHAPES
    assert sum(p.numel() for p in model.parameters()) == 3_828_480
    bn = model.conv_3X3.bn
    assert (bn.eps, bn.momentum, bn.affine) == (1e-3, 0.99, True)


def test_build_model_reads_every_model_key():
    class Node:
        pass

    cfg = Node()
    cfg.MODEL = Node()
    values = dict(NAME="biam", CHANNEL_DIM=32, HEADS=4, TOPK=3, EMBED_DIM=20, FEATURE_DIM=64, JOINT_DIM=48,
                  SCENE_DIM=40, ATTN_DROPOUT=0.0, SCENE_DROPOUT=0.3, ATTENTION="published", BACKBONE="resnet101")
    for k, v in values.items():
        setattr(cfg.MODEL, k, v)
    # The backbone is checked against the data at DATA.ROOT; "" = no data.
    cfg.DATA = Node()
    cfg.DATA.ROOT = ""
    model = build_model(cfg)
    assert model.backbone == "resnet101" and model.hparams()["backbone"] == "resnet101"
    rcb = model.region_context_block
    assert (rcb.heads, rcb.attention, rcb.dropout, model.topk) == (4, "published", 0.0, 3)
    assert model.scene_context_block.scene_dropout.p == 0.3
    assert model.conv_3X3.body.weight.shape == (32, 64, 3, 3)
    assert model.scene_context_block.w_g.weight.shape == (32, 40, 1, 1)
    assert model.W.weight.shape == (48, 20)
    assert model.conv_1X1.body.weight.shape == (48, 64, 1, 1)


def test_state_dict_round_trip_with_weights_only(tmp_path):
    model = _model(seed=1)
    path = tmp_path / "model.pth"
    torch.save(model.state_dict(), path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    fresh = _model(seed=2)
    regions, emb, scene = _inputs(2, 5)
    with torch.no_grad():
        before = fresh(regions, emb, scene)
        assert load_published_state_dict(fresh, state, source=str(path)) is fresh
        after = fresh(regions, emb, scene)
        expected = model(regions, emb, scene)
    assert not torch.allclose(before, expected)
    assert torch.equal(after, expected)
    # A plain strict load_state_dict works too: the names are the published ones.
    fresh.load_state_dict(state, strict=True)


def test_wrong_state_dict_names_keys_and_shapes():
    model = BiAM()
    state = dict(model.state_dict())
    state["region_context_block.w_q.weight"] = torch.zeros(128, 256, 1, 1)
    del state["W.bias"]
    state["W.extra"] = torch.zeros(3)
    with pytest.raises(ValueError) as err:
        load_published_state_dict(model, state, source="ckpt.pth")
    msg = str(err.value)
    assert "ckpt.pth" in msg
    assert "shape mismatch: region_context_block.w_q.weight: file (128, 256, 1, 1), model (256, 256, 1, 1)" in msg
    assert "missing: W.bias (512,)" in msg
    assert "unexpected: W.extra (3,)" in msg
    wrapped = {"module." + k: v for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="DataParallel"):
        load_published_state_dict(model, wrapped)
    with pytest.raises(ValueError, match="expected a state dict"):
        load_published_state_dict(model, [1, 2])


@pytest.mark.parametrize("attention", ["fused", "published"])
def test_autocast_scores_are_finite_and_close(attention):
    """CPU autocast; the same code runs under CUDA autocast (float16 or bfloat16).
    Measured max error / score std (4 images x 50 labels, O(1) random weights): bfloat16
    0.045, float16 0.004. The published kernel must also survive float16 (its -1e9 fill)."""
    model = _model(attention=attention)
    with torch.no_grad():
        # Larger weights than the default init, so scores are O(1) and errors are not hidden.
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(math.sqrt(3))
    regions, emb, scene = _inputs(1, 20, seed=3)
    with torch.no_grad():
        ref = model(regions, emb, scene)
    seen = []
    model.conv_1X1.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    for dtype, tol in ((torch.bfloat16, 0.1), (torch.float16, 0.02)):
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
            low = model(regions, emb, scene)
        assert seen[-1] == dtype, "autocast did not run the model in low precision"
        assert low.dtype == torch.float32, "image scores are averaged in float32"
        assert torch.isfinite(low).all()
        assert (low - ref).abs().max() < tol * ref.std(), dtype


def test_channels_last_model_and_inputs_give_the_same_scores():
    model = _model(seed=4)
    regions, emb, scene = _inputs(2, 7, seed=4)
    with torch.no_grad():
        ref = model(regions, emb, scene)
        model = model.to(memory_format=torch.channels_last)
        assert model.conv_3X3.body.weight.is_contiguous(memory_format=torch.channels_last)
        out = model(regions.contiguous(memory_format=torch.channels_last), emb, scene)
        out_plain_input = model(regions, emb, scene)
    scale = ref.abs().max()
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5 * scale)
    torch.testing.assert_close(out_plain_input, ref, rtol=0, atol=1e-5 * scale)


def test_model_and_loss_trace_without_graph_breaks():
    """fullgraph=True fails on any graph break. A full inductor compile takes ~40 s on 2 CPU
    cores, so the suite traces with the eager backend only (see docs/model.md)."""
    model = BiAM(channel_dim=16, heads=2, scene_dim=32, joint_dim=16, embed_dim=8).eval()
    regions, emb, scene = _inputs(2, 5, scene_dim=32, embed_dim=8)
    labels = torch.tensor([[1, -1, 0, -1, 1], [-1, -1, -1, -1, -1]], dtype=torch.int8)

    def step(regions, emb, scene, labels):
        scores = model(regions, emb, scene)
        return scores, ranking_loss(scores, labels)

    compiled = torch.compile(step, backend="eager", fullgraph=True)
    with torch.no_grad():
        scores, loss = compiled(regions, emb, scene, labels)
        ref_scores, ref_loss = step(regions, emb, scene, labels)
    torch.testing.assert_close(scores, ref_scores)
    torch.testing.assert_close(loss, ref_loss)


def test_a_few_adam_steps_learn_a_planted_signal():
    """5 images, 5 labels; label c's image carries a fixed channel pattern in 10 regions."""
    gen = torch.Generator().manual_seed(0)
    feat, classes, n = 32, 5, 5
    patterns = torch.rand(classes, feat, generator=gen) * 3
    regions = torch.relu(torch.randn(n, feat, 196, generator=gen) - 0.5)
    labels = -torch.ones(n, classes, dtype=torch.int8)
    for i in range(n):
        c = i % classes
        where = torch.randperm(196, generator=gen)[:10]
        regions[i, :, where] += patterns[c][:, None]
        labels[i, c] = 1
    labels[0, 3] = 0  # an unknown entry takes no part
    scene = torch.relu(torch.randn(n, 16, generator=gen))
    emb = F.normalize(torch.randn(classes, 8, generator=gen), dim=1)
    torch.manual_seed(0)
    # No attention dropout: CPU dropout on the (B, heads, 196, 196) weights dominates the step time.
    model = BiAM(channel_dim=16, heads=2, feature_dim=feat, scene_dim=16, joint_dim=16, embed_dim=8,
                 attn_dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def eval_loss():
        model.eval()
        with torch.no_grad():
            return ranking_loss(model(regions, emb, scene), labels).item()

    first = eval_loss()
    model.train()
    for _ in range(8):
        loss = ranking_loss(model(regions, emb, scene), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = eval_loss()
    print(f"loss {first:.3f} -> {last:.3f}")
    assert math.isfinite(last) and last < 0.3 * first, (first, last)
    with torch.no_grad():
        top1 = model(regions, emb, scene).argmax(dim=1)
    assert torch.equal(top1, torch.arange(n) % classes)
