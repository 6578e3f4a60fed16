"""MLflow as infra/k8s runs it: a real ``mlflow server --app-name basic-auth`` on 127.0.0.1 with the committed
basic_auth.ini (only its database moved to sqlite) and the committed user bootstrap script. Only the pipeline user
may move the champion alias that serving trusts; any other user reads; no user, no access."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

pytest.importorskip("mlflow")

BASE = Path(__file__).resolve().parents[1] / "infra" / "k8s" / "base"
ADMIN = ("admin", "admin-password-for-tests")
PIPELINE = ("adcore-pipeline", "pipeline-password-for-tests")


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlflow-auth")
    ini = (BASE / "basic_auth.ini").read_text().replace(
        "database_uri = postgresql://postgres:5432/mlflow_auth", f"database_uri = sqlite:///{tmp / 'auth.db'}")
    assert f"sqlite:///{tmp / 'auth.db'}" in ini
    (tmp / "basic_auth.ini").write_text(ini)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(tmp / "basic_auth.ini"),
           "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN[0], "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1],
           "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret-key"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth",
                             "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}", "--default-artifact-root",
                             str(tmp / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / "server.log", "w"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if requests.get(f"{url}/health", timeout=2).ok:
                break
        except requests.RequestException:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow basic-auth server did not start:\n" + (tmp / "server.log").read_text()[-3000:])
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def _bootstrap(url: str) -> str:
    env = {**os.environ, "MLFLOW_URL": url, "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN[0],
           "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1], "MLFLOW_TRACKING_USERNAME": PIPELINE[0],
           "MLFLOW_TRACKING_PASSWORD": PIPELINE[1]}
    proc = subprocess.run([sys.executable, str(BASE / "create-mlflow-users.py")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert PIPELINE[1] not in proc.stdout + proc.stderr and ADMIN[1] not in proc.stdout + proc.stderr
    return proc.stdout


def _client(url: str, user: tuple[str, str], monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", user[1])
    return MlflowClient(tracking_uri=url, registry_uri=url)


@pytest.mark.slow
def test_only_the_pipeline_user_moves_the_champion_alias(auth_server, monkeypatch):
    from mlflow.exceptions import MlflowException

    url = auth_server
    assert "created MLflow user adcore-pipeline" in _bootstrap(url)
    assert "exists; password set from the Secret" in _bootstrap(url)  # the Job runs after every apply

    pipeline = _client(url, PIPELINE, monkeypatch)
    pipeline.create_registered_model("adcore-tile-patchcore")
    version = pipeline.create_model_version("adcore-tile-patchcore", source="s3://models/tile/patchcore/v1")
    pipeline.set_registered_model_alias("adcore-tile-patchcore", "champion", version.version)

    # another authenticated user (a serving pod, a colleague): reads the champion, cannot move it
    viewer_login = ("viewer", "viewer-password-12+")
    r = requests.post(f"{url}/api/2.0/mlflow/users/create",
                      json={"username": viewer_login[0], "password": viewer_login[1]}, auth=ADMIN, timeout=30)
    assert r.ok, r.text
    viewer = _client(url, viewer_login, monkeypatch)
    assert viewer.get_model_version_by_alias("adcore-tile-patchcore", "champion").version == version.version
    with pytest.raises(MlflowException, match="PERMISSION_DENIED|Permission denied"):
        viewer.set_registered_model_alias("adcore-tile-patchcore", "champion", version.version)
    with pytest.raises(MlflowException, match="PERMISSION_DENIED|Permission denied"):
        viewer.delete_registered_model_alias("adcore-tile-patchcore", "champion")

    # no credentials, wrong password: nothing, not even reads
    assert requests.get(f"{url}/api/2.0/mlflow/registered-models/alias",
                        params={"name": "adcore-tile-patchcore", "alias": "champion"}, timeout=10).status_code == 401
    assert requests.get(f"{url}/api/2.0/mlflow/registered-models/alias",
                        params={"name": "adcore-tile-patchcore", "alias": "champion"}, auth=(PIPELINE[0], "wrong"),
                        timeout=10).status_code == 401
