"""Multi-level feature fusion (paper 1.1, eqs. 1-3): the reconstruction target z.

Each chosen backbone stage is resized bilinearly to the largest of their resolutions (eq. 1), each position's channel
vector is brought to C channels by 1-D adaptive average pooling (eq. 2), so that every level takes the same share of
z, the levels are concatenated (eq. 3) and pooled once more to C. There is nothing to learn: the backbone is frozen,
so this runs on the cached stage maps during training and on live backbone output at inference.

``level_norm`` (not in the paper, whose eqs. 1-3 have no normalisation): averaging adjacent signed channels (e.g.
EfficientNet's) cancels them, so a level pooled from many channels keeps less energy than one whose channels are
repeated, and the cosine distance on z then weighs the levels unequally. ``"l2"`` scales each level's channel vector
to unit length at every position before eq. 2; ``"pooled_l2"`` does so after eq. 2, so that every level has exactly
the same norm in the concatenation of eq. 3.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from adcore.methods.common.patch_features import pool_channels

#: Paper / Table 4 stage numbers (ResNet layer1..layer4) -> backbone stride.
STAGE_STRIDES = {1: 4, 2: 8, 3: 16, 4: 32}

LevelNorm = Literal["none", "l2", "pooled_l2"]


def fuse_levels(stages: Sequence[torch.Tensor], channels: int, level_norm: LevelNorm = "none") -> torch.Tensor:
    """z = pool_C(concat_l pool_C(resize(phi_l(x)))) (eqs. 1-3 and the final pooling), with optional per-level
    normalisation (module docstring)."""
    if not stages:
        raise ValueError("fuse_levels needs at least one feature map")
    if level_norm not in ("none", "l2", "pooled_l2"):
        raise ValueError(f"unknown level_norm {level_norm!r}")
    height = max(s.shape[-2] for s in stages)
    width = max(s.shape[-1] for s in stages)
    pooled = []
    for s in stages:
        s = s.float()
        if s.shape[-2:] != (height, width):
            s = F.interpolate(s, size=(height, width), mode="bilinear", align_corners=False)  # eq. 1
        if level_norm == "l2":
            s = F.normalize(s, dim=1)
        p = pool_channels(s, channels)  # eq. 2
        pooled.append(F.normalize(p, dim=1) if level_norm == "pooled_l2" else p)
    return pool_channels(torch.cat(pooled, dim=1), channels)  # eq. 3, then pooled again to C
