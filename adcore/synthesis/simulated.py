"""Simulated anomalies (PRN appendix A.1, Fig. 7): a Perlin-noise region inside the target area, filled by blending
(Eq. 6) an anomaly source A into the normal image N.

- heterogenous (HEA): A = Aug1(a random texture) (DTD in the paper, any folder or procedural textures here),
- homologous (HOA): A = a normal image after Aug1, cut into an 8 x 8 grid whose cells are shuffled.
"""

from __future__ import annotations

from collections.abc import Callable

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


def perlin_region(target: np.ndarray, rng: np.random.Generator, max_tries: int = 20) -> np.ndarray | None:
    """M = Perlin mask & target area (appendix A.1: "keep the part of the noise inside the target area as the
    ground-truth mask"), the noise redrawn while it misses the target area; None after ``max_tries`` misses."""
    for _ in range(max_tries):
        mask = perlin_mask(target.shape, rng, min_pixels=1) & target
        if mask.any():
            return mask
    return None


def simulated_anomaly(normal: np.ndarray, source: np.ndarray, target: np.ndarray, rng: np.random.Generator,
                      kind: str, beta_range: tuple[float, float] = (0.0, 0.8), *,
                      retarget: Callable[[np.random.Generator], np.ndarray] | None = None,
                      max_tries: int = 20, max_targets: int = 5) -> Anomaly:
    """Eq. 6 with M = Perlin mask & target area and the given anomaly source image; the mask is M.

    When the noise misses the target area it is redrawn (``max_tries`` times), then, with ``retarget``, a new target
    area is drawn (``max_targets`` times) - never is the whole target shape pasted instead. Should every draw miss
    (a target area of a few pixels), the image stays normal and the mask empty, which is still a correct label.
    """
    mask = perlin_region(target, rng, max_tries)
    n_targets = 0
    while mask is None and retarget is not None and n_targets < max_targets:
        target, n_targets = retarget(rng), n_targets + 1
        mask = perlin_region(target, rng, max_tries)
    if mask is None:
        return Anomaly(normal.copy(), np.zeros(target.shape, bool), target, kind)
    beta = float(rng.uniform(*beta_range))
    return Anomaly(blend(normal, source, mask, beta), mask, target, kind)


def heterogenous_anomaly(normal: np.ndarray, texture: np.ndarray, target: np.ndarray, rng: np.random.Generator,
                         beta_range: tuple[float, float] = (0.0, 0.8), *,
                         retarget: Callable[[np.random.Generator], np.ndarray] | None = None) -> Anomaly:
    """HEA: a Perlin region filled with an augmented texture."""
    return simulated_anomaly(normal, aug1(texture, rng), target, rng, "hea", beta_range, retarget=retarget)


def homologous_anomaly(normal: np.ndarray, source: np.ndarray, target: np.ndarray, rng: np.random.Generator,
                       grid: int = 8, beta_range: tuple[float, float] = (0.0, 0.8), *,
                       retarget: Callable[[np.random.Generator], np.ndarray] | None = None) -> Anomaly:
    """HOA: a Perlin region filled with an augmented normal image shuffled on a ``grid`` x ``grid`` grid."""
    return simulated_anomaly(normal, shuffle_grid(aug1(source, rng), rng, grid), target, rng, "hoa", beta_range,
                             retarget=retarget)
