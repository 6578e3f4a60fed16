"""The U-Net-like decoder of PRN (Fig. 3).

A U-Net decoder starts from the encoder's deepest stage (ResNet-18 layer4, stride 32: "the encoder is a pretrained
ResNet-18, the decoder consists of upsampling and convolution blocks", the skip branches carry MP, MF and MSA). At
each step it upsamples by 2 and concatenates the next finer skip output (T*_3 at stride 16, T*_2, T*_1), followed by
two conv-BN-ReLU blocks, then keeps upsampling without skips down to ``output_stride`` (1 in the paper: the map has
the shape of the ground-truth mask) and ends with a 1x1 convolution to one logit per pixel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from adcore.methods.common.blocks import conv_bn_relu


class Decoder(nn.Module):
    """Starts from the deepest encoder stage (``deep_channels``, stride 32); skips ordered fine to coarse (strides 4,
    8, 16 of the input); output at ``output_stride`` (1, 2 or 4)."""

    def __init__(self, skip_channels: Sequence[int], channels: Sequence[int], output_stride: int = 1, *,
                 deep_channels: int) -> None:
        super().__init__()
        n_extra = {4: 0, 2: 1, 1: 2}[output_stride]
        n_skip = len(skip_channels)
        if len(channels) < n_skip + n_extra:
            raise ValueError(f"decoder: {len(channels)} channel values for {n_skip + n_extra} levels")
        coarse_first = list(skip_channels)[::-1]
        self.skip_blocks = nn.ModuleList()
        cin = deep_channels
        for i, skip in enumerate(coarse_first):
            self.skip_blocks.append(
                nn.Sequential(conv_bn_relu(cin + skip, channels[i]), conv_bn_relu(channels[i], channels[i]))
            )
            cin = channels[i]
        self.extra_blocks = nn.ModuleList()
        for i in range(n_skip, n_skip + n_extra):
            self.extra_blocks.append(conv_bn_relu(cin, channels[i]))
            cin = channels[i]
        self.head = nn.Conv2d(cin, 1, 1)

    def forward(self, skips: list[torch.Tensor], deep: torch.Tensor) -> torch.Tensor:
        """``skips`` fine to coarse (T*_1, T*_2, T*_3), ``deep`` the encoder's stride-32 features."""
        x = deep
        for block, skip in zip(self.skip_blocks, skips[::-1], strict=True):
            up = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([up, skip], 1))
        for block in self.extra_blocks:
            x = block(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False))
        return self.head(x)
