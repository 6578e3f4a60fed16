"""The whole kfp pipeline with kfp.local on the demo data: images from a local S3 endpoint (moto), runs and models in
a local MLflow (sqlite). One category, PatchCore and CFA, tiny images, so that it stays within a few minutes on
two CPU cores; the wall time is printed (pytest -s shows it)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

pytest.importorskip("kfp.local")
pytest.importorskip("moto.server")
pytest.importorskip("mlflow")

CATEGORY = "tile"
METHODS = ["patchcore", "cfa"]
TINY = ["data.image_size=64", "data.crop_size=null", "method.cfa.epochs=1", "method.patchcore.coreset_ratio=0.25",
        "evaluation.max_overlays=1"]


@pytest.fixture
def s3_demo(s3_endpoint, tmp_path, monkeypatch):
    """The session's S3 endpoint holding the demo category under s3://adcore-kfp-data/demo/."""
    import boto3

    from adcore.data.demo import generate_demo_dataset

    endpoint = s3_endpoint
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(key, value)
    root = generate_demo_dataset(tmp_path / "demo", categories=(CATEGORY,), n_train=12, n_test_good=4,
                                 n_test_defect=2, image_size=64, seed=0)
    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket="adcore-kfp-data")
    for path in sorted(root.rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), "adcore-kfp-data", f"demo/{path.relative_to(root).as_posix()}")
    return "s3://adcore-kfp-data/demo"


@pytest.mark.slow
def test_kfp_local_pipeline_end_to_end(s3_demo, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from pipelines.local_run import run_local

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root (./mlruns) lands in tmp

    start = time.perf_counter()
    result = run_local(s3_demo, [CATEGORY], METHODS, workdir=tmp_path / "kfp", overrides=TINY,
                       experiment="adcore-test")
    wall = time.perf_counter() - start
    print(f"\nkfp.local pipeline wall time: {wall:.1f} s (pipeline {result['seconds']:.1f} s), "
          f"1 category x {len(METHODS)} methods, 64 px")

    # The summary table: one row per method, with metrics and the registry decision.
    markdown = result["markdown"]
    lines = [line for line in markdown.splitlines() if line.startswith(f"| {CATEGORY} |")]
    assert sorted(line.split("|")[2].strip() for line in lines) == sorted(METHODS), markdown
    assert all("promoted" in line for line in lines), markdown  # first models: no champion yet

    # The fetch step read the images from S3 (the manifest names the source).
    manifests = list((tmp_path / "kfp").rglob("fetch-op/dataset/manifest.json"))
    assert manifests, "fetch wrote no manifest"
    assert "s3://adcore-kfp-data/demo" in manifests[0].read_text()

    # MLflow: one run per method with test metrics, registered champions, and the parent run with the table.
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name("adcore-test")
    runs = client.search_runs([exp.experiment_id])
    by_method = {r.data.tags.get("method"): r for r in runs}
    for method in METHODS:
        run = by_method[method]
        assert 0.0 <= run.data.metrics["image_auroc"] <= 1.0
        assert "train_seconds" in run.data.metrics
        champion = client.get_model_version_by_alias(f"adcore-{CATEGORY}-{method}", "champion")
        assert champion.tags["promotion.decision"] == "promoted"
    # The parent run of this pipeline run: the table on it, every model run its child, all ended.
    summary = next(r for r in runs if r.data.tags.get("adcore.kind") == "pipeline")
    assert summary.info.status == "FINISHED", summary.data.tags.get("adcore.error")
    assert {by_method[m].data.tags.get("mlflow.parentRunId") for m in METHODS} == {summary.info.run_id}
    assert {r.info.status for r in runs} == {"FINISHED"}  # nothing left RUNNING
    local = Path(client.download_artifacts(summary.info.run_id, "summary.md", str(tmp_path / "dl")))
    assert local.read_text() == markdown
    rows = json.loads(Path(client.download_artifacts(summary.info.run_id, "results.json",
                                                     str(tmp_path / "dl"))).read_text())
    assert {r["method"] for r in rows} == set(METHODS)
