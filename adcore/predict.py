"""Score individual images with a trained model: a JSON line, a heatmap PNG and a decision per image.

The decision threshold is explicit: a model's normaliser (fitted on validation images) implies one, the raw image
score at its validation quantile (:func:`model_threshold`; 0.5 once normalised). An image is ``defective`` when its
raw score is above the threshold, else ``good``. Every caller (``adcore predict``, the served model, the batch step)
may override it per call. The image decoding shared by the served model and the batch step lives here too.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adcore.data.mvtec import read_image
from adcore.errors import ConfigError, DataError
from adcore.io import atomic_write_text
from adcore.methods import load_model
from adcore.methods.base import Prediction
from adcore.postprocess import ScoreNormalizer

DEFECTIVE, GOOD = "defective", "good"
#: The first bytes of the encodings an image request may carry (PNG, JPEG, BMP).
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM")


def model_threshold(normalizer: dict[str, Any] | None) -> float | None:
    """The raw image-score threshold a model's normaliser implies (the validation quantile); None without one."""
    if not normalizer:
        return None
    return ScoreNormalizer.from_dict(normalizer).image_threshold


def check_threshold(value: float | None, what: str = "--threshold") -> float | None:
    """``value`` as a float; ConfigError naming ``what`` when it is not a finite number."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}: expected a number (a raw image score), got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{what}: expected a finite number (a raw image score), got {value!r}")
    return number


def decide(score: float, threshold: float | None) -> str | None:
    """``defective`` when the raw score is above the threshold, else ``good``; None without a threshold."""
    if threshold is None:
        return None
    return DEFECTIVE if score > threshold else GOOD


def decode_image(data: bytes | str, what: str) -> np.ndarray:
    """PNG / JPEG / BMP bytes (or their base64 text) -> HxWx3 uint8 RGB, as :func:`read_image` reads files.

    DataError naming ``what`` for bytes that are not an image, a truncated image or one over the pixel limit."""
    from PIL import Image, UnidentifiedImageError

    from adcore.data.mvtec import _to_uint8, max_image_pixels

    raw = data.encode("ascii", "replace") if isinstance(data, str) else bytes(data)
    if isinstance(data, str) or not raw.startswith(_IMAGE_MAGIC):  # text is always base64 (JSON carries no bytes)
        try:
            raw = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise DataError(f"{what}: neither PNG/JPEG/BMP bytes nor their base64 encoding") from None
    try:
        image = Image.open(io.BytesIO(raw))
        width, height = image.size
        if width * height > max_image_pixels():
            raise DataError(f"{what}: {width}x{height} pixels exceeds the limit of {max_image_pixels() / 1e6:g} "
                            "megapixels; not decoded (ADCORE_MAX_IMAGE_PIXELS)")
        image.load()  # full decode: a truncated file fails here, not later
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{what}: unreadable image ({type(exc).__name__}: {exc})") from None
    arr = _to_uint8(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return np.ascontiguousarray(arr)


def as_image_array(values: Any, what: str) -> np.ndarray:
    """An image given as numbers (nested lists or an array) -> HxWx3 uint8; HxW grey is repeated to 3 channels.

    JSON has no uint8: integers 0..255 of any integer type are accepted, anything else (floats, bools, strings,
    values out of range, another shape) is a DataError naming ``what``."""
    try:
        arr = np.asarray(values.tolist() if isinstance(values, np.ndarray) and values.dtype == object else values)
    except ValueError:  # ragged nested lists
        raise DataError(f"{what}: rows of different lengths; expected an image of shape (H, W, 3)") from None
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape) == 0:
        raise DataError(f"{what}: expected an image of shape (H, W, 3) or (H, W), got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind not in "iu":
        raise DataError(f"{what}: expected uint8 pixel values (integers 0..255), got dtype {arr.dtype}")
    low, high = int(arr.min()), int(arr.max())
    if low < 0 or high > 255:
        raise DataError(f"{what}: pixel values must be in 0..255 (uint8), got {low}..{high}")
    return arr.astype(np.uint8)


def predict_files(model_dir: str | Path, images: Sequence[str | Path], output: str | Path, *,
                  device: str | None = None, batch_size: int = 8,
                  threshold: float | None = None) -> Iterator[dict[str, Any]]:
    """Yield one record per image; write ``<output>/<stem>_heatmap.png`` and ``<output>/predictions.jsonl``.

    ``threshold``: raw image score above which an image is ``defective``; default the model's (its normaliser's).
    """
    from adcore import viz

    threshold = check_threshold(threshold)
    model = load_model(model_dir, device=device)
    normalizer = ScoreNormalizer.from_dict(model.normalizer) if model.normalizer else None
    if threshold is None:
        threshold = model_threshold(model.normalizer)
    transform = model.make_transform()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    records = []
    paths = [Path(p) for p in images]
    heatmaps = _heatmap_names(paths)
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        tensors = torch.stack([transform(read_image(p)) for p in chunk])  # read_image names a bad file
        pred = model.predict(tensors)
        # Normalise the same prediction rather than running the model a second time with normalize=True.
        norm = Prediction(normalizer.normalize_maps(pred.maps), normalizer.normalize_scores(pred.scores)) \
            if normalizer is not None else None
        for i, path in enumerate(chunk):
            heatmap = output / heatmaps[start + i]
            anomaly_map = (norm.maps[i] if norm is not None else _minmax(pred.maps[i])).numpy()
            viz.save_overlay_panel(heatmap, transform.denormalize(tensors[i]), anomaly_map,
                                   title=f"score={float(pred.scores[i]):.4g}")
            score = float(pred.scores[i])
            record: dict[str, Any] = {"path": str(path), "score": score, "heatmap": str(heatmap)}
            if norm is not None:
                record["normalized_score"] = float(norm.scores[i])
            if threshold is not None:
                record.update(threshold=threshold, decision=decide(score, threshold),
                              is_anomalous=score > threshold)
            records.append(record)
            yield record
    atomic_write_text(output / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in records))


def _heatmap_names(paths: Sequence[Path]) -> list[str]:
    """``<stem>_heatmap.png``; images with the same stem (good/000.png, crack/000.png) get their folder and, if
    still ambiguous, their position as a prefix so that no heatmap overwrites another."""
    names, used = [], set()
    stems = [p.stem for p in paths]
    for i, path in enumerate(paths):
        name = f"{path.stem}_heatmap.png"
        if stems.count(path.stem) > 1:
            name = f"{path.parent.name}_{name}"
        if name in used:
            name = f"{i:04d}_{name}"
        used.add(name)
        names.append(name)
    return names


def _minmax(x: torch.Tensor) -> torch.Tensor:
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / float(hi - lo + np.finfo(np.float32).eps)
