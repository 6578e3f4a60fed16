"""Train one method on one category: load and validate data, carve the validation split, fit, calibrate, save.

The test split is touched only to draw PRN's "seen anomalies" (its paper's protocol); those images are recorded in
the model and excluded from evaluation. Everything chosen during training (normalisation, epochs where a method
chooses) is chosen on the validation split carved from ``train/good``.
"""

from __future__ import annotations

import hashlib
import os
import platform
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adcore.config import RunConfig, resolve
from adcore.data.dataset import make_loader
from adcore.data.mvtec import Category, load_category, split_seen_anomalies, train_val_split
from adcore.errors import DataError
from adcore.features import FeatureCache, file_sha256
from adcore.methods import create_model
from adcore.methods.base import EpochCallback, FitData, seed_everything


@dataclass
class TrainResult:
    model_dir: Path
    config: RunConfig
    seconds: float
    history: list[dict[str, float]]
    peak_rss_mb: float
    device: str


def default_cache_dir() -> Path:
    """``$ADCORE_CACHE_DIR``, else ``$XDG_CACHE_HOME/adcore/features``, else ``~/.cache/adcore/features``."""
    if os.environ.get("ADCORE_CACHE_DIR"):
        return Path(os.environ["ADCORE_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "adcore" / "features"


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def data_fingerprint(category: Category, train: Sequence, val: Sequence) -> dict[str, Any]:
    """What the model was trained on: content hash of the training and validation images, and their counts."""
    digest = hashlib.sha256()
    for sample in [*train, *val]:
        digest.update(file_sha256(sample.path).encode())
    return {"category": category.name, "root": str(category.root), "n_train": len(train), "n_val": len(val),
            "images_sha256": digest.hexdigest()[:24]}


def environment() -> dict[str, str]:
    import numpy
    import timm

    return {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "numpy": numpy.__version__, "platform": platform.platform(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"}


def train_model(
    method: str,
    data_root: str | Path,
    category: str,
    output: str | Path,
    *,
    profile: str | None = None,
    params: dict | str | Path | None = None,
    overrides: Sequence[str] = (),
    cache_dir: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    on_epoch: EpochCallback | None = None,
    progress: bool = True,
    stop_after_epochs: int | None = None,
) -> TrainResult:
    """Train ``method`` on ``data_root/category`` and write the model directory ``output`` (atomically)."""
    config = resolve(method, profile, params, list(overrides))
    seed_everything(config.train.seed)
    cat = load_category(data_root, category)
    train, val = train_val_split(cat.train, config.data.val_fraction, config.train.seed, config.data.min_val_images)
    if not train:
        raise DataError(f"{Path(data_root) / category}/train/good: no images left for training after the split")

    method_cfg = config.method_config()
    n_seen = int(getattr(method_cfg, "n_seen", 0) or 0)
    seen: list = []
    if n_seen > 0:
        if not cat.has_masks:
            raise DataError(f"{cat.root / cat.name}: {method} uses {n_seen} seen anomalies with masks, but the "
                            f"category has none ({cat.masks_note}); set method.{method}.n_seen=0")
        seen, _ = split_seen_anomalies(cat.test, n_seen, config.train.seed)

    model = create_model(config)
    transform = model.make_transform()
    cache = FeatureCache(cache_dir if cache_dir is not None else default_cache_dir())
    data = FitData(train=train, val=val, transform=transform, cache=cache, seen_anomalies=seen,
                   category_name=cat.name, on_epoch=on_epoch,
                   checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir else None, resume=resume,
                   progress=progress, stop_after_epochs=stop_after_epochs)
    start = time.perf_counter()
    model.fit(data)
    if val:
        model.calibrate(make_loader(val, transform, config.data.batch_size, config.data.num_workers))
    seconds = time.perf_counter() - start
    model.fit_info["seen_anomalies"] = [str(s.path) for s in seen]
    model.fit_info["val_images"] = [str(s.path) for s in val]
    model.fit_info["train_seconds"] = seconds
    model.fit_info["peak_rss_mb"] = peak_rss_mb()
    if torch.cuda.is_available() and model.device.type == "cuda":
        model.fit_info["peak_cuda_mb"] = torch.cuda.max_memory_allocated(model.device) / 2**20
    out = model.save(output, extra_meta={"data": data_fingerprint(cat, train, val), "environment": environment(),
                                         "device": str(model.device)})
    return TrainResult(model_dir=out, config=config, seconds=seconds, history=model.fit_info.get("history", []),
                       peak_rss_mb=model.fit_info["peak_rss_mb"], device=str(model.device))
