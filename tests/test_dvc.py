"""``dvc repro`` of the repository's dvc.yaml in a temporary git repository, on the demo data with tiny settings:
every stage runs (register included), ``dvc metrics show`` lists every result, MLflow holds one parent run per
repro with the model runs as children, changing one method's parameter re-runs only that method's stages, the
evaluation settings retrain nothing, a new method reuses the features, and ``dvc push`` / ``dvc pull`` of the
models round-trips through the example remote on a local S3 endpoint (moto). The wall time of the first repro is
printed (pytest -s shows it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DVC = Path(sys.executable).with_name("dvc")
pytestmark = pytest.mark.skipif(not DVC.exists() or shutil.which("git") is None, reason="needs dvc and git")


def _tiny_params() -> dict:
    """The repository's params.yaml, shrunk: one category, 64 px demo images, one CFA epoch."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["categories"] = ["tile"]
    params["methods"] = ["patchcore", "cfa"]
    params["demo"].update({"categories": ["tile"], "n_train": 12, "n_test_good": 4, "n_test_defect": 2,
                           "image_size": 64})
    params["data"] = {"image_size": 64, "crop_size": None}
    params["evaluation"] = {"max_overlays": 1}
    params["method"] = {"patchcore": {"coreset_ratio": 0.25}, "cfa": {"epochs": 1}}
    params["register"]["resamples"] = 500
    return params


def _run(args: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def _ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.mark.slow
@pytest.mark.timeout(1800)  # four `dvc repro` rounds and a push/pull: over the 600 s default on busy cores
def test_dvc_repro_metrics_and_per_method_reruns(tmp_path, s3_endpoint):
    repo = tmp_path / "repo"
    (repo / ".dvc").mkdir(parents=True)
    # What a fresh clone has: the DVC project files as committed (no `dvc init`), dvc.yaml and params.yaml.
    for name in (".dvc/config", ".dvc/.gitignore", ".dvcignore", "dvc.yaml"):
        shutil.copy(ROOT / name, repo / name)
    (repo / "params.yaml").write_text(yaml.safe_dump(_tiny_params(), sort_keys=False))
    env = {**os.environ, "PATH": f"{DVC.parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DVC_NO_ANALYTICS": "1",
           "ADCORE_NO_PROGRESS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the default: sqlite:///mlflow.db in the repository
    _run(["git", "init", "-q"], repo, env)

    start = time.perf_counter()
    first = _run([str(DVC), "repro"], repo, env)
    wall = time.perf_counter() - start
    print(f"\ndvc repro wall time: {wall:.1f} s (1 category x 2 methods, 64 px demo data)")
    expected = {"demo_data", "fetch", "features@tile", "train@tile-patchcore", "train@tile-cfa",
                "evaluate@tile-patchcore", "evaluate@tile-cfa", "register@tile-patchcore", "register@tile-cfa",
                "report"}
    assert _ran(first) == expected, first
    decision = json.loads((repo / "registry/tile/cfa.json").read_text())
    assert decision["name"] == "adcore-tile-cfa" and decision["version"] == 1

    # Every result, per evaluation and in the report, through `dvc metrics show`.
    shown = json.loads(_run([str(DVC), "metrics", "show", "--json"], repo, env))
    files = {path: data["data"] for rev in shown.values() for path, data in rev["data"].items()}
    for method in ("patchcore", "cfa"):
        metrics = files[f"eval/tile/{method}/metrics.json"]
        assert 0.0 <= metrics["image_auroc"] <= 1.0
        assert files["reports/metrics.json"]["tile"][method]["image_auroc"] == metrics["image_auroc"]
    assert "| tile | cfa |" in (repo / "reports/summary.md").read_text()
    assert (repo / "mlflow.db").is_file()  # logged to the local MLflow, no server needed
    from mlflow import MlflowClient

    uri = f"sqlite:///{repo / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name("adcore-dvc")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`adcore.kind` = 'pipeline'")
    assert parent.info.status == "FINISHED" and parent.data.tags["adcore.orchestrator"] == "dvc"
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(c.data.tags["method"] for c in children) == ["cfa", "patchcore"]
    assert {c.info.status for c in children} == {"FINISHED"}
    assert {d.dataset.name for c in children for d in c.inputs.dataset_inputs} == {"dataset"}

    # Nothing changed: nothing runs.
    assert not _ran(_run([str(DVC), "repro"], repo, env))

    # One method's parameter: only that method's stages (and the report) re-run.
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["method"]["cfa"]["epochs"] = 2
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = _run([str(DVC), "status"], repo, env)
    assert "train@tile-cfa" in status and "train@tile-patchcore" not in status, status
    second = _run([str(DVC), "repro"], repo, env)
    assert _ran(second) == {"train@tile-cfa", "evaluate@tile-cfa", "register@tile-cfa", "report"}, second

    # A new method with the same backbone: its own stages only; the features stage is not re-run.
    params["methods"].append("frad")
    params["method"]["frad"] = {"epochs": 1, "channels": 16}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = _run([str(DVC), "repro"], repo, env)
    print("\ndvc repro after adding frad:\n" + "\n".join(line for line in third.splitlines()
                                                    if line.startswith(("Running stage", "Stage "))))
    assert _ran(third) == {"train@tile-frad", "evaluate@tile-frad", "register@tile-frad", "report"}, third

    # The evaluation settings re-evaluate; they retrain nothing.
    params["evaluation"]["max_overlays"] = 2
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = _run([str(DVC), "status"], repo, env)
    assert "evaluate@tile-cfa" in status and "train@" not in status, status

    # The models through the example remote (.dvc/config's local-s3) on a real S3 endpoint, and back.
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="test",
                 aws_secret_access_key="test").create_bucket(Bucket="adcore-dvc")
    for key, value in (("endpointurl", s3_endpoint), ("access_key_id", "test"), ("secret_access_key", "test")):
        _run([str(DVC), "remote", "modify", "--local", "local-s3", key, value], repo, env)
    def model_files() -> dict:  # dvc's own .gitignore files are git's business, not the remote's
        return {p.relative_to(repo): p.read_bytes() for p in sorted((repo / "models").rglob("*"))
                if p.is_file() and p.name != ".gitignore"}

    before = model_files()
    _run([str(DVC), "push", "-r", "local-s3", "train"], repo, env)
    shutil.rmtree(repo / "models")
    shutil.rmtree(repo / ".dvc" / "cache")
    _run([str(DVC), "pull", "-r", "local-s3", "train"], repo, env)
    after = model_files()
    assert after == before and len(before) >= 6  # model.json + tensors of three models
