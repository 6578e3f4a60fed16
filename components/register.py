"""Register a trained model in the MLflow registry and promote it to ``champion`` only when it is better.

One registered model per (category, method), named ``<prefix>-<category>-<method>``. Each new model becomes a
version with the alias ``challenger``. It takes the alias ``champion`` only if, on the same test split (same
content fingerprint), its configured metric beats the champion's by at least ``margin`` and no other metric is
worse than the champion's by more than ``tolerance``. A metric missing on either side never promotes. When the
champion was evaluated on a different test split it is re-evaluated on this one (given ``data_root``), else the
challenger is not promoted. The decision and its reasons are tags on the version and on the run.

The metrics file is not trusted: it must state the content hash of ``model_dir`` (``model_sha256``, written by
components.evaluate; a file for another model is refused, one without the hash is registered but never promoted)
and every metric must be null or a number in [0, 1]. A champion whose metric tag is missing (or not in [0, 1]) is
re-evaluated on this test split when ``data_root`` is given; without it the challenger is not promoted and the
reason says "re-evaluate required", so a champion without metrics neither blocks promotions silently nor loses its
alias to an unchecked challenger.

Re-running is harmless: a model already registered (same content hash) is not logged again, and a version that is
already the champion is left as it is.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from adcore.errors import ConfigError, DataError
from adcore.metrics import METRIC_KEYS
from components import tracking as _tracking
from components.tracking import MODEL_SHA_TAG, TrackingError, model_fingerprint, open_run

PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
CHAMPION, CHALLENGER = "champion", "challenger"
REQUIREMENTS = ("torch", "torchvision", "timm", "numpy", "safetensors", "pillow", "pydantic", "pyyaml",
                "scikit-learn", "scipy", "mlflow")


def registered_name(prefix: str, category: str, method: str) -> str:
    name = f"{prefix}-{category}-{method}" if prefix else f"{category}-{method}"
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ConfigError(f"registered model name {name!r}: use letters, digits, '-', '_' and '.' only")
    return name


def _number(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def decide_promotion(challenger: dict[str, Any], champion: dict[str, Any] | None, *, metric: str, margin: float,
                     tolerance: float, champion_label: str = "champion") -> tuple[bool, list[str]]:
    """Pure decision rule: (promote?, reasons). Higher is better for every metric in METRIC_KEYS."""
    new = _number(challenger.get(metric))
    if new is None:
        return False, [f"challenger has no {metric}: a missing metric never promotes"]
    if champion is None:
        return True, [f"no champion yet: the first model with {metric}={new:.4f} becomes champion"]
    old = _number(champion.get(metric))
    if old is None:
        return False, [f"{champion_label} has no {metric} to compare with: a missing metric never promotes"]
    reasons: list[str] = []
    promote = True
    if new >= old + margin:
        reasons.append(f"{metric} {new:.4f} beats {champion_label}'s {old:.4f} by {new - old:+.4f} "
                       f"(margin {margin})")
    else:
        promote = False
        reasons.append(f"{metric} {new:.4f} does not beat {champion_label}'s {old:.4f} by the margin {margin} "
                       f"({new - old:+.4f})")
    for key in METRIC_KEYS:
        if key == metric:
            continue
        a, b = _number(challenger.get(key)), _number(champion.get(key))
        if a is None and b is None:
            continue
        if a is None:
            promote = False
            reasons.append(f"challenger has no {key} while {champion_label} has {b:.4f}: a missing metric never "
                           "promotes")
        elif b is not None and a < b - tolerance:
            promote = False
            reasons.append(f"{key} {a:.4f} is worse than {champion_label}'s {b:.4f} by more than the tolerance "
                           f"{tolerance}")
    return promote, reasons


def _signature():
    """Explicit signature (no input_example, which would pickle the loaded weights into the logged model)."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1,), "scores"),
                        TensorSpec(np.dtype(np.float32), (-1, -1, -1), "maps")]),
        params=ParamSchema([ParamSpec("normalize", "boolean", False)]),
    )


def _requirements() -> list[str]:
    from importlib import metadata

    out = []
    for package in REQUIREMENTS:
        try:
            out.append(f"{package}=={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pass
    return out


def _metrics_from_tags(tags: dict[str, str]) -> dict[str, float]:
    """The metric tags of a version; a value that is not a number in [0, 1] (a forgery) counts as missing."""
    out = {}
    for key, value in tags.items():
        number = _number(value)
        if key.startswith("metric.") and number is not None and 0.0 <= number <= 1.0:
            out[key[len("metric."):]] = number
    return out


def read_metrics(metrics_json: str | Path, model_dir: str | Path, sha: str) -> dict[str, Any]:
    """The evaluation metrics of ``model_dir``, checked before anything is registered.

    DataError (naming the file and the key) when the file is unreadable or not a JSON object, when it states the
    content hash of another model (``model_sha256``, written by components.evaluate), or when a metric of
    METRIC_KEYS is not null or a number in [0, 1]. A file without ``model_sha256`` is read but never promotes.
    """
    try:
        metrics = json.loads(Path(metrics_json).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{metrics_json}: cannot read the evaluation metrics ({exc})") from None
    if not isinstance(metrics, dict):
        raise DataError(f"{metrics_json}: not a JSON object of evaluation metrics")
    stated = metrics.get("model_sha256")
    if stated is not None and stated != sha:
        raise DataError(f"{metrics_json}: model_sha256 {str(stated)[:16]}... is not the content hash of {model_dir} "
                        f"({sha[:16]}...): these metrics belong to another model; evaluate this model and register "
                        "it with its own metrics")
    for key in METRIC_KEYS:
        value = metrics.get(key)
        if value is None:
            continue
        number = _number(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        if number is None or not 0.0 <= number <= 1.0:
            raise DataError(f"{metrics_json}: {key} = {value!r} is not a number in [0, 1] (or null); refused")
    return metrics


def _find_version(client, name: str, sha: str):
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    return next((v for v in versions if v.tags.get(MODEL_SHA_TAG) == sha), None)


def _champion(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        return None
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code) or "not found" in str(exc).lower():
            return None
        raise


def _reevaluate_champion(uri: str, name: str, version: str, data_root: str, category: str) -> dict[str, Any]:
    """Download the champion's model directory from the registry and evaluate it on this test split."""
    import mlflow

    from adcore.evaluation import evaluate_model

    with tempfile.TemporaryDirectory(prefix="adcore-champion-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=tmp,
                                                         tracking_uri=uri))
        found = [p.parent for p in local.rglob("model.json")]
        if not found:
            raise DataError(f"models:/{name}/{version}: no adcore model directory among its artifacts")
        return evaluate_model(found[0], data_root, category, Path(tmp) / "eval" / "metrics.json", progress=False,
                              write_artifacts=False)


def register_model(model_dir: str, metrics_json: str, category: str, method: str, *, prefix: str = "adcore",
                   metric: str = "image_auroc", margin: float = 0.0, tolerance: float = 0.02, data_root: str = "",
                   run_id: str = "", experiment: str = "", tracking_uri: str = "") -> dict[str, Any]:
    """Log ``model_dir`` as a pyfunc, register it, alias it ``challenger`` and decide on ``champion``.

    metrics_json: the evaluation output of this model (components.evaluate), with ``test_split_sha256``.
    Returns name, version, decision ("promoted", "rejected" or "unchanged"), reasons and the champion version.
    """
    import mlflow

    if metric not in METRIC_KEYS:
        raise ConfigError(f"metric: {metric!r} is not one of {', '.join(METRIC_KEYS)}")
    model_path = Path(model_dir)
    if not (model_path / "model.json").is_file():
        raise DataError(f"{model_path}: not an adcore model directory (no model.json)")
    name = registered_name(prefix, category, method)
    sha = model_fingerprint(model_path)
    metrics = read_metrics(metrics_json, model_path, sha)  # before anything is written to the registry
    uri = _tracking.tracking_uri(tracking_uri)

    with open_run(category, method, run_id=run_id, model_sha256=sha, experiment=experiment, uri=uri,
                  saved=model_path) as run:
        client = run.client
        version = _find_version(client, name, sha)
        if version is None:
            mlflow.set_tracking_uri(uri)
            mlflow.set_registry_uri(uri)
            with mlflow.start_run(run_id=run.run_id), warnings.catch_warnings():
                # Deliberate: no input_example (it would pickle the weights); the explicit signature is given instead.
                warnings.filterwarnings("ignore", message=".*input example was not provided")
                info = mlflow.pyfunc.log_model(
                    name="model", python_model=str(PYFUNC_CODE), artifacts={"model_dir": str(model_path)},
                    signature=_signature(), pip_requirements=_requirements())
            tags = {MODEL_SHA_TAG: sha, "category": category, "method": method, "run_id": run.run_id,
                    "test_split_sha256": metrics.get("test_split_sha256", "")}
            tags.update({f"metric.{k}": str(metrics[k]) for k in METRIC_KEYS if _number(metrics.get(k)) is not None})
            version = mlflow.register_model(info.model_uri, name, tags=tags)
        client.set_registered_model_alias(name, CHALLENGER, version.version)

        champion = _champion(client, name)
        result = {"name": name, "version": int(version.version), "run_id": run.run_id, "metric": metric,
                  "champion_uri": f"models:/{name}@{CHAMPION}"}
        if champion is not None and str(champion.version) == str(version.version):
            reasons = champion.tags.get("promotion.reasons", "already champion")
            return {**result, "decision": "unchanged", "promoted": True, "reasons": reasons,
                    "champion_version": int(champion.version)}

        champion_metrics = None
        label = "champion"
        reasons_pre: list[str] = []
        if champion is not None:
            label = f"champion v{champion.version}"
            champion_metrics = _metrics_from_tags(champion.tags)
            same_split = champion.tags.get("test_split_sha256") == metrics.get("test_split_sha256")
            if not same_split or not metrics.get("test_split_sha256"):
                if data_root:
                    champion_metrics = _reevaluate_champion(uri, name, champion.version, data_root, category)
                    reasons_pre.append(f"{label} was re-evaluated on this test split")
                else:
                    champion_metrics = {}
                    reasons_pre.append(f"{label} was evaluated on a different test split and no data_root was "
                                       "given to re-evaluate it")
            elif metric not in champion_metrics:
                # Its metric tags are missing (or forged out of [0, 1]): without this it would block every later
                # promotion. Re-evaluate it when the data is at hand; else no promotion, and the reason says why.
                if data_root:
                    champion_metrics = _reevaluate_champion(uri, name, champion.version, data_root, category)
                    reasons_pre.append(f"{label} had no valid metric.{metric} tag and was re-evaluated on this test "
                                       "split")
                else:
                    reasons_pre.append(f"{label} has no valid metric.{metric} tag and no data_root was given to "
                                       "re-evaluate it: re-evaluate required (give data_root, --data-root)")
        promote, reasons = decide_promotion(metrics, champion_metrics, metric=metric, margin=margin,
                                            tolerance=tolerance, champion_label=label)
        if promote and metrics.get("model_sha256") is None:
            promote = False
            reasons.append(f"{metrics_json} does not state the model_sha256 of the model it scores (components."
                           "evaluate writes it): unverified metrics never promote")
        reasons = reasons_pre + reasons
        decision = "promoted" if promote else "rejected"
        if promote:
            client.set_registered_model_alias(name, CHAMPION, version.version)
        tags = {"promotion.decision": decision, "promotion.reasons": "; ".join(reasons),
                "promotion.metric": metric, "promotion.margin": str(margin), "promotion.tolerance": str(tolerance),
                "promotion.compared_with": str(champion.version) if champion is not None else "none",
                "promotion.time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        for key, value in tags.items():
            client.set_model_version_tag(name, version.version, key, value)
        run.set_tags({**tags, "registered_model": name, "registered_version": str(version.version)})
        return {**result, "decision": decision, "promoted": promote, "reasons": "; ".join(reasons),
                "champion_version": int(version.version) if promote else
                (int(champion.version) if champion is not None else None)}


__all__ = ["register_model", "decide_promotion", "registered_name", "TrackingError"]
