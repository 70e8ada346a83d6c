"""BiAM against an independent, straightforward reading of SPEC section 4.

The reference below is written from the SPEC text alone, with explicit per-head loops, einsums,
an explicit BatchNorm formula, an explicit softmax and the published exact-zero -> -1e9 quirk.
It runs in float64 on the model's own (randomised) weights, so "equal to float32 rounding"
means the float32 model is within a few float32 ulps-of-the-scale of a float64 truth.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from biam.modeling import BiAM
from biam.modeling.biam import RegionContextBlock


def _bn(x, sd, prefix, eps=1e-3):
    # Eval-mode BatchNorm written out: (x - mean) / sqrt(var + eps) * gamma + beta.
    shape = (1, -1, 1, 1)
    mean = sd[prefix + ".running_mean"].view(shape)
    var = sd[prefix + ".running_var"].view(shape)
    return (x - mean) / torch.sqrt(var + eps) * sd[prefix + ".weight"].view(shape) + sd[prefix + ".bias"].view(shape)


def _conv1x1(x, sd, prefix):
    w = sd[prefix + ".weight"][:, :, 0, 0]
    return torch.einsum("oc,bchw->bohw", w, x) + sd[prefix + ".bias"].view(1, -1, 1, 1)


def _lrelu(x):
    return torch.where(x > 0, x, 0.2 * x)


def reference_attention(q, k, v, heads, quirk=True):
    """q, k, v (B, D, N) -> (B, D, N): per-head softmax(QK^T/sqrt(d)) V with the zero quirk."""
    b, d, n = q.shape
    dh = d // heads
    out = []
    for i in range(heads):
        # Channel c belongs to head c // dh.
        qh, kh, vh = (t[:, i * dh:(i + 1) * dh] for t in (q, k, v))
        scores = torch.einsum("bdn,bdm->bnm", qh, kh) / math.sqrt(dh)
        if quirk:
            scores = torch.where(scores == 0, torch.full_like(scores, -1e9), scores)
        e = torch.exp(scores - scores.max(dim=-1, keepdim=True).values)
        weights = e / e.sum(dim=-1, keepdim=True)
        out.append(torch.einsum("bnm,bdm->bdn", weights, vh))
    return torch.cat(out, dim=1)


def reference_region_scores(sd, regions, embeddings, scene, heads, quirk=True):
    """Published formulation. regions (B, 512, 14, 14), embeddings (C, 300), scene (B, 4096)
    -> per-region scores (B, 196, C)."""
    b = regions.shape[0]
    # 1. conv_3X3: conv -> ReLU -> BN (ReLU first).
    h_r = F.conv2d(regions, sd["conv_3X3.body.weight"], sd["conv_3X3.body.bias"], padding=1)
    h_r = _bn(torch.relu(h_r), sd, "conv_3X3.bn")
    d = h_r.shape[1]
    # 2. region block.
    p = "region_context_block."
    q, k, v = (_conv1x1(h_r, sd, p + name).reshape(b, d, -1) for name in ("w_q", "w_k", "w_v"))
    att = reference_attention(q, k, v, heads, quirk).reshape(h_r.shape)
    o_r = _conv1x1(att, sd, p + "w_o") + h_r
    ff = _conv1x1(torch.relu(_conv1x1(o_r, sd, p + "sub_network.conv1")), sd, p + "sub_network.conv2")
    e_r = ff + o_r
    # 3. scene block.
    p = "scene_context_block."
    q_g = _lrelu(_conv1x1(h_r, sd, p + "channel_conv.body"))
    v_g = q_g
    k_g = scene @ sd[p + "w_g.weight"][:, :, 0, 0].t() + sd[p + "w_g.bias"]
    r_g = torch.sigmoid(q_g.mean(dim=(2, 3)) * k_g)
    c_g = r_g[:, :, None, None] * v_g
    gc = F.conv2d(c_g, sd[p + "gcff.body.weight"], sd[p + "gcff.body.bias"], padding=1)
    e_g = c_g + _bn(torch.relu(gc), sd, p + "gcff.bn")
    # 4. joint features, 5. classifier.
    e_f = _lrelu(_conv1x1(torch.cat([e_r, e_g], dim=1), sd, "conv_1X1.body")).reshape(b, -1, 196)
    w_v = embeddings @ sd["W.weight"].t() + sd["W.bias"]
    return torch.einsum("bjn,cj->bnc", e_f, w_v)


def reference_scores(sd, regions, embeddings, scene, heads, topk=6, quirk=True):
    m = reference_region_scores(sd, regions, embeddings, scene, heads, quirk)
    return m.sort(dim=1, descending=True).values[:, :topk].mean(dim=1)


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights with O(1) activations and non-trivial BN statistics, so every term counts."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) * 1.5 + 0.25)
            elif name.endswith(".weight") and t.dim() > 1:
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=gen) / math.sqrt(fan_in))
            else:
                t.copy_(torch.randn(t.shape, generator=gen) * 0.3)
    return model


def realistic_inputs(batch: int, classes: int, seed: int = 0, feature_dim=512, scene_dim=4096, embed_dim=300):
    """conv5_4-like regions (non-negative, sparse), ReLU'd scene, L2-normalised embeddings."""
    gen = torch.Generator().manual_seed(seed)
    regions = torch.relu(torch.randn(batch, feature_dim, 14, 14, generator=gen) * 2 - 1)
    scene = torch.relu(torch.randn(batch, scene_dim, generator=gen))
    emb = F.normalize(torch.randn(classes, embed_dim, generator=gen), dim=1)
    return regions, emb, scene


def _double_sd(model):
    return {k: v.double() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("attention", ["fused", "published"])
def test_scores_match_published_reference(attention):
    model = randomise(BiAM(attention=attention)).eval()
    regions, emb, scene = realistic_inputs(2, 17)
    with torch.no_grad():
        ours = model(regions, emb, scene)
        ours_m = model.region_scores(regions, emb, scene)
    ref_m = reference_region_scores(_double_sd(model), regions.double(), emb.double(), scene.double(), heads=8)
    ref = reference_scores(_double_sd(model), regions.double(), emb.double(), scene.double(), heads=8)
    assert ours.shape == (2, 17) and ours.dtype == torch.float32
    scale = ref_m.abs().max().item()
    assert scale > 1.0, "random weights too small to test anything"
    # float32 rounding of a ~1 GFLOP network, relative to the score scale.
    torch.testing.assert_close(ours_m.double(), ref_m, rtol=0, atol=2e-5 * scale)
    torch.testing.assert_close(ours.double(), ref, rtol=0, atol=2e-5 * scale)


def test_reference_is_sensitive_to_each_published_choice():
    """The tolerance above is tight enough to see a wrong layer order or a wrong eps."""
    model = randomise(BiAM()).eval()
    regions, emb, scene = realistic_inputs(2, 5)
    sd = _double_sd(model)
    with torch.no_grad():
        ours = model(regions, emb, scene).double()
    scale = ours.abs().max().item()
    wrong = dict(sd)
    wrong["conv_3X3.bn.running_var"] = sd["conv_3X3.bn.running_var"] + 1e-3 - 1e-5  # eps 1e-5
    alt = reference_scores(wrong, regions.double(), emb.double(), scene.double(), heads=8)
    # Must exceed the 2e-5 * scale tolerance of the test above.
    assert (alt - ours).abs().max() > 4e-5 * scale
    alt_heads = reference_scores(sd, regions.double(), emb.double(), scene.double(), heads=4)
    assert (alt_heads - ours).abs().max() > 1e-3 * scale


def test_zero_query_row_fused_equals_published():
    """(a) q == 0: every score is 0, the quirk masks the whole row uniformly -> same softmax."""
    models = {}
    for attention in ("fused", "published"):
        m = randomise(BiAM(attention=attention)).eval()
        with torch.no_grad():
            m.region_context_block.w_q.weight.zero_()
            m.region_context_block.w_q.bias.zero_()
        models[attention] = m
    regions, emb, scene = realistic_inputs(2, 9, seed=3)
    with torch.no_grad():
        fused = models["fused"](regions, emb, scene)
        published = models["published"](regions, emb, scene)
    ref = reference_scores(_double_sd(models["fused"]), regions.double(), emb.double(), scene.double(), heads=8)
    torch.testing.assert_close(fused, published, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(published.double(), ref, rtol=0, atol=2e-5 * ref.abs().max().item())


def _orthogonal_pair_block(attention):
    # One head of width 4, identity projections: scores = <x_n, x_m> / 2.
    block = RegionContextBlock(4, 1, 0.0, attention).eval()
    with torch.no_grad():
        for conv in (block.w_q, block.w_k, block.w_v, block.w_o):
            conv.weight.copy_(torch.eye(4)[:, :, None, None])
            conv.bias.zero_()
        # The feed-forward part adds nothing, so both kernels' blocks hold the same weights.
        block.sub_network.conv2.weight.zero_()
        block.sub_network.conv2.bias.zero_()
    return block


def test_isolated_zero_score_changes_published_result():
    """(b) one exactly-zero score among non-zero ones: the quirk drops that key, fused keeps it."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 4, 196, generator=gen) + 0.5  # positive -> every dot product > 0
    x[0, :, 0] = torch.tensor([1.0, -1.0, 0.25, -0.25])
    x[0, :, 1] = torch.tensor([1.0, 1.0, 0.5, 0.5])  # <x_0, x_1> = 1 - 1 + 0.125 - 0.125 = 0 exactly
    x = x.reshape(1, 4, 14, 14)
    with torch.no_grad():
        fused = _orthogonal_pair_block("fused")(x)
        published = _orthogonal_pair_block("published")(x)
        q = x.reshape(1, 4, 196)
        ref_quirk = reference_attention(q.double(), q.double(), q.double(), 1, quirk=True)
        ref_plain = reference_attention(q.double(), q.double(), q.double(), 1, quirk=False)
    diff = (fused - published).abs().reshape(1, 4, 196).amax(dim=1)[0]
    # Only the rows of the two queries that see the zero (0 sees 1, 1 sees 0) change.
    assert diff[0] > 1e-4 and diff[1] > 1e-4
    assert diff[2:].max() < 1e-5
    # And each path is the right formulation of its own.
    ref_diff = (ref_quirk - ref_plain).abs().amax(dim=1)[0]
    assert ref_diff[0] > 1e-4 and ref_diff[2:].max() < 1e-12
    # Identity w_o and a zero feed-forward: block output = attention + x.
    torch.testing.assert_close((published.reshape(1, 4, 196) - q).double(), ref_quirk, rtol=0, atol=1e-6)
    torch.testing.assert_close((fused.reshape(1, 4, 196) - q).double(), ref_plain, rtol=0, atol=1e-6)


def test_exact_zero_scores_do_not_occur_on_realistic_inputs():
    """Count exact zeros among the attention scores of a randomised model on realistic
    features (the measurement of docs/model.md, on a smaller sample)."""
    model = randomise(BiAM()).eval()
    regions, emb, scene = realistic_inputs(4, 3, seed=5)
    block = model.region_context_block
    with torch.no_grad():
        h_r = model.conv_3X3(regions)
        q, k = block._split(block.w_q(h_r)), block._split(block.w_k(h_r))
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    assert scores.numel() == 4 * 8 * 196 * 196
    assert int((scores == 0).sum()) == 0
    # Hence the two attention kernels agree on these inputs.
    pub = randomise(BiAM(attention="published")).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(regions, emb, scene), pub(regions, emb, scene), rtol=1e-5, atol=1e-4)


def test_region_scores_topk_mean_equals_forward():
    model = randomise(BiAM(topk=6)).eval()
    regions, emb, scene = realistic_inputs(3, 11, seed=7)
    with torch.no_grad():
        m = model.region_scores(regions, emb, scene)
        s = model(regions, emb, scene)
        e_f = model.joint_features(regions, scene)
        flat = model(regions.reshape(3, 512, 196), emb, scene)
    assert m.shape == (3, 196, 11) and e_f.shape == (3, 196, 512)
    top6 = m.sort(dim=1, descending=True).values[:, :6].mean(dim=1)
    torch.testing.assert_close(s, top6, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(m, e_f @ model.W(emb).t(), rtol=1e-5, atol=1e-5)
    # (B, 512, 196) input is the same as (B, 512, 14, 14): region index = row * 14 + col.
    torch.testing.assert_close(flat, s, rtol=0, atol=0)


def test_eval_mode_is_deterministic_and_dropout_free():
    model = randomise(BiAM(attn_dropout=0.5, scene_dropout=0.5)).eval()
    regions, emb, scene = realistic_inputs(2, 4, seed=9)
    with torch.no_grad():
        a = model(regions, emb, scene)
        b = model(regions, emb, scene)
    assert torch.equal(a, b)
    model.train()
    with torch.no_grad():
        c = model(regions, emb, scene)
    assert not torch.allclose(a, c), "dropout 0.5 in training mode should change scores"


def test_input_shape_errors_are_clear():
    model = BiAM(channel_dim=16, heads=2, scene_dim=32, joint_dim=16).eval()
    regions, emb, scene = realistic_inputs(2, 3, scene_dim=32)
    with pytest.raises(ValueError, match=r"regions must be \(B, 512, 196\)"):
        model(regions.reshape(2, 512, 196)[:, :, :100], emb, scene)
    with pytest.raises(ValueError, match=r"label embeddings must be \(C, 300\)"):
        model(regions, emb[:, :299], scene)
    with pytest.raises(ValueError, match=r"scene features must be \(2, 32\)"):
        model(regions, emb, scene[:1])
    with pytest.raises(ValueError, match="not divisible"):
        BiAM(channel_dim=30, heads=8)
    with pytest.raises(ValueError, match="attention must be"):
        BiAM(attention="flash")
