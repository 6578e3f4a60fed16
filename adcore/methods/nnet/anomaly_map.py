"""Inference maps (Eq. 8): per-stage cosine distances, upsampled to one size, combined across branches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

Pairing = Literal["cross", "same"]
Which = Literal["both", "reverse", "forward"]


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Eq. 2, 1 - cos of the channel vectors at every position, (B, C, H, W) x 2 -> (B, H, W).

    The same values as ``common.distances.cosine_distance_map`` (within 1e-6) from three channel sums:
    F.cosine_similarity's norms over the strided channel dimension made it about 15x slower on the CPU.
    Inference only; the losses keep the shared function.
    """
    dot, aa, bb = (a * b).sum(1), (a * a).sum(1), (b * b).sum(1)
    return 1.0 - dot * (aa * bb).clamp_min(1e-16).rsqrt()


def stage_maps(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], size: tuple[int, int]) -> list[torch.Tensor]:
    """1 - cos(a_i, b_i) per stage, bilinearly upsampled to ``size`` (a map of that size as it is): list of
    (B, h, w)."""
    out = []
    for x, y in zip(a, b, strict=True):
        m = cosine_distance(x, y)
        if tuple(m.shape[-2:]) != tuple(size):
            m = F.interpolate(m.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
        out.append(m)
    return out


def combine(reverse: Sequence[torch.Tensor] | None, forward: Sequence[torch.Tensor] | None,
            pairing: Pairing = "cross") -> torch.Tensor:
    """Eq. 8 with both branches, M1..M3 = reverse stages 1..3 (D_i vs F_i), M4..M6 = forward stages 1..3 (SP_i vs
    P_i), as Table 7 names them ("仅使用逆向蒸馏分支的异常图 M_1, M_2, M_3, 仅使用正向蒸馏分支的异常图 M_4, M_5, M_6").

    - ``pairing="cross"`` (default): Eq. 8 as printed, Score_p = (M1 + M6)(M2 + M5)(M3 + M4): the shallow reverse
      map with the deep forward map. This is the literal reading with the stages numbered in the paper's order i;
    - ``pairing="same"``: same-scale pairs (M1 + M4)(M2 + M5)(M3 + M6), which Eq. 8 would be if the forward maps
      were numbered deep to shallow (the paper does not say so).

    With a single branch (the reverse-only RD4AD baseline, or forward-only) the stage maps are summed, as RD4AD does.
    """
    if reverse is not None and forward is not None:
        if len(reverse) != len(forward):
            raise ValueError("combine: both branches need the same number of stages")
        if pairing not in ("cross", "same"):
            raise ValueError(f"combine: pairing must be 'cross' or 'same', got {pairing!r}")
        partners = list(reversed(list(forward))) if pairing == "cross" else list(forward)
        out = torch.ones_like(reverse[0])
        for m_rev, m_fwd in zip(reverse, partners, strict=True):
            out = out * (m_rev + m_fwd)
        return out
    maps = reverse if reverse is not None else forward
    if maps is None:
        raise ValueError("combine: no branch given")
    return torch.stack(list(maps)).sum(0)


def score_map(reverse: Sequence[torch.Tensor] | None, forward: Sequence[torch.Tensor] | None, which: Which,
              pairing: Pairing = "cross") -> torch.Tensor:
    """Eq. 8 over the maps of the branches ``which`` names (Table 7: M1..M3, M4..M6 or M1..M6)."""
    use_reverse, use_forward = which in ("both", "reverse"), which in ("both", "forward")
    if (use_reverse and reverse is None) or (use_forward and forward is None):
        raise ValueError(f"score_map: {which!r} needs the maps of a branch that was not computed")
    return combine(reverse if use_reverse else None, forward if use_forward else None, pairing)
