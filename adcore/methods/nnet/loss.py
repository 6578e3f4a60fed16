"""N-Net losses (Eq. 1-5, 7) and the alignment weight schedule (Eq. 3)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, cast, overload

import torch

from adcore.methods.common.distances import cosine_distance_map

LossType = Literal["cosine", "l1", "l2"]


def position_distance(a: torch.Tensor, b: torch.Tensor, kind: LossType = "cosine") -> torch.Tensor:
    """Distance of the channel vectors at every position, (B, C, H, W) x 2 -> (B, H, W): Eq. 2's 1 - cos
    (``cosine``), the L1 distance sum_c |a - b| (``l1``) or the squared L2 distance sum_c (a - b)^2 (``l2``).

    Fig. 9 trains N-Net with "常用的 L_1 损失、L_2 损失和余弦相似度损失" and explains the cosine's lead by "L_1 损失和
    L_2 损失都容易受向量维度的影响, 损失值的范围不固定" (L1 and L2 depend on the vector dimension, their range is not
    fixed): so L1 and L2 replace M_i(h, w) in Eq. 1 by a distance of the two channel vectors, summed over channels.
    """
    if kind == "cosine":
        return cosine_distance_map(a, b)
    if kind == "l1":
        return (a - b).abs().sum(1)
    if kind == "l2":
        return (a - b).square().sum(1)
    raise ValueError(f"distill loss type must be 'cosine', 'l1' or 'l2', got {kind!r}")


def distill_loss(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], kind: LossType = "cosine") -> torch.Tensor:
    """Eq. 1: sum over stages of the mean per-position distance (also L_RKD, Eq. 4, and L_align, Eq. 3); the
    distance is ``kind`` (Fig. 9; the paper's and RD4AD's: cosine)."""
    # A tensor: there is at least one stage (sum() of no stages would be the int 0).
    return cast(torch.Tensor, sum(position_distance(x, y, kind).mean() for x, y in zip(a, b, strict=True)))


def align_loss(sf: Sequence[torch.Tensor], p: Sequence[torch.Tensor], kind: LossType = "cosine") -> torch.Tensor:
    """Eq. 3's L(SF_i, P_i), unweighted, with the teacher side P_i detached: only the forward student S1 learns
    from it, FPM_T does not.

    The paper describes L_align only as a constraint on the student, towards P as a fixed target: "本文通过特征
    蒸馏约束正向学生网络 S_1 提取的原始特征 SF_i 对齐教师网络 T 的适应特征 P_i" (the distillation constrains the raw
    features SF_i of the forward student S1 to align with the adapted features P_i of the teacher T), "正向学生网络
    S_1 直接学习教师映射特征 P_i" (S1 learns P_i directly), and states its purpose as "为了加快收敛和保证特征映射模块
    的作用" (to speed up convergence and to preserve the effect of the FPM). Pulling P_i towards the raw features of
    a randomly initialised student would work against the latter; FPM_T is constrained by the reverse branch
    (L_RKD) and by L_KD, as in section 3.2.
    """
    return distill_loss(sf, [x.detach() for x in p], kind)


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
