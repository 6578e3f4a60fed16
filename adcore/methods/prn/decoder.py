"""The U-Net-like decoder of PRN (Fig. 3) and the whole skip-branch network.

The decoder starts from the coarsest skip output T*_3, upsamples by 2 and concatenates the next finer skip output
at each step (T*_2, T*_1), then keeps upsampling without skips down to ``output_stride`` (1 in the paper: the map
has the shape of the ground-truth mask) and ends with a 1x1 convolution to one logit per pixel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from adcore.methods.prn.attention import MSAStack
from adcore.methods.prn.fusion import MultiScaleFusion
from adcore.methods.prn.prototypes import residual


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Decoder(nn.Module):
    """Skips ordered fine to coarse (strides 4, 8, 16 of the input); output at ``output_stride`` (1, 2 or 4)."""

    def __init__(self, skip_channels: Sequence[int], channels: Sequence[int], output_stride: int = 1) -> None:
        super().__init__()
        n_extra = {4: 0, 2: 1, 1: 2}[output_stride]
        n_skip = len(skip_channels)
        if len(channels) < n_skip + n_extra:
            raise ValueError(f"decoder: {len(channels)} channel values for {n_skip + n_extra} levels")
        coarse_first = list(skip_channels)[::-1]
        self.skip_blocks = nn.ModuleList()
        cin = 0
        for i, skip in enumerate(coarse_first):
            self.skip_blocks.append(nn.Sequential(_conv(cin + skip, channels[i]), _conv(channels[i], channels[i])))
            cin = channels[i]
        self.extra_blocks = nn.ModuleList()
        for i in range(n_skip, n_skip + n_extra):
            self.extra_blocks.append(_conv(cin, channels[i]))
            cin = channels[i]
        self.head = nn.Conv2d(cin, 1, 1)

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        x = None
        for block, skip in zip(self.skip_blocks, skips[::-1]):
            if x is not None:
                x = torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False), skip], 1)
            else:
                x = skip
            x = block(x)
        for block in self.extra_blocks:
            x = block(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False))
        return self.head(x)


class PRNNet(nn.Module):
    """Everything of PRN after the frozen encoder: MP residuals, MF, MSA, MF, decoder (Fig. 3). Returns logits.

    ``width``: None keeps the paper's 2c^j channels per scale in MSA; an integer first projects the concatenated
    features and residuals to that many channels (a 1x1 convolution; the cpu profile's economy).
    """

    def __init__(self, channels: Sequence[int], heights: Sequence[int], prototype_shapes: Sequence[Sequence[int]],
                 *, use_mp: bool = True, use_msa: bool = True, use_mf: bool = True, msa_depth: int = 3,
                 msa_dim: int | None = None, width: int | None = None, decoder_channels: Sequence[int] = (),
                 output_stride: int = 1) -> None:
        super().__init__()
        self.use_mp = use_mp
        self.n_scales = len(channels)
        if use_mp:
            for j, shape in enumerate(prototype_shapes):
                self.register_buffer(f"prototypes{j}", torch.zeros(*shape))
        self.mf_features = MultiScaleFusion(channels, use_mf)
        self.mf_residuals = MultiScaleFusion(channels, use_mf and use_mp)
        joined = [c * (2 if use_mp else 1) for c in channels]
        skip = [width or c for c in joined]
        self.inputs = nn.ModuleList([
            nn.Sequential(nn.Conv2d(cj, sj, 1, bias=False), nn.BatchNorm2d(sj), nn.ReLU(inplace=True)) if width
            else nn.BatchNorm2d(cj) for cj, sj in zip(joined, skip)])
        self.msa = nn.ModuleList([MSAStack(s, h, msa_dim or max(8, s // 4), msa_depth if use_msa else 0)
                                  for s, h in zip(skip, heights)])
        self.mf_out = MultiScaleFusion(skip, use_mf)
        self.decoder = Decoder(skip, decoder_channels, output_stride)

    def prototypes(self, j: int) -> torch.Tensor:
        return getattr(self, f"prototypes{j}")

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        feats = [f.float() for f in feats]
        fused = self.mf_features(feats)
        if self.use_mp:
            with torch.no_grad():  # prototypes are fixed: the residual needs no gradient
                res = [residual(f, self.prototypes(j)) for j, f in enumerate(feats)]
            joined = [torch.cat([a, b], 1) for a, b in zip(fused, self.mf_residuals(res))]
        else:
            joined = fused
        t = [msa(inp(x)) for msa, inp, x in zip(self.msa, self.inputs, joined)]
        return self.decoder(self.mf_out(t))
