"""PRN's network: everything after the frozen encoder (Fig. 3): the frozen multi-scale prototypes (buffers),
MF on features and residuals, MSA, MF on the skip branches (stages 1-3), and the decoder, which starts from the
encoder's deepest stage (stage 4, stride 32). Returns logits."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from adcore.methods.prn.attention import AttentionScale, MSAStack
from adcore.methods.prn.decoder import Decoder
from adcore.methods.prn.fusion import MultiScaleFusion
from adcore.methods.prn.prototypes import residual


class PRNNetwork(nn.Module):
    """Everything of PRN after the frozen encoder: MP residuals, MF, MSA, MF, decoder (Fig. 3). Returns logits.

    ``channels`` and ``heights`` list every encoder stage, fine to coarse: all but the last are skip branches
    (prototypes, MF, MSA: stages 1-3, "we use prototypes of three scales, j in {1, 2, 3}"), the last (stage 4,
    stride 32) is the decoder's input. ``width``: None keeps the paper's 2c^j channels per scale in MSA; an integer
    first projects the concatenated features and residuals to that many channels (a 1x1 convolution; the cpu
    profile's economy). ``attention_scale``: Eq. 3's divisor, c^s ("c") or sqrt(c^s) ("sqrt_c").
    """

    def __init__(self, channels: Sequence[int], heights: Sequence[int], prototype_shapes: Sequence[Sequence[int]],
                 *, use_mp: bool = True, use_msa: bool = True, use_mf: bool = True, msa_depth: int = 3,
                 msa_dim: int | None = None, width: int | None = None, decoder_channels: Sequence[int] = (),
                 output_stride: int = 1, attention_scale: AttentionScale = "c") -> None:
        super().__init__()
        if len(channels) < 2 or len(heights) != len(channels):
            raise ValueError(f"PRNNetwork: expected skip stages and one deepest stage, got channels {list(channels)} "
                             f"and heights {list(heights)}")
        deep_channels = channels[-1]
        channels, heights = list(channels[:-1]), list(heights[:-1])
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
            else nn.BatchNorm2d(cj) for cj, sj in zip(joined, skip, strict=True)])
        self.msa = nn.ModuleList([MSAStack(s, h, msa_dim or max(8, s // 4), msa_depth if use_msa else 0,
                                           attention_scale) for s, h in zip(skip, heights, strict=True)])
        self.mf_out = MultiScaleFusion(skip, use_mf)
        self.decoder = Decoder(skip, decoder_channels, output_stride, deep_channels=deep_channels)

    def prototypes(self, j: int) -> torch.Tensor:
        return getattr(self, f"prototypes{j}")

    def forward(self, stages: list[torch.Tensor]) -> torch.Tensor:
        """Logits (B, 1, H / output_stride, W / output_stride) from the encoder stages, fine to coarse: the skip
        stages, then the deepest one."""
        if len(stages) != self.n_scales + 1:
            raise ValueError(f"PRNNetwork: expected {self.n_scales + 1} encoder stages, got {len(stages)}")
        feats = [f.float() for f in stages[:-1]]
        deep = stages[-1].float()
        fused = self.mf_features(feats)
        if self.use_mp:
            with torch.no_grad():  # prototypes are fixed: the residual needs no gradient
                res = [residual(f, self.prototypes(j)) for j, f in enumerate(feats)]
            joined = [torch.cat([a, b], 1) for a, b in zip(fused, self.mf_residuals(res), strict=True)]
        else:
            joined = fused
        t = [msa(inp(x)) for msa, inp, x in zip(self.msa, self.inputs, joined, strict=True)]
        return self.decoder(self.mf_out(t), deep)
