"""Cosine-distance losses (paper 1.4). Cosine distance ignores the norm, which in high-dimensional feature space is
less affected by the concentration of Euclidean distances (the paper's reason for choosing it)."""

from __future__ import annotations

import torch

from adcore.methods.common.distances import cosine_distance_map


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
