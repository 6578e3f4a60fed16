"""Simulated anomalies (PRN appendix A.1, Fig. 7): a Perlin-noise region inside the target area, filled by blending
(Eq. 6) an anomaly source A into the normal image N.

- heterogenous (HEA): A = Aug1(a random texture) (DTD in the paper, any folder or procedural textures here),
- homologous (HOA): A = a normal image after Aug1, cut into an 8 x 8 grid whose cells are shuffled.
"""

from __future__ import annotations

import numpy as np

from adcore.synthesis.extended import Anomaly, aug1, blend
from adcore.synthesis.perlin import perlin_mask


def shuffle_grid(image: np.ndarray, rng: np.random.Generator, grid: int = 8) -> np.ndarray:
    """Cut the image into ``grid`` x ``grid`` equal cells and reassemble them in a random order.

    When the side is not a multiple of ``grid`` the last few rows/columns stay where they are.
    """
    h, w = image.shape[:2]
    ch, cw = h // grid, w // grid
    if ch == 0 or cw == 0:
        return image.copy()
    out = image.copy()
    cells = [image[i * ch:(i + 1) * ch, j * cw:(j + 1) * cw] for i in range(grid) for j in range(grid)]
    for k, src in enumerate(rng.permutation(len(cells))):
        i, j = divmod(k, grid)
        out[i * ch:(i + 1) * ch, j * cw:(j + 1) * cw] = cells[int(src)]
    return out


def simulated_anomaly(normal: np.ndarray, source: np.ndarray, target: np.ndarray, rng: np.random.Generator,
                      kind: str, beta_range: tuple[float, float] = (0.0, 0.8)) -> Anomaly:
    """Eq. 6 with M = Perlin mask & target area and the given anomaly source image."""
    mask = perlin_mask(normal.shape[:2], rng, min_pixels=1) & target
    if not mask.any():  # the noise missed the target area: use the target area itself
        mask = target.copy()
    beta = float(rng.uniform(*beta_range))
    image, changed = blend(normal, source, mask, beta)
    return Anomaly(image, changed, target, kind)


def heterogenous_anomaly(normal: np.ndarray, texture: np.ndarray, target: np.ndarray, rng: np.random.Generator,
                         beta_range: tuple[float, float] = (0.0, 0.8)) -> Anomaly:
    """HEA: a Perlin region filled with an augmented texture."""
    return simulated_anomaly(normal, aug1(texture, rng), target, rng, "hea", beta_range)


def homologous_anomaly(normal: np.ndarray, source: np.ndarray, target: np.ndarray, rng: np.random.Generator,
                       grid: int = 8, beta_range: tuple[float, float] = (0.0, 0.8)) -> Anomaly:
    """HOA: a Perlin region filled with an augmented normal image shuffled on a ``grid`` x ``grid`` grid."""
    return simulated_anomaly(normal, shuffle_grid(aug1(source, rng), rng, grid), target, rng, "hoa", beta_range)
