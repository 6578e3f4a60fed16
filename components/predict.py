"""Batch scoring: every image of a folder or an ``s3://`` prefix scored by a registered model, e.g. the champion.

Writes to ``output_dir``: ``scores.jsonl`` (one record per image: score, normalised score, threshold, decision
``defective`` / ``good``, overlay), ``overlays/<path>.png`` (image | map | overlay) for the flagged images and
``summary.json``; logs them to an MLflow run. The threshold is the one the model's normaliser implies unless
``threshold`` overrides it (raw image score units).

Idempotent and resumable: images are scored in batches, and each batch's records are written atomically to
``.parts/<name>-v<version>/``. A later call with the same model version skips every image already scored whose
content version (S3 ETag, local size and mtime) is unchanged, so an interrupted run over a large prefix continues
where it stopped and a finished one costs a listing. Only images flagged under the current threshold whose overlay
is missing are scored again (a lower threshold on a re-run). Two calls on one output never corrupt it: every file
is written atomically and the records of a batch scored twice are equal. An unreadable image is recorded with its
error and counted, not fatal.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from adcore.errors import AdcoreError, ConfigError, DataError

PARTS, OVERLAYS = ".parts", "overlays"
SCORES_FILE, SUMMARY_FILE = "scores.jsonl", "summary.json"
_MODEL_URI = re.compile(r"^models:/([^/@]+)(?:@([\w-]+)|/(\d+))$")


def resolve_model(model_uri: str, tracking_uri: str = "") -> tuple[str, str]:
    """(name, version) of ``models:/<name>@<alias>`` or ``models:/<name>/<version>``; ConfigError otherwise."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from components.tracking import tracking_uri as resolve_uri

    match = _MODEL_URI.match(model_uri)
    if not match:
        raise ConfigError(f"model URI {model_uri!r}: expected models:/<name>@<alias> or models:/<name>/<version>")
    name, alias, version = match.groups()
    uri = resolve_uri(tracking_uri)
    try:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        found = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as exc:
        raise ConfigError(f"model URI {model_uri}: not found in the registry at {uri} ({exc.message})") from None
    return name, str(found.version)


def download_model(name: str, version: str, cache: Path, tracking_uri: str = "") -> Path:
    """The adcore model directory of a registered version, downloaded once into ``cache`` (atomically)."""
    import mlflow

    from adcore.io import atomic_directory
    from components.tracking import tracking_uri as resolve_uri

    target = cache / f"{name}-v{version}"
    if not (target.is_dir() and any(target.rglob("model.json"))):
        with atomic_directory(target) as tmp:
            mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(tmp),
                                                tracking_uri=resolve_uri(tracking_uri))
    found = [p.parent for p in target.rglob("model.json")]
    if not found:
        raise DataError(f"models:/{name}/{version}: no adcore model directory among its artifacts")
    return found[0]


def _read_parts(folder: Path) -> dict[str, dict[str, Any]]:
    done: dict[str, dict[str, Any]] = {}
    for part in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        for line in part.read_text().splitlines():
            record = json.loads(line)
            done[record["path"]] = record
    return done


def _overlay_name(rel: str) -> str:
    return f"{OVERLAYS}/{Path(rel).with_suffix('').as_posix()}.png"


def batch_predict(source: str, output_dir: str, *, model_uri: str, threshold: float | None = None,
                  batch_size: int = 16, stop_after_batches: int = 0, track: bool = True, run_id: str = "",
                  experiment: str = "", tracking_uri: str = "") -> dict[str, Any]:
    """Score every image under ``source`` with ``model_uri``; returns the summary (also ``summary.json``).

    stop_after_batches: > 0 stops after that many newly scored batches (to test resuming); nothing is lost.
    """
    from adcore.data.mvtec import IMAGE_SUFFIXES
    from adcore.io import atomic_write_json, atomic_write_text, read_model_meta
    from adcore.predict import check_threshold, decide, model_threshold
    from components.fetch import list_source

    if batch_size < 1:
        raise ConfigError(f"batch_size: expected at least 1, got {batch_size}")
    override = check_threshold(threshold, "threshold")
    t0 = time.perf_counter()
    output = Path(output_dir)
    name, version = resolve_model(model_uri, tracking_uri)
    items = [it for it in list_source(source) if it.rel.lower().endswith(IMAGE_SUFFIXES)]
    if not items:
        raise DataError(f"{source}: no images ({', '.join(IMAGE_SUFFIXES)}) to score")
    model_dir = download_model(name, version, output / PARTS / "models", tracking_uri)
    meta = read_model_meta(model_dir)
    used = override if override is not None else model_threshold(meta.get("normalizer"))
    parts = output / PARTS / f"{name}-v{version}"
    done = _read_parts(parts)

    def finished(item) -> bool:
        record = done.get(item.rel)
        if record is None or record.get("source_version") != item.version:
            return False
        flagged = used is not None and record.get("score") is not None and record["score"] > used
        return not flagged or (output / _overlay_name(item.rel)).is_file()

    todo = [it for it in items if not finished(it)]
    scorer = _Scorer(model_dir) if todo else None
    batches = scored_now = 0
    for start in range(0, len(todo), batch_size):
        if stop_after_batches and batches >= stop_after_batches:
            break
        chunk = todo[start:start + batch_size]
        assert scorer is not None
        records = scorer.score(chunk, output, used, source)
        key = hashlib.sha256("\n".join(f"{it.rel}\t{it.version}" for it in chunk).encode()).hexdigest()[:20]
        atomic_write_text(parts / f"{key}.jsonl", "".join(json.dumps(r) + "\n" for r in records))
        done.update({r["path"]: r for r in records})
        batches += 1
        scored_now += len(chunk)

    current = {it.rel: it.version for it in items}
    records = [{**done[rel], "threshold": used, "decision": decide(done[rel]["score"], used)
                if done[rel].get("score") is not None else None}
               for rel in sorted(current) if rel in done and done[rel].get("source_version") == current[rel]]
    for record in records:
        flagged = record["decision"] == "defective"
        record["overlay"] = _overlay_name(record["path"]) if flagged else None
    atomic_write_text(output / SCORES_FILE, "".join(json.dumps(r) + "\n" for r in records))
    seconds = time.perf_counter() - t0
    summary: dict[str, Any] = {
        "source": source, "model_uri": model_uri, "model": f"models:/{name}/{version}", "threshold": used,
        "threshold_source": "override" if override is not None else "model normaliser",
        "n_images": len(items), "n_scored": len(records), "n_scored_now": scored_now,
        "n_skipped": len(items) - len(todo), "complete": len(records) == len(items),
        "n_defective": sum(r["decision"] == "defective" for r in records),
        "n_good": sum(r["decision"] == "good" for r in records),
        "n_errors": sum(r.get("error") is not None for r in records),
        "seconds": round(seconds, 3), "images_per_second": round(scored_now / seconds, 2) if scored_now else None,
        "scores": str(output / SCORES_FILE), "run_id": "",
    }
    if track:
        summary["run_id"] = _log(summary, output, name, run_id=run_id, experiment=experiment, uri=tracking_uri)
    atomic_write_json(output / SUMMARY_FILE, summary)
    return summary


class _Scorer:
    """The model loaded once; scores a batch of listed images and writes the overlays of the flagged ones."""

    def __init__(self, model_dir: Path) -> None:
        from adcore.methods import load_model
        from adcore.postprocess import ScoreNormalizer

        self.model = load_model(model_dir)
        self.transform = self.model.make_transform()
        self.normalizer = ScoreNormalizer.from_dict(self.model.normalizer) if self.model.normalizer else None

    def score(self, chunk: list, output: Path, threshold: float | None, source: str) -> list[dict[str, Any]]:
        import torch

        from adcore import viz
        from adcore.data.mvtec import read_image

        records: list[dict[str, Any]] = []
        images, tensors = [], []
        with tempfile.TemporaryDirectory(prefix="adcore-batch-") as tmp:
            for item in chunk:
                record: dict[str, Any] = {"path": item.rel, "source_version": item.version, "score": None}
                try:
                    local = Path(item.origin) if not source.startswith("s3://") else Path(tmp) / "image"
                    if source.startswith("s3://"):
                        item.download_verified(local)
                    tensors.append(self.transform(read_image(local)))
                    images.append(record)
                except AdcoreError as exc:
                    record["error"] = str(exc).replace(str(local), item.origin)
                records.append(record)
        if tensors:
            batch = torch.stack(tensors)
            pred = self.model.predict(batch)
            norm_maps = self.normalizer.normalize_maps(pred.maps) if self.normalizer is not None else None
            for i, record in enumerate(images):
                score = float(pred.scores[i])
                record["score"] = score
                if self.normalizer is not None:
                    record["normalized_score"] = float(self.normalizer.normalize_scores(pred.scores[i:i + 1])[0])
                if threshold is not None and score > threshold:
                    anomaly_map = (norm_maps[i] if norm_maps is not None else pred.maps[i]).numpy()
                    viz.save_overlay_panel(output / _overlay_name(record["path"]),
                                           self.transform.denormalize(batch[i]), anomaly_map,
                                           title=f"{record['path']} score={score:.4g} > {threshold:.4g}")
        return records


def _log(summary: dict[str, Any], output: Path, name: str, *, run_id: str, experiment: str, uri: str) -> str:
    """One MLflow run per call: the summary as params and metrics, scores, summary and overlays as artifacts."""
    from components.tracking import KIND_TAG, open_run

    with open_run("batch", name, run_id=run_id, experiment=experiment, uri=uri, saved=output) as run:
        run.set_tags({KIND_TAG: "batch-predict", "model": summary["model"], "source": summary["source"]})
        run.log_params({"model_uri": summary["model_uri"], "model": summary["model"], "source": summary["source"],
                        "threshold_source": summary["threshold_source"]})
        run.log_metrics({k: summary[k] for k in ("threshold", "n_images", "n_scored", "n_scored_now", "n_skipped",
                                                 "n_defective", "n_good", "n_errors", "seconds",
                                                 "images_per_second") if summary[k] is not None})
        run.client.log_artifact(run.run_id, str(output / SCORES_FILE), "batch")
        run.log_dict({**summary, "run_id": run.run_id}, "batch/summary.json")
        if (output / OVERLAYS).is_dir():
            run.log_artifacts(output / OVERLAYS, "batch/overlays")
        return run.run_id
