"""Does an export give what ``adcore predict`` gives? Maps and scores on the same images, side by side.

``python -m adcore.export.check MODEL_DIR EXPORT_DIR [EXPORT_DIR ...] --images IMG ...`` prints one line per
export: the largest absolute difference of the maps and of the scores, each divided by the range (max - min) of
``predict``'s maps over the images, the measure docs/EXPORT.md states the 1e-4 bound in.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def compare(model: Any, exported: Any, images: Any) -> dict[str, float]:
    """Max |difference| of maps and scores between ``model.predict`` and an :class:`ExportedModel` on normalised
    images (N, 3, S, S), absolute and relative to the range of predict's maps (normalised when the export is)."""
    normalize = bool(exported.record.get("normalized"))
    reference = model.predict(images, normalize=normalize)
    maps, scores = exported.predict(images.numpy())
    ref_maps, ref_scores = reference.maps.numpy(), reference.scores.numpy()
    span = float(ref_maps.max() - ref_maps.min()) or 1.0
    map_diff = float(np.abs(maps - ref_maps).max())
    score_diff = float(np.abs(scores - ref_scores).max())
    return {"max_abs_diff_maps": map_diff, "max_abs_diff_scores": score_diff, "map_range": span,
            "max_rel_diff_maps": map_diff / span, "max_rel_diff_scores": score_diff / span}


def load_images(model: Any, paths: Sequence[str | Path]):
    """Image files through the model's own transform, stacked: (N, 3, S, S)."""
    import torch

    from adcore.data.mvtec import read_image

    transform = model.make_transform()
    return torch.stack([transform(read_image(p)) for p in paths])


def main(argv: list[str] | None = None) -> int:
    from adcore.errors import AdcoreError
    from adcore.export.runners import load_exported
    from adcore.methods import load_model

    parser = argparse.ArgumentParser(prog="python -m adcore.export.check", description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("exports", type=Path, nargs="+")
    parser.add_argument("--images", type=Path, nargs="+", required=True)
    args = parser.parse_args(argv)
    try:
        model = load_model(args.model, device="cpu")
        images = load_images(model, args.images)
        for folder in args.exports:
            exported = load_exported(folder)
            row = {"method": model.name, "format": exported.format, "export": str(folder), "n_images": len(images),
                   **compare(model, exported, images)}
            print(json.dumps(row))
    except AdcoreError as exc:
        print(f"adcore export check: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
