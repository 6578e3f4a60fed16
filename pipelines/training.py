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

Why a ``plan`` step: the inner loop iterates over ``{category, method, dataset_uri, data_digest}`` items made by a
step instead of using the outer loop's variables (or its steps' output parameters) inside the inner loop, which
kfp 2.17's local runner resolves wrongly (it substitutes the inner item for the outer value).
"""

import os
from dataclasses import dataclass
from typing import Callable, List, NamedTuple, Tuple, no_type_check

from kfp import dsl, kubernetes
from kfp.dsl import (
    HTML,
    Artifact,
    ClassificationMetrics,
    Dataset,
    Input,
    Markdown,
    Metrics,
    Model,
    Output,
    PipelineTaskFinalStatus,
)

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
WEBHOOK_SECRET = "adcore-webhook"
POD_ROLE_LABEL = ("adcore.io/role", "pipeline")
#: (secret, {key: env var}, optional): optional keys may be absent from the Secret (AWS S3 needs no endpoint; a
#: cluster without a webhook only prints the night's summary). MLflow sits behind basic auth (infra/k8s).
SECRET_ENV = (
    (S3_SECRET, {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}, False),
    (S3_SECRET, {"AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL"}, True),
    (MLFLOW_SECRET, {"MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME":
                     "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD"}, False),
    (WEBHOOK_SECRET, {"ADCORE_WEBHOOK_URL": "ADCORE_WEBHOOK_URL"}, True),
)
#: The oldest KFP backend the compiled spec is checked against (tests/test_kfp_backend_schema.py): optional
#: Secret keys (kfp-kubernetes SecretAsEnv.optional), fan-in of dsl.Collected across nested loops (KFP >= 2.5),
#: launcher emptyDir mounts for non-root images (KFP >= 2.3), task timeouts and emptyDir mounts.
MIN_BACKEND = "2.15.0"
#: The oldest backend the spec compiled with ClusterSettings(optional_secrets=False) is checked against.
MIN_BACKEND_WITHOUT_OPTIONAL_SECRETS = "2.14.0"
#: num_retries, first back-off, factor, longest back-off: transient failures (a node pre-empted, S3 or MLflow
#: briefly away) heal; a real error fails after about 3 minutes instead of a night.
RETRY = {"num_retries": 3, "backoff_duration": "30s", "backoff_factor": 2.0, "backoff_max_duration": "600s"}


# ============================================================================================ component bodies
# Each body runs inside the image: imports stay inside the function (kfp ships only the function's source).


def source_version_op(data_uri: str, data_repo: str, data_rev: str, categories: List[str],
                      experiment: str, job_id: str) -> List[dict]:
    """One fingerprint per requested category, listed without downloading (uncached: it must look every time).

    Its items drive the category loop, so each category's cached fetch re-runs exactly when that category changed.
    Also creates the MLflow experiment and this run's parent run (``job_id``: the Kubeflow run id) before the
    parallel steps would race to create them."""
    from pipelines.steps import category_versions, prepare_tracking

    prepare_tracking(experiment, pipeline_run=job_id)
    return category_versions(data_uri, list(categories), data_repo, data_rev)


@no_type_check
def fetch_op(data_uri: str, data_repo: str, data_rev: str, category: str, source_version: str,
             dataset: Output[Dataset]) -> NamedTuple("FetchOutputs", [("uri", str), ("digest", str), ("bytes", int)]):
    """Mirror one category of the source into its own dataset artifact (MVTec layout + manifest) and validate it."""
    from collections import namedtuple

    from components.fetch import fetch_dataset

    result = fetch_dataset(data_uri, dataset.path, repo=data_repo, rev=data_rev, categories=[category])
    dataset.metadata.update({"source": data_uri, "category": category, "source_version": source_version,
                             "dataset_sha256": result["dataset_sha256"], "bytes": float(result["bytes"])})
    return namedtuple("FetchOutputs", ["uri", "digest", "bytes"])(dataset.uri, result["dataset_sha256"],
                                                                   result["bytes"])


def weights_op(weights_uri: str, weights: Output[Artifact]) -> str:
    """The backbone weight files under ``weights_uri``, fetched once a night (cached on the URI: version the key)."""
    import json

    from pipelines.steps import fetch_weights

    names = fetch_weights(weights_uri, weights.path)
    weights.metadata.update({"source": weights_uri, "files": names})
    return json.dumps(names)


def features_op(dataset: Input[Dataset], weights: Input[Artifact], category: str, methods: List[str], profile: str,
                overrides: List[str], cache: Output[Artifact]) -> str:
    """Feature cache of one category for every method's backbone and transform."""
    import json

    from pipelines.steps import extract_category_features, weights_overrides

    entries: dict = {}
    for method in methods:
        result = extract_category_features(dataset.path, category, cache.path, [method], profile=profile,
                                           overrides=weights_overrides(method, profile, overrides, weights.path))
        for key, names in result["entries"].items():
            entries.setdefault(key, []).extend(names)
    cache.metadata.update({"category": category, "entries": len(entries)})
    return json.dumps({"category": category, "entries": entries})


def plan_op(category: str, methods: List[str], dataset_uri: str, data_digest: str) -> List[dict]:
    """The items of the inner loop: (category, method) and the category's dataset URI and digest."""
    return [{"category": category, "method": method, "dataset_uri": dataset_uri, "data_digest": data_digest}
            for method in methods]


# kfp reads the outputs from the functional NamedTuple("...", [...]) return annotation (and the body builds it with
# namedtuple(...)(...)), forms mypy rejects. The source kfp embeds in the YAML starts at ``def`` and would change
# with an inline "type: ignore", so the decorator (which kfp drops) keeps mypy out of this one function instead.
@no_type_check
def train_op(dataset: Input[Dataset], cache: Input[Artifact], weights: Input[Artifact], category: str, method: str,
             profile: str, overrides: List[str], experiment: str, data_digest: str, code_version: str,
             checkpoint_root: str,
             model: Output[Model]) -> NamedTuple("TrainOutputs", [("run_id", str), ("device", str)]):
    """Train one method on one category (GPU when present) and log the run to MLflow.

    ``data_digest`` and ``code_version`` are inputs only so that kfp's cache key holds them: a cached train is
    reused exactly when data, code and settings are unchanged. Checkpoints go to ``checkpoint_root`` (s3://) under
    a key of the same three, so a retried or pre-empted pod resumes at its last epoch."""
    import hashlib
    import json
    import tempfile
    from collections import namedtuple

    from pipelines.steps import train_step, weights_overrides

    settings = weights_overrides(method, profile, overrides, weights.path)
    key = hashlib.sha256(json.dumps([data_digest, code_version, profile, settings]).encode()).hexdigest()[:16]
    checkpoint_uri = f"{checkpoint_root.rstrip('/')}/{category}/{method}/{key}" if checkpoint_root else ""
    with tempfile.TemporaryDirectory(prefix="adcore-ckpt-") as ckpt:
        result = train_step(method, dataset.path, category, model.path, cache_dir=cache.path, profile=profile,
                            overrides=settings, experiment=experiment, checkpoint_dir=ckpt,
                            checkpoint_uri=checkpoint_uri)
    model.metadata.update({"category": category, "method": method, "device": result["device"],
                           "model_sha256": result["model_sha256"], "mlflow_run_id": result["run_id"],
                           "train_seconds": result["seconds"],
                           # floats: kfp.local's cache returns metadata numbers as floats, and keys on them
                           "resumed_from_epoch": float(result["resumed_from_epoch"]),
                           "data_digest": data_digest, "code_version": code_version})
    return namedtuple("TrainOutputs", ["run_id", "device"])(result["run_id"], result["device"])


def evaluate_op(dataset: Input[Dataset], model: Input[Model], category: str, run_id: str, experiment: str,
                metrics: Output[Metrics], roc: Output[ClassificationMetrics], report: Output[HTML],
                evaluation: Output[Artifact]) -> str:
    """Metrics, per-image scores and plots on the test split; logged to the training run. The KFP UI gets the image
    ROC (ClassificationMetrics) and one HTML page with the metrics, curves and heatmaps."""
    import json
    import os

    from components.evaluate import evaluate
    from pipelines.ui import evaluation_html, roc_points

    result = evaluate(model.path, dataset.path, category, evaluation.path, run_id=run_id, experiment=experiment)
    for key, value in result.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics.log_metric(key, float(value))
    fpr, tpr, thresholds = roc_points(os.path.join(evaluation.path, "scores.csv"))
    roc.log_roc_curve(fpr, tpr, thresholds)
    for artifact in (metrics, roc):  # kfp keeps these in metadata; a file too, or kfp.local's cache never hits
        with open(artifact.path, "w") as f:
            json.dump(artifact.metadata, f)
    with open(report.path, "w") as f:
        f.write(evaluation_html(evaluation.path, f"{category}: {model.metadata.get('method', '')}"))
    return json.dumps(result, default=str)


def register_op(dataset_uri: str, model: Input[Model], evaluation: Input[Artifact], category: str,
                method: str, run_id: str, experiment: str, promotion_metric: str, promotion_margin: float,
                promotion_tolerance: float, promotion_floor: float, promotion_resamples: int, promotion_mode: str,
                model_prefix: str, job_id: str) -> str:
    """Register the model (alias challenger) and promote it to champion when it beats the champion.

    The category's test split is downloaded from ``dataset_uri`` only if the champion must be re-evaluated on it.
    The training run is tagged with this job and the decision, which the exit handler's summary reads back."""
    import json
    import os
    import tempfile
    from typing import cast

    from adcore.metrics import METRIC_KEYS
    from components import tracking
    from components.notify import DECISION_TAG, JOB_TAG, VERSION_TAG
    from components.register import register_model
    from pipelines.steps import CategoryDataOnDemand

    metrics_json = os.path.join(evaluation.path, "metrics.json")
    with tempfile.TemporaryDirectory(prefix="adcore-register-") as scratch:
        decision = register_model(model.path, metrics_json, category, method, prefix=model_prefix,
                                  metric=promotion_metric, margin=promotion_margin, tolerance=promotion_tolerance,
                                  floor=promotion_floor, resamples=promotion_resamples, mode=promotion_mode,
                                  data_root=cast(str, CategoryDataOnDemand(dataset_uri, category, scratch)),
                                  run_id=run_id, experiment=experiment)
    # pipeline_run: the model's run becomes a child of this pipeline run's parent (also when train was cached)
    with tracking.open_run(category, method, run_id=decision["run_id"], experiment=experiment,
                           pipeline_run=job_id) as run:
        run.set_tags({JOB_TAG: job_id, DECISION_TAG: decision["decision"], VERSION_TAG: str(decision["version"])})
    with open(metrics_json) as f:
        metrics = json.load(f)
    row = {"category": category, "method": method, "decision": decision["decision"],
           "version": decision["version"], "name": decision["name"], "run_id": decision["run_id"],
           "reasons": decision["reasons"]}
    row.update({k: metrics.get(k) for k in (*METRIC_KEYS, "ms_per_image")})
    return json.dumps(row, default=str)


def summary_op(results: List[str], experiment: str, job_id: str, report: Output[Markdown]) -> str:
    """One markdown table of every (category, method): a kfp Markdown artifact, on the pipeline run's parent run."""
    import os

    from pipelines.steps import log_summary, summary_markdown

    markdown, rows = summary_markdown(results, title="adcore nightly training")
    os.makedirs(os.path.dirname(report.path) or ".", exist_ok=True)
    with open(report.path, "w") as f:
        f.write(markdown)
    log_summary(markdown, rows, experiment=experiment, pipeline_run=job_id)
    return markdown


def notify_op(status: PipelineTaskFinalStatus, pipeline: str, job_id: str, experiment: str) -> str:
    """Exit handler: post the night's summary (failed tasks, promotions) to the webhook of the Secret."""
    import json

    from components.notify import notify
    from components.tracking import end_pipeline_run

    state = {"state": status.state, "pipeline_task_name": status.pipeline_task_name,
             "error": {"code": status.error_code, "message": status.error_message}}
    end_pipeline_run(job_id, succeeded=status.state == "SUCCEEDED", error=str(status.error_message),
                     experiment=experiment)  # the parent run ends with the pipeline, whatever happened
    return json.dumps(notify(state, pipeline=pipeline, job=job_id, experiment=experiment), default=str)


# ============================================================================================ pipeline


@dataclass(frozen=True)
class ClusterSettings:
    """What kfp fixes at compile time (``python -m pipelines.compile`` flags): limits of a shared GPU cluster.

    timeouts: seconds per step before Kubernetes kills the pod (activeDeadlineSeconds): a hung step fails and is
    retried instead of blocking every later night. parallel_categories / parallel_methods: at most this many loop
    iterations at once (GPU pods requested = parallel_categories x parallel_methods for training). queue / priority:
    Kueue's LocalQueue and WorkloadPriorityClass labels on every pod ("" leaves a label out). cache_train: reuse
    train and evaluate when data digest, code version and settings are unchanged. scratch: size of the per-pod
    scratch volume of the per-category steps (feature cache, temporary copies; see data_volume.py for sizing it
    from a manifest). optional_secrets: False for backends older than MIN_BACKEND, which reject optional keys.
    retries: of every step (RETRY's back-off); 0 for local runs, where a failure is not transient."""

    timeouts: Tuple[Tuple[str, int], ...] = (
        ("source-version", 600), ("fetch", 3600), ("weights", 1800), ("features", 3 * 3600), ("plan", 300),
        ("train", 6 * 3600), ("evaluate", 2 * 3600), ("register", 2 * 3600), ("summary", 600), ("notify", 300))
    parallel_categories: int = 4
    parallel_methods: int = 2
    queue: str = "adcore"
    priority: str = "adcore-nightly"
    cache_train: bool = True
    scratch: str = "20Gi"
    optional_secrets: bool = True
    retries: int = 3  # RETRY's num_retries

    def timeout(self, step: str) -> int:
        return dict(self.timeouts)[step]


#: Every step's (cpu request, memory request, memory limit): quota-enforcing namespaces reject pods without limits.
RESOURCES = {
    "source-version": ("250m", "512M", "1G"), "fetch": ("1", "2G", "4G"), "weights": ("250m", "1G", "2G"),
    "features": ("2", "8G", "16G"), "plan": ("100m", "128M", "256M"), "train": ("4", "16G", "24G"),
    "evaluate": ("2", "8G", "12G"), "register": ("1", "4G", "8G"), "summary": ("250m", "512M", "1G"),
    "notify": ("100m", "256M", "512M"),
}
PER_CATEGORY_STEPS = ("fetch", "features", "train", "evaluate", "register")


def _component(func: Callable, image: str):
    return dsl.component(func, base_image=image, install_kfp_package=False)


def _cluster_settings(task: dsl.PipelineTask, step: str, settings: ClusterSettings, *, cache: bool,
                      secrets: Tuple[str, ...] = ()):
    """Only the Secrets this step needs, as env; timeout, retries, caching, resources and queue labels."""
    for secret, keys, optional in SECRET_ENV:
        if secret in secrets:
            kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env=keys, optional=optional)
    if not settings.optional_secrets:  # every key required; kfp writes "optional: false" too, old drivers reject it
        for entry in task.platform_config.get("kubernetes", {}).get("secretAsEnv", []):
            entry.pop("optional", None)
    kubernetes.set_timeout(task, settings.timeout(step))
    if settings.retries:
        task.set_retry(**{**RETRY, "num_retries": settings.retries})
    task.set_caching_options(cache)
    cpu, memory, memory_limit = RESOURCES[step]
    task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(memory_limit)
    kubernetes.add_pod_label(task, *POD_ROLE_LABEL)  # infra/k8s's network policies select pipeline pods by it
    if settings.queue:
        kubernetes.add_pod_label(task, "kueue.x-k8s.io/queue-name", settings.queue)
    if settings.priority:
        kubernetes.add_pod_label(task, "kueue.x-k8s.io/priority-class", settings.priority)
    if step in PER_CATEGORY_STEPS:  # /tmp holds the feature cache copy, checkpoints and the register download
        kubernetes.empty_dir_mount(task, volume_name="scratch", mount_path="/tmp", size_limit=settings.scratch)
    return task.set_display_name(step)


def _gpu(task: dsl.PipelineTask):
    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(1)
    kubernetes.add_node_selector(task, label_key=GPU_NODE_SELECTOR[0], label_value=GPU_NODE_SELECTOR[1])
    kubernetes.add_toleration(task, **GPU_TOLERATION)
    return task


def build_pipeline(cpu_image: str = "", train_image: str = "", settings: ClusterSettings | None = None):
    """The pipeline function with its components on the given images (defaults: $ADCORE_CPU_IMAGE,
    $ADCORE_TRAIN_IMAGE, else the tags of this version in REGISTRY) and cluster settings."""
    cpu_image = cpu_image or os.environ.get("ADCORE_CPU_IMAGE") or DEFAULT_CPU_IMAGE
    train_image = train_image or os.environ.get("ADCORE_TRAIN_IMAGE") or DEFAULT_TRAIN_IMAGE
    cs = settings or ClusterSettings()
    source_version = _component(source_version_op, cpu_image)
    fetch = _component(fetch_op, cpu_image)
    weights_step = _component(weights_op, cpu_image)
    features = _component(features_op, train_image)  # the backbone: same image (and torch build) as training
    plan = _component(plan_op, cpu_image)
    train = _component(train_op, train_image)
    evaluate = _component(evaluate_op, cpu_image)
    register = _component(register_op, cpu_image)
    summary = _component(summary_op, cpu_image)
    notify = _component(notify_op, cpu_image)
    code_version = f"{adcore.__version__}|{train_image}"

    @dsl.pipeline(name=PIPELINE_NAME, description="adcore: fetch, features, train, evaluate and register "
                  "anomaly detection models per category and method, then a summary table")
    def training_pipeline(
        data_uri: str = "s3://datasets/mvtec",
        data_repo: str = "",
        data_rev: str = "",
        # B006 silenced below: kfp reads these literal lists as the pipeline parameters' defaults (never mutated).
        categories: List[str] = ["bottle", "carpet"],  # noqa: B006
        methods: List[str] = ["patchcore", "cfa"],  # noqa: B006
        profile: str = "paper",
        weights_uri: str = "s3://models/backbones",
        overrides: List[str] = [],  # noqa: B006
        checkpoint_root: str = "s3://models/checkpoints",
        promotion_metric: str = "image_auroc",
        promotion_margin: float = 0.0,
        promotion_tolerance: float = 0.02,
        promotion_floor: float = 0.5,
        promotion_resamples: int = 2000,
        promotion_mode: str = "auto",
        model_prefix: str = "adcore",
        experiment: str = "adcore-nightly",
    ):
        notify_task = _cluster_settings(
            notify(pipeline=PIPELINE_NAME, job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, experiment=experiment),
            "notify", cs, cache=False, secrets=(MLFLOW_SECRET, WEBHOOK_SECRET))
        with dsl.ExitHandler(notify_task, name="night"):
            version_task = _cluster_settings(
                source_version(data_uri=data_uri, data_repo=data_repo, data_rev=data_rev, categories=categories,
                               experiment=experiment, job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER), "source-version", cs,
                cache=False,
                secrets=(S3_SECRET, MLFLOW_SECRET))
            weights_task = _cluster_settings(weights_step(weights_uri=weights_uri), "weights", cs, cache=True,
                                             secrets=(S3_SECRET,))
            weights = weights_task.outputs["weights"]
            with dsl.ParallelFor(version_task.output, name="categories",
                                 parallelism=cs.parallel_categories) as source:
                fetch_task = _cluster_settings(
                    fetch(data_uri=data_uri, data_repo=data_repo, data_rev=data_rev, category=source.category,
                          source_version=source.fingerprint), "fetch", cs, cache=True, secrets=(S3_SECRET,))
                dataset = fetch_task.outputs["dataset"]
                features_task = _gpu(_cluster_settings(
                    features(dataset=dataset, weights=weights, category=source.category, methods=methods,
                             profile=profile, overrides=overrides), "features", cs, cache=True))
                plan_task = _cluster_settings(
                    plan(category=source.category, methods=methods, dataset_uri=fetch_task.outputs["uri"],
                         data_digest=fetch_task.outputs["digest"]), "plan", cs, cache=True)
                with dsl.ParallelFor(plan_task.output, name="methods", parallelism=cs.parallel_methods) as item:
                    train_task = _gpu(_cluster_settings(
                        train(dataset=dataset, cache=features_task.outputs["cache"], weights=weights,
                              category=item.category, method=item.method, profile=profile, overrides=overrides,
                              experiment=experiment, data_digest=item.data_digest,
                              code_version=code_version, checkpoint_root=checkpoint_root),
                        "train", cs, cache=cs.cache_train, secrets=(S3_SECRET, MLFLOW_SECRET)))
                    eval_task = _cluster_settings(
                        evaluate(dataset=dataset, model=train_task.outputs["model"], category=item.category,
                                 run_id=train_task.outputs["run_id"], experiment=experiment),
                        "evaluate", cs, cache=cs.cache_train, secrets=(MLFLOW_SECRET,))
                    register_task = _cluster_settings(
                        register(dataset_uri=item.dataset_uri, model=train_task.outputs["model"],
                                 evaluation=eval_task.outputs["evaluation"], category=item.category,
                                 method=item.method, run_id=train_task.outputs["run_id"], experiment=experiment,
                                 promotion_metric=promotion_metric, promotion_margin=promotion_margin,
                                 promotion_tolerance=promotion_tolerance, promotion_floor=promotion_floor,
                                 promotion_resamples=promotion_resamples, promotion_mode=promotion_mode,
                                 model_prefix=model_prefix, job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER),
                        "register", cs, cache=False, secrets=(S3_SECRET, MLFLOW_SECRET))
            # kfp allows no pipeline output from inside an exit handler: the table is the summary step's artifact.
            _cluster_settings(summary(results=dsl.Collected(register_task.output), experiment=experiment,
                                      job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER),
                              "summary", cs, cache=False, secrets=(MLFLOW_SECRET,))

    return training_pipeline


training_pipeline = build_pipeline()
