"""Image and mask preprocessing shared by every method: resize, centre crop, ImageNet normalisation.

Images and masks go through the same geometry so that pixel scores line up with the ground truth.
"""

from __future__ import annotations

import hashlib
import json
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from adcore.errors import ConfigError, DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Bump when the preprocessing changes in a way that changes features (it is part of feature-cache keys).
_TRANSFORM_VERSION = 1


class ImageTransform:
    """uint8 HxWx3 -> normalised float32 3xSxS: antialiased bilinear resize to image_size, then centre crop."""

    def __init__(self, image_size: int, crop_size: int | None = None,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        if int(image_size) <= 0:
            raise ConfigError(f"data.image_size: must be > 0 (got {image_size})")
        if crop_size is not None and not 0 < int(crop_size) <= int(image_size):
            raise ConfigError(f"data.crop_size: must be in 1..image_size={image_size} (got {crop_size})")
        if len(mean) != 3 or len(std) != 3 or any(float(s) <= 0 for s in std):
            raise ConfigError(f"normalisation: mean and std need 3 values, std > 0 (got mean={mean}, std={std})")
        self.image_size = int(image_size)
        self.crop_size = int(crop_size) if crop_size is not None else None
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.output_size = self.crop_size or self.image_size
        self._mean_t = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        self._std_t = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)

    @classmethod
    def from_config(cls, data_cfg, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> "ImageTransform":
        """From an ``adcore.config.DataConfig``; mean/std come from the backbone."""
        return cls(data_cfg.image_size, data_cfg.crop_size, mean, std)

    @property
    def fingerprint(self) -> str:
        """Stable hash of every parameter, so cached features are never reused across preprocessing changes."""
        spec = {"version": _TRANSFORM_VERSION, "image_size": self.image_size, "crop_size": self.crop_size,
                "mean": [round(m, 8) for m in self.mean], "std": [round(s, 8) for s in self.std],
                "resize": "bilinear-antialias", "mask_resize": "nearest-exact", "crop": "centre"}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        return (f"ImageTransform(image_size={self.image_size}, crop_size={self.crop_size}, mean={self.mean}, "
                f"std={self.std})")

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        if self.crop_size is None or self.crop_size == self.image_size:
            return x
        top = int(round((self.image_size - self.crop_size) / 2.0))  # same rounding as torchvision CenterCrop
        return x[..., top:top + self.crop_size, top:top + self.crop_size]

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        arr = np.asarray(image)
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise DataError(f"image array: expected uint8 HxWx3, got {arr.dtype} with shape {arr.shape}")
        if not arr.flags.writeable:  # arrays from PIL are read-only; torch wants to own writable memory
            arr = arr.copy()
        x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).unsqueeze(0).float()
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=True)
        x = self._crop(x[0]).clamp_(0.0, 255.0).div_(255.0)
        return ((x - self._mean_t) / self._std_t).contiguous()

    def mask(self, mask: np.ndarray) -> torch.Tensor:
        """bool HxW -> float32 SxS in {0, 1}: nearest neighbour keeps the mask binary."""
        arr = np.asarray(mask)
        if arr.ndim != 2:
            raise DataError(f"mask array: expected HxW, got shape {arr.shape}")
        m = torch.from_numpy(np.ascontiguousarray(arr > 0)).float()[None, None]
        if m.shape[-2:] != (self.image_size, self.image_size):
            m = F.interpolate(m, size=(self.image_size, self.image_size), mode="nearest-exact")
        return self._crop(m[0, 0]).contiguous()

    def denormalize(self, x: torch.Tensor) -> np.ndarray:
        """3xSxS normalised tensor -> uint8 SxSx3, for heatmap overlays."""
        x = x.detach().to("cpu", torch.float32)
        if x.ndim != 3 or x.shape[0] != 3:
            raise DataError(f"image tensor: expected 3xSxS, got shape {tuple(x.shape)}")
        x = (x * self._std_t + self._mean_t).mul(255.0).round_().clamp_(0, 255)
        return x.to(torch.uint8).permute(1, 2, 0).numpy().copy()
