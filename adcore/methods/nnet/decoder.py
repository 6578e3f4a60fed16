"""Reverse student S2 (N-Net section 3.2): a decoder mirroring the teacher's stages, deepest first.

As in RD4AD's de-ResNet, each stage starts with a bottleneck block whose 3x3 conv is replaced by a 2x2 stride-2
transposed conv (the shortcut too), followed by plain bottleneck blocks; it outputs D_i with the teacher's
channels C_i at the teacher's resolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from adcore.methods.common.blocks import Bottleneck


class ReverseStudent(nn.Module):
    """F_C -> [D_1, ..., D_n] in the teacher's (shallow to deep) order; ``blocks`` per stage, shallow to deep."""

    def __init__(self, in_channels: int, channels: Sequence[int], blocks: Sequence[int]) -> None:
        super().__init__()
        if len(blocks) != len(channels):
            raise ValueError(f"decoder blocks {list(blocks)}: need one count per teacher stage ({len(channels)})")
        self.stages = nn.ModuleList()
        cin = in_channels
        for cout, n in zip(reversed(list(channels)), reversed(list(blocks)), strict=True):  # deepest stage first
            width = max(16, cout // 2)
            layers = [Bottleneck(cin, cout, width, "up")] + [Bottleneck(cout, cout, width) for _ in range(n - 1)]
            self.stages.append(nn.Sequential(*layers))
            cin = cout

    def forward(self, x: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
        """``sizes``: the teacher's spatial sizes, shallow to deep (outputs are resized on odd input sizes)."""
        outs = []
        for stage, size in zip(self.stages, reversed(list(sizes)), strict=True):
            x = stage(x)
            if x.shape[-2:] != tuple(size):
                x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
            outs.append(x)
        return outs[::-1]
