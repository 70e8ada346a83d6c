"""The BiAM method: region-level and scene-level attention over backbone region features.

One file as every method (``biam.modeling.registry``): the module, its ``from_config`` and its
loss (the ranking loss, :mod:`biam.modeling.loss`), registered as ``MODEL.NAME biam``.
Layer by layer as in the paper and its original release (docs/model.md), with the parameter
names of the published checkpoints so that ``load_state_dict(published, strict=True)`` works
unchanged.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Tuple

import torch
from torch import nn
import torch.nn.functional as F

from ..backbones import Backbone
from ..utils.precision import at_least_float32
from .loss import ranking_loss
from .registry import register_method

__all__ = ["BiAM", "ConvReluBN", "load_published_state_dict", "HPARAM_CONFIG_KEYS"]


# The hyperparameters a checkpoint of ours records (``BiAM.hparams``), with their config keys:
# they decide what the weights compute. Heads and top-k do not show in parameter shapes, so
# only this record tells a 16-head checkpoint from an 8-head one.
HPARAM_CONFIG_KEYS = {
    "channel_dim": "MODEL.CHANNEL_DIM", "heads": "MODEL.HEADS", "topk": "MODEL.TOPK",
    "embed_dim": "MODEL.EMBED_DIM", "feature_dim": "MODEL.FEATURE_DIM", "joint_dim": "MODEL.JOINT_DIM",
    "scene_dim": "MODEL.SCENE_DIM", "backbone": "MODEL.BACKBONE",
}


class ConvReluBN(nn.Module):
    """3x3 conv (padding 1) -> ReLU -> BatchNorm2d, in that order (ReLU *before* BN, as published).

    (B, in_channels, H, W) -> (B, out_channels, H, W). ``momentum=0.99`` is PyTorch's convention:
    running statistics follow the newest batch almost entirely. Kept because the published
    checkpoints' running statistics were made that way.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.body = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=True)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-3, momentum=0.99, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(F.relu(self.body(x)))


class Conv1x1(nn.Module):
    """A 1x1 conv stored under ``<name>.body`` (published key layout): (B, I, H, W) -> (B, O, H, W)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.body = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class FeedForward(nn.Module):
    """1x1 conv D -> 2D, ReLU, 1x1 conv 2D -> D (``sub_network``): (B, D, H, W) -> (B, D, H, W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 2 * channels, kernel_size=1)
        self.conv2 = nn.Conv2d(2 * channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(x)))


class RegionContextBlock(nn.Module):
    """Multi-head self-attention over the 196 regions, then a residual feed-forward block.

    (B, D, 14, 14) ``h_r`` -> (B, D, 14, 14) ``e_r``.

    ``attention="fused"`` uses ``F.scaled_dot_product_attention``. ``attention="published"``
    computes the softmax explicitly and reproduces the published quirk of replacing any score
    that is exactly 0 by -1e9. The two agree whenever no query/key product is exactly 0.0, and
    also when a whole query row is 0 (every score masked gives the same uniform softmax as
    every score 0); see ``docs/model.md`` and ``tests/modeling/test_biam_reference.py``.
    """

    def __init__(self, channels: int, heads: int, dropout: float, attention: str):
        super().__init__()
        if channels % heads:
            raise ValueError(f"channel_dim={channels} is not divisible by heads={heads}")
        if attention not in ("fused", "published"):
            raise ValueError(f"attention must be 'fused' or 'published', got {attention!r}")
        self.heads = heads
        self.dropout = dropout
        self.attention = attention
        self.w_q = nn.Conv2d(channels, channels, kernel_size=1)
        self.w_k = nn.Conv2d(channels, channels, kernel_size=1)
        self.w_v = nn.Conv2d(channels, channels, kernel_size=1)
        self.w_o = nn.Conv2d(channels, channels, kernel_size=1)
        self.out_dropout = nn.Dropout(dropout)
        self.sub_network = FeedForward(channels)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        # (B, D, H, W) -> (B, heads, N, D/heads); channel c belongs to head c // (D / heads).
        b, d, h, w = x.shape
        return x.reshape(b, self.heads, d // self.heads, h * w).transpose(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, d, h, w = x.shape
        q, k, v = self._split(self.w_q(x)), self._split(self.w_k(x)), self._split(self.w_v(x))
        p = self.dropout if self.training else 0.0
        if self.attention == "fused":
            att = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        else:
            # float32 with autocast off: -1e9 does not fit float16, and autocast would otherwise
            # run the matmuls in half precision again whatever dtype they are given.
            with torch.autocast(device_type=q.device.type, enabled=False):
                qf, kf, vf = at_least_float32(q), at_least_float32(k), at_least_float32(v)
                scores = qf @ kf.transpose(-2, -1) / math.sqrt(qf.shape[-1])
                scores = scores.masked_fill(scores == 0, -1e9)
                weights = F.dropout(scores.softmax(dim=-1), p=p, training=self.training)
                att = (weights @ vf).to(v.dtype)
        att = att.transpose(2, 3).reshape(b, d, h, w)
        o_r = self.out_dropout(self.w_o(att)) + x
        return self.sub_network(o_r) + o_r


class SceneContextBlock(nn.Module):
    """Gate region channels with the image's scene feature, then a residual conv block.

    ``h_r`` (B, D, 14, 14) and scene (B, scene_dim) -> ``e_g`` (B, D, 14, 14).
    """

    def __init__(self, channels: int, scene_dim: int, dropout: float):
        super().__init__()
        self.channel_conv = Conv1x1(channels, channels)
        self.w_g = nn.Conv2d(scene_dim, channels, kernel_size=1)
        self.scene_dropout = nn.Dropout(dropout)
        self.gcff = ConvReluBN(channels, channels)

    def forward(self, h_r: torch.Tensor, scene: torch.Tensor) -> torch.Tensor:
        q_g = F.leaky_relu(self.channel_conv(h_r), 0.2)  # also used as v_g, as published
        x_g = self.scene_dropout(scene)
        # w_g is a 1x1 conv over a 1x1 map, i.e. a linear layer on the (B, scene_dim) vector.
        k_g = F.linear(x_g, self.w_g.weight.flatten(1), self.w_g.bias)
        r_g = torch.sigmoid(q_g.mean(dim=(2, 3)) * k_g)
        c_g = r_g[:, :, None, None] * q_g
        return c_g + self.gcff(c_g)


@register_method("biam", loss=ranking_loss)
class BiAM(nn.Module):
    """Bi-level attention module (Narayan, Gupta et al., ICCV 2021).

    Args (keyword only):
        channel_dim: D_c, width of the attention blocks (published: 256).
        heads: attention heads in the region block (published NUS-WIDE: 8).
        topk: number of top region scores averaged into an image score (published: 6).
        embed_dim: width of the label embeddings (GloVe: 300).
        feature_dim: channels of the input region features (VGG19 conv5_4: 512; ResNet-101: 2048).
        joint_dim: width of the joint visual-semantic space (512).
        scene_dim: width of the scene feature (VGG19 fc7: 4096; ResNet-101 pooled: 2048).
        grid: (rows, cols) of the region grid (both registered backbones: (14, 14)).
        backbone: name of the backbone whose features the model reads (``biam.backbones``);
            recorded in our checkpoints so that features of another backbone are refused.
        attn_dropout: dropout on attention weights and after ``w_o`` (0.1).
        scene_dropout: dropout on the scene feature before ``w_g`` (0.2).
        attention: "fused" (scaled_dot_product_attention) or "published" (explicit softmax
            with the zero-score quirk).
    """

    def __init__(
        self,
        *,
        channel_dim: int = 256,
        heads: int = 8,
        topk: int = 6,
        embed_dim: int = 300,
        feature_dim: int = 512,
        joint_dim: int = 512,
        scene_dim: int = 4096,
        attn_dropout: float = 0.1,
        scene_dropout: float = 0.2,
        attention: str = "fused",
        grid: Tuple[int, int] = (14, 14),
        backbone: str = "vgg19",
    ):
        super().__init__()
        self.grid = (int(grid[0]), int(grid[1]))
        self.num_regions = self.grid[0] * self.grid[1]
        if not 1 <= topk <= self.num_regions:
            raise ValueError(f"topk must be in [1, {self.num_regions}], got {topk}")
        self.topk = topk
        self.backbone = str(backbone)
        self._hparams = dict(channel_dim=int(channel_dim), heads=int(heads), topk=int(topk), embed_dim=int(embed_dim),
                             feature_dim=int(feature_dim), joint_dim=int(joint_dim), scene_dim=int(scene_dim),
                             backbone=self.backbone)
        self.feature_dim = feature_dim
        self.embed_dim = embed_dim
        self.scene_dim = scene_dim
        self.conv_3X3 = ConvReluBN(feature_dim, channel_dim)
        self.region_context_block = RegionContextBlock(channel_dim, heads, attn_dropout, attention)
        self.scene_context_block = SceneContextBlock(channel_dim, scene_dim, scene_dropout)
        self.conv_1X1 = Conv1x1(2 * channel_dim, joint_dim)
        self.W = nn.Linear(embed_dim, joint_dim)

    def hparams(self) -> dict:
        """The hyperparameters that decide what the weights compute (keys of ``HPARAM_CONFIG_KEYS``),
        as plain ints (the backbone as its name): recorded in our checkpoints and checked when one
        is loaded."""
        return dict(self._hparams)

    # The config key of each hyperparameter, for checkpoint messages (biam.engine.checkpoint).
    HPARAM_CONFIG_KEYS = HPARAM_CONFIG_KEYS

    @classmethod
    def from_config(cls, cfg: Any, backbone: Backbone) -> "BiAM":
        """A ``BiAM`` from ``cfg.MODEL`` and the backbone whose features it reads.

        Reads CHANNEL_DIM, HEADS, TOPK, EMBED_DIM, FEATURE_DIM, JOINT_DIM, SCENE_DIM,
        ATTN_DROPOUT, SCENE_DROPOUT and ATTENTION. ``backbone`` (a ``biam.backbones.Backbone``)
        gives the grid, and the widths where FEATURE_DIM / SCENE_DIM are 0.
        """
        m = cfg.MODEL
        return cls(
            channel_dim=m.CHANNEL_DIM, heads=m.HEADS, topk=m.TOPK, embed_dim=m.EMBED_DIM,
            feature_dim=m.FEATURE_DIM or backbone.channels, joint_dim=m.JOINT_DIM,
            scene_dim=m.SCENE_DIM or backbone.scene_dim, grid=backbone.grid, backbone=backbone.name,
            attn_dropout=m.ATTN_DROPOUT, scene_dropout=m.SCENE_DROPOUT, attention=m.ATTENTION,
        )

    def _check_inputs(self, regions: torch.Tensor, labels: torch.Tensor, scene: torch.Tensor) -> torch.Tensor:
        rows, cols = self.grid
        if regions.dim() == 3:
            if regions.shape[1:] != (self.feature_dim, self.num_regions):
                raise ValueError(f"regions must be (B, {self.feature_dim}, {self.num_regions}) ({self.backbone} "
                                 f"features), got {tuple(regions.shape)}")
            regions = regions.reshape(regions.shape[0], self.feature_dim, rows, cols)
        elif regions.dim() != 4 or regions.shape[1:] != (self.feature_dim, rows, cols):
            raise ValueError(f"regions must be (B, {self.feature_dim}, {rows}, {cols}) ({self.backbone} features), "
                             f"got {tuple(regions.shape)}")
        if labels.dim() != 2 or labels.shape[1] != self.embed_dim:
            raise ValueError(f"label embeddings must be (C, {self.embed_dim}), got {tuple(labels.shape)}")
        if scene.dim() != 2 or scene.shape != (regions.shape[0], self.scene_dim):
            raise ValueError(f"scene features must be ({regions.shape[0]}, {self.scene_dim}), got {tuple(scene.shape)}")
        return regions

    def joint_features(self, regions: torch.Tensor, scene: torch.Tensor) -> torch.Tensor:
        """Region features in the joint space.

        regions (B, feature_dim, rows, cols) and scene (B, scene_dim) -> e_f (B, rows * cols,
        joint_dim), region index = row * cols + col (VGG19: 14 x 14 = 196). Inputs are not checked here (``region_scores`` does).
        """
        x = regions.to(self.conv_3X3.body.weight.dtype)
        h_r = self.conv_3X3(x)
        e_r = self.region_context_block(h_r)
        e_g = self.scene_context_block(h_r, scene.to(x.dtype))
        e_f = F.leaky_relu(self.conv_1X1(torch.cat([e_r, e_g], dim=1)), 0.2)
        return e_f.flatten(2).transpose(1, 2)

    def region_scores(self, regions: torch.Tensor, label_embeddings: torch.Tensor, scene: torch.Tensor) -> torch.Tensor:
        """Per-region label scores.

        Args:
            regions: (B, feature_dim, R) or (B, feature_dim, rows, cols) backbone features
                (VGG19 conv5_4: R = 196, 14 x 14).
            label_embeddings: (C, embed_dim), rows L2-normalised by the caller.
            scene: (B, scene_dim) scene features (VGG19: fc7).
        Returns:
            m: (B, R, C), the attention maps of ``biam-predict``; dtype of the computation
            (float32, or the autocast dtype).
        """
        regions = self._check_inputs(regions, label_embeddings, scene)
        e_f = self.joint_features(regions, scene)
        # The label projection is computed once per forward, shared by all images and regions.
        w_v = self.W(label_embeddings.to(self.W.weight.dtype))
        return e_f @ w_v.t().to(e_f.dtype)

    def forward(self, regions: torch.Tensor, label_embeddings: torch.Tensor, scene: torch.Tensor) -> torch.Tensor:
        """Image scores (B, C) float32 (float64 for float64 weights): the mean of each label's
        top-k region scores.

        Same inputs as ``region_scores``. Under autocast the top-k values are averaged in
        float32, so the scores handed to the loss and the metrics are float32 or wider.
        """
        m = self.region_scores(regions, label_embeddings, scene)
        return at_least_float32(m.topk(self.topk, dim=1).values).mean(dim=1)


def load_published_state_dict(model: nn.Module, state: Mapping[str, Any], source: str = "<state dict>") -> nn.Module:
    """Load a published (or our own) BiAM ``state_dict`` into ``model`` with strict checking.

    Args:
        model: the ``BiAM`` to fill (its parameters are overwritten in place).
        state: mapping key -> tensor, e.g. from ``torch.load(path, weights_only=True)``.
        source: where ``state`` came from (a file name), used in error messages.
    Returns:
        ``model``.
    Raises:
        ValueError listing, with shapes, every missing key, unexpected key and key whose shape
        differs, so that a wrong ``MODEL.HEADS``/``CHANNEL_DIM`` or a foreign file is named at
        once instead of by the first failing ``copy_``.
    """
    if not isinstance(state, Mapping):
        raise ValueError(f"{source}: expected a state dict (a mapping of names to tensors), found {type(state).__name__}")
    expected = model.state_dict()
    not_tensors = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected)
    mismatched = sorted(
        k for k in expected
        if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != expected[k].shape
    )
    if not (not_tensors or missing or unexpected or mismatched):
        model.load_state_dict(state, strict=True)
        return model
    lines = [f"{source}: state dict does not fit the model ({type(model).__name__})"]
    for k in missing:
        lines.append(f"  missing: {k} {tuple(expected[k].shape)}")
    for k in unexpected:
        shape = tuple(state[k].shape) if isinstance(state[k], torch.Tensor) else type(state[k]).__name__
        lines.append(f"  unexpected: {k} {shape}")
    for k in mismatched:
        lines.append(f"  shape mismatch: {k}: file {tuple(state[k].shape)}, model {tuple(expected[k].shape)}")
    for k in not_tensors:
        if k in expected:
            lines.append(f"  not a tensor: {k} ({type(state[k]).__name__})")
    if unexpected and all(k.startswith("module.") for k in unexpected):
        # DataParallel/DistributedDataParallel wrappers prefix every key; say so rather than guess.
        lines.append("  hint: every unexpected key starts with 'module.' (saved from a DataParallel wrapper)")
    raise ValueError("\n".join(lines))
