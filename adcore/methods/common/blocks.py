"""ResNet bottleneck blocks shared by the reconstruction and distillation networks (FRAD, N-Net)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Mode = Literal["same", "down", "up"]


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class Bottleneck(nn.Module):
    """1x1 reduce to ``width`` -> 3x3 -> 1x1 restore to ``cout``, BatchNorm + ReLU, residual shortcut.

    ``mode="down"``: the 3x3 conv and a 1x1 projection shortcut have stride 2. ``mode="up"``: both are 2x2
    transposed convs with stride 2 (RD4AD's de-ResNet). A projection shortcut also appears when ``cin != cout``.
    """

    def __init__(self, cin: int, cout: int, width: int, mode: Mode = "same") -> None:
        super().__init__()
        reduce = nn.Conv2d(cin, width, 1, bias=False)  # layers are created in reading order (seeded init)
        if mode == "up":
            middle: nn.Module = nn.ConvTranspose2d(width, width, 2, stride=2, bias=False)
        else:
            middle = nn.Conv2d(width, width, 3, stride=2 if mode == "down" else 1, padding=1, bias=False)
        self.body = nn.Sequential(
            reduce, nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            middle, nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )
        if mode == "up":
            self.shortcut: nn.Module = nn.Sequential(nn.ConvTranspose2d(cin, cout, 2, stride=2, bias=False),
                                                     nn.BatchNorm2d(cout))
        elif mode == "down" or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=2 if mode == "down" else 1, bias=False),
                                          nn.BatchNorm2d(cout))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))
