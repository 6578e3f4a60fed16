"""The night's summary for people: which tasks failed and which models were promoted, posted to a webhook.

The pipeline's exit handler calls :func:`notify` whatever happened (success, failure, cancellation). The webhook URL
comes from the environment (``ADCORE_WEBHOOK_URL``, a key of the Secret ``adcore-webhook``), never from a pipeline
parameter: a Slack/Teams/Mattermost incoming-webhook URL is a credential. The payload is JSON with a ``text`` field
(what chat webhooks display) and the structured fields beside it. Promotions are read back from MLflow, from the
runs that the register steps of this pipeline run tagged with its job id (:data:`JOB_TAG`), so they are reported
even when a later step failed. No webhook configured: the summary is only printed.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.request
from typing import Any

from adcore.errors import ConfigError
from components.secrets import mask_secrets

log = logging.getLogger(__name__)

WEBHOOK_ENV = "ADCORE_WEBHOOK_URL"
#: MLflow run tags the pipeline's register step sets: the KFP job that registered, and the registry decision.
JOB_TAG = "adcore.pipeline_job"
DECISION_TAG = "adcore.decision"
VERSION_TAG = "adcore.registered_version"


def night_promotions(job: str, experiment: str = "", tracking_uri: str = "") -> list[dict[str, Any]]:
    """Every (category, method) that this job registered, with its decision and version, sorted."""
    from mlflow.tracking import MlflowClient

    from components import tracking

    uri = tracking.tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name(tracking.experiment_name(experiment))
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{JOB_TAG}` = '{job}'", max_results=1000)
    rows = [{"category": r.data.tags.get("category", ""), "method": r.data.tags.get("method", ""),
             "decision": r.data.tags.get(DECISION_TAG, ""), "version": r.data.tags.get(VERSION_TAG, ""),
             "run_id": r.info.run_id} for r in runs]
    return sorted(rows, key=lambda r: (r["category"], r["method"]))


def build_summary(status: dict[str, Any], promotions: list[dict[str, Any]], *, pipeline: str,
                  job: str) -> dict[str, Any]:
    """The payload: state, failed task (with KFP's error message), promotions and one readable ``text``."""
    state = str(status.get("state", "UNKNOWN"))
    error = status.get("error") or {}
    failed = [] if state == "SUCCEEDED" else [{"task": status.get("pipeline_task_name", ""),
                                               "message": mask_secrets(error.get("message", ""))}]
    promoted = [p for p in promotions if p["decision"] == "promoted"]
    lines = [f"adcore {pipeline} {job}: {state}"]
    lines += [f"failed: {f['task']}: {f['message']}" for f in failed]
    lines += [f"promoted: {p['category']}/{p['method']} v{p['version']}" for p in promoted]
    others = len(promotions) - len(promoted)
    if others:
        lines.append(f"{others} model(s) registered without promotion")
    return {"text": "\n".join(lines), "pipeline": pipeline, "job": job, "state": state, "failed_tasks": failed,
            "promoted": promoted, "registered": promotions}


def post_json(url: str, payload: dict[str, Any], *, timeout: float = 10.0) -> int:
    """POST ``payload`` as JSON; returns the HTTP status. ConfigError (URL masked) when the webhook refuses it."""
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (http(s) URL from a Secret)
            return int(response.status)
    except OSError as exc:
        raise ConfigError(mask_secrets(f"{WEBHOOK_ENV}: POST to {url} failed: {exc}")) from None


def notify(status: dict[str, Any], *, pipeline: str, job: str, experiment: str = "", tracking_uri: str = "",
           webhook_url: str = "") -> dict[str, Any]:
    """Summarise the night and post it to ``webhook_url`` (default ``$ADCORE_WEBHOOK_URL``); returns the payload.

    MLflow being unreachable costs the promotion list (noted in the payload), never the notification itself."""
    try:
        promotions = night_promotions(job, experiment, tracking_uri)
    except Exception as exc:  # the failure being reported may be MLflow itself
        log.warning("promotions unavailable: %s", mask_secrets(exc))
        promotions = []
        status = {**status, "mlflow_error": mask_secrets(str(exc))}
    payload = build_summary(status, promotions, pipeline=pipeline, job=job)
    if "mlflow_error" in status:
        payload["text"] += f"\n(promotions unknown: MLflow unreachable: {status['mlflow_error']})"
    url = webhook_url or os.environ.get(WEBHOOK_ENV, "")
    if url:
        payload["webhook_status"] = post_json(url, {k: v for k, v in payload.items() if k != "webhook_status"})
    else:
        log.warning("%s is not set: the summary is only printed", WEBHOOK_ENV)
    print(payload["text"])
    return payload


__all__ = ["DECISION_TAG", "JOB_TAG", "VERSION_TAG", "WEBHOOK_ENV", "build_summary", "night_promotions", "notify",
           "post_json"]
