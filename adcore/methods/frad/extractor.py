"""Multi-level feature fusion (paper 1.1, eqs. 1-3): the reconstruction target z.

Each chosen backbone stage is resized bilinearly to the largest of their resolutions (eq. 1), each position's channel
vector is brought to C channels by 1-D adaptive average pooling (eq. 2), so that every level takes the same share of
z, the levels are concatenated (eq. 3) and pooled once more to C. There is nothing to learn: the backbone is frozen,
so this runs on the cached stage maps during training and on live backbone output at inference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from adcore.methods.common.patch_features import pool_channels

#: Paper / Table 4 stage numbers (ResNet layer1..layer4) -> backbone stride.
STAGE_STRIDES = {1: 4, 2: 8, 3: 16, 4: 32}


def fuse_levels(stages: Sequence[torch.Tensor], channels: int) -> torch.Tensor:
    """z = pool_C(concat_l pool_C(resize(phi_l(x)))) (eqs. 1-3 and the final pooling)."""
    if not stages:
        raise ValueError("fuse_levels needs at least one feature map")
    height = max(s.shape[-2] for s in stages)
    width = max(s.shape[-1] for s in stages)
    pooled = []
    for s in stages:
        s = s.float()
        if s.shape[-2:] != (height, width):
            s = F.interpolate(s, size=(height, width), mode="bilinear", align_corners=False)  # eq. 1
        pooled.append(pool_channels(s, channels))  # eq. 2
    return pool_channels(torch.cat(pooled, dim=1), channels)  # eq. 3, then pooled again to C
