"""Global feature extraction module, GFE (paper 1.3, eqs. 4-6).

Convolutions mix information only between neighbours, so a reconstruction network leans on local patterns. GFE gives
every position an explicit summary of the whole map: the map t (C_i x H_i x W_i) is cut into K x K regions, each
region is averaged (eq. 5), compressed by a fully connected layer to C_i / (K*K) channels (eq. 6; one layer shared
by all regions), and the K*K compressed vectors are flattened into one global vector g of C_i channels, which is
repeated over H_i x W_i and concatenated with t (output: 2 C_i channels).

A map smaller than K x K (the bottleneck of a 128-px input: 2 x 2 against K = 4) is not defined by the paper, whose
256-px input gives a 4 x 4 bottleneck. ``"keep"`` keeps K: adaptive pooling then repeats positions, so several of
the K*K regions are copies. ``"clamp"`` uses K' = min(K, H_i, W_i) and compresses each of the K'*K' regions to
C_i / (K'*K') channels, so g still has C_i channels and no region is a copy.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

SmallMapGrid = Literal["keep", "clamp"]


def level_grid(grid: int, size: tuple[int, int] | None, small_map_grid: SmallMapGrid) -> int:
    """The grid GFE uses on a map of ``size`` (H_i, W_i): K, or with ``"clamp"`` min(K, H_i, W_i)."""
    if small_map_grid == "keep":
        return grid
    if size is None:
        raise ValueError("small_map_grid='clamp' needs the feature map size")
    return max(1, min(grid, *size))


class GlobalFeatureExtraction(nn.Module):
    def __init__(self, channels: int, grid: int = 4) -> None:
        super().__init__()
        self.channels, self.grid = channels, grid
        self.compressed = max(1, channels // (grid * grid))  # C_i / (K*K); at least 1 for tiny test widths
        self.fc = nn.Linear(channels, self.compressed)

    @property
    def out_channels(self) -> int:
        return self.channels + self.compressed * self.grid * self.grid

    def global_vector(self, t: torch.Tensor) -> torch.Tensor:
        """g: (B, C_i) for C_i divisible by K*K."""
        # Eq. 5: region means. Adaptive pooling also covers H_i, W_i that are not multiples of K (or smaller than K).
        regions = F.adaptive_avg_pool2d(t, self.grid)  # (B, C_i, K, K)
        r = regions.flatten(2).transpose(1, 2)  # (B, K*K, C_i)
        r_hat = self.fc(r)  # eq. 6: (B, K*K, C_i / (K*K))
        return r_hat.flatten(1)  # flattened over the K x K grid

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        g = self.global_vector(t)
        g_map = g[:, :, None, None].expand(-1, -1, t.shape[-2], t.shape[-1])
        return torch.cat([t, g_map], dim=1)
