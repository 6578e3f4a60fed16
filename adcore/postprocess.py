"""From raw feature-level anomaly maps to input-resolution maps, image scores and normalised scores.

The usual pipeline (PatchCore, CFA, PRN papers): upsample the patch-level map bilinearly to the input size, smooth it
with a Gaussian (sigma = 4 px), then take the maximum (or the top-k mean, PRN) as the image score. The
:class:`ScoreNormalizer` maps scores to [0, 1] with the decision threshold at 0.5; it is fitted on validation
images (normal only) so that the test set never influences the threshold.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from adcore.errors import DataError, ModelFormatError

__all__ = [
    "ScoreNormalizer",
    "anomaly_maps_to_input",
    "gaussian_blur",
    "gaussian_kernel1d",
    "image_score_max",
    "image_score_topk_mean",
    "upsample",
]


def _as_bhw(maps: Tensor, name: str) -> tuple[Tensor, bool]:
    """(B, H, W) view of maps and whether the input had a channel axis (B, 1, H, W)."""
    if not isinstance(maps, Tensor):
        raise DataError(f"{name}: expected a torch.Tensor, got {type(maps).__name__}")
    if maps.ndim == 4 and maps.shape[1] == 1:
        return maps[:, 0], True
    if maps.ndim == 3:
        return maps, False
    raise DataError(f"{name}: expected maps of shape (B, H, W) or (B, 1, H, W), got {tuple(maps.shape)}")


def gaussian_kernel1d(sigma: float, dtype: torch.dtype = torch.float32, device: Any = None) -> Tensor:
    """Normalised 1-D Gaussian of radius int(4 sigma + 0.5), the same taps as scipy (truncate=4)."""
    radius = int(4.0 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(dtype=dtype, device=device)


def _symmetric_index(n: int, pad: int, device: Any) -> Tensor:
    """Indices extending 0..n-1 by `pad` on each side with edge-repeating reflection (d c b a | a b c d | d c b a).

    This is scipy's mode='reflect' (torch calls it 'symmetric' and F.pad lacks it; torch's 'reflect' is scipy's
    'mirror'). Works for any pad, also pad >= n, by folding with period 2n.
    """
    i = torch.arange(-pad, n + pad, device=device) % (2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)


def gaussian_blur(maps: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of each map, equal to scipy.ndimage.gaussian_filter(mode='reflect', truncate=4).

    Kernel size 2 * int(4 sigma + 0.5) + 1; sigma 0 returns the maps unchanged. Keeps shape, dtype and device.
    """
    if sigma < 0 or not math.isfinite(sigma):
        raise DataError(f"gaussian_blur: sigma must be a finite number >= 0, got {sigma}")
    x, had_channel = _as_bhw(maps, "gaussian_blur")
    if sigma == 0:
        return maps
    if not x.is_floating_point():
        x = x.float()
    k = gaussian_kernel1d(sigma, dtype=x.dtype, device=x.device)
    r = (k.numel() - 1) // 2
    _, h, w = x.shape
    y = x.unsqueeze(1)  # (B, 1, H, W)
    y = y.index_select(3, _symmetric_index(w, r, x.device))
    y = F.conv2d(y, k.view(1, 1, 1, -1))
    y = y.index_select(2, _symmetric_index(h, r, x.device))
    y = F.conv2d(y, k.view(1, 1, -1, 1))
    return y if had_channel else y[:, 0]


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize (align_corners=False) of (B, h, w) or (B, 1, h, w) maps to size (H, W); keeps the rank."""
    x, had_channel = _as_bhw(maps, "upsample")
    size = (int(size[0]), int(size[1]))
    if not x.is_floating_point():
        x = x.float()
    if tuple(x.shape[-2:]) == size:
        y = x
    else:
        y = F.interpolate(x.unsqueeze(1), size=size, mode="bilinear", align_corners=False)[:, 0]
    return y.unsqueeze(1) if had_channel else y


def _upsample_matrix(n_in: int, n_out: int) -> Tensor:
    """(n_out, n_in) float64 matrix of 1-D bilinear resizing exactly as F.interpolate(align_corners=False) does it.

    Taken from F.interpolate applied to the identity, so torch's own index and weight rules are used.
    """
    if n_in == n_out:
        return torch.eye(n_in, dtype=torch.float64)
    eye = torch.eye(n_in, dtype=torch.float64).view(n_in, 1, n_in, 1)
    return F.interpolate(eye, size=(n_out, 1), mode="bilinear", align_corners=False)[:, 0, :, 0].T.contiguous()


def _blur_matrix(n: int, sigma: float) -> Tensor:
    """(n, n) float64 matrix of the 1-D Gaussian with scipy's 'reflect' border (see gaussian_blur)."""
    if sigma == 0:
        return torch.eye(n, dtype=torch.float64)
    k = gaussian_kernel1d(sigma, dtype=torch.float64)
    r = (k.numel() - 1) // 2
    src = _symmetric_index(n, r, None).unfold(0, k.numel(), 1)  # (n, taps): padded window of each output
    out = torch.zeros(n, n, dtype=torch.float64)
    out.scatter_add_(1, src, k.expand(n, -1).contiguous())
    return out


_OPERATORS: dict[tuple, Tensor] = {}


def _resize_blur_operator(n_in: int, n_out: int, sigma: float, dtype: torch.dtype, device: Any) -> Tensor:
    """Blur @ upsample along one axis, (n_out, n_in), memoised (a handful of sizes per process)."""
    key = (n_in, n_out, float(sigma), dtype, str(device))
    op = _OPERATORS.get(key)
    if op is None:
        if len(_OPERATORS) > 64:
            _OPERATORS.clear()
        op = (_blur_matrix(n_out, sigma) @ _upsample_matrix(n_in, n_out)).to(dtype=dtype, device=device)
        _OPERATORS[key] = op
    return op


def anomaly_maps_to_input(maps: Tensor, size: tuple[int, int], sigma: float = 4.0) -> Tensor:
    """Upsample feature-level maps to the input size, then blur (sigma in input pixels): (B, H, W).

    Equal (to float rounding) to ``gaussian_blur(upsample(maps, size), sigma)``, computed in one pass: bilinear
    resizing and the reflect-padded Gaussian are both separable linear maps, so per axis they fold into one small
    (H, h) matrix A (and B for the width) and the result is A @ map @ B.T - two small matrix products per map
    instead of an interpolation, two paddings and two 33-tap convolutions on the full-size map (about 10x faster
    at 256 px on a CPU).
    """
    x, _ = _as_bhw(maps, "anomaly_maps_to_input")
    if sigma < 0 or not math.isfinite(sigma):
        raise DataError(f"anomaly_maps_to_input: sigma must be a finite number >= 0, got {sigma}")
    if not x.is_floating_point():
        x = x.float()
    (h, w), (out_h, out_w) = x.shape[-2:], (int(size[0]), int(size[1]))
    if sigma == 0:
        return upsample(x, (out_h, out_w))
    a = _resize_blur_operator(h, out_h, sigma, x.dtype, x.device)
    b = _resize_blur_operator(w, out_w, sigma, x.dtype, x.device)
    # Cheaper order first: (A @ X) @ B.T costs H*h*w + H*w*W, A @ (X @ B.T) costs h*w*W + H*h*W.
    if out_h * h * w + out_h * w * out_w <= h * w * out_w + out_h * h * out_w:
        return torch.matmul(torch.matmul(a, x), b.T)
    return torch.matmul(a, torch.matmul(x, b.T))


def image_score_max(maps: Tensor) -> Tensor:
    """Image score = maximum of the anomaly map: (B,)."""
    x, _ = _as_bhw(maps, "image_score_max")
    return x.flatten(1).amax(dim=1)


def image_score_topk_mean(maps: Tensor, k: int = 100) -> Tensor:
    """Image score = mean of the k highest pixels (PRN); k is capped at the number of pixels: (B,)."""
    if k < 1:
        raise DataError(f"image_score_topk_mean: k must be >= 1, got {k}")
    x, _ = _as_bhw(maps, "image_score_topk_mean")
    flat = x.flatten(1)
    return flat.topk(min(int(k), flat.shape[1]), dim=1).values.mean(dim=1)


# ----------------------------------------------------------------------------------------------------------------------
# normalisation


def _to_numpy(values: Any, name: str) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    a = np.asarray(values, dtype=np.float64).reshape(-1)
    if a.size == 0:
        raise DataError(f"ScoreNormalizer.fit: {name} is empty")
    if not np.isfinite(a).all():
        raise DataError(f"ScoreNormalizer.fit: {name} contains {int((~np.isfinite(a)).sum())} NaN/inf value(s)")
    return a


class ScoreNormalizer:
    """Maps raw scores to [0, 1] with the validation quantile (the decision threshold) at exactly 0.5.

    normalized = clip((x - threshold) / span + 0.5, 0, 1), where span = max - min of the validation values
    (1 when they are all equal). Fit it on validation data only: normal images held out from training.
    Image scores and pixel values have separate thresholds and spans.
    """

    _KEYS = ("quantile", "image_threshold", "image_span", "pixel_threshold", "pixel_span")

    def __init__(self) -> None:
        self.quantile: float | None = None
        self.image_threshold: float | None = None
        self.image_span: float | None = None
        self.pixel_threshold: float | None = None
        self.pixel_span: float | None = None

    @staticmethod
    def _stats(values: np.ndarray, quantile: float) -> tuple[float, float]:
        span = float(values.max() - values.min())
        return float(np.quantile(values, quantile)), span if span > 0 else 1.0

    def fit(
        self, val_image_scores: Any, val_pixel_values: Any | None = None, quantile: float = 0.99
    ) -> ScoreNormalizer:
        """Store thresholds (the `quantile` of the validation values) and spans. Pixel values may be None."""
        if not 0.0 < quantile <= 1.0:
            raise DataError(f"ScoreNormalizer.fit: quantile must be in (0, 1], got {quantile}")
        self.quantile = float(quantile)
        self.image_threshold, self.image_span = self._stats(_to_numpy(val_image_scores, "val_image_scores"), quantile)
        if val_pixel_values is None:
            self.pixel_threshold = self.pixel_span = None
        else:
            self.pixel_threshold, self.pixel_span = self._stats(
                _to_numpy(val_pixel_values, "val_pixel_values"), quantile
            )
        return self

    @staticmethod
    def _apply(values: Any, threshold: float | None, span: float | None, what: str) -> Any:
        if threshold is None or span is None:
            raise RuntimeError(f"ScoreNormalizer: not fitted for {what} (call fit() with validation {what})")
        if isinstance(values, Tensor):
            v = values if values.is_floating_point() else values.double()
            return ((v - threshold) / span + 0.5).clamp(0.0, 1.0)
        return np.clip((np.asarray(values, dtype=np.float64) - threshold) / span + 0.5, 0.0, 1.0)

    def normalize_scores(self, scores: Any) -> Any:
        """Normalised image scores, same type (Tensor or ndarray) as given."""
        return self._apply(scores, self.image_threshold, self.image_span, "image scores")

    def normalize_maps(self, maps: Any) -> Any:
        """Normalised anomaly maps, same type (Tensor or ndarray) as given."""
        return self._apply(maps, self.pixel_threshold, self.pixel_span, "pixel values")

    def to_dict(self) -> dict[str, float | None]:
        return {key: getattr(self, key) for key in self._KEYS}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScoreNormalizer:
        """Inverse of to_dict; a missing or non-numeric key raises ModelFormatError naming it."""
        self = cls()
        for key in cls._KEYS:
            if key not in d:
                raise ModelFormatError(f"normalizer: key '{key}' is missing")
            value = d[key]
            if value is None and key.startswith("pixel_"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ModelFormatError(f"normalizer: key '{key}' must be a finite number, got {value!r}")
            setattr(self, key, float(value))
        if self.image_span is None or self.image_span <= 0 or (self.pixel_span is not None and self.pixel_span <= 0):
            raise ModelFormatError("normalizer: spans must be > 0")
        if (self.pixel_threshold is None) != (self.pixel_span is None):
            raise ModelFormatError("normalizer: 'pixel_threshold' and 'pixel_span' must both be set or both null")
        return self

    def __repr__(self) -> str:
        return f"ScoreNormalizer({self.to_dict()})"
