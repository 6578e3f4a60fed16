"""``python -m pipelines.backend_check --schema-dir DIR``: does the compiled pipeline stay within an older backend?

A KFP backend's driver parses the pipeline spec and the Kubernetes platform spec with the protobuf schema it was
built with, and rejects fields it does not know. This parses ``compiled/training.yaml`` strictly (no unknown field)
with the schema packages of that backend: ``kfp-pipeline-spec==V`` and ``kfp-kubernetes==V`` installed with
``pip install --no-deps --target DIR`` (outside site-packages: they would replace the SDK's own). The check runs in
a child interpreter that never imports the installed kfp, whose protobuf registrations would clash.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from adcore.errors import ConfigError

# Child program: kfp is a stand-in package whose only path is the schema folder.
_CHILD = r"""
import importlib.util, json, sys, types
import yaml
from google.protobuf import json_format
schema, compiled = sys.argv[1], sys.argv[2]
kfp = types.ModuleType("kfp"); kfp.__path__ = [schema + "/kfp"]; sys.modules["kfp"] = kfp
from kfp.pipeline_spec import pipeline_spec_pb2 as ps
spec = importlib.util.spec_from_file_location("kfp.kubernetes.kubernetes_executor_config_pb2",
                                              schema + "/kfp/kubernetes/kubernetes_executor_config_pb2.py")
k8s = importlib.util.module_from_spec(spec); spec.loader.exec_module(k8s)
docs = list(yaml.safe_load_all(open(compiled)))
errors = []
try:
    json_format.ParseDict(docs[0], ps.PipelineSpec())
except json_format.ParseError as exc:
    errors.append(f"pipeline spec: {exc}")
executors = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if len(docs) > 1 else {}
for name, config in sorted(executors.items()):
    try:
        json_format.ParseDict(config, k8s.KubernetesExecutorConfig())
    except json_format.ParseError as exc:
        errors.append(f"platform spec {name}: {exc}")
print(json.dumps({"errors": errors, "executors": len(executors)}))
"""


def check_compiled(compiled: str | Path, schema_dir: str | Path) -> dict:
    """``{"errors": [...], "executors": n}``: every field the schema in ``schema_dir`` does not know, by place."""
    schema = Path(schema_dir)
    for part in ("pipeline_spec/pipeline_spec_pb2.py", "kubernetes/kubernetes_executor_config_pb2.py"):
        if not (schema / "kfp" / part).is_file():
            raise ConfigError(f"{schema}: no kfp/{part}; install the schema packages there with pip install "
                              "--no-deps --target DIR kfp-pipeline-spec==V kfp-kubernetes==V")
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(schema), str(compiled)], capture_output=True,
                          text=True, timeout=120)
    if proc.returncode != 0:
        raise ConfigError(f"{schema}: the schema check could not run: {proc.stderr.strip().splitlines()[-1]}")
    return json.loads(proc.stdout)


def main(argv: list[str] | None = None) -> int:
    from pipelines.compile import COMPILED

    parser = argparse.ArgumentParser(prog="python -m pipelines.backend_check", description=__doc__.splitlines()[0])
    parser.add_argument("--schema-dir", required=True, help="folder holding kfp/pipeline_spec and kfp/kubernetes")
    parser.add_argument("--compiled", default=str(COMPILED))
    args = parser.parse_args(argv)
    try:
        result = check_compiled(args.compiled, args.schema_dir)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for error in result["errors"]:
        print(error)
    print(f"{args.compiled}: {result['executors']} executors, {len(result['errors'])} unknown-field errors "
          f"against {args.schema_dir}")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
