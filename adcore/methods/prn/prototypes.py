"""Multi-scale prototypes (PRN 3.1, Eq. 1): per scale, K whole feature maps of normal images found by k-means.

Prototypes are initialised with K feature maps sampled at random and refined by k-means with the L2 distance
between whole (flattened) maps, at most ``max_iter`` iterations, then frozen. K is a fixed share of the normal
training images (10 % in the paper). The residual of a feature map is its element-wise distance |F - P*| to the
nearest prototype P* (Eq. 1: the element-wise Euclidean distance of two scalars is their absolute difference).
"""

from __future__ import annotations


import numpy as np
import torch


def n_prototypes(n_normal: int, ratio: float) -> int:
    """K = ratio x the number of normal images, rounded, at least 1 and at most n_normal."""
    return int(min(max(1, round(ratio * n_normal)), n_normal))


def _sq_dists(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Squared L2 distances (N, K) between rows, computed blockwise without (N, K, D) intermediates."""
    return (x.pow(2).sum(1, keepdim=True) - 2 * x @ centres.T + centres.pow(2).sum(1)[None]).clamp_min_(0)


@torch.no_grad()
def kmeans(x: torch.Tensor, k: int, rng: np.random.Generator, max_iter: int = 300) -> tuple[torch.Tensor, int]:
    """Lloyd's k-means on rows of ``x`` (N, D), initialised by sampling ``k`` distinct rows with ``rng``.

    Returns the centres (k, D) and the number of iterations run. An empty cluster keeps its previous centre.
    """
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"kmeans: k={k} must be in 1..{n}")
    centres = x[torch.as_tensor(np.sort(rng.choice(n, size=k, replace=False)), device=x.device)].clone()
    assign = None
    it = 0
    for it in range(1, max_iter + 1):
        new = _sq_dists(x, centres).argmin(1)
        if assign is not None and torch.equal(new, assign):
            break
        assign = new
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
    return centres, it


def fit_prototypes(features: list[torch.Tensor] | list[np.ndarray], ratio: float, rng: np.random.Generator,
                   max_iter: int = 300, device: torch.device | str = "cpu") -> tuple[list[torch.Tensor], list[int]]:
    """Prototypes per scale from normal feature maps (N, C, H, W) per scale: list of (K, C, H, W), iterations."""
    protos, iters = [], []
    for f in features:
        f = f if isinstance(f, torch.Tensor) else torch.from_numpy(np.array(f, dtype=np.float32))
        n, shape = f.shape[0], tuple(f.shape[1:])
        k = n_prototypes(n, ratio)
        x = f.reshape(n, -1).to(device=device, dtype=torch.float32)
        centres, it = kmeans(x, k, rng, max_iter)
        protos.append(centres.reshape(k, *shape).cpu())
        iters.append(it)
    return protos, iters


def residual(features: torch.Tensor, prototypes: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """|F - P*| with P* the prototype nearest to each whole feature map in L2 (Eq. 1): (B, C, H, W)."""
    b = features.shape[0]
    flat_p = prototypes.reshape(prototypes.shape[0], -1)
    nearest = torch.cat([_sq_dists(features[i:i + chunk].reshape(min(chunk, b - i), -1), flat_p).argmin(1)
                         for i in range(0, b, chunk)]) if b else torch.zeros(0, dtype=torch.long)
    return (features - prototypes[nearest]).abs()


