"""Perlin-noise masks: random blob-shaped regions of varied size, shape and number (DRAEM, PRN appendix A.1).

Gradient noise (Perlin 1985) at a random lattice resolution is thresholded; coarse lattices give a few large
blobs, fine lattices many small ones. Everything is drawn from the numpy Generator passed in.
"""

from __future__ import annotations

import numpy as np

#: lattice resolutions are 2**k for k in [0, MAX_SCALE_EXP) on each axis, as in DRAEM
MAX_SCALE_EXP = 6
THRESHOLD = 0.5


def _fade(t: np.ndarray) -> np.ndarray:
    return 6 * t**5 - 15 * t**4 + 10 * t**3


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient noise in about [-0.7, 0.7] of ``shape``; ``res`` lattice cells per axis must divide ``shape``."""
    h, w = shape
    ry, rx = res
    if h % ry or w % rx:
        raise ValueError(f"perlin_noise: resolution {res} must divide shape {shape}")
    dy, dx = h // ry, w // rx
    yy = (np.arange(h) % dy + 0.5) / dy
    xx = (np.arange(w) % dx + 0.5) / dx
    fy, fx = np.meshgrid(yy, xx, indexing="ij")
    angles = 2 * np.pi * rng.random((ry + 1, rx + 1))
    grads = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    cy = np.arange(h) // dy
    cx = np.arange(w) // dx

    def corner(oy: int, ox: int) -> np.ndarray:
        g = grads[(cy + oy)[:, None], (cx + ox)[None, :]]
        return g[..., 0] * (fy - oy) + g[..., 1] * (fx - ox)

    n00, n10, n01, n11 = corner(0, 0), corner(1, 0), corner(0, 1), corner(1, 1)
    ty, tx = _fade(fy), _fade(fx)
    top = n00 + tx * (n01 - n00)
    bottom = n10 + tx * (n11 - n10)
    return np.sqrt(2) * (top + ty * (bottom - top))


def perlin_mask(size: int | tuple[int, int], rng: np.random.Generator, threshold: float = THRESHOLD,
                min_pixels: int = 1, max_tries: int = 20) -> np.ndarray:
    """A bool mask of thresholded Perlin noise with a random lattice resolution and orientation.

    Retries until at least ``min_pixels`` pixels are set (a fine lattice can leave the mask empty); after
    ``max_tries`` the last mask is returned whatever its size.
    """
    h, w = (size, size) if isinstance(size, int) else size
    unit = 2 ** (MAX_SCALE_EXP - 1)
    side_h, side_w = -(-h // unit) * unit, -(-w // unit) * unit  # a multiple of every lattice resolution
    mask = np.zeros((h, w), dtype=bool)
    for _ in range(max_tries):
        ry, rx = 2 ** rng.integers(0, MAX_SCALE_EXP, size=2)
        noise = perlin_noise((side_h, side_w), (int(ry), int(rx)), rng)
        if rng.random() < 0.5:  # a random orientation of the blobs (DRAEM rotates; a transpose keeps it exact)
            noise = noise.T if side_h == side_w else noise
        noise = np.rot90(noise, k=int(rng.integers(0, 4))) if side_h == side_w else noise
        mask = noise[:h, :w] > threshold
        if mask.sum() >= min_pixels:
            break
    return mask
