"""``python -m components <step> --args``: each step is a thin wrapper over the typed function of its module.

Prints the step's result as one JSON object on stdout; an AdcoreError prints one line on stderr and exits 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def _common_tracking(p: argparse.ArgumentParser, *, track: bool = True) -> None:
    if track:
        p.add_argument("--no-track", dest="track", action="store_false", help="do not log to MLflow")
    p.add_argument("--run-id", default="", help="MLflow run to log into (default: found by the model's hash)")
    p.add_argument("--experiment", default="", help="MLflow experiment (default $MLFLOW_EXPERIMENT_NAME or adcore)")
    p.add_argument("--tracking-uri", default="", help="default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db")


def build_parser() -> argparse.ArgumentParser:
    from components.fetch.archives import DEFAULT_MAX_ARCHIVE_BYTES, DEFAULT_MAX_ARCHIVE_RATIO

    parser = argparse.ArgumentParser(prog="python -m components", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)

    p = sub.add_parser("fetch", help="dataset from s3://, a DVC repo path or a folder -> MVTec layout + manifest")
    p.add_argument("source", help="s3://bucket/prefix, a path in --repo, or a local folder")
    p.add_argument("output")
    p.add_argument("--repo", default="", help="git repository (URL or path) holding the DVC-tracked source")
    p.add_argument("--rev", default="", help="git revision for --repo")
    p.add_argument("--category", dest="categories", action="append", help="validate only these (repeatable)")
    p.add_argument("--manifest", default="", help="manifest path (default <output>/manifest.json)")
    p.add_argument("--no-validate", dest="validate", action="store_false")
    p.add_argument("--max-archive-bytes", type=int, default=DEFAULT_MAX_ARCHIVE_BYTES,
                   help="refuse an archive that unpacks to more bytes than this (default %(default)s = 20 GiB)")
    p.add_argument("--max-archive-ratio", type=float, default=DEFAULT_MAX_ARCHIVE_RATIO,
                   help="refuse an archive over 16 MiB that unpacks to more than this many times its own size "
                        "(default %(default)s)")

    p = sub.add_parser("features", help="fill the feature cache of a category")
    p.add_argument("data_root")
    p.add_argument("category")
    p.add_argument("cache_dir")
    p.add_argument("--method", default="patchcore")
    p.add_argument("--profile", default="")
    p.add_argument("--params", default="")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    p = sub.add_parser("train", help="train one method on one category")
    p.add_argument("method")
    p.add_argument("data_root")
    p.add_argument("category")
    p.add_argument("output_dir")
    p.add_argument("--profile", default="")
    p.add_argument("--params", default="")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--seed", type=int, default=-1)
    p.add_argument("--device", default="")
    p.add_argument("--cache-dir", default="")
    p.add_argument("--checkpoint-dir", default="")
    p.add_argument("--resume", action="store_true", help="continue after the last checkpointed epoch")
    p.add_argument("--stop-after-epochs", type=int, default=0)
    _common_tracking(p)

    p = sub.add_parser("evaluate", help="metrics, per-image scores and plots on the test split")
    p.add_argument("model_dir")
    p.add_argument("data_root")
    p.add_argument("category")
    p.add_argument("output_dir")
    p.add_argument("--device", default="")
    p.add_argument("--batch-size", type=int, default=0)
    p.add_argument("--params", default="", help="params.yaml whose `evaluation` section replaces the model's")
    _common_tracking(p)

    p = sub.add_parser("register", help="log as pyfunc, register, alias challenger, maybe promote to champion")
    p.add_argument("model_dir")
    p.add_argument("metrics_json")
    p.add_argument("category")
    p.add_argument("method")
    p.add_argument("--prefix", default="adcore")
    p.add_argument("--metric", default="image_auroc")
    p.add_argument("--margin", type=float, default=0.0,
                   help="the CI lower bound of the paired difference must be above this (components.gate)")
    p.add_argument("--tolerance", type=float, default=0.02, help="largest fall allowed in any other metric")
    p.add_argument("--floor", type=float, default=0.0, help="absolute minimum of the metric (the first model too)")
    p.add_argument("--resamples", type=int, default=2000, help="paired bootstrap resamples (fixed seed)")
    p.add_argument("--mode", choices=["auto", "manual"], default="auto",
                   help="manual: a passing model becomes 'candidate'; a person runs `promote`")
    p.add_argument("--data-root", default="", help="to re-evaluate a champion scored on another test split")
    p.add_argument("--output", default="", help="also write the decision to this JSON file (atomically)")
    _common_tracking(p, track=False)

    p = sub.add_parser("pipeline-summary", help="the summary table on a pipeline run's parent run (dvc's report)")
    p.add_argument("markdown", help="the summary table (markdown)")
    p.add_argument("--file", dest="files", action="append", default=[], help="also attach this file (repeatable)")
    p.add_argument("--rows", default="", help="JSON list of result rows (dvc: reports/results.json) for the metrics "
                   "and the accuracy-vs-time picture")
    p.add_argument("--pipeline-run", default="", help="default $ADCORE_PIPELINE_RUN_ID, else dvc-<UTC time>")
    p.add_argument("--orchestrator", default="dvc")
    p.add_argument("--adopt", action="store_true", help="model runs without a parent become its children")
    p.add_argument("--end", action="store_true", help="the pipeline run is over: the parent ends FINISHED")
    p.add_argument("--experiment", default="", help="MLflow experiment (default $MLFLOW_EXPERIMENT_NAME or adcore)")
    p.add_argument("--tracking-uri", default="", help="default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db")

    p = sub.add_parser("predict", help="batch scoring: a folder or s3:// prefix scored by a registered model")
    p.add_argument("source", help="s3://bucket/prefix or a local folder of images")
    p.add_argument("output_dir")
    p.add_argument("--model-uri", required=True, help="e.g. models:/adcore-tile-patchcore@champion")
    p.add_argument("--threshold", type=float, default=None,
                   help="raw image score above which an image is defective (default: the model's)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--stop-after-batches", type=int, default=0, help="stop after this many batches (resume tests)")
    _common_tracking(p)

    p = sub.add_parser("promote", help="make a registered version the champion by hand (manual mode)")
    p.add_argument("category")
    p.add_argument("method")
    p.add_argument("--version", type=int, required=True)
    p.add_argument("--prefix", default="adcore")
    p.add_argument("--reason", default="", help="recorded on the version")
    p.add_argument("--tracking-uri", default="", help="default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db")

    p = sub.add_parser("rollback", help="move champion back to the version it replaced; records why")
    p.add_argument("category")
    p.add_argument("method")
    p.add_argument("--reason", required=True)
    p.add_argument("--prefix", default="adcore")
    p.add_argument("--tracking-uri", default="", help="default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db")

    p = sub.add_parser("runs-tree", help="print one pipeline run's parent and child runs from the tracking API")
    p.add_argument("--pipeline-run", default="", help="Kubeflow run id / dvc repro id (default: the latest)")
    p.add_argument("--experiment", default="", help="MLflow experiment (default $MLFLOW_EXPERIMENT_NAME or adcore)")
    p.add_argument("--tracking-uri", default="", help="default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db")
    return parser


def run(argv: Sequence[str] | None = None) -> dict:
    args = vars(build_parser().parse_args(argv))
    step = args.pop("step")
    if step == "fetch":
        from components.fetch import fetch_dataset

        return fetch_dataset(args.pop("source"), args.pop("output"), **args)
    if step == "features":
        from components.features import extract_features

        return extract_features(args.pop("data_root"), args.pop("category"), args.pop("cache_dir"), **args)
    if step == "train":
        from components.train import train

        return train(args.pop("method"), args.pop("data_root"), args.pop("category"), args.pop("output_dir"), **args)
    if step == "evaluate":
        from components.evaluate import evaluate

        return evaluate(args.pop("model_dir"), args.pop("data_root"), args.pop("category"), args.pop("output_dir"),
                        **args)
    if step == "predict":
        from components.predict import batch_predict

        return batch_predict(args.pop("source"), args.pop("output_dir"), **args)
    if step == "pipeline-summary":
        import time
        from pathlib import Path

        from components import tracking

        run_name = tracking.pipeline_run_id(args["pipeline_run"]) or time.strftime("dvc-%Y%m%dT%H%M%SZ", time.gmtime())
        rows = json.loads(Path(args["rows"]).read_text()) if args["rows"] else []
        run_id = tracking.log_pipeline_summary(
            run_name, Path(args["markdown"]).read_text(), rows, files=tuple(args["files"]),
            experiment=args["experiment"], uri=args["tracking_uri"], orchestrator=args["orchestrator"],
            adopt=args["adopt"], end=args["end"])
        return {"pipeline_run": run_name, "parent_run_id": run_id}
    if step == "promote":
        from components.register import promote_version

        return promote_version(args.pop("category"), args.pop("method"), **args)
    if step == "rollback":
        from components.register import rollback

        return rollback(args.pop("category"), args.pop("method"), **args)
    if step == "runs-tree":
        from components.runs_tree import format_tree, run_tree

        tree = run_tree(args["pipeline_run"], experiment=args["experiment"], uri=args["tracking_uri"])
        print(format_tree(tree), file=sys.stderr)  # the tree for people; stdout keeps the one JSON object
        return tree
    from components.register import register_model

    output = args.pop("output")
    decision = register_model(args.pop("model_dir"), args.pop("metrics_json"), args.pop("category"),
                              args.pop("method"), **args)
    if output:
        from pathlib import Path

        from adcore.io import atomic_write_json

        Path(output).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(output), decision)
    return decision


def main(argv: Sequence[str] | None = None) -> int:
    from adcore.errors import AdcoreError
    from components.secrets import mask_secrets

    try:
        result = run(argv)
    except AdcoreError as exc:
        print(mask_secrets(f"error: {exc}"), file=sys.stderr)  # a URL in a message may carry a password or token
        return 2
    print(mask_secrets(json.dumps(result, indent=2, default=str)))
    return 0
