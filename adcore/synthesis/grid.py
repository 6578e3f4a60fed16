"""A picture grid of generated anomalies with their masks, to see what a model is trained on."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from adcore.io import atomic_write_bytes
from adcore.synthesis.generator import KINDS, AnomalyGenerator

LABELS = {"ea": "EA extended", "hea": "HEA texture", "hoa": "HOA homologous"}


def render_grid(generator: AnomalyGenerator, rng: np.random.Generator, n_per_kind: int = 6,
                kinds: tuple[str, ...] = KINDS) -> np.ndarray:
    """One row per kind: ``n_per_kind`` pairs of (anomalous image with the target area outlined in blue, mask with
    the target area in dark blue). Kinds the generator cannot make (EA without seen anomalies) are skipped."""
    s = generator.size
    pad, label_w = 4, 110
    rows = [k for k in kinds if k in generator.kinds]
    if not rows:
        raise ValueError("render_grid: the generator has no enabled anomaly kind")
    width = label_w + n_per_kind * (2 * s + 3 * pad)
    height = len(rows) * (s + pad) + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, kind in enumerate(rows):
        y = pad + r * (s + pad)
        draw.text((4, y + s // 2 - 6), LABELS[kind], fill=(0, 0, 0))
        for c in range(n_per_kind):
            normal = generator.normals[int(rng.integers(0, len(generator.normals)))]
            a = generator.generate(normal, kind, rng)
            img = a.image.copy()
            edge = a.target ^ _erode(a.target)
            img[edge] = (0, 120, 255)
            mask = np.zeros((s, s, 3), np.uint8)
            mask[a.target] = (0, 0, 90)
            mask[a.mask] = (255, 255, 255)
            x = label_w + c * (2 * s + 3 * pad)
            canvas.paste(Image.fromarray(img), (x, y))
            canvas.paste(Image.fromarray(mask), (x + s + pad, y))
    return np.asarray(canvas)


def _erode(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] &= mask[:-1]
    out[:-1] &= mask[1:]
    out[:, 1:] &= mask[:, :-1]
    out[:, :-1] &= mask[:, 1:]
    return out


def save_anomaly_grid(generator: AnomalyGenerator, output: str | Path, *, seed: int = 0, n_per_kind: int = 6) -> Path:
    """Render the grid (see :func:`render_grid`) and write it as PNG, atomically."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    array = render_grid(generator, np.random.default_rng(seed), n_per_kind)
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    atomic_write_bytes(output, buf.getvalue())  # a unique temporary file, removed if the write fails
    return output


def anomaly_grid_for_category(data_root: str | Path, category: str, output: str | Path, *, n_seen: int = 10,
                              image_size: int = 256, texture_dir: str | Path | None = None, seed: int = 0,
                              n_per_kind: int = 6, target_area: str = "auto") -> Path:
    """The grid for a dataset category, as PRN would generate it: ``n_seen`` seen anomalies drawn from the test
    split with ``seed`` (as in training), textures from ``texture_dir`` (None: procedural), the foreground
    estimated from train/good (``target_area``: "auto", "foreground" or "whole"). Entry point of
    ``adcore synth-grid``."""
    from adcore.data.mvtec import load_category, split_seen_anomalies
    from adcore.synthesis.loading import build_generator, load_images, load_seen

    cat = load_category(data_root, category)
    seen, _ = split_seen_anomalies(cat.test, n_seen, seed)
    normals = load_images([s.path for s in cat.train[:200]], image_size)
    generator = build_generator(normals, load_seen(seen, image_size), texture_dir, target_area=target_area)
    return save_anomaly_grid(generator, output, seed=seed, n_per_kind=n_per_kind)
