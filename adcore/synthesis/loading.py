"""Loading normal images and seen anomalies as uint8 arrays at the model's input size, and building a generator.

Images go through the same :class:`adcore.data.transforms.ImageTransform` geometry as model input (resize, crop),
so generated anomalies and masks line up with what the backbone sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from adcore.synthesis.foreground import estimate_foreground, whole_image
from adcore.synthesis.generator import KINDS, AnomalyGenerator
from adcore.synthesis.textures import TextureSource, is_grayscale


def _transform(size_or_transform):
    from adcore.data.transforms import ImageTransform

    if isinstance(size_or_transform, int):
        return ImageTransform(size_or_transform, None, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    return size_or_transform


def load_images(paths: Sequence[str | Path], size_or_transform) -> np.ndarray:
    """(N, S, S, 3) uint8 images, resized (and cropped) like model input."""
    from adcore.data.mvtec import read_image

    tf = _transform(size_or_transform)
    out = np.empty((len(paths), tf.output_size, tf.output_size, 3), np.uint8)
    for i, p in enumerate(paths):
        out[i] = tf.denormalize(tf(read_image(p)))
    return out


def load_seen(samples: Sequence, size_or_transform) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, bool mask) pairs of anomalous samples (adcore.data.Sample); a sample without a mask gets an empty
    one (it cannot serve as an EA source)."""
    from adcore.data.mvtec import read_image, read_mask

    tf = _transform(size_or_transform)
    out = []
    for s in samples:
        raw = read_image(s.path)
        image = tf.denormalize(tf(raw))
        if s.mask_path is not None:
            mask = tf.mask(read_mask(s.mask_path, (raw.shape[1], raw.shape[0]))).numpy() > 0.5
        else:
            mask = np.zeros(image.shape[:2], bool)
        out.append((image, mask))
    return out


def build_generator(normals: np.ndarray, seen: Sequence[tuple[np.ndarray, np.ndarray]] = (),
                    texture_dir: str | Path | None = None, *, target_area: str = "auto",
                    kinds: Sequence[str] = KINDS, use_target_area: bool = True, grid: int = 8,
                    grayscale: bool | None = None) -> AnomalyGenerator:
    """A generator for one category. ``target_area``: "auto" (estimated foreground, whole image for textures),
    "foreground" (the same estimate) or "whole" (no foreground constraint). ``grayscale``: textures in grey; None
    detects it from the normal images (all channels equal: a grayscale category gets grey textures)."""
    size = int(normals.shape[1])
    if target_area == "whole":
        fg = whole_image(size, "target_area=whole")
    elif target_area in ("auto", "foreground"):
        fg = estimate_foreground(normals)
    else:
        raise ValueError(f"target_area {target_area!r}: expected 'auto', 'foreground' or 'whole'")
    if grayscale is None:
        grayscale = is_grayscale(normals)
    return AnomalyGenerator(normals, seen, TextureSource(texture_dir, size, grayscale=grayscale), fg, kinds=kinds,
                            use_target_area=use_target_area, grid=grid)
