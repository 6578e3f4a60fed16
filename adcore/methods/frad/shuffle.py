"""Grid feature shuffle (paper 1.2): the self-supervised task that makes the reconstruction network learn the layout.

The map is cut into K x K square cells; the cells are put back in a random order (one permutation per sample) and
the network must reconstruct the original map from the shuffled one. Where H or W is not a multiple of K, only the
top-left (K * (H // K)) x (K * (W // K)) part is cut into cells and the remaining border rows/columns stay in place
(the paper's 256-px input gives 32 x 32 maps, a multiple of K = 4).
"""

from __future__ import annotations

import numpy as np
import torch


def random_permutations(batch: int, k: int, rng: np.random.Generator | None = None) -> torch.Tensor:
    """(batch, k*k) int64 permutations of the grid cells, from ``rng`` or else torch's global RNG."""
    if rng is not None:
        return torch.from_numpy(np.stack([rng.permutation(k * k) for _ in range(batch)]).astype(np.int64))
    return torch.argsort(torch.rand(batch, k * k), dim=1)


def _cells(x: torch.Tensor, k: int) -> tuple[torch.Tensor, int, int]:
    """(B, C, H, W) -> (B, k*k, C, h, w) cells of the divisible part, in row-major cell order."""
    b, c, height, width = x.shape
    h, w = height // k, width // k
    if h == 0 or w == 0:
        raise ValueError(f"feature map {height}x{width} is smaller than the {k}x{k} shuffle grid")
    part = x[:, :, : h * k, : w * k].reshape(b, c, k, h, k, w)
    return part.permute(0, 2, 4, 1, 3, 5).reshape(b, k * k, c, h, w), h, w


def _uncells(cells: torch.Tensor, like: torch.Tensor, k: int, h: int, w: int) -> torch.Tensor:
    b, _, c, _, _ = cells.shape
    part = cells.reshape(b, k, k, c, h, w).permute(0, 3, 1, 4, 2, 5).reshape(b, c, k * h, k * w)
    out = like.clone()
    out[:, :, : k * h, : k * w] = part
    return out


def grid_shuffle(x: torch.Tensor, k: int, perm: torch.Tensor) -> torch.Tensor:
    """z' : cell j of the output is cell ``perm[b, j]`` of the input (paper Fig. 3)."""
    cells, h, w = _cells(x, k)
    index = perm.to(x.device).view(x.shape[0], k * k, 1, 1, 1).expand_as(cells)
    return _uncells(torch.gather(cells, 1, index), x, k, h, w)


def grid_unshuffle(x: torch.Tensor, k: int, perm: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`grid_shuffle` with the same ``perm``."""
    return grid_shuffle(x, k, torch.argsort(perm, dim=1))
