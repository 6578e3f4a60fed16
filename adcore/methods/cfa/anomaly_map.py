"""CFA's scoring function (Eq. 5) and the CFA++ ensemble of a resized and a cropped view."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def anomaly_score(dist_k: torch.Tensor) -> torch.Tensor:
    """Eq. 5: softmin over the K nearest distances (certainty of the nearest match) times the nearest distance."""
    return F.softmin(dist_k, dim=-1)[..., 0] * dist_k[..., 0]


def align_and_average(full: torch.Tensor, crop: torch.Tensor, image_size: int, crop_size: int) -> torch.Tensor:
    """CFA++: average the cropped view's map into the centre region it covers on the resized view's grid.

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
