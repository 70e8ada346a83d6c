"""SceneHead equals torchvision's own VGG19 pool5 -> classifier[:5] in eval mode."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from biam.backbones.vgg19 import SceneHead


@pytest.fixture(scope="module")
def vgg():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    return torchvision.models.vgg19(weights=None).eval()  # random init, no download


@pytest.fixture(scope="module")
def head(vgg):
    return SceneHead.from_torchvision(vgg)


def _conv5_4(batch: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(batch, 512, 14, 14, generator=gen))


def _torchvision_head(vgg, x):
    # features[-1] is the last max-pool; classifier[:5] = fc6, ReLU, Dropout, fc7, ReLU.
    assert isinstance(vgg.features[-1], nn.MaxPool2d)
    assert [type(m).__name__ for m in vgg.classifier[:5]] == ["Linear", "ReLU", "Dropout", "Linear", "ReLU"]
    with torch.no_grad():
        return vgg.classifier[:5](torch.flatten(vgg.features[-1](x), 1))


def test_equals_torchvision_in_eval_mode(vgg, head):
    x = _conv5_4(3)
    ref = _torchvision_head(vgg, x)
    out = head(x)
    assert out.shape == (3, 4096)
    assert ref.abs().max() > 0
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    # The channel-major stored layout (B, 512, 196) gives the same result.
    torch.testing.assert_close(head(x.reshape(3, 512, 196)), ref, rtol=1e-6, atol=1e-6)


def test_stays_frozen_after_train(vgg, head):
    parent = nn.Sequential(head)
    parent.train()
    head.train(True)
    assert not head.training
    assert all(not p.requires_grad for p in head.parameters())
    x = _conv5_4(2, seed=1).requires_grad_(True)
    a, b = head(x), head(x)
    assert torch.equal(a, b), "dropout must never be active"
    assert not a.requires_grad and a.grad_fn is None
    torch.testing.assert_close(a, _torchvision_head(vgg, x.detach()), rtol=1e-6, atol=1e-6)


def test_file_round_trip_and_errors(vgg, tmp_path):
    path = tmp_path / "vgg19.pth"
    # The classifier part of torchvision's state dict (what the head needs; saves time here).
    torch.save({k: v for k, v in vgg.state_dict().items() if k.startswith("classifier.")}, path)
    head = SceneHead.from_file(str(path))
    x = _conv5_4(1, seed=2)
    torch.testing.assert_close(head(x), _torchvision_head(vgg, x), rtol=1e-6, atol=1e-6)
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, bad)
    with pytest.raises(KeyError, match="classifier.0.weight"):
        SceneHead.from_file(str(bad))
    with pytest.raises(FileNotFoundError, match="not found"):
        SceneHead.from_file(str(tmp_path / "absent.pth"))
    with pytest.raises(ValueError, match=r"\(B, 512, 14, 14\)"):
        head(torch.zeros(1, 512, 195))
