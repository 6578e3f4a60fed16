"""CFA's coupled-hypersphere loss (Eq. 1-3) on the distances to the nearest memory items.

Distances here are squared Euclidean, as in the reference code's ``_soft_boundary``; they are compared with r^2 in
Eq. 1 and 2, which is the consistent reading of "D(phi(p), c) - r^2". Scoring (anomaly_map.py, Eq. 5) uses the
Euclidean distance itself, as the paper and the reference code do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from adcore.methods.common.distances import squared_distances


def nearest(features: torch.Tensor, bank: torch.Tensor, n: int) -> torch.Tensor:
    """(N, n) squared distances to the n nearest memory items, nearest first."""
    n = min(int(n), bank.shape[0])
    return squared_distances(features, bank).topk(n, dim=1, largest=False, sorted=True).values


def attraction_loss(dist_k: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Eq. 1: mean over patches and the K nearest centres of max(0, D - r^2)."""
    return F.relu(dist_k - r.pow(2)).mean()


def repulsion_loss(dist_j: torch.Tensor, r: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eq. 2: mean over patches and the J hard negatives of max(0, r^2 - D - alpha)."""
    return F.relu(r.pow(2) - dist_j - alpha).mean()


def split_neighbours(dist: torch.Tensor, k: int, j: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted (N, >= K+J) distances -> (K nearest, the (K+1)..(K+J)-th nearest = hard negatives).

    The reference code slices the negatives as ``dist[:, :, J:]``, which is only right when K == J.
    """
    return dist[:, :k], dist[:, k:k + j]


def cfa_loss(features: torch.Tensor, bank: torch.Tensor, r: torch.Tensor, *, k: int, j: int, alpha: float,
             scale: float, use_rep: bool = True) -> dict[str, torch.Tensor]:
    """Eq. 3 (times 1/nu = ``scale``) for (N, D') adapted patch features against the (M, D') memory bank."""
    dist = nearest(features, bank, k + (j if use_rep else 0))
    dist_k, dist_j = split_neighbours(dist, k, j)
    att = scale * attraction_loss(dist_k, r)
    rep = scale * repulsion_loss(dist_j, r, alpha) if use_rep and dist_j.shape[1] > 0 else att.new_zeros(())
    return {"loss": att + rep, "att": att, "rep": rep}
