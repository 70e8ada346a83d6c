"""The CLIP backbones (open_clip, random weights, nothing downloaded): registry entries, grids and
shapes, the scene feature equal to CLIP's own image embedding, MaskCLIP's patch tokens for ViT-B/16,
weights from a local file (recorded with its SHA-256) and the error without weights."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch

pytest.importorskip("open_clip")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing reaches the network

from biam.backbones import WeightsNotFoundError, check_weights_available, get_backbone, load_backbone  # noqa: E402
from biam.extraction import FeatureExtractor  # noqa: E402


@pytest.fixture(scope="module")
def rn50():
    return load_backbone("clip_rn50", None, 0)


@pytest.fixture(scope="module")
def vit():
    return load_backbone("clip_vit_b16", None, 0)


def test_registry_entries():
    rn, vt = get_backbone("clip_rn50"), get_backbone("clip_vit_b16")
    assert (rn.input_size, rn.grid, rn.channels, rn.scene_dim) == (224, (7, 7), 2048, 1024)
    assert (vt.input_size, vt.grid, vt.channels, vt.scene_dim) == (224, (14, 14), 512, 512)
    assert rn.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073)) and vt.std == rn.std
    assert not rn.scene_from_regions and not vt.scene_from_regions


def test_rn50_regions_are_layer4_and_scene_is_the_image_embedding(rn50):
    net, source = rn50
    assert source == "clip_rn50:open_clip:RN50:random-seed-0"
    ex = FeatureExtractor(net, "clip_rn50")
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    regions, scene = ex(x)
    assert regions.shape == (2, 2048, 49) and scene.shape == (2, 1024)
    v = net.visual
    with torch.no_grad():
        fmap = v.layer4(v.layer3(v.layer2(v.layer1(v.stem(x)))))
        torch.testing.assert_close(regions, fmap.flatten(2))
        torch.testing.assert_close(scene, net.encode_image(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(B, 3, 224, 224\)"):
        ex(torch.zeros(1, 3, 448, 448))


def test_vit_patch_tokens_follow_maskclip(vit):
    net, _ = vit
    ex = FeatureExtractor(net, "clip_vit_b16")
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    regions, scene = ex(x)
    assert regions.shape == (2, 512, 196) and scene.shape == (2, 512)
    v = net.visual
    with torch.no_grad():
        torch.testing.assert_close(scene, net.encode_image(x), rtol=1e-4, atol=1e-5)
        # MaskCLIP by hand: the last block's patch outputs keep their own value embedding.
        h = v._embeds(x)
        for block in v.transformer.resblocks[:-1]:
            h = block(h)
        last = v.transformer.resblocks[-1]
        attn = last.attn
        d = h.shape[-1]
        value = torch.nn.functional.linear(last.ln_1(h), attn.in_proj_weight[2 * d:], attn.in_proj_bias[2 * d:])
        h = h + attn.out_proj(value)
        h = h + last.mlp(last.ln_2(h))
        want = (v.ln_post(h) @ v.proj)[:, 1:]  # (B, 196, 512), token = row * 14 + col
    torch.testing.assert_close(regions.transpose(1, 2), want, rtol=1e-4, atol=1e-4)
    # The patch maps differ from token to token (not one global feature copied 196 times).
    assert regions.std(dim=2).mean() > 1e-3


def test_weights_file_is_read_and_recorded(rn50, tmp_path):
    net, _ = rn50
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(net.state_dict(), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    for spec in (str(path), f"openai={path}"):
        loaded, source = load_backbone("clip_rn50", spec, None)
        assert source == f"clip_rn50:open_clip:RN50:{'openai' if '=' in spec else 'file'}:{path.name}:sha256:{digest}"
        x = torch.randn(1, 3, 224, 224)
        a = FeatureExtractor(loaded, "clip_rn50")(x)
        b = FeatureExtractor(net, "clip_rn50")(x)
        torch.testing.assert_close(a, b)
    bad = tmp_path / "bad.bin"
    torch.save({"visual.conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="bad.bin: not an open_clip RN50 state dict"):
        load_backbone("clip_rn50", bad, None)


def test_no_weights_is_an_error_naming_both_ways(tmp_path):
    with pytest.raises(WeightsNotFoundError) as err:
        check_weights_available(None, None, "extract_own", backbone="clip_vit_b16")
    msg = str(err.value)
    assert "--weights FILE" in msg and "--weights TAG" in msg and "openai" in msg and "--random-weights" in msg
    with pytest.raises(WeightsNotFoundError):
        load_backbone("clip_rn50", None, None)
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        check_weights_available(tmp_path / "missing.bin", None, "extract_own", backbone="clip_rn50")
