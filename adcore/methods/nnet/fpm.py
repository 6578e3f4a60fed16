"""Feature projection module, FPM (N-Net Fig. 3a): direction-aware channel reweighting.

The teacher's raw features F_i are mapped to an "adapted" space P_i = FPM(F_i) in which the forward student is
distilled, so that the student cannot simply copy the teacher's raw features. The module only reweights: every
output value is the input value times two sigmoid weights (one per row, one per column), so a zero input stays zero.
"""

from __future__ import annotations

import torch
from torch import nn


class FeatureProjection(nn.Module):
    """Pool along W and along H ((1, W) and (H, 1) kernels), concatenate, reduce channels by ``reduction``, split,
    restore channels, sigmoid, and multiply the input by both direction weights.

    The paper does not give r; ``reduction=32`` with at least 8 hidden channels follows coordinate attention
    (Hou et al. 2021), which the figure matches.

    ``sources``: how many kinds of input share the module's convolutions. Each kind has a BatchNorm of its own
    (``norms[source]``), so the running statistics of one kind are never mixed with another's: N-Net's deepest
    teacher FPM projects both F_3 (forward branch) and the recalled F'_3 (reverse branch), whose magnitudes differ
    by orders of magnitude (network.py).
    """

    def __init__(self, channels: int, reduction: int = 32, min_hidden: int = 8, sources: int = 1) -> None:
        super().__init__()
        if sources < 1:
            raise ValueError(f"FeatureProjection: sources must be >= 1, got {sources}")
        hidden = max(min_hidden, channels // reduction)
        self.reduce = nn.Conv2d(channels, hidden, 1, bias=False)
        self.norms = nn.ModuleList(nn.BatchNorm2d(hidden) for _ in range(sources))
        self.act = nn.ReLU(inplace=True)
        self.to_h = nn.Conv2d(hidden, channels, 1)
        self.to_w = nn.Conv2d(hidden, channels, 1)

    def weights(self, x: torch.Tensor, source: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Row weights (B, C, H, 1) and column weights (B, C, 1, W), each in (0, 1)."""
        h, w = x.shape[-2:]
        along_h = x.mean(dim=3, keepdim=True)  # (B, C, H, 1): the (1, W) pooling kernel
        along_w = x.mean(dim=2, keepdim=True).transpose(2, 3)  # (B, C, W, 1): the (H, 1) kernel
        y = self.act(self.norms[source](self.reduce(torch.cat([along_h, along_w], dim=2))))  # (B, C/r, H + W, 1)
        y_h, y_w = torch.split(y, [h, w], dim=2)
        return torch.sigmoid(self.to_h(y_h)), torch.sigmoid(self.to_w(y_w.transpose(2, 3)))

    def forward(self, x: torch.Tensor, source: int = 0) -> torch.Tensor:
        a_h, a_w = self.weights(x, source)
        return x * a_h * a_w
