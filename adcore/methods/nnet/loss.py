"""N-Net losses (Eq. 1-5, 7) and the alignment weight schedule (Eq. 3)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast, overload

import torch

from adcore.methods.common.distances import cosine_distance_map


def distill_loss(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    """Eq. 1: sum over stages of the mean per-position cosine distance (also L_RKD, Eq. 4, and L_align, Eq. 3)."""
    # A tensor: there is at least one stage (sum() of no stages would be the int 0).
    return cast(torch.Tensor, sum(cosine_distance_map(x, y).mean() for x, y in zip(a, b, strict=True)))


def align_beta(epoch: int, align_epochs: int = 20) -> float:
    """Eq. 3's beta: 1 during the first ``align_epochs`` epochs (0-based epoch < align_epochs), 0 after."""
    return 1.0 if epoch < align_epochs else 0.0


@overload
def total_loss(rkd: torch.Tensor, kd: torch.Tensor, align: torch.Tensor, query: torch.Tensor, *,
               alpha: float = ..., beta: float = ..., delta: float = ...) -> torch.Tensor: ...
@overload
def total_loss(rkd: torch.Tensor | float, kd: torch.Tensor | float, align: torch.Tensor | float,
               query: torch.Tensor | float, *, alpha: float = ..., beta: float = ...,
               delta: float = ...) -> torch.Tensor | float: ...
def total_loss(rkd: torch.Tensor | float, kd: torch.Tensor | float, align: torch.Tensor | float,
               query: torch.Tensor | float, *, alpha: float = 1.2, beta: float = 1.0,
               delta: float = 0.002) -> torch.Tensor | float:
    """Eq. 7: L_RKD + alpha L_KD + beta L(SF, P) + delta L_query (``align`` is the unweighted L(SF_i, P_i))."""
    return rkd + alpha * kd + beta * align + delta * query
