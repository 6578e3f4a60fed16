"""The reconstruction network (paper section 1, Fig. 1): a convolutional autoencoder with skip connections.

Encoder: 3 modules of 3 ResNet-style bottleneck layers (1x1 reduce, 3x3, 1x1 restore, residual). Decoder: the mirror
image, where the upsampling bottleneck replaces its 3x3 convolution by a 2x2 transposed convolution with stride 2.
Encoder features reach the matching decoder module through skip connections, are concatenated with the previous
decoder output and fused by a 1x1 convolution.

Choices the paper leaves open (Fig. 1 is not in the text we have), taken here and kept configurable where it matters:
- each encoder module halves the resolution in its first bottleneck (3x3 stride 2, projection shortcut 1x1 stride 2)
  and each decoder module doubles it in its last bottleneck, so no skip connection runs at the input resolution
  (a full-resolution skip would let the network copy z, anomalies included);
- all modules have the same width (``width``, default C), bottleneck reduction 4, BatchNorm + ReLU as in ResNet;
- GFE sits at the bottleneck, between encoder and decoder; a 1x1 head maps the decoder output back to C channels
  with no activation (z may be negative).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adcore.methods.common.blocks import Bottleneck, conv_bn_relu
from adcore.methods.frad.gfe import GlobalFeatureExtraction


def _match(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Align a decoder map with its skip where odd sizes made them differ by a row or column."""
    return x if tuple(x.shape[-2:]) == tuple(size) else F.interpolate(x, size=size, mode="bilinear",
                                                                      align_corners=False)


class FRADNetwork(nn.Module):
    """The feature autoencoder: z (B, C, H, W) -> its reconstruction, same shape."""

    def __init__(self, channels: int, width: int | None = None, *, gfe: bool = True, grid: int = 4,
                 reduction: int = 4, modules: int = 3, layers: int = 3) -> None:
        super().__init__()
        width = width or channels
        self.channels, self.width = channels, width
        mid = max(1, width // reduction)
        self.encoder = nn.ModuleList()
        for i in range(modules):
            first = Bottleneck(channels if i == 0 else width, width, mid, "down")
            self.encoder.append(nn.Sequential(first, *[Bottleneck(width, width, mid, "same")
                                                       for _ in range(layers - 1)]))
        self.gfe = GlobalFeatureExtraction(width, grid) if gfe else None
        bottom = self.gfe.out_channels if self.gfe is not None else width
        self.decoder = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for i in range(modules):
            in_ch = bottom if i == 0 else width
            ins = [in_ch] + [width] * (layers - 1)
            blocks = [Bottleneck(c, width, mid, "same") for c in ins[:-1]]
            self.decoder.append(nn.Sequential(*blocks, Bottleneck(ins[-1], width, mid, "up")))
            if i < modules - 1:  # skip from the encoder module at the same resolution, fused by a 1x1 conv
                self.fuse.append(conv_bn_relu(2 * width, width, kernel=1))
        self.head = nn.Conv2d(width, channels, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        skips = []
        x = z
        for module in self.encoder:
            x = module(x)
            skips.append(x)
        if self.gfe is not None:
            x = self.gfe(x)
        skips = skips[:-1][::-1]  # the deepest output is the decoder's input, not a skip
        for i, module in enumerate(self.decoder):
            x = module(x)
            if i < len(self.fuse):
                x = self.fuse[i](torch.cat([_match(x, skips[i].shape[-2:]), skips[i]], dim=1))
        return self.head(_match(x, z.shape[-2:]))
