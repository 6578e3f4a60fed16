"""A small procedural dataset in MVTec AD layout, so the package can be tried (and tested) without downloads.

Two categories: ``tile`` (a stochastic texture) and ``widget`` (a machined part on a plain background). Normal
images vary (texture noise, position and rotation jitter, lighting), defects are clearly visible, and each mask
is exactly the set of pixels the defect changed. Same seed, same bytes.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from adcore.errors import ConfigError, DataError
from adcore.io import atomic_directory

DEMO_CATEGORIES = ("tile", "widget")  # one texture, one object-like category
DEMO_DEFECTS: dict[str, tuple[str, ...]] = {
    "tile": ("crack", "hole", "scratch", "stain"),
    "widget": ("missing_piece", "scratch", "stain"),
}
MARKER = ".adcore-demo"
_FORMAT_VERSION = 1
_SPLITS = {"train": 0, "test": 1}

Array = np.ndarray


# ----------------------------------------------------------------------------------------------- drawing helpers


def _grid(size: int) -> tuple[Array, Array]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return xx + 0.5, yy + 0.5  # pixel centres


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> Array:
    """Band-limited noise in about [-1, 1]: a coarse random grid upsampled bicubically."""
    coarse = rng.normal(0.0, 1.0, (cells + 3, cells + 3)).astype(np.float32)
    big = Image.fromarray(coarse).resize((size * (cells + 3) // cells,) * 2, Image.Resampling.BICUBIC)
    off = size // (2 * cells)
    return np.asarray(big, dtype=np.float32)[off:off + size, off:off + size] / 1.5


def _region(size: int, draw: Callable[[ImageDraw.ImageDraw], None]) -> Array:
    """Rasterise a PIL drawing into a bool mask (no antialiasing: the region is exact)."""
    canvas = Image.new("L", (size, size), 0)
    draw(ImageDraw.Draw(canvas))
    return np.asarray(canvas) > 0


def _width(size: int, per_128: float) -> int:
    return max(1, int(round(size * per_128 / 128)))


def _line_region(rng: np.random.Generator, size: int, centre: tuple[float, float], length: float,
                 width: int) -> Array:
    angle = rng.uniform(0, np.pi)
    dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
    cx, cy = centre
    return _region(size, lambda d: d.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=255, width=width))


def _crack_region(rng: np.random.Generator, size: int, centre: tuple[float, float], width: int) -> Array:
    """A jagged polyline: a random walk whose heading turns sharply at each vertex, with one short branch."""
    heading = rng.uniform(0, 2 * np.pi)
    points = [centre]
    for _ in range(int(rng.integers(6, 10))):
        heading += rng.uniform(-0.9, 0.9)
        step = rng.uniform(0.04, 0.075) * size
        x, y = points[-1]
        points.append((x + np.cos(heading) * step, y + np.sin(heading) * step))
    branch_at = points[len(points) // 2]
    bh = heading + rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 1.2)
    branch = [branch_at]
    for _ in range(3):
        bh += rng.uniform(-0.7, 0.7)
        x, y = branch[-1]
        branch.append((x + np.cos(bh) * 0.04 * size, y + np.sin(bh) * 0.04 * size))

    def draw(d: ImageDraw.ImageDraw) -> None:
        d.line(points, fill=255, width=width, joint="curve")
        d.line(branch, fill=255, width=max(1, width - 1))

    return _region(size, draw)


def _blob_region(rng: np.random.Generator, size: int, centre: tuple[float, float], radius: float,
                 wobble: float) -> Array:
    """An irregular closed blob: a polygon whose radius is perturbed by a few harmonics."""
    t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    r = np.ones_like(t)
    for k in (2, 3, 5):
        r += wobble / k * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    sx, sy = rng.uniform(0.75, 1.25), rng.uniform(0.75, 1.25)
    cx, cy = centre
    poly = [(cx + radius * sx * ri * np.cos(ti), cy + radius * sy * ri * np.sin(ti))
            for ri, ti in zip(r, t, strict=True)]
    return _region(size, lambda d: d.polygon(poly, fill=255))


# ----------------------------------------------------------------------------------------------- normal images


def _render_tile(rng: np.random.Generator, size: int) -> dict:
    """Glazed ceramic-like texture: cloudy low-frequency variation, a regular grain, fine sensor noise."""
    xx, yy = _grid(size)
    base = np.array([176.0, 156.0, 126.0]) + rng.normal(0, 5, 3)
    cloud = 14.0 * _smooth_noise(rng, size, 4) + 7.0 * _smooth_noise(rng, size, 12)
    theta = np.deg2rad(30.0 + rng.normal(0, 4))
    period = size / 16 * rng.uniform(0.9, 1.1)
    phase = rng.uniform(0, 2 * np.pi, 2)
    u = xx * np.cos(theta) + yy * np.sin(theta)
    v = -xx * np.sin(theta) + yy * np.cos(theta)
    grain = 6.0 * np.sin(2 * np.pi * u / period + phase[0]) + 3.0 * np.sin(2 * np.pi * v / (period * 1.7) + phase[1])
    lum = cloud + grain
    chroma = rng.normal(0, 1, 3) * 0.15  # slight per-channel response of the texture
    image = base[None, None, :] + lum[:, :, None] * (1.0 + chroma[None, None, :])
    image = image + rng.normal(0, 3.0, (size, size, 1)) + rng.normal(0, 1.0, (size, size, 3))
    return {"image": image.astype(np.float32), "object": np.ones((size, size), bool)}


def _render_widget(rng: np.random.Generator, size: int) -> dict:
    """A flanged disc with a centre bore and four bolt holes, jittered in position, rotation and lighting."""
    xx, yy = _grid(size)
    s = float(size)
    cx = s / 2 + rng.uniform(-0.03, 0.03) * s
    cy = s / 2 + rng.uniform(-0.03, 0.03) * s
    rot = np.deg2rad(rng.uniform(-10, 10))
    gain = rng.uniform(0.88, 1.12)
    light = rng.uniform(0, 2 * np.pi)
    slope = rng.uniform(0.05, 0.2)

    dx, dy = xx - cx, yy - cy
    r = np.hypot(dx, dy)
    r_out, r_in, r_bolt, d_bolt = 0.36 * s, 0.11 * s, 0.035 * s, 0.235 * s
    alpha = np.clip(r_out - r + 0.5, 0, 1) * np.clip(r - r_in + 0.5, 0, 1)
    for k in range(4):
        a = rot + k * np.pi / 2
        d = np.hypot(xx - (cx + d_bolt * np.cos(a)), yy - (cy + d_bolt * np.sin(a)))
        alpha *= np.clip(d - r_bolt + 0.5, 0, 1)
    # Orientation key: a small notch in the rim shows the rotation.
    ka = rot + np.pi / 4
    kd = np.hypot(xx - (cx + r_out * np.cos(ka)), yy - (cy + r_out * np.sin(ka)))
    alpha *= np.clip(kd - 0.04 * s + 0.5, 0, 1)

    shade = 1.0 + slope * (dx * np.cos(light) + dy * np.sin(light)) / s
    rings = 3.0 * np.sin(2 * np.pi * r / (s / 40))  # turned surface
    groove = 28.0 * np.clip(1.2 - np.abs(r - 0.31 * s), 0, 1)
    metal = np.array([186.0, 186.0, 192.0])
    obj = (metal[None, None, :] * shade[:, :, None] + (rings - groove)[:, :, None]) * gain
    bg_level = 52.0 + rng.normal(0, 3)
    bg = (bg_level * (1.0 + 0.15 * (yy / s - 0.5)))[:, :, None] * np.array([1.0, 1.02, 1.08])[None, None, :]
    bg = np.broadcast_to(bg, obj.shape)
    noise = rng.normal(0, 2.5, (size, size, 1)) + rng.normal(0, 1.0, (size, size, 3))
    image = bg * (1 - alpha[:, :, None]) + obj * alpha[:, :, None] + noise
    return {"image": image.astype(np.float32), "object": alpha > 0.999, "alpha": alpha, "bg": bg, "obj": obj,
            "noise": noise, "centre": (cx, cy), "r_out": r_out, "r_in": r_in}


_RENDERERS = {"tile": _render_tile, "widget": _render_widget}


# ----------------------------------------------------------------------------------------------- defects


def _place(rng: np.random.Generator, scene: dict, size: int) -> tuple[float, float]:
    """A defect centre: inside the middle of a texture, or on the flange of the part."""
    if "centre" not in scene:
        return tuple(rng.uniform(0.22, 0.78, 2) * size)
    cx, cy = scene["centre"]
    rad = rng.uniform(scene["r_in"] + 0.05 * size, scene["r_out"] - 0.05 * size)
    a = rng.uniform(0, 2 * np.pi)
    return cx + rad * np.cos(a), cy + rad * np.sin(a)


def _apply_defect(rng: np.random.Generator, scene: dict, defect: str, size: int) -> Array:
    clean = scene["image"]
    image = clean.copy()
    if defect == "missing_piece":
        # A bite out of the rim: the part is re-composited with less material, background shows through.
        cx, cy = scene["centre"]
        a = rng.uniform(0, 2 * np.pi)
        rad = scene["r_out"] * rng.uniform(0.92, 1.0)
        cut_r = rng.uniform(0.09, 0.13) * size
        cut = _blob_region(rng, size, (cx + rad * np.cos(a), cy + rad * np.sin(a)), cut_r, 0.15)
        alpha = scene["alpha"] * ~cut
        return (scene["bg"] * (1 - alpha[:, :, None]) + scene["obj"] * alpha[:, :, None] + scene["noise"]).astype(
            np.float32)
    centre = _place(rng, scene, size)
    on_object = scene["object"]
    if defect == "scratch":
        region = _line_region(rng, size, centre, rng.uniform(0.25, 0.45) * size, _width(size, 2)) & on_object
        if "centre" in scene:  # dark scratch on bright metal
            image[region] = clean[region] * 0.35
        else:  # bright scratch through the glaze
            image[region] = clean[region] * 0.2 + 0.8 * 250.0
    elif defect == "hole":
        region = _blob_region(rng, size, centre, rng.uniform(0.035, 0.06) * size, 0.25) & on_object
        image[region] = 28.0 + rng.normal(0, 4.0, (int(region.sum()), 1))
    elif defect == "stain":
        palette = np.array([[125.0, 62.0, 22.0], [45.0, 95.0, 50.0], [60.0, 70.0, 140.0]])
        colour = palette[rng.integers(len(palette))] + rng.normal(0, 6, 3)
        region = _blob_region(rng, size, centre, rng.uniform(0.06, 0.1) * size, 0.35) & on_object
        image[region] = clean[region] * 0.35 + colour * 0.65
    elif defect == "crack":
        region = _crack_region(rng, size, centre, _width(size, 2)) & on_object
        image[region] = clean[region] * 0.25
    else:
        raise ConfigError(f"demo defect {defect!r}: unknown; known: missing_piece, scratch, hole, stain, crack")
    return image


def _quantize(image: Array) -> Array:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def demo_seed_key(seed: int, category: str, split: str, defect: str, index: int) -> list[int]:
    """The seed sequence of one demo image: independent of how many other images are generated."""
    return [int(seed), zlib.crc32(category.encode()), _SPLITS[split], zlib.crc32(defect.encode()), int(index)]


def render_demo_image(category: str, defect: str | None, size: int,
                      seed_key: Sequence[int]) -> tuple[Array, Array, Array]:
    """(clean, image, mask): the defect-free rendering, the image with ``defect`` applied, the changed pixels.

    The mask is computed from the quantised images, so it is exactly the set of pixels that differ.
    """
    if category not in _RENDERERS:
        raise ConfigError(f"demo category {category!r}: unknown; known: {', '.join(DEMO_CATEGORIES)}")
    rng = np.random.default_rng(list(seed_key))
    scene = _RENDERERS[category](rng, size)
    clean = _quantize(scene["image"])
    if defect is None or defect == "good":
        return clean, clean.copy(), np.zeros((size, size), bool)
    min_area = max(4, int(0.002 * size * size))
    for _ in range(20):  # re-draw the rare defect that falls (almost) off the part
        image = _quantize(_apply_defect(rng, scene, defect, size))
        mask = np.any(image != clean, axis=2)
        if mask.sum() >= min_area:
            return clean, image, mask
    raise AssertionError(f"demo defect {defect!r} on {category!r}: could not place a visible defect")


# ----------------------------------------------------------------------------------------------- writing


def _save_png(array: Array, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG", compress_level=6)


def _write_category(folder: Path, category: str, n_train: int, n_test_good: int, n_test_defect: int,
                    size: int, seed: int) -> None:
    for split, sub, count in (("train", "train/good", n_train), ("test", "test/good", n_test_good)):
        (folder / sub).mkdir(parents=True)
        for i in range(count):
            _, image, _ = render_demo_image(category, None, size, demo_seed_key(seed, category, split, "good", i))
            _save_png(image, folder / sub / f"{i:03d}.png")
    if n_test_defect == 0:
        return
    for defect in DEMO_DEFECTS[category]:
        (folder / "test" / defect).mkdir(parents=True)
        (folder / "ground_truth" / defect).mkdir(parents=True)
        for i in range(n_test_defect):
            _, image, mask = render_demo_image(category, defect, size, demo_seed_key(seed, category, "test", defect, i))
            _save_png(image, folder / "test" / defect / f"{i:03d}.png")
            _save_png((mask * 255).astype(np.uint8), folder / "ground_truth" / defect / f"{i:03d}_mask.png")


def _is_demo(path: Path) -> bool:
    return (path / MARKER).is_file()


def generate_demo_dataset(output: str | Path, *, categories: Sequence[str] = DEMO_CATEGORIES, n_train: int = 40,
                          n_test_good: int = 10, n_test_defect: int = 6, image_size: int = 128,
                          seed: int = 0) -> Path:
    """Write the demo dataset to ``output`` (MVTec layout) and return the path.

    Built in a temporary folder beside ``output`` and then renamed into place, so a crash never leaves half a
    dataset. A previous demo dataset (marked by ``.adcore-demo``) is replaced; any other non-empty folder is not.
    """
    categories = tuple(categories)
    unknown = [c for c in categories if c not in _RENDERERS]
    if unknown or not categories:
        raise ConfigError(f"demo categories {list(categories)}: expected some of {', '.join(DEMO_CATEGORIES)}")
    if n_train < 1 or n_test_good < 0 or n_test_defect < 0:
        raise ConfigError(f"demo sizes: need n_train >= 1, n_test_good >= 0, n_test_defect >= 0 "
                          f"(got {n_train}, {n_test_good}, {n_test_defect})")
    if n_test_good + n_test_defect == 0:
        raise ConfigError("demo sizes: n_test_good and n_test_defect are both 0, the test set would be empty")
    if image_size < 32:
        raise ConfigError(f"demo image_size: must be >= 32 (got {image_size})")

    output = Path(output).expanduser().absolute()
    if output.exists():
        if not output.is_dir():
            raise DataError(f"{output}: exists and is not a folder; not overwriting it with the demo dataset")
        if any(output.iterdir()) and not _is_demo(output):
            raise DataError(f"{output}: folder is not empty and is not a previous demo dataset (no {MARKER} "
                            f"file); refusing to overwrite it")
    output.parent.mkdir(parents=True, exist_ok=True)

    with atomic_directory(output) as tmp:  # a previous demo dataset is swapped out only once this one is complete
        for category in categories:
            _write_category(tmp / category, category, n_train, n_test_good, n_test_defect, image_size, seed)
        marker = {"generator": "adcore.data.demo", "format": _FORMAT_VERSION, "seed": seed,
                  "categories": list(categories), "n_train": n_train, "n_test_good": n_test_good,
                  "n_test_defect": n_test_defect, "image_size": image_size}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    return output
