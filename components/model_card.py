"""The model card of a registered version: one markdown page a reviewer reads before a model serves.

Data (dataset and test-split digests, source), settings (the model's own ``config``), metrics with bootstrap
confidence intervals for the image metrics, the promotion decision with the gate's settings, interval and
reasons, and the evaluation pictures. It is logged to the model's run as ``model_card/model_card.md`` with the
pictures beside it (relative links work once downloaded) and is the version's description in the registry (the
MLflow UI renders it).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from adcore.metrics import METRIC_KEYS
from components.gate import GateSettings, Interval

CARD_DIR = "model_card"
CARD_FILE = "model_card.md"
#: Pictures of the evaluation folder shown on the card (plus the first overlays).
PICTURES = ("roc.png", "pro.png", "score_histogram.png")
MAX_OVERLAYS = 2


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("-" if value in (None, "") else str(value))


def card_pictures(evaluation_dir: str | Path) -> list[Path]:
    folder = Path(evaluation_dir)
    found = [folder / name for name in PICTURES if (folder / name).is_file()]
    return found + sorted((folder / "overlays").glob("*.png"))[:MAX_OVERLAYS]


def render(*, name: str, version: str | int, category: str, method: str, run_id: str, metrics: dict[str, Any],
           intervals: dict[str, tuple[float, float, float]], gate: GateSettings, decision: str, reasons: list[str],
           interval: Interval | None, compared_with: str, config: dict[str, Any], dataset: dict[str, str],
           git_commit: str, pictures: list[str]) -> str:
    """The card's markdown (pure: every fact is an argument)."""
    lines = [f"# {name} v{version}", "",
             f"{method} on {category}; run `{run_id}`; code `{git_commit or 'unknown'}`.", "",
             "## Data", "",
             f"- dataset sha256: `{dataset.get('dataset_sha256') or 'unknown'}`",
             f"- source: {dataset.get('dataset_source') or 'unknown'}",
             f"- test split sha256: `{metrics.get('test_split_sha256') or 'unknown'}` ({_fmt(metrics.get('n_images'))} "
             f"images, {_fmt(metrics.get('n_anomalous'))} anomalous)"]
    seen = metrics.get("excluded_seen_anomalies") or []
    if seen:
        lines.append(f"- excluded from the test split (seen in training): {len(seen)} images")
    level = f"{100 * gate.confidence:g}%"
    lines += ["", "## Metrics", "", f"| metric | value | {level} CI (bootstrap over images) |", "|---|---|---|"]
    for key in METRIC_KEYS:
        if key in intervals:
            value, low, high = intervals[key]
            lines.append(f"| {key} | {value:.4f} | [{low:.4f}, {high:.4f}] |")
        elif metrics.get(key) is not None:
            lines.append(f"| {key} | {_fmt(metrics.get(key))} | - (pixel metric) |")
    lines += ["", "## Promotion", "", f"- decision: **{decision}** (compared with: {compared_with})",
              f"- gate: metric {gate.metric}, margin {gate.margin}, tolerance {gate.tolerance}, floor {gate.floor}, "
              f"{gate.resamples} resamples, seed {gate.seed}, mode {gate.mode}"]
    if interval is not None:
        lines.append(f"- {interval.metric} challenger - champion: {interval.describe()}")
    lines += [f"- {reason}" for reason in reasons]
    lines += ["", "## Settings", "", "```json", json.dumps(config, indent=1, sort_keys=True, default=str), "```"]
    if pictures:
        lines += ["", "## Pictures", ""] + [f"![{Path(p).stem}]({p})" for p in pictures]
    return "\n".join(lines) + "\n"


def log_card(client, run_id: str, name: str, version: str | int, markdown: str, pictures: list[Path]) -> str:
    """Log the card and its pictures to the run; make the card the version's description. Returns its path."""
    with tempfile.TemporaryDirectory(prefix="adcore-card-") as tmp:
        folder = Path(tmp) / CARD_DIR
        (folder / "pictures").mkdir(parents=True)
        (folder / CARD_FILE).write_text(markdown)
        for picture in pictures:
            shutil.copy2(picture, folder / "pictures" / picture.name)
        client.log_artifacts(run_id, str(folder), CARD_DIR)
    client.update_model_version(name, str(version), description=markdown[:20000])
    return f"{CARD_DIR}/{CARD_FILE}"


__all__ = ["card_pictures", "log_card", "render"]
