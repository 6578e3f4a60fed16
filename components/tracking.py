"""MLflow tracking for the steps: one run per (category, method) with config, losses, metrics, timings, environment.

The URI comes from ``MLFLOW_TRACKING_URI`` (default ``sqlite:///mlflow.db``). Steps use an explicit
``MlflowClient`` rather than MLflow's global "active run", so several steps in one process never interfere.
Training writes the model directory before anything is logged; when the tracking server is down the step then
fails with a :class:`TrackingError` that names the URI and says where the model files are.

A step finds the run of an earlier step by ``run_id`` or, when none is given, by the model's content hash
(tag ``adcore.model_sha256``), so steps can be chained through files alone (DVC) or through run ids (kfp).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from adcore.environment import environment_record
from adcore.errors import AdcoreError
from components.secrets import mask_secrets

DEFAULT_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "adcore"
MODEL_SHA_TAG = "adcore.model_sha256"

# A server that is down should fail in seconds, not after MLflow's default 7 retries with exponential backoff.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")


class TrackingError(AdcoreError, RuntimeError):
    """The MLflow tracking server or store cannot be used."""


def tracking_uri(uri: str = "") -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def experiment_name(name: str = "") -> str:
    return name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


def _saved_note(saved: str | Path | None) -> str:
    return f"; the model files are safe in {saved}" if saved else ""


def _split_credentials(uri: str) -> tuple[str, str | None]:
    """``uri`` without its userinfo, and the Authorization header MLflow itself would send: basic auth from the
    URI's ``user:password@`` (as ``requests`` does), else ``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD``, else a
    bearer ``MLFLOW_TRACKING_TOKEN``."""
    import base64
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(uri)
    user, password = parts.username, parts.password
    if parts.username is not None or parts.password is not None:
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        netloc = f"{host}:{parts.port}" if parts.port is not None else host
        uri = urlunsplit(parts._replace(netloc=netloc))
    if not user and not password:
        user = os.environ.get("MLFLOW_TRACKING_USERNAME")
        password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user or password:
        token = base64.b64encode(f"{unquote(user or '')}:{unquote(password or '')}".encode()).decode()
        return uri, f"Basic {token}"
    bearer = os.environ.get("MLFLOW_TRACKING_TOKEN")
    return uri, (f"Bearer {bearer}" if bearer else None)


def check_reachable(uri: str, saved: str | Path | None = None, timeout: float = 5.0) -> None:
    """Fail fast with the URI (credentials masked) in the message when an HTTP tracking server does not answer.

    Credentials in the URI are sent as an Authorization header, never as part of the host name."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        bare, auth = _split_credentials(uri)
        request = urllib.request.Request(f"{bare.rstrip('/')}/health", headers={"Authorization": auth} if auth else {})
        urllib.request.urlopen(request, timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # it answered (perhaps 401/404 behind a proxy): reachable
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(mask_secrets(
            f"MLflow tracking server {uri} cannot be reached ({reason}){_saved_note(saved)}; start the server or set "
            "MLFLOW_TRACKING_URI, then re-run this step")) from None


def model_fingerprint(model_dir: str | Path) -> str:
    """Content hash of a model directory (metadata + tensors): identifies the model across steps and re-runs."""
    from adcore.io import META_FILE, TENSOR_FILE, file_sha256

    model_dir = Path(model_dir)
    return hashlib.sha256(f"{file_sha256(model_dir / META_FILE)}:{file_sha256(model_dir / TENSOR_FILE)}"
                          .encode()).hexdigest()


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"data": {"image_size": 256}}`` -> ``{"data.image_size": "256"}``; lists become JSON."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value if isinstance(value, str) else json.dumps(value)
    return out


class Run:
    """A thin handle on one MLflow run through an explicit client."""

    def __init__(self, client, run_id: str, uri: str) -> None:
        self.client, self.run_id, self.uri = client, run_id, uri

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        items = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
        for i in range(0, len(items), 100):  # the REST API takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict[str, Any], step: int = 0) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        if items:
            self.client.log_batch(self.run_id, tags=items)

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, obj, artifact_file)


@contextmanager
def open_run(category: str, method: str, *, run_id: str = "", model_sha256: str = "", experiment: str = "",
             uri: str = "", saved: str | Path | None = None) -> Iterator[Run]:
    """The run of (category, method): ``run_id``, else the latest run tagged with the model's hash, else a new one.

    Any failure to talk to the tracking store becomes a TrackingError naming the URI (and where the model is).
    """
    uri = tracking_uri(uri)
    check_reachable(uri, saved)
    try:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise TrackingError("MLflow tracking needs the 'mlflow' package (pip install mlflow)") from None
    try:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        name = experiment_name(experiment)
        exp = client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(name)
        if not run_id and model_sha256:
            found = client.search_runs([exp_id], f"tags.`{MODEL_SHA_TAG}` = '{model_sha256}'",
                                       order_by=["attributes.start_time DESC"], max_results=1)
            run_id = found[0].info.run_id if found else ""
        if not run_id:
            tags = {"category": category, "method": method, "mlflow.runName": f"{category}-{method}"}
            if model_sha256:
                tags[MODEL_SHA_TAG] = model_sha256
            run_id = client.create_run(exp_id, tags=tags, run_name=f"{category}-{method}").info.run_id
        run = Run(client, run_id, uri)
        yield run
    except TrackingError:
        raise
    except MlflowException as exc:
        message = f"MLflow tracking at {uri} failed: {exc.message}{_saved_note(saved)}"
        raise TrackingError(mask_secrets(message)) from None
    except (OSError, ConnectionError) as exc:
        message = (f"MLflow tracking server {uri} cannot be reached ({exc}){_saved_note(saved)}; start the server or "
                   "set MLFLOW_TRACKING_URI, then re-run this step")
        raise TrackingError(mask_secrets(message)) from None


def log_training(result, *, category: str, method: str, data_root: str, run_id: str = "", experiment: str = "",
                 uri: str = "") -> str:
    """Log a finished training (adcore.training.TrainResult): config, per-epoch losses, timings, environment."""
    model_dir = Path(result.model_dir)
    sha = model_fingerprint(model_dir)
    with open_run(category, method, run_id=run_id, model_sha256=sha, experiment=experiment, uri=uri,
                  saved=model_dir) as run:
        run.set_tags({MODEL_SHA_TAG: sha, "category": category, "method": method, "device": result.device,
                      "model_dir": mask_secrets(model_dir)})
        params: dict[str, Any] = flatten(result.config.to_dict())
        params.update({"category": category, "data_root": str(data_root)})
        params = {k: mask_secrets(v) for k, v in params.items()}
        environment = environment_record(result.device)
        params.update({f"env.{k}": v for k, v in environment.items()})
        run.log_params(params)
        for epoch, losses in enumerate(result.history):
            run.log_metrics({f"train.{k}": v for k, v in losses.items()}, step=epoch)
        run.log_metrics({"train_seconds": result.seconds, "peak_rss_mb": result.peak_rss_mb,
                         "epochs_completed": len(result.history)})
        run.log_dict({"config": result.config.to_dict(), "environment": environment},
                     "training/run.json")
        return run.run_id


def log_evaluation(metrics: dict[str, Any], output_dir: str | Path, *, category: str, method: str, model_dir: str,
                   run_id: str = "", experiment: str = "", uri: str = "") -> str:
    """Log test metrics, timings and the evaluation folder (plots, per-image scores) to the model's run."""
    with open_run(category, method, run_id=run_id, model_sha256=model_fingerprint(model_dir), experiment=experiment,
                  uri=uri, saved=f"{model_dir} (evaluation results in {output_dir})") as run:
        run.log_metrics({k: v for k, v in metrics.items() if k != "n_anomalous" and not k.startswith("batch")})
        run.set_tags({"test_split_sha256": metrics.get("test_split_sha256", ""), "evaluation_device":
                      metrics.get("device", "")})
        run.log_artifacts(output_dir, "evaluation")
        return run.run_id
