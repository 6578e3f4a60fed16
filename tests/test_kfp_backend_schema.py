"""The compiled pipeline stays within the oldest KFP backend it claims (pipelines.training.MIN_BACKEND): its
pipeline spec and Kubernetes platform spec parse, with no unknown field, with the protobuf schemas of that backend's
release (kfp-pipeline-spec and kfp-kubernetes of the same version), as the backend's driver parses them. The
--legacy-backend compile parses with the schemas of the release before, which rejects the default compile.

The schema packages live outside site-packages (they would replace the SDK's own): .ci/run installs them with
``pip install --no-deps --target .venv/kfp-schema/<version> kfp-pipeline-spec==<version> kfp-kubernetes==<version>``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("kfp")

from pipelines.backend_check import check_compiled  # noqa: E402
from pipelines.compile import COMPILED, compile_pipeline  # noqa: E402
from pipelines.training import MIN_BACKEND, MIN_BACKEND_WITHOUT_OPTIONAL_SECRETS, ClusterSettings  # noqa: E402

SCHEMAS = Path(os.environ.get("ADCORE_KFP_SCHEMA_DIR", Path(__file__).resolve().parents[1] / ".venv" / "kfp-schema"))


def _schema(version: str) -> Path:
    folder = SCHEMAS / version
    if not (folder / "kfp" / "kubernetes" / "kubernetes_executor_config_pb2.py").is_file():
        pytest.skip(f"KFP {version} schema packages not installed at {folder} (.ci/run installs them: pip install "
                    f"--no-deps --target {folder} kfp-pipeline-spec=={version} kfp-kubernetes=={version})")
    return folder


def test_compiled_pipeline_parses_with_the_minimum_backend_schemas():
    result = check_compiled(COMPILED, _schema(MIN_BACKEND))
    assert result["executors"] == 10
    assert result["errors"] == []


def test_legacy_compile_parses_with_the_release_before_and_the_default_does_not(tmp_path):
    older = _schema(MIN_BACKEND_WITHOUT_OPTIONAL_SECRETS)
    legacy = compile_pipeline(tmp_path / "legacy.yaml", settings=ClusterSettings(optional_secrets=False))
    assert check_compiled(legacy, older)["errors"] == []
    # the check is not vacuous: the default compile uses SecretAsEnv.optional, unknown to that release
    errors = check_compiled(COMPILED, older)["errors"]
    assert errors and all('no field named "optional"' in e for e in errors)
