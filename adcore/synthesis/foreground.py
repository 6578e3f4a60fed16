"""A simple estimate of where the object is, from normal images, so generated anomalies land on the object.

Estimate (documented, deliberately simple): take the pixel-wise median of up to 64 normal images; the background
colour is the median of that image's one-pixel border; the distance of every pixel of the median image to the
background colour is thresholded with Otsu's method (at least ``min_contrast`` grey levels), the mask is closed
and small holes filled. When the estimate covers almost the whole image (>= ``texture_fraction``) or almost
nothing (< ``min_fraction``), or the border itself is not uniform, the category is treated as a texture and the
whole image is the foreground (PRN: "the whole image for textures").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass
class Foreground:
    mask: np.ndarray  # HxW bool
    kind: str  # "object" (estimated) or "texture" (whole image)
    reason: str

    @property
    def fraction(self) -> float:
        return float(self.mask.mean())


def _otsu(values: np.ndarray) -> float:
    hist, edges = np.histogram(values, bins=256)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(centres[int(np.argmax(between))])


def whole_image(size: int, reason: str = "whole image") -> Foreground:
    return Foreground(np.ones((size, size), dtype=bool), "texture", reason)


def estimate_foreground(images: np.ndarray, *, min_contrast: float = 20.0, texture_fraction: float = 0.85,
                        min_fraction: float = 0.05, border_spread: float = 40.0) -> Foreground:
    """Foreground from normal images (N, H, W, 3) uint8 (see the module docstring)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"estimate_foreground: expected (N, H, W, 3) images, got shape {images.shape}")
    h, w = images.shape[1:3]
    step = max(1, len(images) // 64)
    median = np.median(images[::step].astype(np.float32), axis=0)  # (H, W, 3)
    border = np.concatenate([median[0], median[-1], median[:, 0], median[:, -1]], axis=0)
    background = np.median(border, axis=0)
    spread = float(np.percentile(np.linalg.norm(border - background, axis=1), 90))
    if spread > border_spread:
        return Foreground(np.ones((h, w), bool), "texture", f"non-uniform border (spread {spread:.1f})")
    dist = np.linalg.norm(median - background, axis=2)
    threshold = max(_otsu(dist), min_contrast)
    mask = dist > threshold
    mask = ndimage.binary_closing(mask, iterations=max(1, h // 64))
    mask = ndimage.binary_fill_holes(mask)
    mask = ndimage.binary_dilation(mask, iterations=max(1, h // 128))  # edges of the object count too
    frac = float(mask.mean())
    if frac >= texture_fraction:
        return Foreground(np.ones((h, w), bool), "texture", f"estimate covers {frac:.0%} of the image")
    if frac < min_fraction:
        return Foreground(np.ones((h, w), bool), "texture", f"estimate covers only {frac:.1%} of the image")
    return Foreground(mask, "object", f"median-image contrast > {threshold:.1f} against the border colour")
