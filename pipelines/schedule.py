"""``python -m pipelines.schedule --host URL --cron "0 0 2 * * *"``: the nightly recurring run on Kubeflow Pipelines.

Idempotent: it uploads the compiled pipeline (a new pipeline, or a new version of it named after the package
version and the YAML's content hash, reused when that version exists), makes sure the experiment exists, and
replaces any recurring run of the same name (KFP's API has no update) with one that runs at the cron time, at most
one at a time (``max_concurrency`` 1: a slow night never overlaps the next) and without catch-up (a schedule that
was paused or a controller that was down does not start a burst of missed runs).

KFP cron expressions have six fields, seconds first: ``0 0 2 * * *`` is 02:00:00 every day.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from adcore.errors import ConfigError

DEFAULT_JOB = "adcore-nightly"


def _parse_params(items: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are JSON when they parse (lists, numbers), else strings."""
    params: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--param {item!r}: expected NAME=VALUE, e.g. categories='[\"bottle\"]'")
        key, raw = item.split("=", 1)
        try:
            params[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            params[key.strip()] = raw
    return params


def check_cron(cron: str) -> str:
    fields = cron.split()
    if len(fields) != 6:
        raise ConfigError(f"--cron {cron!r}: KFP expects 6 fields, seconds first (e.g. '0 0 2 * * *' for 02:00 "
                          f"daily); got {len(fields)}")
    return cron


def _name_filter(key: str, value: str) -> str:
    """A KFP API filter (protobuf JSON, as kfp.Client writes its own): ``key == value``."""
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": key, "stringValue": value}]})


def pipeline_version_name(package: Path) -> str:
    import adcore

    return f"{adcore.__version__}-{hashlib.sha256(package.read_bytes()).hexdigest()[:12]}"


def upload(client, package: Path, pipeline_name: str, description: str = "") -> tuple[str, str]:
    """Upload the pipeline, or a new version of it when its content changed; returns (pipeline_id, version_id).

    Versions are named ``<adcore version>-<sha256 of the YAML>``. KFP names the first version of a new pipeline
    after the pipeline, so that one is recognised by the version name recorded in the pipeline's description.
    """
    version_name = pipeline_version_name(package)
    pipeline_id = client.get_pipeline_id(pipeline_name)
    if pipeline_id is None:
        pipeline_id = client.upload_pipeline(str(package), pipeline_name=pipeline_name,
                                             description=f"{description} [first version {version_name}]").pipeline_id
    found = client.list_pipeline_versions(pipeline_id, page_size=1,
                                          filter=_name_filter("display_name", version_name)).pipeline_versions
    if found:  # this exact YAML is there already
        return pipeline_id, found[0].pipeline_version_id
    if f"[first version {version_name}]" in (client.get_pipeline(pipeline_id).description or ""):
        first = client.list_pipeline_versions(pipeline_id, page_size=1, sort_by="created_at",
                                              filter=_name_filter("display_name", pipeline_name)).pipeline_versions
        if first:
            return pipeline_id, first[0].pipeline_version_id
    version = client.upload_pipeline_version(str(package), pipeline_version_name=version_name,
                                             pipeline_id=pipeline_id, description=description)
    return pipeline_id, version.pipeline_version_id


def schedule(host: str, cron: str, *, package: str | Path = "", experiment: str = "adcore",
             job_name: str = DEFAULT_JOB, pipeline_name: str = "", service_account: str = "adcore-pipeline-runner",
             namespace: str = "", params: dict[str, Any] | None = None, cpu_image: str = "",
             train_image: str = "", existing_token: str = "") -> dict[str, Any]:
    """Upload and (re)create the recurring run; returns the ids involved."""
    import kfp

    from pipelines.compile import COMPILED, compile_pipeline
    from pipelines.training import PIPELINE_NAME

    check_cron(cron)
    pipeline_name = pipeline_name or PIPELINE_NAME
    with tempfile.TemporaryDirectory(prefix="adcore-schedule-") as tmp:
        if cpu_image or train_image:  # images are part of the compiled spec: compile for these
            path = compile_pipeline(Path(tmp) / "training.yaml", cpu_image=cpu_image, train_image=train_image)
        else:
            path = Path(package or COMPILED)
            if not path.is_file():
                raise ConfigError(f"{path}: compiled pipeline not found; run python -m pipelines.compile")
        client = kfp.Client(host=host, namespace=namespace or None, existing_token=existing_token or None)
        pipeline_id, version_id = upload(client, path, pipeline_name,
                                         description="adcore nightly retraining (pipelines/training.py)")
    exp = client.create_experiment(experiment, namespace=namespace or None)
    replaced = []
    listed = client.list_recurring_runs(experiment_id=exp.experiment_id, page_size=100,
                                        filter=_name_filter("display_name", job_name))
    for old in listed.recurring_runs or []:
        if old.display_name == job_name:
            client.delete_recurring_run(old.recurring_run_id)
            replaced.append(old.recurring_run_id)
    run = client.create_recurring_run(
        experiment_id=exp.experiment_id, job_name=job_name, description=f"adcore nightly retraining, cron {cron}",
        cron_expression=cron, max_concurrency=1, no_catchup=True, params=params or {}, pipeline_id=pipeline_id,
        version_id=version_id, enabled=True, service_account=service_account or None)
    return {"pipeline_id": pipeline_id, "version_id": version_id, "experiment_id": exp.experiment_id,
            "recurring_run_id": run.recurring_run_id, "replaced": replaced, "cron": cron}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.schedule", description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://localhost:8080")
    parser.add_argument("--cron", default="0 0 2 * * *", help="6 fields, seconds first (default: 02:00 daily)")
    parser.add_argument("--experiment", default="adcore", help="KFP experiment of the recurring run")
    parser.add_argument("--job-name", default=DEFAULT_JOB, help="recurring run name; an existing one is replaced")
    parser.add_argument("--pipeline-name", default="", help="default: adcore-training")
    parser.add_argument("--package", default="", help="compiled YAML (default pipelines/compiled/training.yaml)")
    parser.add_argument("--service-account", default="adcore-pipeline-runner")
    parser.add_argument("--namespace", default="", help="multi-user Kubeflow: the profile namespace (adcore)")
    parser.add_argument("--image", default="", help="CPU image: compile for it instead of using --package")
    parser.add_argument("--train-image", default="", help="GPU image: compile for it instead of using --package")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="pipeline parameter, JSON values: --param 'categories=[\"bottle\",\"carpet\"]'")
    parser.add_argument("--token", default="", help="bearer token for the KFP API (default: $KFP_BEARER_TOKEN, "
                                                    "else none); prefer the variable: an argument shows in ps and "
                                                    "the shell history")
    args = parser.parse_args(argv)
    try:
        result = schedule(args.host, args.cron, package=args.package, experiment=args.experiment,
                          job_name=args.job_name, pipeline_name=args.pipeline_name,
                          service_account=args.service_account, namespace=args.namespace,
                          params=_parse_params(args.param), cpu_image=args.image, train_image=args.train_image,
                          existing_token=args.token or os.environ.get("KFP_BEARER_TOKEN", ""))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
