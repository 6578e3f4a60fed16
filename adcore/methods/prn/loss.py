"""PRN loss (Eq. 5): Smooth L1 between the predicted map and the mask plus lambda x focal loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.5, gamma: float = 4.0) -> torch.Tensor:
    """Binary focal loss (Lin et al. 2017), mean over pixels: -alpha_t (1 - p_t)^gamma log p_t."""
    log_pt = -F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pt = log_pt.exp()
    alpha_t = alpha * target + (1 - alpha) * (1 - target)
    return (-alpha_t * (1 - pt).pow(gamma) * log_pt).mean()


def prn_loss(logits: torch.Tensor, target: torch.Tensor, lam: float = 5.0, alpha: float = 0.5,
             gamma: float = 4.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 5 on logits (B, 1, h, w) and binary masks of the same shape. Returns the loss and its parts."""
    smooth = F.smooth_l1_loss(torch.sigmoid(logits), target)
    focal = focal_loss(logits, target, alpha, gamma)
    return smooth + lam * focal, {"smooth_l1": float(smooth.detach()), "focal": float(focal.detach())}
