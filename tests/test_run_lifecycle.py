"""Every MLflow run ends, read back through the tracking API of a real `mlflow server` on 127.0.0.1: a training
step killed with SIGTERM mid-run leaves its run FAILED (not RUNNING) with the reason as a tag; a step that raises
leaves it FAILED, a later successful attempt FINISHED; runs of a pipeline run are children of one parent that
carries the pipeline run id and the git commit, a failing child marks the parent FAILED, and dvc's report stage
adopts the runs a `dvc repro` made."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_components_e2e import mlflow_server  # noqa: F401  (the real server fixture, shared with the e2e tests)

from adcore.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def server(mlflow_server, monkeypatch, request):  # noqa: F811
    uri, wait = mlflow_server
    wait()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", f"lifecycle-{request.node.name}"[:100])
    monkeypatch.delenv("ADCORE_PIPELINE_RUN_ID", raising=False)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return uri, client


def _runs(client, query: str = ""):
    exp = client.get_experiment_by_name(os.environ["MLFLOW_EXPERIMENT_NAME"])
    return [] if exp is None else client.search_runs([exp.experiment_id], query)


def test_training_killed_with_sigterm_leaves_its_run_failed(server, demo_root, tmp_path):
    uri, client = server
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "ADCORE_NO_PROGRESS": "1",
           "ADCORE_PIPELINE_RUN_ID": "night-1"}
    # FRAD for many epochs: long enough to be stopped in the middle
    proc = subprocess.Popen([sys.executable, "-m", "components", "train", "frad", str(demo_root), "tile",
                             str(tmp_path / "model"), "--set", "data.image_size=32", "--set", "method.frad.epochs=500",
                             "--set", "backbone.weights=random"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    running = []
    while not running and proc.poll() is None and time.time() < deadline:
        running = [r for r in _runs(client, "tags.method = 'frad'") if r.info.status == "RUNNING"]
        time.sleep(0.5)
    assert running, f"no RUNNING run appeared; exit {proc.poll()}: {proc.stderr.read() if proc.poll() else ''}"
    time.sleep(2)  # into the training loop
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, (proc.returncode, err[-2000:])
    run = client.get_run(running[0].info.run_id)
    assert run.info.status == "FAILED" and run.info.end_time is not None
    assert run.data.tags["adcore.error"] == "terminated by SIGTERM"
    # the pipeline run's parent knows which child failed
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FAILED" and parent.data.tags["adcore.pipeline_run_id"] == "night-1"
    assert parent.data.tags["adcore.error"] == "tile-frad failed: terminated by SIGTERM"
    assert len(parent.data.tags["mlflow.source.git.commit"]) == 40
    assert not (tmp_path / "model").exists()  # stopped before the model was written


def test_step_errors_fail_the_run_and_a_retry_finishes_it(server, demo_root, tmp_path):
    uri, client = server
    from components.evaluate import evaluate
    from components.train import train

    with pytest.raises(ConfigError):
        train("patchcore", str(demo_root), "tile", str(tmp_path / "bad"), overrides=["method.patchcore.nope=1"])
    (failed,) = _runs(client)
    assert failed.info.status == "FAILED" and failed.data.tags["adcore.error"].startswith("ConfigError: ")

    tr = train("patchcore", str(demo_root), "tile", str(tmp_path / "m"),
               overrides=["data.image_size=32", "backbone.weights=random", "evaluation.max_overlays=1"])
    run = client.get_run(tr["run_id"])
    assert run.info.status == "FINISHED" and "mlflow.parentRunId" not in run.data.tags  # no pipeline run here
    # evaluation on a category that is not there: the model's run is FAILED with the reason ...
    with pytest.raises(Exception, match="nope"):
        evaluate(tr["model_dir"], str(demo_root), "nope", str(tmp_path / "e"))
    run = client.get_run(tr["run_id"])
    assert run.info.status == "FAILED" and "nope" in run.data.tags["adcore.error"]
    # ... and the successful evaluation FINISHED again, the stale error gone
    ev = evaluate(tr["model_dir"], str(demo_root), "tile", str(tmp_path / "e"))
    run = client.get_run(ev["run_id"])
    assert ev["run_id"] == tr["run_id"] and run.info.status == "FINISHED" and "adcore.error" not in run.data.tags
    assert {r.info.status for r in _runs(client)} == {"FAILED", "FINISHED"}  # nothing left RUNNING


def test_parent_per_pipeline_run_and_dvc_adoption(server, monkeypatch):
    uri, client = server
    from components import tracking

    monkeypatch.setenv("ADCORE_PIPELINE_RUN_ID", "kfp-123")
    with tracking.open_parent_run("kfp-123") as parent:
        parent.log_dataset({"source": {"source": "s3://data/mvtec", "repo": "", "rev": ""},
                            "dataset_sha256": "ab" * 32, "total_files": 3, "total_bytes": 10})
    for method in ("patchcore", "cfa"):
        with tracking.open_run("tile", method):
            pass
    rows = [{"category": "tile", "method": m, "image_auroc": a, "ms_per_image": t}
            for m, a, t in (("patchcore", 0.9, 5.0), ("cfa", 0.8, 9.0))]
    summary_id = tracking.log_pipeline_summary("kfp-123", "| table |", rows)
    assert summary_id == parent.run_id
    assert {a.path for a in client.list_artifacts(parent.run_id)} >= {"summary.md", "results.json", "summary"}
    assert [a.path for a in client.list_artifacts(parent.run_id, "summary")] == ["summary/accuracy_vs_time.png"]
    assert tracking.end_pipeline_run("kfp-123", succeeded=True) == parent.run_id
    parent_run = client.get_run(parent.run_id)
    assert parent_run.data.metrics["tile.cfa.image_auroc"] == 0.8
    assert parent_run.info.status == "FINISHED" and parent_run.data.tags["adcore.kind"] == "pipeline"
    assert [d.dataset.digest for d in parent_run.inputs.dataset_inputs] == ["ab" * 16]
    children = _runs(client, f"tags.`mlflow.parentRunId` = '{parent.run_id}'")
    assert sorted(c.data.tags["mlflow.runName"] for c in children) == ["tile-cfa", "tile-patchcore"]
    assert {c.info.status for c in children} == {"FINISHED"}

    # dvc: stages make runs without a parent; the report stage's parent adopts them
    monkeypatch.delenv("ADCORE_PIPELINE_RUN_ID")
    with tracking.open_run("widget", "frad") as orphan:
        pass
    with tracking.open_parent_run("dvc-1", end=True, orchestrator="dvc") as dvc_parent:
        assert tracking.adopt_orphans(dvc_parent) == [orphan.run_id]
    # a night that failed: the exit handler ends its parent FAILED with KFP's message
    tracking.end_pipeline_run("kfp-124", succeeded=False, error="task train-op failed: OOMKilled")
    failed = _runs(client, "tags.`adcore.pipeline_run_id` = 'kfp-124'")[0]
    assert failed.info.status == "FAILED" and failed.data.tags["adcore.error"] == "task train-op failed: OOMKilled"
    assert client.get_run(orphan.run_id).data.tags["mlflow.parentRunId"] == dvc_parent.run_id
    assert client.get_run(dvc_parent.run_id).data.tags["adcore.orchestrator"] == "dvc"

    from components.runs_tree import format_tree, run_tree

    text = format_tree(run_tree("kfp-123"))
    assert text.startswith("pipeline-kfp-123  [FINISHED]") and "+- tile-cfa  [FINISHED]" in text
