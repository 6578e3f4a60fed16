"""CFA's network: per view, the patch descriptor phi, the radius r and the frozen memory bank (paper Sec. 3, 4.1).

Patch features: each backbone stage (C2, C3, C4 = strides 4, 8, 16) is 3x3 average pooled so that every position
sees its neighbourhood, upsampled to the largest map and concatenated (D channels). The descriptor phi is a 1x1
CoordConv (Liu et al. 2018) to D / gamma_d channels: the coordinate channels let the adapted features depend on
where in the image a patch is, which the memory bank (one centre per position) uses.

Initialisation: the paper says "He's initializer"; the reference code (utils/coordconv.py) builds the inner
``nn.Conv2d`` and keeps PyTorch's default, which is He-uniform with a = sqrt(5), i.e. weights and bias uniform in
+-1/sqrt(fan_in) (std 1/sqrt(3 fan_in)). That scale sets the initial distances to the memory bank, hence how far
r = 1e-5 is from them and the size of the loss, so it follows the reference, not He-normal for ReLU
(std sqrt(2 / fan_in), sqrt(6) times larger, initial squared distances 6 times larger).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from adcore.methods.common.patch_features import pooled_patch_features


def add_coords(x: torch.Tensor) -> torch.Tensor:
    """Append two channels with the x and y position in [-1, 1] (CoordConv's AddCoords, without the radius)."""
    b, _, h, w = x.shape
    ys = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=x.dtype) if h > 1 else x.new_zeros(1)
    xs = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=x.dtype) if w > 1 else x.new_zeros(1)
    yy = ys.view(1, 1, h, 1).expand(b, 1, h, w)
    xx = xs.view(1, 1, 1, w).expand(b, 1, h, w)
    return torch.cat([x, xx, yy], dim=1)


def reference_init_(conv: nn.Conv2d) -> None:
    """The reference descriptor's initialisation (PyTorch's Conv2d default, He-uniform with a = sqrt(5)): weight and
    bias uniform in +-1/sqrt(fan_in), fan_in = input channels x kernel area (coordinate channels included)."""
    fan_in = conv.in_channels // conv.groups * math.prod(conv.kernel_size)
    bound = 1.0 / math.sqrt(fan_in)
    nn.init.uniform_(conv.weight, -bound, bound)
    if conv.bias is not None:
        nn.init.uniform_(conv.bias, -bound, bound)


class CoordConv1x1(nn.Module):
    """1x1 convolution over the input plus two coordinate channels, initialised as the reference code does."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels + 2, out_channels, kernel_size=1)
        reference_init_(self.conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(add_coords(x))


class PatchDescriptor(nn.Module):
    """phi: backbone stage maps -> target-oriented features (B, D', H, W) with D' = D // gamma_d."""

    def __init__(self, in_channels: int, gamma_d: int = 1) -> None:
        super().__init__()
        if in_channels // gamma_d < 1:
            raise ValueError(f"gamma_d={gamma_d} leaves no channels of D={in_channels}")
        self.in_channels = int(in_channels)
        self.out_channels = int(in_channels) // int(gamma_d)
        self.layer = CoordConv1x1(self.in_channels, self.out_channels)

    def forward(self, stages: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.layer(pooled_patch_features(stages))


class Radius(nn.Module):
    """The learnable hypersphere radius r (starts at 1e-5 in the reference code)."""

    def __init__(self, value: float = 1e-5) -> None:
        super().__init__()
        self.r = nn.Parameter(torch.tensor([float(value)]))

    def forward(self) -> torch.Tensor:
        return self.r


class CFAView(nn.Module):
    """One model of the ensemble (CFA has one, CFA++ two): descriptor, radius, and the memory bank as a buffer.

    ``scaled`` (CFA++): the view also holds the mean and standard deviation of its raw maps on validation images,
    fitted after training, so that :meth:`standardize` brings both views' maps to one scale before they are averaged.
    """

    def __init__(self, in_channels: int, gamma_d: int, r_init: float, bank_size: int = 0,
                 scaled: bool = False) -> None:
        super().__init__()
        self.descriptor = PatchDescriptor(in_channels, gamma_d)
        self.radius = Radius(r_init)
        self.register_buffer("bank", torch.zeros(bank_size, self.descriptor.out_channels))
        self.scaled = scaled
        if scaled:
            self.register_buffer("map_mean", torch.zeros(()))
            self.register_buffer("map_std", torch.ones(()))

    bank: torch.Tensor
    map_mean: torch.Tensor
    map_std: torch.Tensor

    @torch.no_grad()
    def fit_scale(self, maps: torch.Tensor) -> None:
        """Store the mean and standard deviation of raw maps (any shape) of normal validation images."""
        values = maps.detach().double().flatten()
        std = float(values.std()) if values.numel() > 1 else 0.0
        self.map_mean.fill_(float(values.mean()))
        self.map_std.fill_(std if math.isfinite(std) and std > 0 else 1.0)

    def standardize(self, maps: torch.Tensor) -> torch.Tensor:
        """(maps - mean) / std with the fitted validation statistics; unchanged for an unscaled view."""
        if not self.scaled:
            return maps
        return (maps - self.map_mean.to(maps.dtype)) / self.map_std.to(maps.dtype)


class CFANetwork(nn.Module):
    """Everything CFA learns or fits, one :class:`CFAView` per view name (``main``, or ``resized`` + ``cropped``)."""

    def __init__(self, views: Sequence[str], in_channels: int, gamma_d: int, r_init: float,
                 bank_sizes: dict[str, int] | None = None) -> None:
        super().__init__()
        sizes = bank_sizes or {}
        scaled = len(views) > 1  # an ensemble (CFA++) averages its views' maps on one scale
        self.views = nn.ModuleDict({name: CFAView(in_channels, gamma_d, r_init, sizes.get(name, 0), scaled)
                                    for name in views})

    def view(self, name: str) -> CFAView:
        """The view called ``name`` (typed: to a type checker, nn.ModuleDict holds plain Modules)."""
        return cast(CFAView, self.views[name])

    def named_views(self) -> list[tuple[str, CFAView]]:
        """(name, view) pairs in the order of ``views``."""
        return [(name, self.view(name)) for name in self.views]
