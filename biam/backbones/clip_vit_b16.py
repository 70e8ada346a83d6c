"""CLIP ViT-B/16 (Radford et al., ICML 2021; open_clip's ``ViT-B-16``), the image encoder of MKT
(AAAI 2023), with dense patch features taken as MaskCLIP does.

* input 224 x 224 (resized without a crop), CLIP's mean/std;
* regions: the 14 x 14 patch tokens in CLIP's 512-d joint space -> 512 x 14 x 14;
* scene: the image embedding (class token -> ``ln_post`` -> ``proj``) -> 512.

How the patch tokens are taken, and why: CLIP trains only the class token's output against text;
the patch tokens of the last block are mixed by its query-key attention into nearly the same
global feature everywhere, so projecting them through ``ln_post`` and ``proj`` gives maps that do
not localise. MaskCLIP (Zhou, Loy & Dai, ECCV 2022, "Extract Free Dense Labels from CLIP") drops
the query-key attention of the last block for the dense output: each patch token keeps its own
value embedding (the value projection and ``out_proj``, with the block's residual and MLP), and
the result goes through ``ln_post`` and ``proj`` into the joint space, where it can be compared
with CLIP text embeddings region by region. We do that in one pass: the last block runs with an
attention mask under which the class token attends to every token (so the scene feature is exactly
CLIP's image embedding) and each patch token attends only to itself (MaskCLIP's value path).

Weights: an open_clip checkpoint file, ``TAG=FILE``, or online an open_clip tag of ViT-B-16 (see
:mod:`.open_clip_common`); ``--random-weights SEED`` for tests.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from .clip_rn50 import CLIP_MEAN, CLIP_STD
from .open_clip_common import check_clip_weights, load_clip_model
from .registry import Backbone, PathLike, register_backbone

NAME, ARCH, LABEL = "clip_vit_b16", "ViT-B-16", "CLIP ViT-B/16"
GRID = (14, 14)


def open_weights(weights: Optional[PathLike], random_seed: Optional[int], what: str):
    return load_clip_model(NAME, ARCH, LABEL, weights, random_seed, what)


def check_weights(weights: Optional[PathLike], random_seed: Optional[int], what: str) -> None:
    check_clip_weights(weights, random_seed, what, LABEL, ARCH)


def load_net(weights: Optional[PathLike], random_seed: Optional[int]) -> nn.Module:
    return open_weights(weights, random_seed, "feature extraction")[0]


def maskclip_mask(num_patches: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(1 + P, 1 + P) additive attention mask: row 0 (class token) sees all, patch rows only themselves."""
    n = 1 + num_patches
    mask = torch.full((n, n), float("-inf"), device=device, dtype=dtype)
    mask.fill_diagonal_(0.0)
    mask[0] = 0.0
    return mask


class DenseCLIPViT(nn.Module):
    """Images (B, 3, 224, 224) -> (patch map (B, 512, 14, 14), image embedding (B, 512)).

    The region map and the scene feature come out together: the scene needs the class token,
    which the region map does not hold (``biam.extraction.FeatureExtractor`` takes the pair).
    """

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual
        if getattr(visual, "attn_pool", None) is not None or getattr(visual, "final_ln_after_pool", False) \
                or getattr(visual, "pool_type", "tok") != "tok":
            raise ValueError("clip_vit_b16 expects open_clip's CLIP ViT (class-token pooling, ln_post before proj)")

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        v = self.visual
        x = v._embeds(images.to(v.conv1.weight.dtype))  # (B, 1 + P, width), after ln_pre
        blocks = v.transformer.resblocks
        batch_first = getattr(v.transformer, "batch_first", True)
        x = x if batch_first else x.transpose(0, 1)
        for block in blocks[:-1]:
            x = block(x)
        n = x.shape[1] if batch_first else x.shape[0]
        x = blocks[-1](x, attn_mask=maskclip_mask(n - 1, x.device, x.dtype))
        x = x if batch_first else x.transpose(0, 1)
        x = v.ln_post(x) @ v.proj  # (B, 1 + P, 512): ln_post + proj on every token
        rows, cols = GRID
        if x.shape[1] != 1 + rows * cols:
            raise ValueError(f"clip_vit_b16: {x.shape[1] - 1} patch tokens, expected {rows * cols}")
        fmap = x[:, 1:].transpose(1, 2).reshape(x.shape[0], x.shape[2], rows, cols)
        return fmap, x[:, 0]


class _JointOnly(nn.Module):
    # The scene feature needs the class token: DenseCLIPViT returns it with the regions.
    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("clip_vit_b16's scene feature (the class token's embedding) cannot be computed from "
                           "stored regions; it is stored at extraction")


def region_extractor(net: nn.Module) -> nn.Module:
    return DenseCLIPViT(net.visual)


def scene_head(net: nn.Module) -> nn.Module:
    return _JointOnly()


BACKBONE = register_backbone(Backbone(
    name=NAME, input_size=224, grid=GRID, channels=512, scene_dim=512, scene_from_regions=False,
    weights_file="open_clip_pytorch_model.bin (ViT-B-16, tag openai)", load_net=load_net,
    region_extractor=region_extractor, scene_head=scene_head, mean=CLIP_MEAN, std=CLIP_STD, label=LABEL,
    open_weights=open_weights, check_weights=check_weights,
))
