"""Evaluate a trained model on its category's test split: metrics JSON, per-image scores, plots; logged to MLflow.

The metrics gain ``test_split_sha256``, the content fingerprint of the test images and masks, so the registry step
compares models only on the same test split. With ``params`` (a params.yaml), its ``evaluation`` section replaces
the one the model was trained with: under dvc, training does not depend on the evaluation settings.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def evaluate(model_dir: str, data_root: str, category: str, output_dir: str, *, device: str = "",
             batch_size: int = 0, params: str = "", track: bool = True, run_id: str = "", experiment: str = "",
             tracking_uri: str = "", progress: bool = False) -> dict[str, Any]:
    """Write ``output_dir/metrics.json`` (+ scores.csv, roc.png, pro.png, overlays/) and log them to the run."""
    from adcore.evaluation import evaluate_model, split_fingerprint
    from adcore.io import atomic_write_json, read_model_meta
    from adcore.metrics import METRIC_KEYS
    from components.tracking import model_fingerprint, step_run

    t0 = time.perf_counter()
    metrics_path = Path(output_dir) / "metrics.json"
    method = read_model_meta(model_dir)["method"]  # first: a folder that is not a model is a one-line error
    sha = model_fingerprint(model_dir)
    evaluation = None
    if params:
        from adcore.config import EvaluationConfig, load_params, validate_section

        evaluation = validate_section(EvaluationConfig, load_params(params).get("evaluation") or {},
                                      f"{params}: evaluation")
    run = ""
    # The model's run is RUNNING while it is evaluated and ends FAILED when the evaluation fails or is stopped.
    with step_run(category, method, track=track, run_id=run_id, model_sha256=sha, experiment=experiment,
                  uri=tracking_uri) as opened:
        metrics = evaluate_model(model_dir, data_root, category, metrics_path, device=device or None,
                                 batch_size=batch_size or None, progress=progress, evaluation=evaluation)
        metrics["test_split_sha256"] = split_fingerprint(data_root, category,
                                                         metrics.get("excluded_seen_anomalies") or ())
        metrics["model_sha256"] = sha
        metrics["eval_seconds"] = time.perf_counter() - t0
        atomic_write_json(metrics_path, metrics)
        if track:
            from components.tracking import log_evaluation

            run = log_evaluation(metrics, output_dir, category=category, method=method, model_dir=model_dir,
                                 run_id=opened.run_id if opened is not None else run_id, experiment=experiment,
                                 uri=tracking_uri)
    keep = (*METRIC_KEYS, "n_images", "ms_per_image")
    return {"metrics_json": str(metrics_path), "run_id": run, **{k: metrics.get(k) for k in keep}}
