"""Multi-scale fusion MF (PRN 3.2, Eq. 2): F*_j = sum_r f_rj(F_r) over the three scales.

f_rj is the identity for r = j; for r < j a depthwise-separable convolution with stride 2^(j-r), kernel
2^(j-r) + 1 and padding 2^(j-r-1) downsamples; for r > j bilinear upsampling followed by a 1x1 convolution.
Scales are ordered fine to coarse, each half the resolution of the previous one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class _Down(nn.Module):
    def __init__(self, cin: int, cout: int, factor: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, factor + 1, stride=factor, padding=factor // 2, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)
        self.norm = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        y = self.norm(self.pointwise(self.depthwise(x)))
        return y if y.shape[-2:] == size else F.interpolate(y, size=size, mode="bilinear", align_corners=False)


class _Up(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.norm = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.norm(self.conv(F.interpolate(x, size=size, mode="bilinear", align_corners=False)))


class MultiScaleFusion(nn.Module):
    """Eq. 2 for any number of scales; ``enabled=False`` is the identity (ablation "without MF")."""

    def __init__(self, channels: Sequence[int], enabled: bool = True) -> None:
        super().__init__()
        self.enabled = enabled
        n = len(channels)
        self.paths = nn.ModuleDict()
        if enabled:
            for r in range(n):
                for j in range(n):
                    if r < j:
                        self.paths[f"{r}{j}"] = _Down(channels[r], channels[j], 2 ** (j - r))
                    elif r > j:
                        self.paths[f"{r}{j}"] = _Up(channels[r], channels[j])

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        if not self.enabled:
            return feats
        out = []
        for j, target in enumerate(feats):
            size = tuple(target.shape[-2:])
            total = target
            for r, source in enumerate(feats):
                if r != j:
                    total = total + self.paths[f"{r}{j}"](source, size)
            out.append(total)
        return out
