"""Normal-feature store, NFS (N-Net section 3.3): a learnable memory that recalls F_3 as a mix of normal items.

The paper (section 3.3): "NFS 计算 q 与存储模块中各项 m_i 的余弦相似度 w_i, 并将 w_i 中较小项收缩为 0, 再重新归一化得到
hat w_i, 得到召回向量为 hat q = sum_i hat w_i m_i" - the NFS computes the cosine similarity w_i of the query q to each
item m_i, shrinks the small w_i to 0, renormalises them into hat w_i, and recalls hat q = sum_i hat w_i m_i.
So, as printed:

- the weights are the cosine similarities themselves, no softmax (``addressing="cosine"``). MemAE (Gong et al.
  2019, which the paper cites for the entropy loss) takes a softmax over the similarities; at temperature 1 and
  cosine similarities in [-1, 1] that softmax is nearly uniform (every weight close to 1/N), so a 1/N threshold
  cuts arbitrary items. It is kept as ``addressing="softmax"`` for comparison;
- "shrinks the small w_i to 0" is hard shrinkage: w_i is kept where w_i > lambda and set to 0 elsewhere. The paper
  does not print lambda; it follows MemAE, lambda = ``shrink`` / N with ``shrink`` in [1, 3] (default 1/N). MemAE
  trains a continuous relaxation ``relu(w - lambda) * w / (|w - lambda| + eps)``, which equals w above lambda up to
  eps; here the exact form is used;
- "renormalises": the kept weights are divided by their sum (MemAE's L1 normalisation), so the recall is a convex
  combination of the items. Negative similarities are below any lambda > 0 and never kept. A query with no weight
  above lambda recalls its most similar item (the paper does not say; MemAE's L1 normalisation, which divides by
  max(sum, eps), would recall the zero vector, which is no combination of normal items).

Initialisation: the paper is silent ("矩阵 M 在训练阶段优化可学习参数": M is learned in training); MemAE draws the
items uniformly in +-1/sqrt(C), which this module does at construction (``init="uniform"``). With the default
``init="features"`` the method then overwrites them with N sampled training F_3 vectors (:func:`sample_rows`,
seeded; :meth:`NormalFeatureStore.init_from`): MemAE's memory lives in a latent space that is learned together with
it, whereas these queries are fixed pretrained features (non-negative, mean |x| of several units), and uniform
small items recall vectors two orders of magnitude smaller than F_3, far from any normal feature.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Addressing = Literal["cosine", "softmax"]


class NormalFeatureStore(nn.Module):
    def __init__(self, channels: int, items: int = 50, shrink: float = 1.0, addressing: Addressing = "cosine",
                 eps: float = 1e-12) -> None:
        super().__init__()
        self.memory = nn.Parameter(torch.empty(items, channels))
        bound = 1.0 / channels**0.5  # MemAE's initialisation
        nn.init.uniform_(self.memory, -bound, bound)
        self.threshold = shrink / items
        self.addressing = addressing
        self.eps = eps

    @torch.no_grad()
    def init_from(self, vectors: torch.Tensor) -> None:
        """Set the items to ``vectors`` (N, C), e.g. sampled training F_3 vectors (:func:`sample_rows`)."""
        if tuple(vectors.shape) != tuple(self.memory.shape):
            raise ValueError(f"NFS init: expected {tuple(self.memory.shape)} vectors, got {tuple(vectors.shape)}")
        self.memory.copy_(vectors.to(self.memory))

    def address(self, queries: torch.Tensor) -> torch.Tensor:
        """(Q, C) queries -> (Q, N) weights: cosine similarity (or its softmax), hard shrinkage, renormalisation."""
        sim = F.normalize(queries, dim=1) @ F.normalize(self.memory, dim=1).t()
        w = torch.softmax(sim, dim=1) if self.addressing == "softmax" else sim
        kept = torch.where(w > self.threshold, w, torch.zeros_like(w))
        total = kept.sum(dim=1, keepdim=True)
        nearest = F.one_hot(sim.argmax(dim=1), sim.shape[1]).to(w.dtype)
        return torch.where(total > 0, kept / total.clamp_min(self.eps), nearest)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> recalled features (B, C, H, W) and the weights (B*H*W, N)."""
        b, c, h, w = x.shape
        queries = x.permute(0, 2, 3, 1).reshape(-1, c)
        weights = self.address(queries)
        recalled = (weights @ self.memory).reshape(b, h, w, c).permute(0, 3, 1, 2)
        return recalled.contiguous(), weights


def sample_rows(stage: np.ndarray, n: int, seed: int) -> torch.Tensor:
    """``n`` channel vectors (n, C) of a feature stage (images, C, H, W), at positions drawn with ``seed``.

    Positions (image, y, x) are drawn without replacement from all images x H x W (with replacement only when there
    are fewer positions than ``n``), by ``np.random.default_rng(seed).choice``.
    """
    images, _, h, w = stage.shape
    total = images * h * w
    flat = np.random.default_rng(seed).choice(total, size=n, replace=total < n)
    img, rest = np.divmod(flat, h * w)
    y, x = np.divmod(rest, w)
    rows = np.stack([np.asarray(stage[i, :, yy, xx], dtype=np.float32) for i, yy, xx in zip(img, y, x, strict=True)])
    return torch.from_numpy(rows)


def entropy_loss(weights: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Eq. 5, L_query = sum_i -w_i log w_i, averaged over queries."""
    return (-weights * torch.log(weights + eps)).sum(dim=1).mean()
