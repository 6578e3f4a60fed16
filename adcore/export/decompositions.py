"""ATen ops the ONNX exporter cannot translate, rewritten in ops it can, applied to the exported program.

- ``adaptive_avg_pool3d`` over the channel axis only (:func:`adcore.methods.common.patch_features.pool_channels`,
  PatchCore and FRAD): output channel ``o`` averages input channels ``floor(o C / O)`` .. ``ceil((o + 1) C / O)``,
  written as a few index gathers with per-channel weights (the bins are at most ``ceil(C / O) + 1`` wide);
- ``cdist`` with p = 2 (PatchCore's image-score reweighting): the square root of summed squared differences.
"""

from __future__ import annotations

import torch

aten = torch.ops.aten


def channel_adaptive_avg_pool3d(x: torch.Tensor, output_size: list[int]) -> torch.Tensor:
    """``adaptive_avg_pool3d`` of (N, 1, C, H, W) to (O, H, W): adaptive pooling of the channel axis alone."""
    c, h, w = x.shape[-3:]
    o, oh, ow = (int(v) for v in output_size)
    if (oh, ow) != (h, w):
        return NotImplemented  # spatial pooling: not used by any method; left to the exporter (which refuses it)
    starts = [(i * c) // o for i in range(o)]
    ends = [-(-((i + 1) * c) // o) for i in range(o)]
    terms = []
    for j in range(max(e - s for s, e in zip(starts, ends, strict=True))):
        index = torch.tensor([min(s + j, e - 1) for s, e in zip(starts, ends, strict=True)], device=x.device)
        weight = torch.tensor([float(s + j < e) / (e - s) for s, e in zip(starts, ends, strict=True)],
                              dtype=x.dtype, device=x.device)
        terms.append(x.index_select(-3, index) * weight.view(o, 1, 1))
    return sum(terms[1:], terms[0])


def euclidean_cdist(x1: torch.Tensor, x2: torch.Tensor, p: float = 2.0, compute_mode: int | None = None):
    """``cdist`` for p = 2, (..., P, D) x (..., R, D) -> (..., P, R)."""
    if p != 2.0:
        return NotImplemented
    return (x1.unsqueeze(-2) - x2.unsqueeze(-3)).square().sum(-1).sqrt()


#: Passed to ``ExportedProgram.run_decompositions``; composite and underlying overloads both, whichever is traced.
ONNX_DECOMPOSITIONS = {
    aten.adaptive_avg_pool3d.default: channel_adaptive_avg_pool3d,
    aten._adaptive_avg_pool3d.default: channel_adaptive_avg_pool3d,
    aten.cdist.default: euclidean_cdist,
    aten._cdist_forward.default: euclidean_cdist,
}
