"""Target-area shapes (PRN 3.4): a random circle, rectangle or polygon, confined to the foreground.

A generated anomaly may only change pixels inside its target area (TA), which keeps it on the object of object
categories (the foreground, see :mod:`adcore.synthesis.foreground`) and anywhere on textures.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "rectangle", "polygon")


def shape_mask(size: int, kind: str, centre: tuple[float, float], radius: float,
               rng: np.random.Generator) -> np.ndarray:
    """A filled ``kind`` shape of about ``radius`` around ``centre`` = (x, y), rasterised without antialiasing."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    x, y = centre
    if kind == "circle":
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=255)
    elif kind == "rectangle":
        ax, ay = radius * rng.uniform(0.4, 1.0, size=2)
        angle = rng.uniform(0, np.pi)
        c, s = np.cos(angle), np.sin(angle)
        corners = [(-ax, -ay), (ax, -ay), (ax, ay), (-ax, ay)]
        draw.polygon([(x + c * px - s * py, y + s * px + c * py) for px, py in corners], fill=255)
    elif kind == "polygon":
        n = int(rng.integers(3, 9))
        angles = np.sort(rng.uniform(0, 2 * np.pi, size=n))
        radii = radius * rng.uniform(0.4, 1.0, size=n)
        draw.polygon([(x + r * np.cos(a), y + r * np.sin(a)) for a, r in zip(angles, radii, strict=True)], fill=255)
    else:
        raise ValueError(f"shape {kind!r}: expected one of {SHAPES}")
    return np.asarray(canvas) > 0


def sample_target_area(foreground: np.ndarray, rng: np.random.Generator, size_range: tuple[float, float] = (0.2, 0.5),
                       shapes: tuple[str, ...] = SHAPES, max_tries: int = 10) -> np.ndarray:
    """A random shape (radius a fraction ``size_range`` of the image side) centred on a foreground pixel,
    intersected with the foreground. Never empty while the foreground is not."""
    size = foreground.shape[0]
    ys, xs = np.nonzero(foreground)
    if len(ys) == 0:
        raise ValueError("sample_target_area: the foreground is empty")
    area = foreground
    for _ in range(max_tries):
        i = int(rng.integers(0, len(ys)))
        kind = shapes[int(rng.integers(0, len(shapes)))]
        radius = rng.uniform(*size_range) * size
        area = shape_mask(size, kind, (xs[i] + 0.5, ys[i] + 0.5), radius, rng) & foreground
        if area.any():
            return area
    return foreground.copy()
