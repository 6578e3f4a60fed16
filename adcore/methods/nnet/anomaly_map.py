"""Inference maps (Eq. 8): per-stage cosine distances, upsampled to one size, combined across branches."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from adcore.methods.common.distances import cosine_distance_map


def stage_maps(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], size: tuple[int, int]) -> list[torch.Tensor]:
    """1 - cos(a_i, b_i) per stage, bilinearly upsampled to ``size``: list of (B, h, w)."""
    out = []
    for x, y in zip(a, b, strict=True):
        m = cosine_distance_map(x, y).unsqueeze(1)
        out.append(F.interpolate(m, size=size, mode="bilinear", align_corners=False).squeeze(1))
    return out


def combine(reverse: Sequence[torch.Tensor] | None, forward: Sequence[torch.Tensor] | None) -> torch.Tensor:
    """Eq. 8 with both branches: (M1 + M6)(M2 + M5)(M3 + M4), where M1..M3 = reverse stages 1..3 and
    M4..M6 = forward stages 1..3 (the paper pairs the shallow reverse map with the deep forward map).

    With a single branch (the reverse-only RD4AD baseline, or forward-only) the stage maps are summed, as RD4AD does.
    """
    if reverse is not None and forward is not None:
        if len(reverse) != len(forward):
            raise ValueError("combine: both branches need the same number of stages")
        out = torch.ones_like(reverse[0])
        for m_rev, m_fwd in zip(reverse, reversed(list(forward)), strict=True):
            out = out * (m_rev + m_fwd)
        return out
    maps = reverse if reverse is not None else forward
    if maps is None:
        raise ValueError("combine: no branch given")
    return torch.stack(list(maps)).sum(0)
