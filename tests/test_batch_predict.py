"""Batch scoring (`adcore-step predict`): the registry's champion scores an s3:// prefix on a real S3 endpoint (moto's
server on 127.0.0.1); scores equal `adcore predict`; overlays for exactly the flagged images; a summary logged to
MLflow; killed mid-run and re-run, it skips what was scored; a re-run with the same model version scores nothing.
The kfp pipeline of the step compiles (not stale, with Secrets and retries) and runs under kfp.local.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_serving import adcore_predict, demo_champion  # noqa: F401  (a session fixture, shared)

BUCKET = "adcore-batch-line"


@pytest.fixture
def line(s3_endpoint, demo_root, demo_champion, monkeypatch, tmp_path):  # noqa: F811
    """The demo 'tile' test images (and one corrupt PNG) under s3://<BUCKET>/line1/; client environment set."""
    import boto3

    for key, value in {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                       "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_TRACKING_URI": demo_champion["uri"],
                       "MLFLOW_EXPERIMENT_NAME": "batch", "ADCORE_DEVICE": "cpu",
                       "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}.items():
        monkeypatch.setenv(key, value)
    s3 = boto3.client("s3")
    if BUCKET not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=BUCKET)
    images = sorted((demo_root / "tile" / "test").rglob("*.png"))
    for path in images:
        s3.upload_file(str(path), BUCKET, f"line1/{path.relative_to(demo_root / 'tile' / 'test').as_posix()}")
    s3.put_object(Bucket=BUCKET, Key="line1/good/broken.png", Body=images[0].read_bytes()[:200])
    return {"source": f"s3://{BUCKET}/line1", "images": images, "root": demo_root / "tile" / "test"}


def step(*argv: str) -> dict:
    from components.cli import run

    return run(["predict", *argv])


def test_batch_scores_equal_adcore_predict_and_resume(line, demo_champion, tmp_path):  # noqa: F811
    from mlflow.tracking import MlflowClient

    out = tmp_path / "out"
    args = (line["source"], str(out), "--model-uri", demo_champion["model_uri"], "--batch-size", "4")
    n = len(line["images"]) + 1

    # interrupted: two batches of four, then stopped; nothing written is lost
    first = step(*args, "--stop-after-batches", "2")
    assert (first["n_images"], first["n_scored_now"], first["complete"]) == (n, 8, False)
    assert len(list((out / ".parts").rglob("*.jsonl"))) == 2

    # resumed: the rest only
    second = step(*args)
    assert (second["n_skipped"], second["n_scored_now"], second["complete"]) == (8, n - 8, True)
    summary = json.loads((out / "summary.json").read_text())
    assert summary == second
    print("batch summary:", json.dumps(summary, indent=1))

    records = {r["path"]: r for r in map(json.loads, (out / "scores.jsonl").read_text().splitlines())}
    assert "unreadable image" in records["good/broken.png"]["error"] and second["n_errors"] == 1
    assert records["good/broken.png"]["error"].startswith(f"s3://{BUCKET}/line1/good/broken.png: ")
    expected = adcore_predict(demo_champion["model_dir"], line["images"], tmp_path / "pred")
    for want in expected:
        got = records[Path(want["path"]).relative_to(line["root"]).as_posix()]
        assert got["score"] == pytest.approx(want["score"], rel=1e-6)
        assert (got["decision"], got["threshold"]) == (want["decision"], want["threshold"])
    flagged = {rel for rel, r in records.items() if r["decision"] == "defective"}
    assert 0 < len(flagged) < n - 1 and second["n_defective"] == len(flagged)
    overlays = {p.relative_to(out / "overlays").with_suffix(".png").as_posix()
                for p in (out / "overlays").rglob("*.png")}
    assert overlays == flagged

    # idempotent: the same model version scores nothing again and writes the same scores
    before = (out / "scores.jsonl").read_bytes()
    third = step(*args)
    assert (third["n_skipped"], third["n_scored_now"]) == (n, 0) and (out / "scores.jsonl").read_bytes() == before

    # the threshold overridden per call: decisions change without scoring again
    strict = step(*args, "--threshold", "1e9")
    assert (strict["n_scored_now"], strict["n_defective"], strict["threshold_source"]) == (0, 0, "override")

    run = MlflowClient().get_run(second["run_id"])
    assert run.info.status == "FINISHED" and run.data.metrics["n_images"] == n
    assert run.data.params["model"] == f"models:/{demo_champion['name']}/1"
    logged = {a.path for a in MlflowClient().list_artifacts(second["run_id"], "batch")}
    assert {"batch/scores.jsonl", "batch/summary.json", "batch/overlays"} <= logged


def _parts_written(parts: Path) -> int:
    """Finished part files so far; the step's model download renames folders under ``parts`` while we look."""
    try:
        return len(list(parts.rglob("*.jsonl")))
    except FileNotFoundError:
        return 0


def test_killed_mid_run_resumes_where_it_stopped(line, demo_champion, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    args = [line["source"], str(out), "--model-uri", demo_champion["model_uri"], "--batch-size", "1", "--no-track"]
    proc = subprocess.Popen([sys.executable, "-m", "components", "predict", *args], env=os.environ.copy(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    parts = out / ".parts"
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline and _parts_written(parts) < 2:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    done = len(list(parts.rglob("*.jsonl")))
    assert done >= 2 and not (out / "summary.json").exists()
    resumed = step(*args)
    assert resumed["n_skipped"] == done and resumed["n_scored_now"] == resumed["n_images"] - done
    assert resumed["complete"]


def test_bad_model_uri_and_threshold_are_one_line_errors(line, tmp_path, capsys):
    from components.cli import main

    assert main(["predict", line["source"], str(tmp_path), "--model-uri", "runs:/abc/model"]) == 2
    assert capsys.readouterr().err.strip() == ("error: model URI 'runs:/abc/model': expected "
                                                "models:/<name>@<alias> or models:/<name>/<version>")
    assert main(["predict", line["source"], str(tmp_path), "--model-uri", "models:/nosuch@champion"]) == 2
    assert "model URI models:/nosuch@champion: not found in the registry" in capsys.readouterr().err


def test_pipeline_compiles_not_stale_with_secrets_and_retries(tmp_path):
    pytest.importorskip("kfp.kubernetes")
    from pipelines.batch_predict import COMPILED, compile_batch_pipeline

    fresh = compile_batch_pipeline(tmp_path / "batch_predict.yaml")
    assert fresh.read_text() == COMPILED.read_text(), (
        "pipelines/compiled/batch_predict.yaml is stale: run `python -m pipelines.compile` and commit the result")
    spec, platform = list(yaml.safe_load_all(COMPILED.read_text()))
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {"source", "model_uri", "threshold", "batch_size", "work_dir"} <= set(params)
    assert params["model_uri"]["defaultValue"].endswith("@champion")
    task = spec["root"]["dag"]["tasks"]["batch-predict-op"]
    assert task["retryPolicy"]["maxRetryCount"] == 3 and not task.get("cachingOptions", {}).get("enableCache")
    executor = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-batch-predict-op"]
    assert {s["secretName"] for s in executor["secretAsEnv"]} == {"adcore-s3", "adcore-mlflow"}
    assert executor["podMetadata"]["labels"] == {"adcore.io/role": "pipeline"}  # admitted by the network policies


@pytest.mark.slow
def test_pipeline_runs_under_kfp_local(line, demo_champion, tmp_path, monkeypatch):  # noqa: F811
    local = pytest.importorskip("kfp.local")
    from pipelines.batch_predict import build_pipeline

    monkeypatch.chdir(tmp_path)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    work = tmp_path / "work"
    task = build_pipeline()(source=line["source"], model_uri=demo_champion["model_uri"], batch_size=8,
                            work_dir=str(work))
    summary = json.loads((work / "summary.json").read_text())
    assert summary["complete"] and summary["n_images"] == len(line["images"]) + 1
    assert task is not None
