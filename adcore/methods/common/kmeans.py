"""Lloyd's k-means on the rows of a matrix, seeded: CFA's memory-bank reduction and PRN's prototypes."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from adcore.methods.common.distances import squared_distances


@torch.no_grad()
def kmeans(x: torch.Tensor, k: int, *, init: Literal["sample", "k-means++"] = "sample",
           rng: np.random.Generator | None = None, max_iter: int = 300) -> tuple[torch.Tensor, int]:
    """Centres (k, D) of the rows of ``x`` (N, D) and the number of iterations run.

    ``init="sample"``: ``k`` distinct rows drawn with ``rng`` (PRN); ``"k-means++"``: D^2-weighted seeding drawn
    with ``rng`` (CFA's reference). Iterates until the assignment no longer changes or ``max_iter``; an empty
    cluster keeps its previous centre.
    """
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"kmeans: k={k} must be in 1..{n}")
    rng = rng if rng is not None else np.random.default_rng(0)
    x = x.float()
    if init == "sample":
        centres = x[torch.as_tensor(np.sort(rng.choice(n, size=k, replace=False)), device=x.device)].clone()
    else:
        centres = _kmeans_plus_plus(x, k, rng)
    assign = None
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007  (it is used after the loop: the iteration count returned)
        new = squared_distances(x, centres).argmin(1)
        if assign is not None and torch.equal(new, assign):
            break
        assign = new
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
    return centres, it


def _kmeans_plus_plus(x: torch.Tensor, k: int, rng: np.random.Generator) -> torch.Tensor:
    picks = [int(rng.integers(x.shape[0]))]
    d2 = squared_distances(x, x[picks[0]][None])[:, 0].double().cpu().numpy()
    for _ in range(1, k):
        total = d2.sum()
        picks.append(int(rng.choice(x.shape[0], p=d2 / total)) if total > 0 else int(rng.integers(x.shape[0])))
        d2 = np.minimum(d2, squared_distances(x, x[picks[-1]][None])[:, 0].double().cpu().numpy())
    return x[picks].clone()
