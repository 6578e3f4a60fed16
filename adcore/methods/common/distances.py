"""Distances between feature vectors: dense squared Euclidean, blocked k-nearest neighbours, per-position cosine."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, D) x (M, D) -> (N, M) squared Euclidean distances, clamped at 0 against rounding; differentiable."""
    d = (a * a).sum(1, keepdim=True) + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return d.clamp_min_(0.0) if not d.requires_grad else d.clamp_min(0.0)


def nearest_neighbours(queries: torch.Tensor, memory: torch.Tensor, k: int = 1, chunk: int = 4096,
                       memory_sq: torch.Tensor | None = None,
                       max_block: int = 1 << 23) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distances and indices of the k nearest memory rows for each query row (exact, blocked).

    |q - m|^2 = |q|^2 - 2 q.m + |m|^2: one fused addmm gives |m|^2 - 2 q.m per block (the search only needs
    that, since |q|^2 is the same for every memory row), then min (k = 1) or topk, and |q|^2 is added to the k
    winners only. Blocks hold at most ``max_block`` floats (32 MiB) whatever ``chunk`` says.
    ``memory_sq``: |m|^2 when the caller already has it.
    """
    mem_sq = (memory * memory).sum(1) if memory_sq is None else memory_sq
    rows = max(1, min(int(chunk), max_block // max(1, memory.shape[0])))
    dists, idxs = [], []
    for start in range(0, queries.shape[0], rows):
        q = queries[start:start + rows]
        d2 = torch.addmm(mem_sq, q, memory.T, beta=1, alpha=-2)
        if k == 1:
            d, i = d2.min(dim=1, keepdim=True)
        else:
            d, i = torch.topk(d2, k, dim=1, largest=False)
        d += (q * q).sum(1, keepdim=True)
        dists.append(d.clamp_min_(0).sqrt_())
        idxs.append(i)
    return torch.cat(dists), torch.cat(idxs)


def cosine_distance_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - cos of the channel vectors at every position: (B, C, H, W) x 2 -> (B, H, W); 0 same direction, 2 opposite."""
    return 1.0 - F.cosine_similarity(a, b, dim=1)
