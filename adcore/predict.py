"""Score individual image files with a trained model: a JSON line, a heatmap PNG and a score per image."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adcore.data.mvtec import read_image
from adcore.io import atomic_write_text
from adcore.methods import load_model
from adcore.methods.base import Prediction
from adcore.postprocess import ScoreNormalizer


def predict_files(model_dir: str | Path, images: Sequence[str | Path], output: str | Path, *,
                  device: str | None = None, batch_size: int = 8) -> Iterator[dict[str, Any]]:
    """Yield one record per image; write ``<output>/<stem>_heatmap.png`` and ``<output>/predictions.jsonl``."""
    from adcore import viz

    model = load_model(model_dir, device=device)
    normalizer = ScoreNormalizer.from_dict(model.normalizer) if model.normalizer else None
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
            record = {"path": str(path), "score": float(pred.scores[i]), "heatmap": str(heatmap)}
            if norm is not None:
                record["normalized_score"] = float(norm.scores[i])
                record["is_anomalous"] = bool(norm.scores[i] > 0.5)
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
