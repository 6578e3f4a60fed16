"""The nightly retraining pipeline (Kubeflow Pipelines v2): fetch once, then per category and method train,
evaluate and register, then one summary table.

::

    source-version -> fetch -> for category:  features -> plan -> for method: train -> evaluate -> register
                                                                                              -> summary

Every step is a lightweight Python component over the project's image whose body imports and calls the step of
``components/`` (or its thin adapter in ``pipelines.steps``): the code that runs in a pod is the code that runs
under ``dvc repro`` and ``python -m components``. The images carry the package with its ``mlops`` extra, so no
step installs anything at run time (``install_kfp_package=False``) and the steps run as a non-root user.

Cluster settings (checked in tests/test_pipeline.py on the compiled YAML, because kfp's local runner ignores
them): training asks for one ``nvidia.com/gpu`` on the GPU pool (node selector and toleration of infra/README.md);
all steps read S3 and MLflow credentials from the Secrets ``adcore-s3`` and ``adcore-mlflow``; all steps retry
with exponential back-off; fetch, features and plan are cached, the steps with side effects in MLflow are not.

Why a ``source-version`` step: kfp caches a step on its inputs, not on the contents behind an S3 URI, so a cached
fetch of the same URI would never see new images. The uncached version step lists the source (no download) and
its fingerprint is an input of fetch: fetch (and everything cached after it) re-runs exactly when data changed.

Why a ``plan`` step: the inner loop iterates over ``{category, method}`` items made by a step instead of using the
outer loop's variable inside the inner loop, which kfp 2.17's local runner resolves wrongly (it substitutes the
inner item for the outer one).
"""

import os
from typing import Callable, List, NamedTuple, no_type_check

from kfp import dsl, kubernetes
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output

import adcore

PIPELINE_NAME = "adcore-training"
REGISTRY = "registry.example.com/adcore"
DEFAULT_CPU_IMAGE = f"{REGISTRY}/adcore-cpu:{adcore.__version__}"
DEFAULT_TRAIN_IMAGE = f"{REGISTRY}/adcore-train:{adcore.__version__}"

# The contract with infra/ (infra/README.md, "The contract with the pipeline").
GPU_RESOURCE = "nvidia.com/gpu"
GPU_NODE_SELECTOR = ("adcore.io/pool", "gpu")
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}
S3_SECRET = "adcore-s3"
MLFLOW_SECRET = "adcore-mlflow"
#: (secret, {key: env var}, optional): optional keys may be absent from the Secret (AWS S3 needs no endpoint).
SECRET_ENV = (
    (S3_SECRET, {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}, False),
    (S3_SECRET, {"AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL"}, True),
    (MLFLOW_SECRET, {"MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI"}, False),
    (MLFLOW_SECRET, {"MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
                     "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD"}, True),
)
#: num_retries, first back-off, factor, longest back-off: transient failures (a node pre-empted, S3 or MLflow
#: briefly away) heal; a real error fails after about 3 minutes instead of a night.
RETRY = {"num_retries": 3, "backoff_duration": "30s", "backoff_factor": 2.0, "backoff_max_duration": "600s"}


# ============================================================================================ component bodies
# Each body runs inside the image: imports stay inside the function (kfp ships only the function's source).


def source_version_op(data_uri: str, data_repo: str, data_rev: str, experiment: str) -> str:
    """Fingerprint of the data source, listed without downloading (uncached: it must look every time).

    Also creates the MLflow experiment before the parallel steps would race to create it."""
    from pipelines.steps import prepare_tracking, source_fingerprint

    prepare_tracking(experiment)
    return source_fingerprint(data_uri, data_repo, data_rev)


def fetch_op(data_uri: str, data_repo: str, data_rev: str, source_version: str, categories: List[str],
             dataset: Output[Dataset]) -> str:
    """Mirror the source into the dataset artifact (MVTec layout + manifest) and validate the categories."""
    import json

    from components.fetch import fetch_dataset

    result = fetch_dataset(data_uri, dataset.path, repo=data_repo, rev=data_rev, categories=list(categories))
    dataset.metadata.update({"source": data_uri, "source_version": source_version})
    return json.dumps(result, default=str)


def features_op(dataset: Input[Dataset], category: str, methods: List[str], profile: str, overrides: List[str],
                cache: Output[Artifact]) -> str:
    """Feature cache of one category for every method's backbone and transform."""
    import json

    from pipelines.steps import extract_category_features

    result = extract_category_features(dataset.path, category, cache.path, list(methods), profile=profile,
                                       overrides=list(overrides))
    cache.metadata.update({"category": category, "entries": len(result["entries"])})
    return json.dumps(result)


def plan_op(category: str, methods: List[str]) -> List[dict]:
    """The (category, method) items of the inner loop."""
    return [{"category": category, "method": method} for method in methods]


# kfp reads the outputs from the functional NamedTuple("...", [...]) return annotation (and the body builds it with
# namedtuple(...)(...)), forms mypy rejects. The source kfp embeds in the YAML starts at ``def`` and would change
# with an inline "type: ignore", so the decorator (which kfp drops) keeps mypy out of this one function instead.
@no_type_check
def train_op(dataset: Input[Dataset], cache: Input[Artifact], category: str, method: str, profile: str,
             overrides: List[str], experiment: str,
             model: Output[Model]) -> NamedTuple("TrainOutputs", [("run_id", str), ("device", str)]):
    """Train one method on one category (GPU when present) and log the run to MLflow."""
    import tempfile
    from collections import namedtuple

    from pipelines.steps import train_step

    with tempfile.TemporaryDirectory(prefix="adcore-ckpt-") as ckpt:
        result = train_step(method, dataset.path, category, model.path, cache_dir=cache.path, profile=profile,
                            overrides=list(overrides), experiment=experiment, checkpoint_dir=ckpt)
    model.metadata.update({"category": category, "method": method, "device": result["device"],
                           "model_sha256": result["model_sha256"], "mlflow_run_id": result["run_id"],
                           "train_seconds": result["seconds"]})
    return namedtuple("TrainOutputs", ["run_id", "device"])(result["run_id"], result["device"])


def evaluate_op(dataset: Input[Dataset], model: Input[Model], category: str, run_id: str, experiment: str,
                metrics: Output[Metrics], evaluation: Output[Artifact]) -> str:
    """Metrics, per-image scores and plots on the test split; logged to the training run."""
    import json

    from components.evaluate import evaluate

    result = evaluate(model.path, dataset.path, category, evaluation.path, run_id=run_id, experiment=experiment)
    for key, value in result.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics.log_metric(key, float(value))
    return json.dumps(result, default=str)


def register_op(dataset: Input[Dataset], model: Input[Model], evaluation: Input[Artifact], category: str,
                method: str, run_id: str, experiment: str, promotion_metric: str, promotion_margin: float,
                model_prefix: str) -> str:
    """Register the model (alias challenger) and promote it to champion when it beats the champion."""
    import json
    import os

    from adcore.metrics import METRIC_KEYS
    from components.register import register_model

    metrics_json = os.path.join(evaluation.path, "metrics.json")
    decision = register_model(model.path, metrics_json, category, method, prefix=model_prefix,
                              metric=promotion_metric, margin=promotion_margin, data_root=dataset.path,
                              run_id=run_id, experiment=experiment)
    with open(metrics_json) as f:
        metrics = json.load(f)
    row = {"category": category, "method": method, "decision": decision["decision"],
           "version": decision["version"], "name": decision["name"], "run_id": decision["run_id"],
           "reasons": decision["reasons"]}
    row.update({k: metrics.get(k) for k in (*METRIC_KEYS, "ms_per_image")})
    return json.dumps(row, default=str)


def summary_op(results: List[str], experiment: str, report: Output[Markdown]) -> str:
    """One markdown table of every (category, method): a kfp Markdown artifact and an MLflow run."""
    import os

    from pipelines.steps import log_summary, summary_markdown

    markdown, rows = summary_markdown(results, title="adcore nightly training")
    os.makedirs(os.path.dirname(report.path) or ".", exist_ok=True)
    with open(report.path, "w") as f:
        f.write(markdown)
    log_summary(markdown, rows, experiment=experiment, run_name="pipeline-summary")
    return markdown


# ============================================================================================ pipeline


def _component(func: Callable, image: str):
    return dsl.component(func, base_image=image, install_kfp_package=False)


def _cluster_settings(task: dsl.PipelineTask, *, cache: bool, cpu: str = "1", memory: str = "2G"):
    """Secrets as env, retries, caching and resources of every step."""
    for secret, keys, optional in SECRET_ENV:
        kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env=keys, optional=optional)
    task.set_retry(**RETRY)
    task.set_caching_options(cache)
    task.set_cpu_request(cpu).set_memory_request(memory)
    return task


def _gpu(task: dsl.PipelineTask):
    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(1)
    kubernetes.add_node_selector(task, label_key=GPU_NODE_SELECTOR[0], label_value=GPU_NODE_SELECTOR[1])
    kubernetes.add_toleration(task, **GPU_TOLERATION)
    return task


def build_pipeline(cpu_image: str = "", train_image: str = ""):
    """The pipeline function with its components on the given images (defaults: $ADCORE_CPU_IMAGE,
    $ADCORE_TRAIN_IMAGE, else the tags of this version in REGISTRY)."""
    cpu_image = cpu_image or os.environ.get("ADCORE_CPU_IMAGE") or DEFAULT_CPU_IMAGE
    train_image = train_image or os.environ.get("ADCORE_TRAIN_IMAGE") or DEFAULT_TRAIN_IMAGE
    source_version = _component(source_version_op, cpu_image)
    fetch = _component(fetch_op, cpu_image)
    features = _component(features_op, train_image)  # the backbone: same image (and torch build) as training
    plan = _component(plan_op, cpu_image)
    train = _component(train_op, train_image)
    evaluate = _component(evaluate_op, cpu_image)
    register = _component(register_op, cpu_image)
    summary = _component(summary_op, cpu_image)

    @dsl.pipeline(name=PIPELINE_NAME, description="adcore: fetch, features, train, evaluate and register "
                  "anomaly detection models per category and method, then a summary table")
    def training_pipeline(
        data_uri: str = "s3://datasets/mvtec",
        data_repo: str = "",
        data_rev: str = "",
        # B006 silenced below: kfp reads these literal lists as the pipeline parameters' defaults (never mutated).
        categories: List[str] = ["bottle", "carpet"],  # noqa: B006
        methods: List[str] = ["patchcore", "cfa"],  # noqa: B006
        profile: str = "cpu",
        overrides: List[str] = [],  # noqa: B006
        promotion_metric: str = "image_auroc",
        promotion_margin: float = 0.0,
        model_prefix: str = "adcore",
        experiment: str = "adcore-nightly",
    ) -> Markdown:
        version_task = _cluster_settings(source_version(data_uri=data_uri, data_repo=data_repo, data_rev=data_rev,
                                                        experiment=experiment),
                                         cache=False).set_display_name("source-version")
        fetch_task = _cluster_settings(
            fetch(data_uri=data_uri, data_repo=data_repo, data_rev=data_rev, source_version=version_task.output,
                  categories=categories), cache=True, memory="4G").set_display_name("fetch")
        dataset = fetch_task.outputs["dataset"]
        with dsl.ParallelFor(categories, name="categories") as category:
            features_task = _cluster_settings(
                features(dataset=dataset, category=category, methods=methods, profile=profile,
                         overrides=overrides), cache=True, cpu="2", memory="8G").set_display_name("features")
            _gpu(features_task)
            plan_task = _cluster_settings(plan(category=category, methods=methods), cache=True, memory="256M")
            with dsl.ParallelFor(plan_task.output, name="methods") as item:
                train_task = _cluster_settings(
                    train(dataset=dataset, cache=features_task.outputs["cache"], category=item.category,
                          method=item.method, profile=profile, overrides=overrides, experiment=experiment),
                    cache=False, cpu="4", memory="16G").set_display_name("train")
                _gpu(train_task)
                eval_task = _cluster_settings(
                    evaluate(dataset=dataset, model=train_task.outputs["model"], category=item.category,
                             run_id=train_task.outputs["run_id"], experiment=experiment),
                    cache=False, cpu="2", memory="8G").set_display_name("evaluate")
                register_task = _cluster_settings(
                    register(dataset=dataset, model=train_task.outputs["model"],
                             evaluation=eval_task.outputs["evaluation"], category=item.category,
                             method=item.method, run_id=train_task.outputs["run_id"], experiment=experiment,
                             promotion_metric=promotion_metric, promotion_margin=promotion_margin,
                             model_prefix=model_prefix), cache=False, cpu="2", memory="8G").set_display_name(
                    "register")
        summary_task = _cluster_settings(summary(results=dsl.Collected(register_task.output), experiment=experiment),
                                         cache=False, memory="1G").set_display_name("summary")
        return summary_task.outputs["report"]

    return training_pipeline


training_pipeline = build_pipeline()
