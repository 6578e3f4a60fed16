"""MLflow tracking for the steps: one run per (category, method) with config, losses, metrics, timings, environment.

The URI comes from ``MLFLOW_TRACKING_URI`` (default ``sqlite:///mlflow.db``). Steps use an explicit
``MlflowClient`` rather than MLflow's global "active run", so several steps in one process never interfere.
Training writes the model directory before anything is logged; when the tracking server is down the step then
fails with a :class:`TrackingError` that names the URI and says where the model files are.

A step finds the run of an earlier step by ``run_id`` or, when none is given, by the model's content hash
(tag ``adcore.model_sha256``), so steps can be chained through files alone (DVC) or through run ids (kfp).

Every run a step opens ends: FINISHED when the step returns, FAILED (the error in the tag ``adcore.error``) when
it raises, is interrupted (KeyboardInterrupt) or is stopped with SIGTERM (a pod evicted, ``kill``), which
:func:`open_run` turns into a :class:`StepTerminated` exception for the time of the step. A run of a pipeline run
(``ADCORE_PIPELINE_RUN_ID``: the Kubeflow run id, or one per ``dvc repro``) is the child of that pipeline run's
parent run (tags ``adcore.pipeline_run_id`` and the git commit); a failing child marks its parent FAILED too.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from adcore.environment import environment_record
from adcore.errors import AdcoreError
from components.secrets import mask_secrets

DEFAULT_URI = "sqlite:///mlflow.db"
DEFAULT_EXPERIMENT = "adcore"
MODEL_SHA_TAG = "adcore.model_sha256"
ERROR_TAG = "adcore.error"
KIND_TAG = "adcore.kind"  # "pipeline" (a parent run), "model" (one per category and method)
PIPELINE_RUN_TAG = "adcore.pipeline_run_id"
ORCHESTRATOR_TAG = "adcore.orchestrator"
PARENT_TAG = "mlflow.parentRunId"
GIT_COMMIT_TAG = "mlflow.source.git.commit"
#: The pipeline run the steps of this process belong to (kfp: the run id; dvc: one per `dvc repro`).
PIPELINE_RUN_ENV = "ADCORE_PIPELINE_RUN_ID"
#: The commit the code was built from, where no git checkout is at hand (set in the images at build time).
GIT_COMMIT_ENV = "ADCORE_GIT_COMMIT"

# A server that is down should fail in seconds, not after MLflow's default 7 retries with exponential backoff.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")


class TrackingError(AdcoreError, RuntimeError):
    """The MLflow tracking server or store cannot be used."""


class StepTerminated(SystemExit):
    """SIGTERM during a step: unwinds like an exception (so the run is marked FAILED), exits with 128 + signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"terminated by {signal.Signals(self.signum).name}"


@contextmanager
def sigterm_as_exception() -> Iterator[None]:
    """Within the block, SIGTERM raises StepTerminated (main thread only: Python delivers signals there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise StepTerminated(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def git_commit() -> str:
    """``$ADCORE_GIT_COMMIT`` (images), else HEAD of the checkout this code runs from, else ""."""
    if os.environ.get(GIT_COMMIT_ENV):
        return os.environ[GIT_COMMIT_ENV]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def pipeline_run_id(given: str = "") -> str:
    return given or os.environ.get(PIPELINE_RUN_ENV, "")


def error_text(exc: BaseException) -> str:
    """One line for the ``adcore.error`` tag: the exception's type and message, secrets masked."""
    message = str(exc) or type(exc).__name__
    text = message if isinstance(exc, StepTerminated) else f"{type(exc).__name__}: {message}"
    return mask_secrets(" ".join(text.split()))[:4000]


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

    def log_dataset(self, manifest: dict[str, Any], *, name: str = "dataset", context: str = "training") -> None:
        """The dataset as an MLflow input: the fetch manifest's ``dataset_sha256`` and its source."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        source = manifest.get("source") or {}
        uri = mask_secrets(source.get("source", "") if isinstance(source, dict) else str(source))
        digest = str(manifest.get("dataset_sha256", ""))
        source_type = uri.split("://", 1)[0] if "://" in uri else ("dvc" if source.get("repo") else "local")
        profile = {"dataset_sha256": digest, "files": manifest.get("total_files"),
                   "bytes": manifest.get("total_bytes"), "repo": source.get("repo", ""), "rev": source.get("rev", "")}
        dataset = Dataset(name=name, digest=digest[:32], source_type=source_type,
                          source=json.dumps({"uri": uri}), profile=json.dumps(profile))
        inputs = [DatasetInput(dataset, [InputTag("mlflow.data.context", context)])]
        for attempt in range(3):
            try:
                self.client.log_inputs(self.run_id, datasets=inputs)
                break
            except Exception:
                # Parallel steps of one category create the same dataset row at once; the store's unique key
                # refuses the loser, whose retry then finds the row and only links it.
                if attempt == 2:
                    raise
                time.sleep(0.2 * (attempt + 1))
        self.set_tags({"dataset_sha256": digest, "dataset_source": uri})

    def end(self, error: BaseException | None = None) -> None:
        """FINISHED, or FAILED with the error as a tag (and the parent run marked FAILED, naming this run)."""
        if error is None:
            if ERROR_TAG in self.client.get_run(self.run_id).data.tags:
                self.client.delete_tag(self.run_id, ERROR_TAG)  # an earlier attempt failed; this one did not
            self.client.set_terminated(self.run_id, "FINISHED")
            return
        text = error_text(error)
        self.set_tags({ERROR_TAG: text})
        self.client.set_terminated(self.run_id, "FAILED")
        tags = self.client.get_run(self.run_id).data.tags
        parent = tags.get(PARENT_TAG)
        if parent:
            name = tags.get("mlflow.runName", self.run_id)
            self.client.set_tag(parent, ERROR_TAG, mask_secrets(f"{name} failed: {text}")[:4000])
            self.client.set_terminated(parent, "FAILED")


def _fail_quietly(run: Run, error: BaseException) -> None:
    """Mark ``run`` FAILED on the way out of a failing step; a store that is down cannot be told, and the step's
    own error (not this one) is what the user must see."""
    with suppress(Exception):
        run.end(error)


def _client(uri: str):
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise TrackingError("MLflow tracking needs the 'mlflow' package (pip install mlflow)") from None
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _experiment_id(client, experiment: str) -> str:
    name = experiment_name(experiment)
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp is not None else client.create_experiment(name)


def ensure_parent_run(client, exp_id: str, pipeline_run: str, orchestrator: str = "") -> str:
    """The parent run of ``pipeline_run`` (found by tag, else created RUNNING with the git commit)."""
    found = client.search_runs([exp_id], f"tags.`{PIPELINE_RUN_TAG}` = '{pipeline_run}' and "
                                         f"tags.`{KIND_TAG}` = 'pipeline'", max_results=1)
    if found:
        return found[0].info.run_id
    orchestrator = orchestrator or ("dvc" if os.environ.get("DVC_STAGE") else "kfp")
    tags = {KIND_TAG: "pipeline", PIPELINE_RUN_TAG: pipeline_run, ORCHESTRATOR_TAG: orchestrator,
            GIT_COMMIT_TAG: git_commit(), "mlflow.runName": f"pipeline-{pipeline_run}"}
    return client.create_run(exp_id, tags=tags, run_name=f"pipeline-{pipeline_run}").info.run_id


@contextmanager
def open_run(category: str, method: str, *, run_id: str = "", model_sha256: str = "", experiment: str = "",
             uri: str = "", saved: str | Path | None = None, pipeline_run: str = "") -> Iterator[Run]:
    """The run of (category, method): ``run_id``, else the latest run tagged with the model's hash, else a new one
    (the child of the pipeline run's parent when ``pipeline_run`` or ``$ADCORE_PIPELINE_RUN_ID`` is set).

    The run is RUNNING inside the block and ends FINISHED or FAILED (error tag) when it is left, SIGTERM included.
    Any failure to talk to the tracking store becomes a TrackingError naming the URI (and where the model is).
    """
    uri = tracking_uri(uri)
    check_reachable(uri, saved)
    from mlflow.exceptions import MlflowException

    run: Run | None = None
    try:
        with sigterm_as_exception():
            client = _client(uri)
            exp_id = _experiment_id(client, experiment)
            if not run_id and model_sha256:
                found = client.search_runs([exp_id], f"tags.`{MODEL_SHA_TAG}` = '{model_sha256}'",
                                           order_by=["attributes.start_time DESC"], max_results=1)
                run_id = found[0].info.run_id if found else ""
            if not run_id:
                tags = {"category": category, "method": method, "mlflow.runName": f"{category}-{method}",
                        KIND_TAG: "model", GIT_COMMIT_TAG: git_commit()}
                if model_sha256:
                    tags[MODEL_SHA_TAG] = model_sha256
                pipeline = pipeline_run_id(pipeline_run)
                if pipeline:
                    tags.update({PIPELINE_RUN_TAG: pipeline, PARENT_TAG: ensure_parent_run(client, exp_id, pipeline)})
                run_id = client.create_run(exp_id, tags=tags, run_name=f"{category}-{method}").info.run_id
            else:
                existing = client.get_run(run_id)
                if existing.info.status != "RUNNING":
                    client.update_run(run_id, status="RUNNING")  # a later step (evaluate, register) works on it
                pipeline = pipeline_run_id(pipeline_run)
                if pipeline and existing.data.tags.get(PIPELINE_RUN_TAG) != pipeline:
                    _adopt(client, existing, ensure_parent_run(client, exp_id, pipeline), pipeline)
            run = Run(client, run_id, uri)
            try:
                yield run
            except BaseException as exc:
                _fail_quietly(run, exc)
                raise
            run.end()
    except TrackingError:
        raise
    except MlflowException as exc:
        message = f"MLflow tracking at {uri} failed: {exc.message}{_saved_note(saved)}"
        raise TrackingError(mask_secrets(message)) from None
    except (OSError, ConnectionError) as exc:
        message = (f"MLflow tracking server {uri} cannot be reached ({exc}){_saved_note(saved)}; start the server or "
                   "set MLFLOW_TRACKING_URI, then re-run this step")
        raise TrackingError(mask_secrets(message)) from None


@contextmanager
def open_parent_run(pipeline_run: str, *, experiment: str = "", uri: str = "", end: bool = False,
                    orchestrator: str = "") -> Iterator[Run]:
    """The parent run of ``pipeline_run`` (created when missing). ``end``: the pipeline is over, so it ends
    FINISHED (or FAILED when the block raises); otherwise it stays RUNNING unless the block raises."""
    uri = tracking_uri(uri)
    check_reachable(uri)
    from mlflow.exceptions import MlflowException

    try:
        with sigterm_as_exception():
            client = _client(uri)
            run = Run(client, ensure_parent_run(client, _experiment_id(client, experiment), pipeline_run,
                                                orchestrator), uri)
            try:
                yield run
            except BaseException as exc:
                _fail_quietly(run, exc)
                raise
            if end:
                run.end()
    except MlflowException as exc:
        raise TrackingError(mask_secrets(f"MLflow tracking at {uri} failed: {exc.message}")) from None
    except (OSError, ConnectionError) as exc:
        raise TrackingError(mask_secrets(f"MLflow tracking server {uri} cannot be reached ({exc}); start the server "
                                         "or set MLFLOW_TRACKING_URI, then re-run this step")) from None


def _adopt(client, child, parent_id: str, pipeline: str) -> None:
    """Make ``child`` (a Run entity) a child of ``parent_id``; the parent gets the child's dataset inputs too.
    A run reused from an earlier pipeline run (kfp's cache) moves to the latest pipeline run that used it."""
    client.log_batch(child.info.run_id, tags=_run_tags({PARENT_TAG: parent_id, PIPELINE_RUN_TAG: pipeline}))
    datasets = list(child.inputs.dataset_inputs) if child.inputs else []
    if datasets:
        client.log_inputs(parent_id, datasets=datasets)


def end_pipeline_run(pipeline_run: str, *, succeeded: bool, error: str = "", experiment: str = "",
                     uri: str = "") -> str:
    """The pipeline is over (kfp's exit handler): its parent run ends FINISHED, or FAILED with ``error``.
    Best effort: a tracking store that cannot be reached is logged and "" returned, so the handler still notifies."""
    import logging

    try:
        with open_parent_run(pipeline_run, experiment=experiment, uri=uri) as parent:
            if succeeded:
                parent.end()
            else:
                parent.set_tags({ERROR_TAG: mask_secrets(error or "the pipeline run failed")[:4000]})
                parent.client.set_terminated(parent.run_id, "FAILED")
            return parent.run_id
    except TrackingError as exc:
        logging.getLogger(__name__).warning("the parent run of %s was not closed: %s", pipeline_run, exc)
        return ""


def log_pipeline_summary(pipeline_run: str, markdown: str, rows: list[dict[str, Any]], *,
                         files: tuple[str | Path, ...] = (), experiment: str = "", uri: str = "",
                         orchestrator: str = "", adopt: bool = False, end: bool = False) -> str:
    """The summary table (summary.md, results.json, per-model metrics) and ``files`` (pictures) on the parent run
    of ``pipeline_run``. ``adopt``: the model runs without a parent become its children (dvc). ``end``: it ends."""
    from adcore.metrics import METRIC_KEYS

    with open_parent_run(pipeline_run, experiment=experiment, uri=uri, end=end, orchestrator=orchestrator) as parent:
        if adopt:
            adopt_orphans(parent, experiment)
        parent.client.log_text(parent.run_id, markdown, "summary.md")
        parent.log_dict(rows, "results.json")
        for path in files:
            parent.client.log_artifact(parent.run_id, str(path), "summary")
        _log_summary_picture(parent, rows)
        for row in rows:  # kfp rows name category and method, dvc's results.json rows "category/method"
            prefix = str(row.get("run") or f"{row.get('category')}/{row.get('method')}").replace("/", ".")
            parent.log_metrics({f"{prefix}.{k}": row.get(k) for k in METRIC_KEYS})
        return parent.run_id


def _log_summary_picture(parent: Run, rows: list[dict[str, Any]]) -> None:
    """image AUROC against ms per image, one labelled point per (category, method): summary/accuracy_vs_time.png."""
    import tempfile

    from adcore.errors import DataError
    from adcore.viz import plot_accuracy_vs_time

    points = [{"label": row.get("run") or f"{row.get('category')}/{row.get('method')}",
               "ms_per_image": row.get("ms_per_image"), "image_auroc": row.get("image_auroc")} for row in rows]
    with tempfile.TemporaryDirectory(prefix="adcore-summary-") as tmp:
        path = Path(tmp) / "accuracy_vs_time.png"
        try:
            plot_accuracy_vs_time(path, points, label_key="label")
        except DataError:
            return  # no row has both numbers: no picture
        parent.client.log_artifact(parent.run_id, str(path), "summary")


def adopt_orphans(parent: Run, experiment: str = "") -> list[str]:
    """Make the model runs of the experiment that have no parent yet children of ``parent`` (dvc: the runs this
    ``dvc repro`` made, and those of an earlier one that stopped before its report). Returns their ids."""
    client = parent.client
    exp_id = _experiment_id(client, experiment)
    pipeline = client.get_run(parent.run_id).data.tags.get(PIPELINE_RUN_TAG, "")
    adopted = []
    for found in client.search_runs([exp_id], f"tags.`{KIND_TAG}` = 'model'", max_results=5000):
        if PARENT_TAG not in found.data.tags:
            _adopt(client, found, parent.run_id, pipeline)
            adopted.append(found.info.run_id)
    return adopted


def _run_tags(tags: dict[str, str]) -> list:
    from mlflow.entities import RunTag

    return [RunTag(k, v) for k, v in tags.items()]


@contextmanager
def step_run(category: str, method: str, *, track: bool = True, run_id: str = "", model_sha256: str = "",
             experiment: str = "", uri: str = "", data_root: str | Path = "") -> Iterator[Run | None]:
    """The run of a long step (train, evaluate), opened before the work so that a failure or an interruption
    leaves it FAILED. The dataset (``data_root/manifest.json`` of the fetch step, when present) is logged as
    its input.

    None when not tracking, or when the server cannot be reached now: the work goes on (the model is saved first)
    and the step's own logging at the end reports the server."""
    import logging

    if not track:
        yield None
        return
    try:
        check_reachable(tracking_uri(uri))
    except TrackingError as exc:
        logging.getLogger(__name__).warning("%s (going on; the results are saved locally first)", exc)
        with sigterm_as_exception():
            yield None
        return
    with open_run(category, method, run_id=run_id, model_sha256=model_sha256, experiment=experiment,
                  uri=uri) as run:
        manifest = Path(data_root) / "manifest.json" if data_root else None
        if manifest is not None and manifest.is_file():
            try:
                run.log_dataset(json.loads(manifest.read_text()))
            except (OSError, ValueError):
                pass  # a manifest that cannot be read is the fetch step's business, not the log's
        yield run


def tracked_training(func):
    """Decorator of ``components.train.train``: its run is open (RUNNING) for the whole training and ends FINISHED
    or FAILED, also on SIGTERM; the training logs into it through ``run_id``."""
    import functools

    @functools.wraps(func)
    def wrapper(method: str, data_root: str, category: str, output_dir: str, **kwargs: Any) -> Any:
        with step_run(category, method, track=kwargs.get("track", True), run_id=kwargs.get("run_id", ""),
                      experiment=kwargs.get("experiment", ""), uri=kwargs.get("tracking_uri", ""),
                      data_root=data_root) as run:
            if run is not None:
                kwargs["run_id"] = run.run_id
            return func(method, data_root, category, output_dir, **kwargs)

    return wrapper


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
