"""Texture sources for heterogenous anomalies (HEA): a folder of texture images (DTD in the paper), or
procedural textures when no folder is given, so that generation never depends on a download.

Textures take the colour mode of the category: on a grayscale category (every normal image has equal channels,
:func:`is_grayscale`) a colour texture would be an anomaly told apart by its colour alone, a shortcut no real
defect offers, so the source converts its textures to grey (``grayscale=True``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from adcore.errors import DataError
from adcore.synthesis.perlin import perlin_noise

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
PROCEDURAL_KINDS = ("noise", "stripes", "checker", "blobs", "perlin")


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=3).astype(np.float32)


def procedural_texture(size: int, rng: np.random.Generator, kind: str | None = None) -> np.ndarray:
    """A random texture (uint8 size x size x 3) of one of :data:`PROCEDURAL_KINDS`, two or more random colours."""
    kind = kind or PROCEDURAL_KINDS[int(rng.integers(0, len(PROCEDURAL_KINDS)))]
    a, b = _colour(rng), _colour(rng)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind == "noise":
        coarse = rng.random((max(2, size // int(rng.integers(2, 9))),) * 2).astype(np.float32)
        t = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
    elif kind == "stripes":
        angle, period = rng.uniform(0, np.pi), rng.uniform(4, size / 3)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
    elif kind == "checker":
        cell = int(rng.integers(3, max(4, size // 4)))
        t = ((xx // cell + yy // cell) % 2).astype(np.float32)
    elif kind == "blobs":
        t = np.zeros((size, size), np.float32)
        for _ in range(int(rng.integers(5, 30))):
            cx, cy, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(2, size / 6)
            t[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.random()
    elif kind == "perlin":
        side = -(-size // 32) * 32
        res = int(2 ** rng.integers(1, 6))
        t = perlin_noise((side, side), (res, res), rng)[:size, :size]
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    else:
        raise ValueError(f"procedural texture {kind!r}: expected one of {PROCEDURAL_KINDS}")
    img = a * (1 - t[..., None]) + b * t[..., None]
    img += rng.normal(0, rng.uniform(0, 20), size=img.shape).astype(np.float32)  # grain
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def is_grayscale(images: np.ndarray, tolerance: int = 2) -> bool:
    """Whether uint8 images (..., 3) are grey: all three channels equal, up to ``tolerance`` grey levels (a
    normalise-denormalise round trip with per-channel mean and std can move a channel by one level)."""
    x = np.asarray(images)
    if x.shape[-1] != 3 or x.size == 0:
        return False
    x = x.astype(np.int16)
    return bool(np.abs(x[..., 0] - x[..., 1]).max() <= tolerance and np.abs(x[..., 0] - x[..., 2]).max() <= tolerance)


def to_grayscale(image: np.ndarray) -> np.ndarray:
    """A uint8 (H, W, 3) image as grey (ITU-R 601 luma, as PIL's "L"), repeated on the three channels."""
    grey = np.asarray(Image.fromarray(image).convert("L"))
    return np.repeat(grey[..., None], 3, axis=2)


def texture_images(folder: str | Path) -> list[Path]:
    """The image files under ``folder`` (recursively, hidden files skipped), sorted. DataError when the folder is
    missing or holds no images."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: texture folder not found")
    paths = sorted(p for p in root.rglob("*")
                   if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file())
    if not paths:
        raise DataError(f"{root}: texture folder has no images ({', '.join(IMAGE_SUFFIXES)})")
    return paths


class TextureSource:
    """Random textures at a fixed size: images from ``folder`` (searched recursively), or procedural ones;
    converted to grey with ``grayscale=True`` (a grayscale category, see the module docstring).

    Folder images are decoded and resized once and kept in memory (at most ``max_cached`` of them).
    """

    def __init__(self, folder: str | Path | None, size: int, max_cached: int = 512, *,
                 grayscale: bool = False) -> None:
        self.size = int(size)
        self.folder = Path(folder).expanduser() if folder else None
        self.grayscale = grayscale
        self.paths: list[Path] = []
        self._cache: dict[int, np.ndarray] = {}
        self.max_cached = max_cached
        if self.folder is not None:
            self.paths = texture_images(self.folder)

    @property
    def procedural(self) -> bool:
        return self.folder is None

    def describe(self) -> str:
        what = "procedural" if self.folder is None else f"{self.folder} ({len(self.paths)} images)"
        return f"{what}, grayscale" if self.grayscale else what

    def _load(self, i: int) -> np.ndarray:
        if i in self._cache:
            return self._cache[i]
        path = self.paths[i]
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB").resize((self.size, self.size), Image.Resampling.BILINEAR))
        except (OSError, ValueError, SyntaxError) as exc:
            raise DataError(f"{path}: texture image unreadable ({exc})") from None
        if len(self._cache) < self.max_cached:
            self._cache[i] = arr
        return arr

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """One texture, uint8 size x size x 3 (grey on all three channels with ``grayscale``)."""
        if self.folder is None:
            texture = procedural_texture(self.size, rng)
        else:
            texture = self._load(int(rng.integers(0, len(self.paths)))).copy()
        return to_grayscale(texture) if self.grayscale else texture
