"""The README's main job on the embedded default: demo data -> train -> evaluate every method -> summary table."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from adcore.data.demo import DEMO_CATEGORIES, generate_demo_dataset
from adcore.evaluation import evaluate_model
from adcore.io import atomic_write_text
from adcore.methods import method_names
from adcore.training import train_model

COLUMNS = ("image_auroc", "pixel_auroc", "pixel_aupro", "pixel_ap", "ms_per_image")


def run_quickstart(output: str | Path, *, methods: Sequence[str] | None = None,
                   categories: Sequence[str] | None = None, profile: str | None = None, params=None,
                   overrides: Sequence[str] = ()) -> list[dict]:
    output = Path(output)
    data_root = output / "data"
    if not (data_root / ".adcore-demo").exists():
        generate_demo_dataset(data_root)
    rows = []
    for category in categories or DEMO_CATEGORIES:
        for method in methods or method_names():
            print(f"== {method} on {category}", flush=True)
            model_dir = output / "models" / category / method
            t0 = time.perf_counter()
            result = train_model(method, data_root, category, model_dir, profile=profile, params=params,
                                 overrides=list(overrides), cache_dir=output / "feature-cache")
            metrics = evaluate_model(model_dir, data_root, category, output / "eval" / category / method / "metrics.json")
            rows.append({"category": category, "method": method, "train_seconds": round(result.seconds, 1),
                         **{k: metrics.get(k) for k in COLUMNS}, "wall_seconds": round(time.perf_counter() - t0, 1)})
    table = summary_table(rows)
    atomic_write_text(output / "summary.md", table + "\n")
    atomic_write_text(output / "summary.json", json.dumps(rows, indent=2) + "\n")
    print(table)
    print(f"\nmodels, metrics, heatmaps and curves under {output}")
    return rows


def summary_table(rows: list[dict]) -> str:
    head = ["category", "method", *COLUMNS, "train_seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [_fmt(row.get(k), metric=k not in ("ms_per_image", "train_seconds")) for k in head]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(value, metric: bool = True) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}" if metric else f"{value:.1f}"
    return str(value)
