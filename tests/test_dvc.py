"""``dvc repro`` of the repository's dvc.yaml in a temporary git repository, on the demo data with tiny settings:
every stage runs, ``dvc metrics show`` lists every result, and changing one method's parameter re-runs only that
method's stages. The wall time of the first repro is printed (pytest -s shows it)."""

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
    return params


def _run(args: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def _ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.mark.slow
def test_dvc_repro_metrics_and_per_method_reruns(tmp_path):
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
                "evaluate@tile-patchcore", "evaluate@tile-cfa", "report"}
    assert _ran(first) == expected, first

    # Every result, per evaluation and in the report, through `dvc metrics show`.
    shown = json.loads(_run([str(DVC), "metrics", "show", "--json"], repo, env))
    files = {path: data["data"] for rev in shown.values() for path, data in rev["data"].items()}
    for method in ("patchcore", "cfa"):
        metrics = files[f"eval/tile/{method}/metrics.json"]
        assert 0.0 <= metrics["image_auroc"] <= 1.0
        assert files["reports/metrics.json"]["tile"][method]["image_auroc"] == metrics["image_auroc"]
    assert "| tile | cfa |" in (repo / "reports/summary.md").read_text()
    assert (repo / "mlflow.db").is_file()  # logged to the local MLflow, no server needed

    # Nothing changed: nothing runs.
    assert not _ran(_run([str(DVC), "repro"], repo, env))

    # One method's parameter: only that method's stages (and the report) re-run.
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["method"]["cfa"]["epochs"] = 2
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = _run([str(DVC), "status"], repo, env)
    assert "train@tile-cfa" in status and "train@tile-patchcore" not in status, status
    second = _run([str(DVC), "repro"], repo, env)
    assert _ran(second) == {"train@tile-cfa", "evaluate@tile-cfa", "report"}, second
