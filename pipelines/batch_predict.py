"""The batch scoring pipeline (Kubeflow Pipelines v2): a folder or an ``s3://`` prefix scored by a registered model.

::

    batch-predict (components.predict.batch_predict) -> scores artifact (scores.jsonl, summary.json, overlays/)

One lightweight component over the project's CPU image, like the steps of the training pipeline, with the same
Secrets (S3 and MLflow credentials as env) and retries. ``threshold`` "" keeps the model's own (its normaliser's);
a number overrides it. ``work_dir`` "" scores into the output artifact (a fresh folder per run); a path on a
persistent volume keeps the per-batch records between runs, so a retried or re-run job skips the images already
scored with the same model version.
"""

from pathlib import Path

from kfp import dsl, kubernetes
from kfp.dsl import Artifact, Output

from pipelines.training import DEFAULT_CPU_IMAGE, MLFLOW_SECRET, POD_ROLE_LABEL, RETRY, S3_SECRET, SECRET_ENV

PIPELINE_NAME = "adcore-batch-predict"
TIMEOUT_S = 6 * 3600


def batch_predict_op(source: str, model_uri: str, threshold: str, batch_size: int, work_dir: str, experiment: str,
                     scores: Output[Artifact]) -> str:
    """Score every image of ``source``; the scores, summary and overlays become the ``scores`` artifact."""
    import json
    import os
    import shutil

    from components.predict import OVERLAYS, SCORES_FILE, SUMMARY_FILE, batch_predict

    output = work_dir or scores.path
    summary = batch_predict(source, output, model_uri=model_uri, threshold=float(threshold) if threshold else None,
                            batch_size=batch_size, experiment=experiment)
    if work_dir:
        os.makedirs(scores.path, exist_ok=True)
        for name in (SCORES_FILE, SUMMARY_FILE):
            shutil.copyfile(os.path.join(work_dir, name), os.path.join(scores.path, name))
        if os.path.isdir(os.path.join(work_dir, OVERLAYS)):
            shutil.copytree(os.path.join(work_dir, OVERLAYS), os.path.join(scores.path, OVERLAYS),
                            dirs_exist_ok=True)
    scores.metadata.update({k: summary[k] for k in ("model", "threshold", "n_images", "n_defective", "n_errors")})
    return json.dumps(summary, default=str)


def build_pipeline(cpu_image: str = ""):
    image = cpu_image or DEFAULT_CPU_IMAGE
    component = dsl.component(batch_predict_op, base_image=image, install_kfp_package=False)

    @dsl.pipeline(name=PIPELINE_NAME, description="Score a folder or s3:// prefix with a registered model.")
    def batch_predict_pipeline(source: str, model_uri: str = "models:/adcore-tile-patchcore@champion",
                               threshold: str = "", batch_size: int = 16, work_dir: str = "",
                               experiment: str = "adcore-batch"):
        task = component(source=source, model_uri=model_uri, threshold=threshold, batch_size=batch_size,
                         work_dir=work_dir, experiment=experiment)
        for secret, keys, optional in SECRET_ENV:
            if secret in (S3_SECRET, MLFLOW_SECRET):
                kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env=keys, optional=optional)
        kubernetes.add_pod_label(task, *POD_ROLE_LABEL)  # infra/k8s's network policies admit pipeline pods by it
        kubernetes.set_timeout(task, TIMEOUT_S)
        task.set_retry(**RETRY)
        task.set_caching_options(False)  # the prefix and the champion change behind the same inputs
        task.set_cpu_request("2").set_memory_request("4G").set_memory_limit("8G")
        task.set_display_name("batch-predict")

    return batch_predict_pipeline


COMPILED = Path(__file__).resolve().parent / "compiled" / "batch_predict.yaml"


def compile_batch_pipeline(output: str | Path = COMPILED, *, cpu_image: str = "") -> Path:
    """Compile to ``output`` atomically (deterministic, so the committed YAML can be checked for staleness)."""
    from kfp import compiler

    from adcore.io import atomic_path

    output = Path(output)
    with atomic_path(output, suffix=".yaml") as tmp:  # kfp picks the format from the extension
        compiler.Compiler().compile(build_pipeline(cpu_image), str(tmp))
    return output
