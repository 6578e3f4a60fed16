"""Normal-feature store, NFS (N-Net section 3.3): a learnable memory that recalls F3 as a mix of normal items.

Each channel vector q of the deepest teacher stage queries a memory M (N x C). Weights are the softmax of the
cosine similarities of q to the items, weights below ``shrink / N`` are shrunk to zero, the rest renormalised to
sum 1, and the recall is the weighted sum of items. The recall is therefore a convex combination of learned normal
items, which an anomalous query cannot escape. The paper cites the entropy loss of MemAE (Gong et al. 2019) and
does not print the softmax, the threshold or N; those follow MemAE (softmax over cosine similarity, hard shrinkage
with lambda in [1/N, 3/N] in its continuous form ``relu(w - l) * w / (|w - l| + eps)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class NormalFeatureStore(nn.Module):
    def __init__(self, channels: int, items: int = 50, shrink: float = 1.0, eps: float = 1e-12) -> None:
        super().__init__()
        self.memory = nn.Parameter(torch.empty(items, channels))
        bound = 1.0 / channels**0.5
        nn.init.uniform_(self.memory, -bound, bound)
        self.threshold = shrink / items
        self.eps = eps

    def address(self, queries: torch.Tensor) -> torch.Tensor:
        """(Q, C) queries -> (Q, N) weights: softmax of cosine similarity, hard shrinkage, renormalisation."""
        sim = F.normalize(queries, dim=1) @ F.normalize(self.memory, dim=1).t()
        w = torch.softmax(sim, dim=1)
        shifted = w - self.threshold
        shrunk = F.relu(shifted) * w / (shifted.abs() + self.eps)
        total = shrunk.sum(dim=1, keepdim=True)
        # A query whose weights are all below the threshold (only when all are equal) keeps the softmax weights.
        return torch.where(total > 0, shrunk / total.clamp_min(self.eps), w)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> recalled features (B, C, H, W) and the weights (B*H*W, N)."""
        b, c, h, w = x.shape
        queries = x.permute(0, 2, 3, 1).reshape(-1, c)
        weights = self.address(queries)
        recalled = (weights @ self.memory).reshape(b, h, w, c).permute(0, 3, 1, 2)
        return recalled.contiguous(), weights


def entropy_loss(weights: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Eq. 5, L_query = sum_i -w_i log w_i, averaged over queries."""
    return (-weights * torch.log(weights + eps)).sum(dim=1).mean()
