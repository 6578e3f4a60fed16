"""Multi-scale prototypes (PRN 3.1, Eq. 1): per scale, K whole feature maps of normal images found by k-means.

Prototypes are initialised with K feature maps sampled at random and refined by k-means with the L2 distance
between whole (flattened) maps, at most ``max_iter`` iterations, then frozen. K is a fixed share of the normal
training images (10 % in the paper). The residual of a feature map is its element-wise distance |F - P*| to the
nearest prototype P* (Eq. 1: the element-wise Euclidean distance of two scalars is their absolute difference).
"""

from __future__ import annotations

import numpy as np
import torch

from adcore.methods.common.distances import squared_distances
from adcore.methods.common.kmeans import kmeans


def n_prototypes(n_normal: int, ratio: float) -> int:
    """K = ratio x the number of normal images, rounded, at least 1 and at most n_normal."""
    return int(min(max(1, round(ratio * n_normal)), n_normal))


def fit_prototypes(features: list[torch.Tensor] | list[np.ndarray], ratio: float, rng: np.random.Generator,
                   max_iter: int = 300, device: torch.device | str = "cpu") -> tuple[list[torch.Tensor], list[int]]:
    """Prototypes per scale from normal feature maps (N, C, H, W) per scale: list of (K, C, H, W), iterations."""
    protos, iters = [], []
    for f in features:
        f = f if isinstance(f, torch.Tensor) else torch.from_numpy(np.array(f, dtype=np.float32))
        n, shape = f.shape[0], tuple(f.shape[1:])
        k = n_prototypes(n, ratio)
        x = f.reshape(n, -1).to(device=device, dtype=torch.float32)
        centres, it = kmeans(x, k, init="sample", rng=rng, max_iter=max_iter)
        protos.append(centres.reshape(k, *shape).cpu())
        iters.append(it)
    return protos, iters


def residual(features: torch.Tensor, prototypes: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """|F - P*| with P* the prototype nearest to each whole feature map in L2 (Eq. 1): (B, C, H, W)."""
    b = features.shape[0]
    flat_p = prototypes.reshape(prototypes.shape[0], -1)
    nearest = torch.cat([squared_distances(features[i:i + chunk].reshape(min(chunk, b - i), -1), flat_p).argmin(1)
                         for i in range(0, b, chunk)]) if b else torch.zeros(0, dtype=torch.long)
    return (features - prototypes[nearest]).abs()


