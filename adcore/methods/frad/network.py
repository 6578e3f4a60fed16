"""The reconstruction network (paper section 1, Fig. 1): a convolutional autoencoder with skip connections.

Encoder: 3 modules of 3 ResNet-style bottleneck layers (1x1 reduce, 3x3, 1x1 restore, residual). Decoder: the mirror
image, where the upsampling bottleneck replaces its 3x3 convolution by a 2x2 transposed convolution with stride 2.
Encoder features reach the matching decoder module through skip connections, are concatenated with the previous
decoder output and fused by a 1x1 convolution.

Choices the paper leaves open (Fig. 1 is not in the text we have), each a switch; the first value is the default:
- ``downsample``: ``"first"``: each encoder module halves the resolution in its first bottleneck (3x3 stride 2,
  projection shortcut 1x1 stride 2, the ResNet convention) and each decoder module doubles it in its last, so no
  skip connection runs at the input resolution (a full-resolution skip would let the network copy z, anomalies
  included); ``"last"``: each encoder module halves in its last bottleneck and each decoder module doubles in its
  first (same map sizes, the other layers one level finer); ``"deep"``: the first encoder module keeps the
  resolution, the other two halve it in their first bottleneck (a bottleneck of 1/4 of z instead of 1/8, e.g. 4 x 4
  rather than 2 x 2 at 128 px; the shallowest skip then runs at z's resolution) and the last decoder module keeps it;
- ``gfe_at``: ``"bottleneck"``: GFE between encoder and decoder only; ``"every_level"``: also on each skip connection
  (each encoder level the decoder receives), whose 1x1 fusion then takes the skip's 2 x width channels;
- ``small_map_grid``: GFE's K on maps smaller than K x K (gfe.py);
- all modules have the same width (``width``, default C), bottleneck reduction 4, BatchNorm + ReLU as in ResNet;
  a 1x1 head maps the decoder output back to C channels with no activation (z may be negative).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from adcore.methods.common.blocks import Bottleneck, Mode, conv_bn_relu
from adcore.methods.frad.gfe import GlobalFeatureExtraction, SmallMapGrid, level_grid

Downsample = Literal["first", "last", "deep"]
GFEAt = Literal["bottleneck", "every_level"]


def _match(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Align a decoder map with its skip where odd sizes made them differ by a row or column."""
    return x if tuple(x.shape[-2:]) == tuple(size) else F.interpolate(x, size=size, mode="bilinear",
                                                                      align_corners=False)


def _layer_modes(resample: Mode, strided: bool, layers: int, at_start: bool) -> list[Mode]:
    """Modes of one module's bottlenecks: one ``resample`` layer (first or last) when ``strided``, else all same."""
    modes: list[Mode] = ["same"] * layers
    if strided:
        modes[0 if at_start else -1] = resample
    return modes


def encoder_sizes(size: tuple[int, int], strided: list[bool]) -> list[tuple[int, int]]:
    """Output (H, W) of each encoder module for an input of ``size`` (a stride-2 3x3 or 1x1 conv gives ceil(n/2))."""
    out, (h, w) = [], size
    for s in strided:
        if s:
            h, w = (h + 1) // 2, (w + 1) // 2
        out.append((h, w))
    return out


class FRADNetwork(nn.Module):
    """The feature autoencoder: z (B, C, H, W) -> its reconstruction, same shape.

    ``input_size`` (z's H, W) is needed only by ``small_map_grid="clamp"``, whose GFE layers depend on map sizes.
    """

    def __init__(self, channels: int, width: int | None = None, *, gfe: bool = True, grid: int = 4,
                 reduction: int = 4, modules: int = 3, layers: int = 3, downsample: Downsample = "first",
                 gfe_at: GFEAt = "bottleneck", small_map_grid: SmallMapGrid = "keep",
                 input_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        if downsample not in ("first", "last", "deep"):
            raise ValueError(f"unknown downsample {downsample!r}")
        if gfe_at not in ("bottleneck", "every_level"):
            raise ValueError(f"unknown gfe_at {gfe_at!r}")
        width = width or channels
        self.channels, self.width = channels, width
        mid = max(1, width // reduction)
        strided = [not (downsample == "deep" and i == 0) for i in range(modules)]
        at_start = downsample != "last"
        sizes: list[tuple[int, int] | None] = (list(encoder_sizes(input_size, strided)) if input_size is not None
                                               else [None] * modules)

        def new_gfe(level: int) -> GlobalFeatureExtraction:
            return GlobalFeatureExtraction(width, level_grid(grid, sizes[level], small_map_grid))

        self.encoder = nn.ModuleList()
        for i in range(modules):
            modes = _layer_modes("down", strided[i], layers, at_start)
            ins = [channels if i == 0 else width] + [width] * (layers - 1)
            self.encoder.append(nn.Sequential(*[Bottleneck(c, width, mid, m) for c, m in zip(ins, modes,
                                                                                                strict=True)]))
        self.gfe = new_gfe(modules - 1) if gfe else None
        bottom = self.gfe.out_channels if self.gfe is not None else width
        # fusion i takes the skip from encoder module modules-2-i
        skip_gfes = [new_gfe(level) for level in range(modules - 2, -1, -1)] if gfe and gfe_at == "every_level" else []
        skip_channels = [g.out_channels for g in skip_gfes] or [width] * (modules - 1)
        self.skip_gfe = nn.ModuleList(skip_gfes) if skip_gfes else None
        self.decoder = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for i in range(modules):
            # the mirror of encoder module modules-1-i: upsample in the last layer where that one downsampled first
            modes = _layer_modes("up", strided[modules - 1 - i], layers, not at_start)
            ins = [bottom if i == 0 else width] + [width] * (layers - 1)
            self.decoder.append(nn.Sequential(*[Bottleneck(c, width, mid, m) for c, m in zip(ins, modes,
                                                                                                strict=True)]))
            if i < modules - 1:  # skip from the encoder module at the same resolution, fused by a 1x1 conv
                self.fuse.append(conv_bn_relu(width + skip_channels[i], width, kernel=1))
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
                skip = self.skip_gfe[i](skips[i]) if self.skip_gfe is not None else skips[i]
                x = self.fuse[i](torch.cat([_match(x, skip.shape[-2:]), skip], dim=1))
        return self.head(_match(x, z.shape[-2:]))
