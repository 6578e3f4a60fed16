"""CFA's memory bank: built once from the untrained descriptor, then frozen (reference code; paper Sec. 3.2).

The bank is the mean of phi_0(p) over the training images at each spatial position (HW centres), reduced by
K-means to HW / gamma_c centres when gamma_c > 1. Its size depends on the feature map, never on the number of
training images (paper Table 1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


@torch.no_grad()
def mean_per_position(outputs: Iterable[torch.Tensor]) -> torch.Tensor:
    """Running mean of (B, D', H, W) descriptor outputs over all images -> (H*W, D') centres."""
    total, count = None, 0
    for out in outputs:
        s = out.detach().double().sum(0)
        total = s if total is None else total + s
        count += out.shape[0]
    if total is None:
        raise ValueError("memory bank: no training features")
    mean = (total / count).float()
    return mean.flatten(1).T.contiguous()


@torch.no_grad()
def kmeans(points: torch.Tensor, n_clusters: int, *, iters: int = 100, seed: int = 0,
           tol: float = 1e-6) -> torch.Tensor:
    """Lloyd's K-means with k-means++ seeding (seeded, deterministic) -> (n_clusters, D) centres."""
    n = points.shape[0]
    if not 1 <= n_clusters <= n:
        raise ValueError(f"kmeans: n_clusters={n_clusters} must be in 1..{n}")
    gen = torch.Generator().manual_seed(int(seed))
    x = points.float().cpu()
    centres = [x[int(torch.randint(n, (1,), generator=gen))]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, n_clusters):
        probs = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1.0 / n)
        idx = int(torch.multinomial(probs, 1, generator=gen))
        centres.append(x[idx])
        d2 = torch.minimum(d2, ((x - x[idx]) ** 2).sum(1))
    c = torch.stack(centres)
    for _ in range(iters):
        assign = torch.cdist(x, c).argmin(1)
        new = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=n_clusters).float()
        empty = counts == 0
        new = new / counts.clamp_min(1)[:, None]
        new[empty] = c[empty]  # keep a centre that lost all its points
        shift = (new - c).pow(2).sum().item()
        c = new
        if shift <= tol:
            break
    return c.to(points.device)


@torch.no_grad()
def build_memory_bank(outputs: Callable[[], Iterable[torch.Tensor]], gamma_c: int, seed: int = 0) -> torch.Tensor:
    """(M, D') frozen memory bank from a generator of untrained descriptor outputs; M = H*W // gamma_c."""
    centres = mean_per_position(outputs())
    if gamma_c > 1:
        centres = kmeans(centres, max(1, centres.shape[0] // int(gamma_c)), seed=seed)
    return centres
