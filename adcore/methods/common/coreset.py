"""Greedy k-center coreset (PatchCore Alg. 1) on a random projection, exact and fast by lazy evaluation."""

from __future__ import annotations

import heapq
import math

import numpy as np
import torch

from adcore.progress import progress


def greedy_coreset(features: torch.Tensor, n_select: int, projection_dim: int = 128, seed: int = 0,
                   show_progress: bool = False, leaf_size: int = 256) -> torch.Tensor:
    """Indices of the greedy k-center coreset (paper Alg. 1) of ``features``, on a random projection.

    Exact greedy selection, made fast by lazy evaluation: points are grouped into compact leaves of a random
    projection tree; each leaf keeps an upper bound of its largest distance to the coreset, and new centres are
    applied to a leaf only when its bound is the largest (a small matrix product over all centres it has not seen),
    skipping centres that the triangle inequality proves too far to matter. The next centre is the argmax of an
    up-to-date leaf whose bound tops every other leaf's, which is exactly the plain algorithm's choice.
    """
    n = features.shape[0]
    n_select = max(1, min(int(n_select), n))
    gen = torch.Generator().manual_seed(seed)
    x = features.detach().float().cpu()
    if projection_dim < x.shape[1]:
        proj = torch.randn(x.shape[1], projection_dim, generator=gen) / math.sqrt(projection_dim)
        x = x @ proj
    start = int(torch.randint(n, (1,), generator=gen))
    if n_select == n:
        return torch.cat([torch.tensor([start]), torch.tensor([i for i in range(n) if i != start])])
    sel = _lazy_k_center(x.numpy().astype(np.float32, copy=False), n_select, start, leaf_size, seed, show_progress)
    return torch.from_numpy(sel)


def _tree_leaves(x: np.ndarray, leaf: int, seed: int) -> list[np.ndarray]:
    """Random projection tree: split at the median along the axis between two far points until leaves are small."""
    rng = np.random.default_rng(seed)
    leaves, stack = [], [np.arange(x.shape[0])]
    while stack:
        idx = stack.pop()
        if idx.shape[0] <= leaf:
            leaves.append(idx)
            continue
        pts = x[idx]
        a = pts[rng.integers(len(idx))]
        far1 = pts[np.argmax(((pts - a) ** 2).sum(1))]
        far2 = pts[np.argmax(((pts - far1) ** 2).sum(1))]
        k = max(leaf, (len(idx) // 2 // leaf) * leaf)  # left part a multiple of leaf: leaves stay full
        part = np.argpartition(pts @ (far2 - far1), k - 1)
        stack.extend([idx[part[k:]], idx[part[:k]]])
    return leaves


def _lazy_k_center(x: np.ndarray, n_select: int, start: int, leaf: int, seed: int, show_progress: bool) -> np.ndarray:
    leaves = _tree_leaves(x, leaf, seed)
    nb = len(leaves)
    members = np.empty((nb, leaf), dtype=np.int64)
    for b, ids in enumerate(leaves):
        members[b, : len(ids)] = ids
        members[b, len(ids):] = ids[0]  # pad with copies of a member: same distances, never a new choice
    xb = x[members]
    sq = np.einsum("bld,bld->bl", xb, xb)
    centre = xb.mean(1)
    radius = np.sqrt(((xb - centre[:, None]) ** 2).sum(-1).max(1))
    min_d = np.full((nb, leaf), np.inf, dtype=np.float32)  # squared distance to the nearest selected point
    bound = np.full(nb, np.inf, dtype=np.float32)  # max of min_d per leaf (exact once the leaf is up to date)
    applied = np.zeros(nb, dtype=np.int64)  # leaf b has seen sel[:applied[b]]
    sel = np.empty(n_select, dtype=np.int64)
    sel_sq = np.empty(n_select, dtype=np.float32)
    sel[0], sel_sq[0] = start, x[start] @ x[start]
    heap = [(-np.inf, b) for b in range(nb)]
    for i in progress(range(1, n_select), desc="coreset", enabled=show_progress):
        while True:
            b = heap[0][1]
            if applied[b] == i:
                break
            heapq.heappop(heap)
            centres, c_sq = x[sel[applied[b]:i]], sel_sq[applied[b]:i]
            if np.isfinite(bound[b]):
                # |p - c| >= |centre_b - c| - radius_b: centres farther than that cannot lower any distance here.
                gap = np.sqrt(((centres - centre[b]) ** 2).sum(1)) - radius[b]
                near = gap < np.sqrt(bound[b]) * (1 + 1e-5) + 1e-6
                centres, c_sq = centres[near], c_sq[near]
            if len(centres):
                d2 = (sq[b][:, None] - 2.0 * (xb[b] @ centres.T) + c_sq[None, :]).min(1)
                np.minimum(min_d[b], np.maximum(d2, 0.0), out=min_d[b])
                bound[b] = min_d[b].max()
            applied[b] = i
            heapq.heappush(heap, (-float(bound[b]), b))
        b = heap[0][1]
        sel[i] = members[b, int(np.argmax(min_d[b]))]
        sel_sq[i] = x[sel[i]] @ x[sel[i]]
    return sel
