"""Fusion-compression module, FFC (N-Net Fig. 3b, Eq. 6), and the plain RD4AD bottleneck it replaces.

Each adapted feature P_i is brought to the deepest scale by stride-2 3x3 conv + BN + ReLU steps (channels rising
through the teacher's stage widths, as in RD4AD's one-class bottleneck), the scaled maps are fused progressively by
addition from deep to shallow (Eq. 6: P'_2 <- P'_3 + P'_2, then P'_1 <- P'_2 + P'_1), concatenated, mixed by a 1x1
conv into F_E and compressed by L residual blocks (the first with stride 2) into F_C. With ``fuse=False`` and 3
blocks it is RD4AD's plain bottleneck (concatenation only), the switch ``ffc=False``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from adcore.methods.common.blocks import Bottleneck, conv_bn_relu


class FusionCompression(nn.Module):
    """P_1..P_n (shallow to deep, strides doubling) -> compressed F_C at twice the deepest stride."""

    def __init__(self, channels: Sequence[int], strides: Sequence[int], out_channels: int, blocks: int = 4,
                 fuse: bool = True) -> None:
        super().__init__()
        channels, strides = list(channels), list(strides)
        deepest = strides[-1]
        by_stride = dict(zip(strides, channels, strict=True))
        self.scalers = nn.ModuleList()
        for c, s in zip(channels[:-1], strides[:-1], strict=True):
            steps, cin, stride = [], c, s
            while stride < deepest:
                stride *= 2
                cout = by_stride.get(stride, channels[-1])
                steps.append(conv_bn_relu(cin, cout, stride=2))
                cin = cout
            self.scalers.append(nn.Sequential(*steps))
        self.fuse = fuse
        cat = channels[-1] * len(channels)
        self.mix = nn.Conv2d(cat, cat, 1) if fuse else nn.Identity()  # 1x1 channel fusion into F_E
        width = max(16, out_channels // 2)  # "wide" bottlenecks, as WRN50's (2048 -> width 1024)
        layers = [Bottleneck(cat, out_channels, width, "down")]
        layers += [Bottleneck(out_channels, out_channels, width) for _ in range(blocks - 1)]
        self.compress = nn.Sequential(*layers)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        size = feats[-1].shape[-2:]
        scaled = [self._fit(scaler(f), size) for scaler, f in zip(self.scalers, feats[:-1], strict=True)] + [feats[-1]]
        if self.fuse:  # Eq. 6, deep to shallow
            for i in range(len(scaled) - 1, 0, -1):
                scaled[i - 1] = scaled[i] + scaled[i - 1]
        return self.compress(self.mix(torch.cat(scaled, dim=1)))

    @staticmethod
    def _fit(x: torch.Tensor, size) -> torch.Tensor:
        # Odd input sizes leave the strided path one pixel off the deepest stage.
        return x if x.shape[-2:] == size else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
