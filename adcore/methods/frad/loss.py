"""Cosine-distance losses (paper 1.4). Cosine distance ignores the norm, which in high-dimensional feature space is
less affected by the concentration of Euclidean distances (the paper's reason for choosing it)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_distance_map(z: torch.Tensor, z_hat: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Eq. 8 at every position: (B, C, H, W) x 2 -> (B, H, W), 0 for identical directions, 2 for opposite."""
    return 1.0 - F.cosine_similarity(z, z_hat, dim=1, eps=eps)


def reconstruction_loss(z: torch.Tensor, z_hat: torch.Tensor) -> torch.Tensor:
    """Eq. 9 (and eq. 10 with the reconstruction of the shuffled map): mean cosine distance, averaged over the batch."""
    return cosine_distance_map(z, z_hat).mean()


def total_loss(z: torch.Tensor, z_hat: torch.Tensor, z_hat_shuffled: torch.Tensor | None,
               ssl_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 11: L = L_rec + lambda * L_ssl (L_ssl omitted when the shuffle branch is off)."""
    rec = reconstruction_loss(z, z_hat)
    parts = {"loss_rec": float(rec.detach())}
    if z_hat_shuffled is None:
        return rec, parts
    ssl = reconstruction_loss(z, z_hat_shuffled)
    parts["loss_ssl"] = float(ssl.detach())
    return rec + ssl_weight * ssl, parts
