"""Extended anomalies (EA, PRN 3.4 and Fig. 5): the defect region of a seen anomaly, recoloured (Aug1),
moved and deformed (Aug2), cropped by a target area and blended into a normal image (Eq. 4).

All images are uint8 (H, W, 3) of the same square size; masks are bool (H, W). The returned mask is the intended
anomaly region M (the paper: "we binarise C to obtain the ground-truth mask M"), not the pixels whose value
happens to change: a region pixel where the pasted content equals the normal image is still part of the anomaly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

#: Aug1: two distinct operations drawn from these (PRN 3.4)
AUG1_OPS = ("equalize", "solarize", "posterize", "sharpness", "autocontrast", "invert", "gamma")


@dataclass
class Anomaly:
    image: np.ndarray  # (H, W, 3) uint8, the normal image with the anomaly
    mask: np.ndarray  # (H, W) bool: the anomaly region M (only its pixels may differ from the normal image)
    target: np.ndarray  # (H, W) bool: the target area the anomaly was confined to
    kind: str  # "ea", "hea" or "hoa"


def apply_op(image: np.ndarray, op: str, rng: np.random.Generator) -> np.ndarray:
    """One Aug1 operation with a random strength on a uint8 (H, W, 3) image."""
    pil = Image.fromarray(image)
    if op == "equalize":
        out = ImageOps.equalize(pil)
    elif op == "solarize":
        out = ImageOps.solarize(pil, threshold=int(rng.integers(32, 224)))
    elif op == "posterize":
        out = ImageOps.posterize(pil, bits=int(rng.integers(1, 5)))
    elif op == "sharpness":
        out = ImageEnhance.Sharpness(pil).enhance(float(rng.uniform(0.0, 4.0)))
    elif op == "autocontrast":
        out = ImageOps.autocontrast(pil)
    elif op == "invert":
        out = ImageOps.invert(pil)
    elif op == "gamma":
        gamma = float(np.exp(rng.uniform(np.log(0.3), np.log(3.0))))
        return np.clip(np.rint(255.0 * (image / 255.0) ** gamma), 0, 255).astype(np.uint8)
    else:
        raise ValueError(f"Aug1 operation {op!r}: expected one of {AUG1_OPS}")
    return np.asarray(out)


def aug1(image: np.ndarray, rng: np.random.Generator, n_ops: int = 2) -> np.ndarray:
    """Aug1: ``n_ops`` distinct random operations of :data:`AUG1_OPS`, in random order (colour variants)."""
    out = image
    for i in rng.choice(len(AUG1_OPS), size=n_ops, replace=False):
        out = apply_op(out, AUG1_OPS[int(i)], rng)
    return out


def _warp_nearest(image: np.ndarray, mask: np.ndarray, matrix: np.ndarray, centre: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Apply the 2x2 ``matrix`` about ``centre`` (x, y) with nearest-neighbour sampling (masks stay binary)."""
    h, w = mask.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    inv = np.linalg.inv(matrix)
    px, py = xx - centre[0], yy - centre[1]
    sx = np.rint(inv[0, 0] * px + inv[0, 1] * py + centre[0]).astype(np.int64)
    sy = np.rint(inv[1, 0] * px + inv[1, 1] * py + centre[1]).astype(np.int64)
    valid = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
    sx, sy = np.clip(sx, 0, w - 1), np.clip(sy, 0, h - 1)
    return image[sy, sx], mask[sy, sx] & valid


def _shift(array: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Integer translation with zero fill."""
    out = np.zeros_like(array)
    h, w = array.shape[:2]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = array[ys, xs]
    return out


def aug2(image: np.ndarray, mask: np.ndarray, target: np.ndarray, rng: np.random.Generator,
         max_rotate: float = 90.0, max_shear: float = 20.0, max_tries: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Aug2: random rotation and shear about the region's centre, then a translation that lands the region on
    the target area; redrawn (up to ``max_tries`` times) while the region does not overlap it (PRN 3.4)."""
    ys, xs = np.nonzero(mask)
    centre = np.array([xs.mean(), ys.mean()])
    ty, tx = np.nonzero(target)
    region_img, region = image, mask
    for _ in range(max_tries):
        a = np.deg2rad(rng.uniform(-max_rotate, max_rotate))
        s = np.tan(np.deg2rad(rng.uniform(-max_shear, max_shear)))
        matrix = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ np.array([[1.0, s], [0.0, 1.0]])
        region_img, region = _warp_nearest(image, mask, matrix, centre)
        if not region.any():  # the region rotated out of the image: try again
            continue
        ry, rx = np.nonzero(region)
        i, j = int(rng.integers(0, len(ry))), int(rng.integers(0, len(ty)))
        dy, dx = int(ty[j] - ry[i]), int(tx[j] - rx[i])  # a region pixel lands on a target pixel
        region_img, region = _shift(region_img, dy, dx), _shift(region, dy, dx)
        if (region & target).any():
            break
    return region_img, region


def blend(normal: np.ndarray, anomaly: np.ndarray, mask: np.ndarray, beta: float) -> np.ndarray:
    """Eq. 4 / Eq. 6: ``~M * N + (1 - beta) * (M * A) + beta * (M * N)``, rounded to uint8.

    Pixels outside ``mask`` are exactly the normal image; the ground truth of the result is ``mask`` itself.
    """
    m = mask[..., None].astype(np.float32)
    out = (1 - m) * normal + (1 - beta) * (m * anomaly) + beta * (m * normal)
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    out[~mask] = normal[~mask]  # exact outside the mask whatever the float rounding
    return out


def extended_anomaly(normal: np.ndarray, seen_image: np.ndarray, seen_mask: np.ndarray, target: np.ndarray,
                     rng: np.random.Generator, beta_range: tuple[float, float] = (0.0, 0.5)) -> Anomaly:
    """An extended anomaly (Fig. 5): A = Aug1(seen defect), R = Aug2(A), C = R cropped by the target area,
    E = Eq. 4 with a transparency beta drawn from ``beta_range``."""
    if not seen_mask.any():
        raise ValueError("extended_anomaly: the seen anomaly's mask is empty")
    ys, xs = np.nonzero(seen_mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    recoloured = seen_image.copy()
    recoloured[y0:y1, x0:x1] = aug1(seen_image[y0:y1, x0:x1], rng)  # Aug1 on the defect's box (A)
    region_img, region = aug2(recoloured, seen_mask, target, rng)  # R
    cropped = region & target  # C, binarised to M
    beta = float(rng.uniform(*beta_range))
    return Anomaly(blend(normal, region_img, cropped, beta), cropped, target, "ea")
