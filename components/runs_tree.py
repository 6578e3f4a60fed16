"""The run tree of one pipeline run, read back from the tracking API: the parent, its children, statuses, tags.

``adcore-step runs-tree [--pipeline-run ID]`` (default: the latest parent run of the experiment).
"""

from __future__ import annotations

from typing import Any

from components import tracking

#: Tags shown per run (those that exist); the rest is in the MLflow UI.
SHOWN_TAGS = (tracking.PIPELINE_RUN_TAG, tracking.ORCHESTRATOR_TAG, tracking.GIT_COMMIT_TAG, "dataset_sha256",
              "dataset_source", "category", "method", tracking.MODEL_SHA_TAG, "registered_model",
              "registered_version", "promotion.decision", tracking.ERROR_TAG)


def _record(run, client) -> dict[str, Any]:
    inputs = getattr(run, "inputs", None)
    datasets = [f"{d.dataset.name}@{d.dataset.digest}" for d in (inputs.dataset_inputs if inputs else [])]
    return {"run_id": run.info.run_id, "name": run.data.tags.get("mlflow.runName", run.info.run_name),
            "status": run.info.status, "tags": {k: run.data.tags[k] for k in SHOWN_TAGS if k in run.data.tags},
            "datasets": datasets, "artifacts": [a.path for a in client.list_artifacts(run.info.run_id)]}


def run_tree(pipeline_run: str = "", *, experiment: str = "", uri: str = "") -> dict[str, Any]:
    """{"parent": record, "children": [record, ...]} of ``pipeline_run`` (default: the latest parent run)."""
    from mlflow.exceptions import MlflowException

    from adcore.errors import DataError

    uri = tracking.tracking_uri(uri)
    tracking.check_reachable(uri)
    client = tracking._client(uri)
    try:
        exp = client.get_experiment_by_name(tracking.experiment_name(experiment))
        if exp is None:
            raise DataError(f"MLflow experiment {tracking.experiment_name(experiment)!r} does not exist at {uri}")
        query = f"tags.`{tracking.KIND_TAG}` = 'pipeline'"
        if pipeline_run:
            query += f" and tags.`{tracking.PIPELINE_RUN_TAG}` = '{pipeline_run}'"
        parents = client.search_runs([exp.experiment_id], query, order_by=["attributes.start_time DESC"],
                                     max_results=1)
        if not parents:
            raise DataError(f"no pipeline run {pipeline_run or ''} in experiment {exp.name!r} at {uri}".replace(
                "  ", " "))
        parent = parents[0]
        children = client.search_runs([exp.experiment_id], f"tags.`{tracking.PARENT_TAG}` = '{parent.info.run_id}'",
                                      order_by=["tags.`mlflow.runName` ASC"], max_results=5000)
        return {"parent": _record(parent, client), "children": [_record(c, client) for c in children]}
    except MlflowException as exc:
        raise tracking.TrackingError(f"MLflow tracking at {uri} failed: {exc.message}") from None


def format_tree(tree: dict[str, Any]) -> str:
    def block(record: dict[str, Any], head: str, indent: str) -> list[str]:
        lines = [f"{head}{record['name']}  [{record['status']}]  run {record['run_id']}"]
        lines += [f"{indent}{k} = {v}" for k, v in record["tags"].items()]
        if record["datasets"]:
            lines.append(f"{indent}inputs: {', '.join(record['datasets'])}")
        if record["artifacts"]:
            lines.append(f"{indent}artifacts: {', '.join(record['artifacts'])}")
        return lines

    lines = block(tree["parent"], "", "    ")
    for child in tree["children"]:
        lines += block(child, "  +- ", "  |      ")
    return "\n".join(lines)


__all__ = ["format_tree", "run_tree"]
