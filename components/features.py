"""Fill the feature cache of a category for a method's backbone and transform, as an artifact for training.

The cache entry is keyed exactly as in training (backbone, weights, transform, training images after the same
validation split), so ``train --cache-dir`` then reads the features instead of running the backbone again.
Methods that read several views (CFA++'s resized frame and crop) get one entry per view.
"""

from __future__ import annotations

from typing import Any


def extract_features(data_root: str, category: str, cache_dir: str, *, method: str = "patchcore",
                     profile: str = "", params: str = "", overrides: list[str] | None = None,
                     progress: bool = False) -> dict[str, Any]:
    """Extract (or find) the cached features of ``category``'s training images; returns the entry's key."""
    from pathlib import Path

    from adcore.data.mvtec import load_category, train_val_split
    from adcore.methods import create_model, resolve_settings
    from adcore.methods.base import FitData, TrainOptions

    settings = resolve_settings(method, profile or None, params or None, list(overrides or []))
    cat = load_category(data_root, category)
    train, _ = train_val_split(cat.train, settings.data.val_fraction, settings.train.seed,
                               settings.data.min_val_images)
    model = create_model(settings)
    data = FitData(train=train, val=[], transform=model.make_transform(), category_name=cat.name)
    # The method's own reading of its training features: every view it will ask for (CFA++'s crop too).
    found = model.training_features(data, TrainOptions(cache_dir=Path(cache_dir), progress=progress))
    entries = list(found.values()) if isinstance(found, dict) else [found]
    return {"cache_dir": str(cache_dir), "key": entries[0].key, "keys": [e.key for e in entries],
            "n_images": len(entries[0]), "stages": [list(s.shape[1:]) for s in entries[0].stages],
            "backbone": settings.backbone.name}
