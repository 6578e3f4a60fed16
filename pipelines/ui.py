"""What the KFP UI shows of an evaluation: the image ROC as ``ClassificationMetrics`` points and one HTML page with
the metrics, the curves and the heatmap overlays (images embedded, so the page needs nothing else)."""

from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path
from typing import Any

#: KFP stores the curve as JSON: an infinite threshold (the ROC's first point) is not valid there.
_FINITE_MAX = 1e30


def roc_points(scores_csv: str | Path) -> tuple[list[float], list[float], list[float]]:
    """(fpr, tpr, thresholds) of the image scores in ``scores.csv`` (components.evaluate's per-image file)."""
    from adcore.metrics import roc_curve

    with open(scores_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    scores = [float(r["score"]) for r in rows]
    labels = [int(r["label"]) for r in rows]
    fpr, tpr, thresholds = roc_curve(scores, labels)
    return ([float(x) for x in fpr], [float(x) for x in tpr],
            [min(float(t), _FINITE_MAX) for t in thresholds])


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img src="data:image/png;base64,{data}" style="max-width:100%"><figcaption>' \
           f"{html.escape(path.name)}</figcaption></figure>"


def evaluation_html(evaluation_dir: str | Path, title: str) -> str:
    """One self-contained page: the metrics table, roc/pro/histogram plots and every overlay (image | heatmap)."""
    root = Path(evaluation_dir)
    metrics: dict[str, Any] = json.loads((root / "metrics.json").read_text())
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td></tr>" for k, v in sorted(metrics.items())
                   if isinstance(v, float))
    plots = [root / name for name in ("roc.png", "pro.png", "score_histogram.png") if (root / name).is_file()]
    overlays = sorted((root / "overlays").glob("*.png")) if (root / "overlays").is_dir() else []
    parts = [f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>",
             f"<h1>{html.escape(title)}</h1><table border='1'>{rows}</table>", "<h2>Curves</h2>",
             *(_img(p) for p in plots), "<h2>Heatmaps</h2>", *(_img(p) for p in overlays), "</body></html>"]
    return "\n".join(parts)


__all__ = ["evaluation_html", "roc_points"]
