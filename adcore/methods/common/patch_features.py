"""Locally aware patch features: each stage averaged over a neighbourhood, brought to the first stage's grid and
concatenated (PatchCore Eq. 2, CFA Sec. 3), and the 1-D channel pooling that PatchCore and FRAD use to fix a width."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def pooled_patch_features(stages: Sequence[torch.Tensor], patch_size: int = 3, *,
                          count_include_pad: bool = True) -> torch.Tensor:
    """Stage maps (largest first) -> (B, sum C_i, H_0, W_0): ``patch_size`` average pooling (stride 1, same size)
    per stage, bilinear upsampling to the first stage's size, concatenation."""
    size = stages[0].shape[-2:]
    out = []
    for feat in stages:
        feat = F.avg_pool2d(feat.float(), patch_size, stride=1, padding=patch_size // 2,
                            count_include_pad=count_include_pad)
        if feat.shape[-2:] != size:
            feat = F.interpolate(feat, size=size, mode="bilinear", align_corners=False)
        out.append(feat)
    return torch.cat(out, dim=1)


def pool_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """1-D adaptive average pooling of each position's channel vector: (B, C, H, W) -> (B, channels, H, W).

    Where C < channels, adaptive pooling repeats channels (it is still PyTorch's adaptive average pooling).
    """
    b, c, h, w = x.shape
    if c == channels:
        return x
    # adaptive_avg_pool3d over (C, H, W) with H, W unchanged pools only the channel axis, without permutes.
    return F.adaptive_avg_pool3d(x.unsqueeze(1), (channels, h, w)).squeeze(1)
