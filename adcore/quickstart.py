"""The README's main job on the embedded default: demo data -> train -> evaluate every method -> summary table."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from adcore.data.demo import DEMO_CATEGORIES, generate_demo_dataset
from adcore.evaluation import evaluate_model
from adcore.io import atomic_write_text
from adcore.methods import method_names, resolve_settings
from adcore.metrics import METRIC_KEYS
from adcore.report import markdown_table
from adcore.training import TrainOptions, train_model

#: The summary table: four of adcore.metrics.METRIC_KEYS and the time (summary.json has every metric).
COLUMNS = ("category", "method", "image_auroc", "pixel_auroc", "pixel_aupro", "pixel_ap", "ms_per_image",
           "train_seconds")
#: Metrics with 3 decimals, seconds and milliseconds with 1.
FORMATS = {**{key: ".3f" for key in METRIC_KEYS}, "ms_per_image": ".1f", "train_seconds": ".1f"}


def run_quickstart(output: str | Path, *, methods: Sequence[str] | None = None,
                   categories: Sequence[str] | None = None, profile: str | None = None, params=None,
                   overrides: Sequence[str] = ()) -> list[dict]:
    output = Path(output)
    data_root = output / "data"
    if not (data_root / ".adcore-demo").exists():
        generate_demo_dataset(data_root)
    # Every run's settings are resolved before the first one trains: a bad setting fails at once.
    settings = {m: resolve_settings(m, profile, params, overrides) for m in methods or method_names()}
    options = TrainOptions(cache_dir=output / "feature-cache")
    rows = []
    for category in categories or DEMO_CATEGORIES:
        for method, run_settings in settings.items():
            print(f"== {method} on {category}", flush=True)
            model_dir = output / "models" / category / method
            t0 = time.perf_counter()
            result = train_model(run_settings, data_root, category, model_dir, options, overwrite=True)
            metrics = evaluate_model(model_dir, data_root, category,
                                     output / "eval" / category / method / "metrics.json")
            rows.append({"category": category, "method": method, "train_seconds": round(result.seconds, 1),
                         **{k: metrics.get(k) for k in (*METRIC_KEYS, "ms_per_image")},
                         "wall_seconds": round(time.perf_counter() - t0, 1)})
    table = summary_table(rows)
    atomic_write_text(output / "summary.md", table + "\n")
    atomic_write_text(output / "summary.json", json.dumps(rows, indent=2) + "\n")
    print(table)
    print(f"\nmodels, metrics, heatmaps and curves under {output}")
    return rows


def summary_table(rows: list[dict]) -> str:
    """summary.md: one line per (category, method) with the columns above."""
    return markdown_table(rows, COLUMNS, FORMATS)
