"""PatchCore scoring: nearest-neighbour distance of each test patch to the memory bank, and the Eq. 7 image score."""

from __future__ import annotations

import torch

from adcore.methods.common.distances import nearest_neighbours


def patch_scores(embedding: torch.Tensor, memory: torch.Tensor, chunk: int = 4096,
                 memory_sq: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, D, h, w) embedding -> distance maps (B, h, w) and the index of each patch's nearest memory item."""
    b, d, h, w = embedding.shape
    queries = embedding.permute(0, 2, 3, 1).reshape(-1, d)
    dist, idx = nearest_neighbours(queries, memory, 1, chunk, memory_sq)
    return dist[:, 0].reshape(b, h, w), idx[:, 0].reshape(b, h * w)


def reweighted_image_score(embedding: torch.Tensor, maps: torch.Tensor, nearest: torch.Tensor,
                           memory: torch.Tensor, k: int, memory_sq: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 7: s = (1 - exp|m_test - m*| / sum_b exp|m_test - m_b|) * s*, over m*'s ``k`` nearest memory items.

    The paper's image score lives on the patch grid: the weight times the largest patch distance.
    """
    b, d = embedding.shape[:2]
    flat_scores = maps.reshape(b, -1)
    worst = flat_scores.argmax(dim=1)
    rows = torch.arange(b, device=embedding.device)
    query = embedding.permute(0, 2, 3, 1).reshape(b, -1, d)[rows, worst]
    nn_item = memory[nearest[rows, worst]]
    _, support = nearest_neighbours(nn_item, memory, k, memory_sq=memory_sq)
    d_support = torch.cdist(query.unsqueeze(1), memory[support]).squeeze(1)
    weight = 1 - torch.softmax(d_support, dim=1)[:, 0]
    return weight * flat_scores.max(dim=1).values
