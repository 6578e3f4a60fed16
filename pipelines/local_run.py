"""``python -m pipelines.local_run``: the whole kfp pipeline on this machine with ``kfp.local``, on the demo data.

Every step runs as a subprocess of this interpreter (``SubprocessRunner(use_venv=False)``: nothing is installed),
so the package must be importable here. MLflow: ``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db``; S3 (when
``--data-uri s3://...``): the usual ``AWS_*`` variables. The Kubernetes settings of the pipeline (GPU, tolerations,
Secrets) only apply on a cluster; kfp.local warns that it ignores them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

#: Small enough for a laptop CPU in a few minutes; the cluster uses the profile's real settings.
QUICK_OVERRIDES = ("data.image_size=64", "data.crop_size=null", "method.cfa.epochs=1", "method.frad.epochs=1",
                   "method.nnet.epochs=1", "method.nnet.align_epochs=1", "method.prn.epochs=1",
                   "evaluation.max_overlays=2")


def run_local(data_uri: str, categories: list[str], methods: list[str], *, workdir: str | Path,
              overrides: list[str] | None = None, profile: str = "cpu", experiment: str = "adcore-local",
              promotion_metric: str = "image_auroc", promotion_margin: float = 0.0,
              enable_caching: bool = False, weights_uri: str = "", checkpoint_root: str = "",
              raise_on_error: bool = True) -> dict[str, Any]:
    """Run the pipeline with kfp.local; returns the summary markdown, its path and the wall time.

    weights_uri "" keeps the profile's own weights; checkpoint_root "" keeps checkpoints in the pod's folder (the
    cluster defaults are s3:// URIs). The summary markdown is "" when the night failed before its summary step."""
    from kfp import local

    from pipelines.training import PIPELINE_NAME, ClusterSettings, build_pipeline

    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    root = workdir / "kfp-root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
               enable_caching=enable_caching, raise_on_error=raise_on_error)
    pipeline = build_pipeline(settings=ClusterSettings(retries=0))  # here a failure is not transient: no retry
    before = set(root.glob(f"{PIPELINE_NAME}-*"))
    start = time.perf_counter()
    pipeline(data_uri=data_uri, categories=list(categories), methods=list(methods), profile=profile,
             overrides=list(overrides or []), experiment=experiment, promotion_metric=promotion_metric,
             promotion_margin=promotion_margin, weights_uri=weights_uri, checkpoint_root=checkpoint_root)
    seconds = time.perf_counter() - start
    (run_dir,) = set(root.glob(f"{PIPELINE_NAME}-*")) - before  # kfp.local: a folder per run
    # kfp allows no pipeline output from inside the exit handler: the table is the summary step's artifact
    reports = sorted(run_dir.rglob("summary-op/report"))
    markdown = reports[0].read_text() if reports else ""
    return {"markdown": markdown, "report": str(reports[0]) if reports else "", "run_dir": str(run_dir),
            "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.local_run", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("runs/kfp-local"))
    parser.add_argument("--data-uri", default="", help="default: the demo data, generated into WORKDIR/demo")
    parser.add_argument("--categories", nargs="+", default=["tile", "widget"])
    parser.add_argument("--methods", nargs="+", default=["patchcore", "cfa"])
    parser.add_argument("--profile", default="cpu", choices=["cpu", "paper"])
    parser.add_argument("--experiment", default="adcore-local")
    parser.add_argument("--set", dest="overrides", action="append", default=None, metavar="KEY=VALUE",
                        help="settings for every step (default: small images and 1 epoch, see QUICK_OVERRIDES)")
    parser.add_argument("--cache", action="store_true", help="kfp.local caching (fetch and features)")
    args = parser.parse_args(argv)

    os.environ.setdefault("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    data_uri = args.data_uri
    if not data_uri:
        from adcore.data.demo import generate_demo_dataset

        data_uri = str(generate_demo_dataset(args.workdir.absolute() / "demo", categories=args.categories,
                                             n_train=24, n_test_good=8, n_test_defect=4, image_size=96))
    result = run_local(data_uri, args.categories, args.methods, workdir=args.workdir,
                       overrides=list(QUICK_OVERRIDES) if args.overrides is None else args.overrides,
                       profile=args.profile, experiment=args.experiment, enable_caching=args.cache)
    print(result["markdown"])
    print(f"summary: {result['report']}\nMLflow: {os.environ['MLFLOW_TRACKING_URI']}\n"
          f"pipeline wall time: {result['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
