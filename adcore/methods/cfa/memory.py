"""CFA's memory bank: built once from the untrained descriptor, then frozen (reference code; paper Sec. 3.2).

The bank is the mean of phi_0(p) over the training images at each spatial position (HW centres), reduced by
K-means to HW / gamma_c centres when gamma_c > 1. Its size depends on the feature map, never on the number of
training images (paper Table 1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch

from adcore.methods.common.kmeans import kmeans


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
def build_memory_bank(outputs: Callable[[], Iterable[torch.Tensor]], gamma_c: int, seed: int = 0) -> torch.Tensor:
    """(M, D') frozen memory bank from a generator of untrained descriptor outputs; M = H*W // gamma_c."""
    centres = mean_per_position(outputs())
    if gamma_c > 1:
        centres, _ = kmeans(centres, max(1, centres.shape[0] // int(gamma_c)), init="k-means++",
                            rng=np.random.default_rng(seed), max_iter=100)
    return centres
