"""Validate a fetch with the checks training uses: a bad image fails the fetch, not a training run hours later."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adcore.errors import DataError


def validate_dataset(root: Path, categories: list[str] | None, origins: dict[str, str] | None = None) -> dict:
    """Run the foundation's checks on each category; returns image counts per split.

    A DataError names the local file; ``origins`` adds where it came from (the S3 key or repository path).
    """
    from adcore.data.mvtec import list_categories, load_category

    names = list(categories) if categories else list_categories(root)
    if not names:
        raise DataError(f"{root}: no category folders with train/good after the fetch (expected MVTec layout "
                        "<category>/train/good, <category>/test/<defect>)")
    counts: dict[str, Any] = {}
    for name in names:
        try:
            cat = load_category(root, name, check_images=True)
        except DataError as exc:
            msg = str(exc)
            for rel, origin in (origins or {}).items():
                if msg.startswith(str(root / rel)):
                    msg = f"{msg} [fetched from {origin}]"
                    break
            raise DataError(msg) from None
        per_split: dict[str, int] = {"train/good": len(cat.train)}
        for s in cat.test:
            per_split[f"test/{s.defect}"] = per_split.get(f"test/{s.defect}", 0) + 1
        counts[name] = {
            "splits": per_split,
            "train": len(cat.train),
            "test": len(cat.test),
            "test_good": sum(s.label == 0 for s in cat.test),
            "test_anomalous": sum(s.label == 1 for s in cat.test),
            "masks": sum(s.mask_path is not None for s in cat.test),
            "defects": cat.defects,
        }
    return counts
