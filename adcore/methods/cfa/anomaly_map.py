"""CFA's scoring function (Eq. 5) and the CFA++ ensemble of a resized and a cropped view.

Scores use Euclidean distances, as Eq. 4-5 define D ("Euclidean distance in this paper") and as the reference code
does (``dist = torch.sqrt(dist)`` before the top-K and the softmin). Only the loss (loss.py) compares squared
distances with r^2. The softmin is not scale-invariant, so squared distances would give other certainties.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from adcore.methods.common.distances import squared_distances


def anomaly_score(dist_k: torch.Tensor) -> torch.Tensor:
    """Eq. 5 on (..., K) Euclidean distances to the K nearest memory items, nearest first: the softmin certainty
    of the nearest match times its distance."""
    return F.softmin(dist_k, dim=-1)[..., 0] * dist_k[..., 0]


def patch_scores(features: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """(N, D') adapted patch features -> (N,) Eq. 5 scores on Euclidean distances to the ``k`` nearest items."""
    k = min(int(k), bank.shape[0])
    squared = squared_distances(features, bank).topk(k, dim=1, largest=False, sorted=True).values
    return anomaly_score(squared.sqrt())


def align_and_average(full: torch.Tensor, crop: torch.Tensor, image_size: int, crop_size: int) -> torch.Tensor:
    """CFA++: average the cropped view's map into the centre region it covers on the resized view's grid.

    Both maps must be on one scale already (:meth:`CFAView.standardize`): each view is trained separately, and
    their raw distances are not comparable.

    The crop starts at ``top`` pixels of the resized image; on a grid of h cells over ``image_size`` pixels that is
    ``top * h / image_size`` cells, and the crop spans ``crop_size * h / image_size`` cells. Outside the crop only
    the resized view has a score.
    """
    b, h, w = full.shape
    top = int(round((image_size - crop_size) / 2.0))
    y0, x0 = int(round(top * h / image_size)), int(round(top * w / image_size))
    ch, cw = int(round(crop_size * h / image_size)), int(round(crop_size * w / image_size))
    ch, cw = min(ch, h - y0), min(cw, w - x0)
    if crop.shape[-2:] != (ch, cw):
        crop = F.interpolate(crop[:, None], size=(ch, cw), mode="bilinear", align_corners=False)[:, 0]
    out = full.clone()
    out[:, y0:y0 + ch, x0:x0 + cw] = 0.5 * (full[:, y0:y0 + ch, x0:x0 + cw] + crop)
    return out
