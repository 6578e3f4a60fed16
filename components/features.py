"""Fill the feature cache of a category for a method's backbone and transform, as an artifact for training.

The cache entry is keyed exactly as in training (backbone, weights, transform, training images after the same
validation split), so ``train --cache-dir`` then reads the features instead of running the backbone again.
Methods that extract features through their own view transforms (CFA's crops) fill further entries themselves.
"""

from __future__ import annotations

from typing import Any


def extract_features(data_root: str, category: str, cache_dir: str, *, method: str = "patchcore",
                     profile: str = "", params: str = "", overrides: list[str] | None = None,
                     progress: bool = False) -> dict[str, Any]:
    """Extract (or find) the cached features of ``category``'s training images; returns the entry's key."""
    from adcore.config import resolve
    from adcore.data.mvtec import load_category, train_val_split
    from adcore.features import FeatureCache
    from adcore.methods import create_model

    config = resolve(method, profile or None, params or None, list(overrides or []))
    cat = load_category(data_root, category)
    train, _ = train_val_split(cat.train, config.data.val_fraction, config.train.seed, config.data.min_val_images)
    model = create_model(config)
    transform = model.make_transform()
    cache = FeatureCache(cache_dir)
    feats = cache.features(model.backbone, train, transform, batch_size=config.data.batch_size,
                           num_workers=config.data.num_workers, show_progress=progress)
    return {"cache_dir": str(cache_dir), "key": feats.key, "n_images": len(feats),
            "stages": [list(s.shape[1:]) for s in feats.stages], "backbone": config.backbone.name}
