"""The nightly job end to end against a real `mlflow server` (sqlite backend, artifacts in S3) and a real S3
endpoint (moto's server on 127.0.0.1), both started here: fetch -> features -> train -> evaluate -> register ->
promote, a worse model that must not be promoted, the champion served through pyfunc, and the fault cases.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

DATA_BUCKET = "adcore-e2e-data"
ARTIFACT_BUCKET = "adcore-e2e-mlflow"
TINY = ["data.image_size=64", "data.batch_size=8"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(s3_endpoint, tmp_path_factory):
    """`mlflow server` with a sqlite backend and --artifacts-destination on the S3 endpoint; torn down at the end."""
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="test",
                 aws_secret_access_key="test").create_bucket(Bucket=ARTIFACT_BUCKET)
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    env = {**os.environ, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint, "AWS_ENDPOINT_URL": s3_endpoint,
           "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", f"s3://{ARTIFACT_BUCKET}/mlflow", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    ready = []

    def wait() -> str:
        """Block until the server answers (it boots while the test prepares data and trains)."""
        deadline = time.time() + 120
        while not ready:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2).close()
                ready.append(True)
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    proc.kill()
                    pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-3000:]}")
                time.sleep(0.5)
        return uri

    yield uri, wait
    os.killpg(proc.pid, 15)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
    log.close()


@pytest.fixture
def env(s3_endpoint, mlflow_server, monkeypatch, tmp_path):
    """Client environment: S3 credentials for the data, the tracking server for MLflow (maybe still booting)."""
    uri, wait = mlflow_server
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "adcore-e2e")
    monkeypatch.setenv("ADCORE_DEVICE", "cpu")
    return {"s3": s3_endpoint, "mlflow": uri, "wait": wait}


def _upload(client, folder: Path, bucket: str, prefix: str) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")


def test_nightly_job_end_to_end(env, tmp_path):
    import boto3
    import mlflow
    from mlflow import MlflowClient

    from adcore.data.demo import generate_demo_dataset
    from adcore.data.mvtec import read_image
    from adcore.methods import load_model
    from components.evaluate import evaluate
    from components.features import extract_features
    from components.fetch import fetch_dataset
    from components.register import register_model
    from components.train import train

    demo = generate_demo_dataset(tmp_path / "demo", categories=("tile",), n_train=12, n_test_good=4,
                                 n_test_defect=2, image_size=64, seed=0)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=DATA_BUCKET)
    _upload(s3, demo, DATA_BUCKET, "demo")

    data = tmp_path / "data"
    fetched = fetch_dataset(f"s3://{DATA_BUCKET}/demo", str(data))
    assert fetched["categories"] == ["tile"] and fetched["downloaded"] == fetched["files"]
    cache = tmp_path / "cache"
    feats = extract_features(str(data), "tile", str(cache), method="patchcore", overrides=TINY)
    assert feats["n_images"] > 0 and (cache / feats["key"] / "meta.json").is_file()

    env["wait"]()
    results = {}
    for method, extra in (("patchcore", []), ("frad", ["method.frad.epochs=1", "method.frad.channels=16"])):
        tr = train(method, str(data), "tile", str(tmp_path / "models" / method), overrides=TINY + extra,
                   cache_dir=str(cache))
        if method == "patchcore":  # training read the features the features step cached
            assert [p.name for p in cache.iterdir() if not p.name.startswith(".")] == [feats["key"]]
        ev = evaluate(tr["model_dir"], str(data), "tile", str(tmp_path / "eval" / method))
        assert ev["run_id"] == tr["run_id"]  # the evaluation found the training run by the model's hash
        reg = register_model(tr["model_dir"], ev["metrics_json"], "tile", method, prefix="e2e", data_root=str(data))
        assert reg["decision"] == "promoted" and reg["version"] == 1, reg
        assert reg["reasons"].startswith("no champion yet: the first model with image_auroc=")
        results[method] = (tr, ev, reg)

    client = MlflowClient()
    run = client.get_run(results["patchcore"][0]["run_id"])
    assert run.data.params["data.image_size"] == "64" and run.data.params["method_name"] == "patchcore"
    assert "env.torch" in run.data.params and run.data.tags["device"] == "cpu"
    assert {"image_auroc", "pixel_aupro", "train_seconds", "ms_per_image"} <= set(run.data.metrics)
    frad_run = results["frad"][0]["run_id"]
    assert [m.step for m in client.get_metric_history(frad_run, "train.loss")] == [0]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/roc.png", "evaluation/metrics.json", "evaluation/scores.csv"} <= artifacts
    champion = client.get_model_version_by_alias("e2e-tile-patchcore", "champion")
    assert champion.version == "1" and champion.tags["promotion.decision"] == "promoted"

    # a deliberately worse model (random backbone weights) is registered as challenger but not promoted
    tr = train("patchcore", str(data), "tile", str(tmp_path / "models" / "worse"),
               overrides=TINY + ["backbone.weights=random"], cache_dir=str(cache))
    ev = evaluate(tr["model_dir"], str(data), "tile", str(tmp_path / "eval" / "worse"))
    reg = register_model(tr["model_dir"], ev["metrics_json"], "tile", "patchcore", prefix="e2e")
    assert reg["decision"] == "rejected" and reg["version"] == 2 and reg["champion_version"] == 1, reg
    assert "does not beat champion v1's" in reg["reasons"]
    assert client.get_model_version_by_alias("e2e-tile-patchcore", "champion").version == "1"
    assert client.get_model_version_by_alias("e2e-tile-patchcore", "challenger").version == "2"
    v2 = client.get_model_version("e2e-tile-patchcore", "2")
    assert v2.tags["promotion.decision"] == "rejected" and v2.tags["promotion.reasons"] == reg["reasons"]

    # re-running the step is harmless: no new version, same decision, champion untouched
    again = register_model(tr["model_dir"], ev["metrics_json"], "tile", "patchcore", prefix="e2e")
    assert (again["version"], again["decision"]) == (2, "rejected")
    first = results["patchcore"]
    same = register_model(first[0]["model_dir"], first[1]["metrics_json"], "tile", "patchcore", prefix="e2e")
    assert (same["version"], same["decision"]) == (1, "unchanged")
    assert len(client.search_model_versions("name = 'e2e-tile-patchcore'")) == 2

    # the champion, served through pyfunc from the registry (artifacts in S3 via the server), on new images
    new = generate_demo_dataset(tmp_path / "new", categories=("tile",), n_train=1, n_test_good=2, n_test_defect=1,
                                image_size=64, seed=7)
    paths = sorted((new / "tile" / "test").rglob("*.png"))
    images = np.stack([read_image(p) for p in paths])
    served = mlflow.pyfunc.load_model("models:/e2e-tile-patchcore@champion")
    out = served.predict(images)
    assert out["scores"].shape == (len(paths),) and out["maps"].shape == (len(paths), 64, 64)
    local = load_model(first[0]["model_dir"], device="cpu")
    import torch

    direct = local.predict(torch.stack([local.make_transform()(im) for im in images]))
    np.testing.assert_allclose(out["scores"], direct.scores.numpy(), rtol=1e-5, atol=1e-6)
    norm = served.predict(images, params={"normalize": True})
    assert np.all(np.isfinite(norm["scores"]))


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    from components.cli import main

    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err.strip().splitlines()[-1] if code else ""


def test_fault_messages(env, tmp_path, monkeypatch, capsys):
    import boto3

    from adcore.data.demo import generate_demo_dataset
    from components.register import register_model
    from components.tracking import TrackingError
    from components.train import train

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="adcore-e2e-faults")
    demo = generate_demo_dataset(tmp_path / "demo", categories=("tile",), n_train=6, n_test_good=2,
                                 n_test_defect=1, image_size=64, seed=0)
    _upload(s3, demo, "adcore-e2e-faults", "ok")

    code, err = _cli(["fetch", "s3://adcore-e2e-nope/data", str(tmp_path / "a")], capsys)
    assert code == 2 and err == (f"error: s3://adcore-e2e-nope/data: bucket 'adcore-e2e-nope' does not exist at "
                                 f"{env['s3']} (NoSuchBucket); check the bucket name and AWS_ENDPOINT_URL")

    _upload(s3, demo, "adcore-e2e-faults", "corrupt")
    s3.put_object(Bucket="adcore-e2e-faults", Key="corrupt/tile/train/good/002.png", Body=b"\x89PNG\r\n\x1a\nbroken")
    code, err = _cli(["fetch", "s3://adcore-e2e-faults/corrupt", str(tmp_path / "b")], capsys)
    assert code == 2 and "tile/train/good/002.png: unreadable image" in err
    assert err.endswith("[fetched from s3://adcore-e2e-faults/corrupt/tile/train/good/002.png]")

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("../../../tmp/evil.png")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    s3.put_object(Bucket="adcore-e2e-faults", Key="unsafe/tile.tar.gz", Body=buf.getvalue())
    code, err = _cli(["fetch", "s3://adcore-e2e-faults/unsafe", str(tmp_path / "c")], capsys)
    assert code == 2 and err == ("error: s3://adcore-e2e-faults/unsafe/tile.tar.gz: unsafe archive member: refusing "
                                 "'../../../tmp/evil.png': '..' in the path would write outside the output folder")

    # tracking server down: the model is written first, then the step fails naming the URI
    data = tmp_path / "data"
    code, _ = _cli(["fetch", "s3://adcore-e2e-faults/ok", str(data)], capsys)
    assert code == 0
    down = f"http://127.0.0.1:{_free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", down)
    model_dir = tmp_path / "model"
    with pytest.raises(TrackingError) as exc:
        train("patchcore", str(data), "tile", str(model_dir),
              overrides=["data.image_size=32", "backbone.weights=random"])
    assert str(exc.value).startswith(f"MLflow tracking server {down} cannot be reached (")
    assert str(exc.value).endswith(f"; the model files are safe in {model_dir}; start the server or set "
                                   "MLFLOW_TRACKING_URI, then re-run this step")
    from adcore.methods import load_model

    assert load_model(model_dir).name == "patchcore"
    metrics = tmp_path / "metrics.json"
    metrics.write_text('{"image_auroc": 0.9}')
    with pytest.raises(TrackingError, match=f"MLflow tracking server {down} cannot be reached"):
        register_model(str(model_dir), str(metrics), "tile", "patchcore", prefix="e2e-down")

    # a registry with no champion yet: the first model is promoted, unless its metric is missing
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["wait"]())
    metrics.write_text('{"pixel_auroc": 0.9}')
    reg = register_model(str(model_dir), str(metrics), "tile", "patchcore", prefix="e2e-empty")
    assert reg["decision"] == "rejected" and reg["champion_version"] is None
    assert reg["reasons"] == "challenger has no image_auroc: a missing metric never promotes"

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    code, err = _cli(["fetch", "s3://adcore-e2e-faults/ok", str(tmp_path / "d")], capsys)
    assert code == 2 and err == ("error: S3: no credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                                 "(and AWS_ENDPOINT_URL for MinIO or another S3-compatible store), or configure "
                                 "another boto3 credential source")
