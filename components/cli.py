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
    _common_tracking(p)

    p = sub.add_parser("register", help="log as pyfunc, register, alias challenger, maybe promote to champion")
    p.add_argument("model_dir")
    p.add_argument("metrics_json")
    p.add_argument("category")
    p.add_argument("method")
    p.add_argument("--prefix", default="adcore")
    p.add_argument("--metric", default="image_auroc")
    p.add_argument("--margin", type=float, default=0.0)
    p.add_argument("--tolerance", type=float, default=0.02)
    p.add_argument("--data-root", default="", help="to re-evaluate a champion scored on another test split")
    _common_tracking(p, track=False)
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
    from components.register import register_model

    return register_model(args.pop("model_dir"), args.pop("metrics_json"), args.pop("category"), args.pop("method"),
                          **args)


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
