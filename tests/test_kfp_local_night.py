"""The nightly pipeline with kfp.local, as a shared cluster runs it: the exit handler posts the night's summary to a
webhook (a real HTTP server on 127.0.0.1), an unchanged night is served from the cache, a failed night is reported,
and a train killed mid-way resumes from the checkpoint in the object store (a moto S3 server on 127.0.0.1) to the
same model as an uninterrupted run. One category and tiny settings: each kfp.local run takes seconds per step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytest.importorskip("kfp.local")
pytest.importorskip("mlflow")

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.image_size=64", "data.crop_size=null", "method.patchcore.coreset_ratio=0.25",
        "evaluation.max_overlays=1"]
# FRAD trains epochs over cached frozen-backbone features; random weights keep it offline. Enough epochs that the
# kill lands between two of them.
FRAD = ["backbone.weights=random", "data.image_size=64", "data.crop_size=null", "method.frad.epochs=12",
        "method.frad.channels=16", "method.frad.batch_size=8", "evaluation.max_overlays=1"]


@pytest.fixture
def webhook():
    """A webhook receiver on 127.0.0.1: every JSON body POSTed to it, in order."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hooks/adcore", received
    server.shutdown()
    server.server_close()


@pytest.fixture
def night_env(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root (./mlruns) lands in tmp
    return uri


@pytest.mark.slow
@pytest.mark.timeout(1200)  # three kfp.local nights: about 1 minute on 2 idle cores, far more on a loaded machine
def test_nights_notify_the_webhook_and_an_unchanged_night_is_cached(demo_root, tmp_path, night_env, webhook,
                                                                   monkeypatch):
    from mlflow.tracking import MlflowClient

    from pipelines.local_run import run_local

    url, received = webhook
    monkeypatch.setenv("ADCORE_WEBHOOK_URL", url)  # in a pod: from the Secret adcore-webhook
    kwargs = {"workdir": tmp_path / "kfp", "overrides": TINY, "experiment": "nightly", "enable_caching": True}

    first = run_local(str(demo_root), ["tile"], ["patchcore"], **kwargs)
    assert "| tile | patchcore |" in first["markdown"]
    second = run_local(str(demo_root), ["tile"], ["patchcore"], **kwargs)
    failed = run_local(str(demo_root), ["no-such-category"], ["patchcore"], raise_on_error=False, **kwargs)
    print("\nwebhook payloads received:\n" + "\n".join(json.dumps(p, indent=1) for p in received))
    print(f"kfp.local nights: {first['seconds']:.1f} s, cached {second['seconds']:.1f} s, "
          f"failed {failed['seconds']:.1f} s")

    assert [p["state"] for p in received] == ["SUCCEEDED", "SUCCEEDED", "FAILED"]
    one, two, three = received
    assert [(p["category"], p["method"], p["version"]) for p in one["promoted"]] == [("tile", "patchcore", "1")]
    assert one["failed_tasks"] == [] and "promoted: tile/patchcore v1" in one["text"]
    # the unchanged night: nothing retrained, the same version is reported as unchanged, nothing promoted
    assert two["promoted"] == [] and [r["decision"] for r in two["registered"]] == ["unchanged"]
    assert [r["version"] for r in two["registered"]] == ["1"]
    assert not list(Path(second["run_dir"]).rglob("train-op")), "train ran again on an unchanged night"
    assert not list(Path(second["run_dir"]).rglob("fetch-op")), "fetch ran again on an unchanged night"
    client = MlflowClient(tracking_uri=night_env)
    run_id = one["promoted"][0]["run_id"]
    assert len(client.get_metric_history(run_id, "train_seconds")) == 1
    # the failed night: reported with the failed task, no summary table
    assert three["failed_tasks"] and three["failed_tasks"][0]["task"] and three["registered"] == []
    assert "FAILED" in three["text"] and failed["markdown"] == ""


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_killed_train_resumes_from_the_object_store_to_the_same_model(demo_root, tmp_path, night_env, s3_endpoint,
                                                                      monkeypatch):
    import boto3
    import torch

    from adcore.io import load_tensors
    from pipelines.local_run import run_local

    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
             "AWS_ENDPOINT_URL": s3_endpoint}
    for key, value in creds.items():
        monkeypatch.setenv(key, value)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="adcore-ckpt")
    workdir = tmp_path / "kfp"
    args = dict(workdir=str(workdir), overrides=FRAD, experiment="resume", enable_caching=True,
                checkpoint_root="s3://adcore-ckpt/checkpoints")

    # A night whose train pod is killed (SIGKILL: no clean-up) once an epoch's checkpoint reached the store.
    code = ("import json, sys; from pipelines.local_run import run_local; "
            f"run_local({str(demo_root)!r}, ['tile'], ['frad'], **json.loads(sys.argv[1]))")
    child = subprocess.Popen([sys.executable, "-c", code, json.dumps(args)], cwd=ROOT, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    killed_at = None
    deadline = time.monotonic() + 300
    while killed_at is None and time.monotonic() < deadline and child.poll() is None:
        for obj in s3.list_objects_v2(Bucket="adcore-ckpt").get("Contents", []):
            if obj["Key"].endswith("checkpoint.json"):
                killed_at = json.loads(s3.get_object(Bucket="adcore-ckpt", Key=obj["Key"])["Body"].read())["epoch"]
                os.killpg(child.pid, signal.SIGKILL)
                break
        time.sleep(0.05)
    child.wait(timeout=60)
    assert killed_at is not None, "the train step finished (or failed) before a checkpoint reached the store"
    (killed_run,) = workdir.glob("kfp-root/adcore-training-*")
    assert not list(killed_run.rglob("train-op/model/model.json")), "the killed train saved a model"

    # The retried night: fetch and features come from the cache, train restores the stored checkpoint.
    resumed = run_local(str(demo_root), ["tile"], ["frad"], **{**args, "workdir": workdir})
    run_dir = Path(resumed["run_dir"])
    (train_out,) = run_dir.rglob("train-op/executor_output.json")
    meta = json.loads(train_out.read_text())["artifacts"]["model"]["artifacts"][0]["metadata"]
    assert killed_at <= meta["resumed_from_epoch"] < 11, meta
    assert not s3.list_objects_v2(Bucket="adcore-ckpt").get("Contents"), "the finished train left its checkpoint"

    # The same night uninterrupted (its own checkpoint root, so train runs afresh over the same cached dataset and
    # feature cache): the resumed model must be identical to it.
    reference = run_local(str(demo_root), ["tile"], ["frad"],
                          **{**args, "workdir": workdir, "checkpoint_root": "s3://adcore-ckpt/reference"})
    (ref_out,) = Path(reference["run_dir"]).rglob("train-op/executor_output.json")
    ref_meta = json.loads(ref_out.read_text())["artifacts"]["model"]["artifacts"][0]["metadata"]
    assert ref_meta["resumed_from_epoch"] == -1
    (reference_model,) = Path(reference["run_dir"]).rglob("train-op/model/model.safetensors")
    a = load_tensors(reference_model)
    (resumed_model,) = run_dir.rglob("train-op/model/model.safetensors")
    b = load_tensors(resumed_model)
    assert a.keys() == b.keys() and any(k.startswith("network.") for k in a)
    max_diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].numel())
    print(f"\nkilled after epoch {killed_at}, resumed from epoch {meta['resumed_from_epoch']:.0f}; "
          f"{len(a)} tensors, max |resumed - uninterrupted| = {max_diff:.3g}")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=lambda m, key=key: f"{key}: {m}")
