"""Reading a dataset in MVTec AD layout, and checking it before any work starts.

Layout of one category (``<root>/<category>``)::

    train/good/*.png                      normal images for fitting
    test/good/*.png                       normal test images
    test/<defect>/*.png                   anomalous test images, one folder per defect type
    ground_truth/<defect>/<stem>_mask.png pixel masks (optional: without ground_truth/ only image metrics exist)

A bad dataset should fail here, with a message that names the file, and not an hour into training.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
from PIL import Image

from adcore.errors import AdcoreError, ConfigError, DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")  # compared case-insensitively
LAYOUT_HINT = "MVTec AD layout"
NO_MASKS_NOTE = "no ground_truth/ folder: pixel metrics are not computed"

#: Images and masks above this many pixels are refused from their header, before decoding (a 152 KB PNG can
#: declare 12500x12500 pixels: 470 MB decoded). ``ADCORE_MAX_IMAGE_PIXELS`` raises it for genuinely huge scans.
MAX_IMAGE_PIXELS = 50_000_000

# PIL raises these for unreadable, truncated or hostile files.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning)


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # 0 good, 1 anomalous
    defect: str  # "good" or the defect folder name
    mask_path: Path | None  # None for good images and for categories without ground_truth/


@dataclass
class Category:
    root: Path  # the dataset root
    name: str
    train: list[Sample]  # train/good, sorted by path
    test: list[Sample]  # test/<defect>/*, sorted by (defect, path)
    has_masks: bool  # False when the category has no ground_truth/ folder at all
    masks_note: str | None = None  # why has_masks is False

    @property
    def path(self) -> Path:
        return self.root / self.name

    @property
    def defects(self) -> list[str]:
        """Anomaly types present in test/, sorted, without 'good'."""
        return sorted({s.defect for s in self.test if s.label == 1})


def _is_image(path: Path) -> bool:
    # Hidden files (".DS_Store", macOS "._x.png" resource forks) are never images.
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _is_image(p))


def list_categories(root: str | Path) -> list[str]:
    """Names of the sub-folders of ``root`` that have ``train/good``, sorted."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: dataset root not found (expected a folder with one sub-folder per category, "
                        f"{LAYOUT_HINT})")
    return sorted(p.name for p in root.iterdir() if (p / "train" / "good").is_dir())


# ----------------------------------------------------------------------------------------------- images and masks


def max_image_pixels() -> int:
    raw = os.environ.get("ADCORE_MAX_IMAGE_PIXELS", "")
    try:
        return int(raw) if raw else MAX_IMAGE_PIXELS
    except ValueError:
        raise ConfigError(f"ADCORE_MAX_IMAGE_PIXELS: expected a whole number of pixels (got {raw!r})") from None


def _check_pixels(path: Path, what: str, size: tuple[int, int]) -> None:
    limit = max_image_pixels()
    if size[0] * size[1] > limit:
        raise DataError(f"{path}: {what} of {size[0]}x{size[1]} pixels ({size[0] * size[1] / 1e6:.0f} megapixels) "
                        f"exceeds the limit of {limit / 1e6:g} megapixels; not decoded (set ADCORE_MAX_IMAGE_PIXELS "
                        "to allow larger images)")


def _open(path: Path, what: str) -> Image.Image:
    image = None
    try:
        image = Image.open(path)
        _check_pixels(path, what, image.size)  # from the header, before the pixels are decoded
        image.load()  # full decode: catches truncated files that the header alone does not reveal
    except FileNotFoundError:
        raise DataError(f"{path}: {what} not found") from None
    except AdcoreError:  # too many pixels (a ValueError too: before the clause below)
        if image is not None:
            image.close()
        raise
    except _DECODE_ERRORS as exc:
        if image is not None:
            image.close()
        raise DataError(f"{path}: unreadable {what} ({type(exc).__name__}: {exc})") from None
    return image


def _to_uint8(image: Image.Image) -> np.ndarray:
    """Any PIL mode -> HxW or HxWx3 uint8, scaling 16/32-bit data instead of clipping it."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit PNGs open as I;16 (or I in older Pillow): map 0..65535 -> 0..255.
        arr = np.asarray(image).astype(np.int64)
        return (np.clip(arr, 0, 65535) // 257).astype(np.uint8)
    if image.mode == "F":
        arr = np.asarray(image, dtype=np.float32)
        hi = 1.0 if float(arr.max(initial=0.0)) <= 1.0 else 255.0
        return np.clip(np.rint(arr / hi * 255.0), 0, 255).astype(np.uint8)
    if image.mode in ("L", "RGB"):
        return np.asarray(image)
    if image.mode in ("1", "LA"):
        return np.asarray(image.convert("L"))
    return np.asarray(image.convert("RGB"))  # P, PA, RGBA, CMYK, YCbCr, LAB, HSV...


def read_image(path: str | Path) -> np.ndarray:
    """HxWx3 uint8 RGB. Grayscale, palette, RGBA and 16-bit images become 3-channel uint8."""
    path = Path(path)
    arr = _to_uint8(_open(path, "image"))
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif not arr.flags.writeable:  # np.asarray(PIL image) is read-only
        arr = arr.copy()
    return np.ascontiguousarray(arr)


def read_mask(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """HxW bool (pixel > 0). ``size`` = (width, height) of the image the mask belongs to.

    A mask must be binary: values 0 and 255 (or 0 and 1) once in 8-bit grey. Anything else (anti-aliased edges, a
    JPEG, a soft label map) would silently count every pixel above 0 as a defect, so it is refused."""
    path = Path(path)
    image = _open(path, "mask")
    if size is not None and tuple(image.size) != tuple(size):
        raise DataError(f"{path}: mask size {image.size[0]}x{image.size[1]} differs from its image size "
                        f"{size[0]}x{size[1]} (width x height)")
    arr = _to_uint8(image)
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    if not np.isin(arr, (0, 255)).all() and not np.isin(arr, (0, 1)).all():
        values = np.unique(arr)
        shown = ", ".join(str(v) for v in values[:6]) + (", ..." if len(values) > 6 else "")
        raise DataError(f"{path}: mask is not binary (values {shown}); expected only 0 and 255 (or 0 and 1), "
                        "one value for defect pixels")
    return arr > 0


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            _check_pixels(path, "image", image.size)
            return tuple(image.size)  # type: ignore[return-value]
    except FileNotFoundError:
        raise DataError(f"{path}: image not found") from None
    except AdcoreError:
        raise
    except _DECODE_ERRORS as exc:
        raise DataError(f"{path}: unreadable image ({type(exc).__name__}: {exc})") from None


# ----------------------------------------------------------------------------------------------- category


def _mask_candidates(stem: str) -> list[str]:
    """Accepted mask names for an image stem, most usual first (lower case)."""
    names = [f"{stem}_mask.png", f"{stem}.png"]
    for suffix in IMAGE_SUFFIXES:
        names += [f"{stem}_mask{suffix}", f"{stem}{suffix}"]
    return list(dict.fromkeys(n.lower() for n in names))


def _check_folder(path: Path, expected: str) -> None:
    if not path.is_dir():
        raise DataError(f"{path}: missing; expected {expected} ({LAYOUT_HINT})")


def _check_category_name(root: Path, category: str) -> None:
    """A category is a folder inside the data root: no absolute path, no ``..``, so nothing outside it is read."""
    for pure in (PurePosixPath(category), PureWindowsPath(category)):
        if pure.is_absolute() or pure.drive or pure.root or ".." in pure.parts:
            raise DataError(f"category {category!r}: not a folder name inside the data root {root} (absolute "
                            "paths and '..' are refused: data outside --data-root is never read)")


def load_category(root: str | Path, category: str, *, check_images: bool = True) -> Category:
    """Scan and validate one category. ``check_images`` fully decodes every image and mask once."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: dataset root not found (expected <root>/<category>/train/good, {LAYOUT_HINT})")
    _check_category_name(root, category)
    cat_dir = root / category
    if not category or not cat_dir.is_dir():
        found = list_categories(root)
        listing = ", ".join(found) if found else "none (no sub-folder has train/good)"
        raise DataError(f"{cat_dir}: category {category!r} not found; categories in {root}: {listing}")

    good_dir = cat_dir / "train" / "good"
    _check_folder(good_dir, "<root>/<category>/train/good with normal images")
    train_paths = _images_in(good_dir)
    if not train_paths:
        raise DataError(f"{good_dir}: empty category, no images ({', '.join(IMAGE_SUFFIXES)}) in train/good")
    train = [Sample(p, 0, "good", None) for p in train_paths]

    test_dir = cat_dir / "test"
    _check_folder(test_dir, "<root>/<category>/test/good and test/<defect> folders with test images")
    gt_dir = cat_dir / "ground_truth"
    has_masks = gt_dir.is_dir()

    test: list[Sample] = []
    missing: list[str] = []
    for defect_dir in sorted(p for p in test_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        defect = defect_dir.name
        images = _images_in(defect_dir)
        if defect == "good":
            test += [Sample(p, 0, "good", None) for p in images]
            continue
        masks: dict[str, Path] = {}
        if has_masks and (gt_dir / defect).is_dir():
            masks = {p.name.lower(): p for p in (gt_dir / defect).iterdir() if _is_image(p)}
        for path in images:
            mask_path = None
            if has_masks:
                mask_path = next((masks[n] for n in _mask_candidates(path.stem) if n in masks), None)
                if mask_path is None:
                    missing.append(f"{path} (expected {gt_dir / defect / (path.stem + '_mask.png')})")
            test.append(Sample(path, 1, defect, mask_path))
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DataError(f"{gt_dir}: {len(missing)} anomalous test image(s) have no mask: "
                        f"{'; '.join(missing[:3])}{more}. Add the masks, or remove ground_truth/ to evaluate "
                        f"image-level metrics only")
    if not test:
        raise DataError(f"{test_dir}: no test images in test/good or test/<defect> ({LAYOUT_HINT})")

    for sample in train + test:
        if check_images:
            width_height = _open(sample.path, "image").size
            if sample.mask_path is not None:
                read_mask(sample.mask_path, width_height)
        elif sample.mask_path is not None:
            width_height = image_size(sample.path)
            mask_size = image_size(sample.mask_path)
            if mask_size != width_height:
                raise DataError(f"{sample.mask_path}: mask size {mask_size[0]}x{mask_size[1]} differs from its "
                                f"image size {width_height[0]}x{width_height[1]} (width x height)")

    return Category(root=root, name=category, train=train, test=test, has_masks=has_masks,
                    masks_note=None if has_masks else NO_MASKS_NOTE)


# ----------------------------------------------------------------------------------------------- splits


def train_val_split(samples: list[Sample], fraction: float, seed: int,
                    min_val: int = 2) -> tuple[list[Sample], list[Sample]]:
    """Hold out normal images for validation (score normalisation, thresholds). Seeded and order-preserving.

    Validation size is ``max(min_val, round(fraction * n))`` but always leaves at least one training image;
    ``fraction == 0`` gives no validation set.
    """
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"data.val_fraction: must be in [0, 1) (got {fraction!r})")
    n = len(samples)
    if fraction == 0 or n < 2:
        return list(samples), []
    n_val = min(max(int(min_val), int(round(fraction * n))), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    val_idx = set(order[:n_val].tolist())
    train = [s for i, s in enumerate(samples) if i not in val_idx]
    val = [s for i, s in enumerate(samples) if i in val_idx]
    return train, val


def split_seen_anomalies(test: list[Sample], n: int, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Draw ``n`` anomalous samples for methods that see a few real anomalies (PRN, N-Net): (seen, remaining).

    Round-robin over the defect types in a seeded order, so every type is represented before any repeats.
    Good samples are never drawn. Both lists keep the order of ``test``.
    """
    anomalous = [s for s in test if s.label == 1]
    if n < 0:
        raise ConfigError(f"number of seen anomalies must be >= 0 (got {n})")
    if n > len(anomalous):
        where = f" in {anomalous[0].path.parents[2]}" if anomalous else ""
        raise DataError(f"asked for {n} seen anomalies but the test set{where} has only {len(anomalous)} "
                        f"anomalous image(s)")
    rng = np.random.default_rng(seed)
    by_defect: dict[str, list[Sample]] = {}
    for s in anomalous:
        by_defect.setdefault(s.defect, []).append(s)
    defects = sorted(by_defect)
    queues = [[by_defect[d][i] for i in rng.permutation(len(by_defect[d]))] for d in
              (defects[i] for i in rng.permutation(len(defects)))]
    picked: set[Path] = set()
    round_ = 0
    while len(picked) < n:
        for queue in queues:
            if round_ < len(queue) and len(picked) < n:
                picked.add(queue[round_].path)
        round_ += 1
    seen = [s for s in test if s.label == 1 and s.path in picked]
    remaining = [s for s in test if not (s.label == 1 and s.path in picked)]
    return seen, remaining
