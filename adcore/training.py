"""Train one method on one category: load and validate data, carve the validation split, fit, calibrate, save.

The test split is touched only to draw PRN's "seen anomalies" (its paper's protocol); those images are recorded in
the model and excluded from evaluation. Everything chosen during training (normalisation, epochs where a method
chooses) is chosen on the validation split carved from ``train/good``.
"""

from __future__ import annotations

import hashlib
import os
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from adcore.config import RunConfig
from adcore.data.dataset import make_loader
from adcore.data.mvtec import Category, load_category, split_seen_anomalies, train_val_split
from adcore.environment import environment_record
from adcore.errors import ConfigError, DataError
from adcore.io import check_model_output, file_sha256
from adcore.methods import create_model
from adcore.methods.base import FitData, TrainOptions, seed_everything

__all__ = ["TrainOptions", "TrainResult", "default_cache_dir", "train_model"]


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


def check_output(output: str | Path, data_root: str | Path, category: str, *, overwrite: bool) -> None:
    """Before any work: ``output`` may be written. It must not be, hold or lie inside the category's data, nor be
    the current folder (or hold it); an existing folder must be an adcore model directory and is replaced only with
    ``overwrite``. ConfigError naming the path otherwise."""
    out = Path(os.path.abspath(output))
    cat_dir = Path(os.path.abspath(Path(data_root).expanduser() / category))
    real_out, real_cat = Path(os.path.realpath(out)), Path(os.path.realpath(cat_dir))
    for o, c in ((out, cat_dir), (real_out, real_cat)):
        if o == c or c in o.parents or o in c.parents:
            where = "is" if o == c else ("lies inside" if c in o.parents else "contains")
            raise ConfigError(f"{output}: the output {where} the dataset category folder "
                              f"{Path(data_root) / category}; a model write would replace data. Write the model "
                              "elsewhere")
    cwd = Path(os.path.realpath(os.getcwd()))
    if real_out == cwd or real_out in cwd.parents:
        raise ConfigError(f"{output}: the output is the current folder or holds it; write the model to a new "
                          "folder, e.g. models/<name>")
    check_model_output(output, overwrite=overwrite)


def train_model(settings: RunConfig, data_root: str | Path, category: str, output: str | Path,
                options: TrainOptions | None = None, *, overwrite: bool = False) -> TrainResult:
    """Train on ``data_root/category`` with resolved ``settings`` (:func:`adcore.methods.resolve_settings`) and
    write the model directory ``output`` (atomically). ``options.cache_dir`` None means :func:`default_cache_dir`.
    An existing model directory at ``output`` is replaced only with ``overwrite``; any other existing folder, or an
    output inside the data, is refused before training (:func:`check_output`)."""
    check_output(output, data_root, category, overwrite=overwrite)
    options = options or TrainOptions()
    if options.cache_dir is None:
        options = replace(options, cache_dir=default_cache_dir())
    method = settings.method_name
    seed_everything(settings.train.seed)
    cat = load_category(data_root, category)
    train, val = train_val_split(cat.train, settings.data.val_fraction, settings.train.seed,
                                 settings.data.min_val_images)
    if not train:
        raise DataError(f"{Path(data_root) / category}/train/good: no images left for training after the split")

    n_seen = int(getattr(settings.method, "n_seen", 0) or 0)
    seen: list = []
    if n_seen > 0:
        if not cat.has_masks:
            raise DataError(f"{cat.root / cat.name}: {method} uses {n_seen} seen anomalies with masks, but the "
                            f"category has none ({cat.masks_note}); set method.{method}.n_seen=0")
        seen, _ = split_seen_anomalies(cat.test, n_seen, settings.train.seed)

    model = create_model(settings)
    transform = model.make_transform()
    data = FitData(train=train, val=val, transform=transform, seen_anomalies=seen, category_name=cat.name)
    start = time.perf_counter()
    model.fit(data, options)
    if val:
        model.calibrate(make_loader(val, transform, settings.data.batch_size, settings.data.num_workers))
    seconds = time.perf_counter() - start
    model.fit_info["seen_anomalies"] = [str(s.path) for s in seen]
    model.fit_info["val_images"] = [str(s.path) for s in val]
    model.fit_info["train_seconds"] = seconds
    model.fit_info["peak_rss_mb"] = peak_rss_mb()
    if torch.cuda.is_available() and model.device.type == "cuda":
        model.fit_info["peak_cuda_mb"] = torch.cuda.max_memory_allocated(model.device) / 2**20
    check_output(output, data_root, category, overwrite=overwrite)  # again: it may have appeared while training
    out = model.save(output, extra_meta={"data": data_fingerprint(cat, train, val),
                                         "environment": environment_record(str(model.device)),
                                         "device": str(model.device)})
    return TrainResult(model_dir=out, config=settings, seconds=seconds, history=model.fit_info.get("history", []),
                       peak_rss_mb=model.fit_info["peak_rss_mb"], device=str(model.device))
