"""The ``adcore`` command line (also ``python -m adcore``).

Bad input ends with exit code 2 and one line on stderr that names the file or setting and the problem.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from adcore.errors import AdcoreError


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", choices=["cpu", "paper"], default=None, help="settings profile (default: cpu)")
    p.add_argument("--params", type=Path, default=None, help="a params.yaml with settings over the profile")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set method.cfa.epochs=5 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adcore", description="Industrial visual anomaly detection.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo-data", help="write the procedurally generated demo dataset (MVTec layout)")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--n-train", type=int, default=40)

    p = sub.add_parser("train", help="train one method on one category")
    p.add_argument("--method", required=True)
    p.add_argument("--data-root", type=Path, required=True)
    p.add_argument("--category", required=True)
    p.add_argument("--output", type=Path, required=True, help="model directory to write")
    p.add_argument("--cache-dir", type=Path, default=None, help="feature cache (default ~/.cache/adcore/features)")
    p.add_argument("--checkpoint-dir", type=Path, default=None, help="per-epoch checkpoints for --resume")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --checkpoint-dir")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing model directory at --output (never any other folder)")
    _add_config_args(p)

    p = sub.add_parser("evaluate", help="metrics, per-image scores, overlays and curves on the test split")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data-root", type=Path, required=True)
    p.add_argument("--category", required=True)
    p.add_argument("--output", type=Path, required=True, help="metrics JSON; plots are written beside it")
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--exclude-seen-from", type=Path, default=None, metavar="MODEL_DIR",
                   help="also exclude the seen anomalies another model (PRN) trained on, to compare on its split")

    p = sub.add_parser("synth-grid", help="save a picture grid of generated anomalies (EA, HEA, HOA) with masks")
    p.add_argument("--data-root", type=Path, required=True)
    p.add_argument("--category", required=True)
    p.add_argument("--output", type=Path, required=True, help="PNG file")
    p.add_argument("--texture-dir", type=Path, default=None, help="texture images (default: procedural)")
    p.add_argument("--n-seen", type=int, default=10)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--n-per-kind", type=int, default=6)
    p.add_argument("--target-area", choices=["auto", "foreground", "whole"], default="auto")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("predict", help="score images with a trained model")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--output", type=Path, required=True, help="folder for heatmaps and predictions.jsonl")
    p.add_argument("--device", default=None)
    p.add_argument("--threshold", type=float, default=None,
                   help="raw image score above which an image is defective (default: the model's, from its "
                        "normaliser)")
    p.add_argument("images", type=Path, nargs="+")

    p = sub.add_parser("export", help="export a trained model's whole inference graph to ONNX or OpenVINO IR")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--format", choices=["onnx", "openvino"], required=True)
    p.add_argument("--output", type=Path, required=True, help="export folder to write (graph file + export.json)")
    p.add_argument("--normalize", action="store_true", help="include the score normaliser: scores in [0, 1], "
                   "threshold 0.5")
    p.add_argument("--batch-size", type=int, default=1, help="the graph's fixed batch size (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export folder at --output")

    p = sub.add_parser("config", help="print the resolved configuration of a run as JSON")
    p.add_argument("--method", required=True)
    _add_config_args(p)

    sub.add_parser("methods", help="list the registered methods")

    p = sub.add_parser("bench", help="train and evaluate methods x categories side by side; JSON, table and plot")
    p.add_argument("--data-root", type=Path, required=True)
    p.add_argument("--categories", nargs="+", required=True)
    p.add_argument("--methods", nargs="+", default=None, help="default: all registered methods")
    p.add_argument("--output", type=Path, default=Path("runs/bench"))
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--no-export", action="store_true",
                   help="skip the ONNX / OpenVINO export and its timings (they need adcore[export])")
    _add_config_args(p)

    p = sub.add_parser("quickstart", help="demo data -> train -> evaluate for every method, then a summary table")
    p.add_argument("--output", type=Path, default=Path("runs/quickstart"))
    p.add_argument("--methods", nargs="+", default=None, help="default: all registered methods")
    p.add_argument("--categories", nargs="+", default=None, help="default: all demo categories")
    _add_config_args(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.no_progress:
        import os

        os.environ["ADCORE_NO_PROGRESS"] = "1"
    try:
        return COMMANDS[args.command](args) or 0
    except AdcoreError as exc:
        print(f"adcore {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"adcore {args.command}: interrupted", file=sys.stderr)
        return 130


def _demo_data(args) -> int:
    from adcore.data.demo import generate_demo_dataset

    t0 = time.perf_counter()
    out = generate_demo_dataset(args.output, seed=args.seed, image_size=args.image_size, n_train=args.n_train)
    print(f"demo dataset written to {out} in {time.perf_counter() - t0:.1f} s")
    return 0


def _train(args) -> int:
    from adcore.methods import resolve_settings
    from adcore.training import TrainOptions, train_model

    def on_epoch(epoch: int, losses: dict) -> None:
        shown = " ".join(f"{k}={v:.4g}" for k, v in losses.items())
        print(f"epoch {epoch + 1}: {shown}", file=sys.stderr)

    settings = resolve_settings(args.method, args.profile, args.params, args.overrides)
    options = TrainOptions(cache_dir=args.cache_dir, checkpoint_dir=args.checkpoint_dir, resume=args.resume,
                           on_epoch=on_epoch)
    result = train_model(settings, args.data_root, args.category, args.output, options, overwrite=args.overwrite)
    print(json.dumps({"model_dir": str(result.model_dir), "method": args.method, "category": args.category,
                      "train_seconds": round(result.seconds, 2), "peak_rss_mb": round(result.peak_rss_mb, 1),
                      "device": result.device}))
    return 0


def _evaluate(args) -> int:
    from adcore.evaluation import evaluate_model

    exclude: list[str] = []
    if args.exclude_seen_from is not None:
        from adcore.io import read_model_meta

        exclude = (read_model_meta(args.exclude_seen_from).get("fit_info") or {}).get("seen_anomalies") or []
    results = evaluate_model(args.model, args.data_root, args.category, args.output, device=args.device,
                             batch_size=args.batch_size, exclude=exclude)
    from adcore.metrics import METRIC_KEYS

    print(json.dumps({k: results.get(k) for k in (*METRIC_KEYS, "n_images", "ms_per_image")}))
    return 0


def _synth_grid(args) -> int:
    from adcore.synthesis.grid import anomaly_grid_for_category

    path = anomaly_grid_for_category(args.data_root, args.category, args.output, n_seen=args.n_seen,
                                     image_size=args.image_size, texture_dir=args.texture_dir, seed=args.seed,
                                     n_per_kind=args.n_per_kind, target_area=args.target_area)
    print(path)
    return 0


def _predict(args) -> int:
    from adcore.predict import predict_files

    for line in predict_files(args.model, args.images, args.output, device=args.device,
                              threshold=args.threshold):
        print(json.dumps(line))
    return 0


def _export(args) -> int:
    from adcore.export import export_model

    record = export_model(args.model, args.format, args.output, normalize=args.normalize,
                          batch_size=args.batch_size, overwrite=args.overwrite)
    print(json.dumps({"export_dir": str(args.output), **{k: record[k] for k in ("format", "file", "method", "graph",
                                                                                 "batch_size", "threshold")}}))
    return 0


def _config(args) -> int:
    from adcore.methods import resolve_settings

    print(json.dumps(resolve_settings(args.method, args.profile, args.params, args.overrides).to_dict(), indent=2))
    return 0


def _methods(args) -> int:
    from adcore.methods import get_method, method_names

    for name in method_names():
        cls = get_method(name)  # the first docstring line of the class, else of its module
        doc = next(iter((cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip().splitlines()), "")
        print(f"{name:10s} {doc}")
    return 0


def _bench(args) -> int:
    from adcore.bench import run_bench

    run_bench(args.data_root, args.categories, args.methods, args.output, profile=args.profile, params=args.params,
              overrides=args.overrides, cache_dir=args.cache_dir, export=not args.no_export)
    return 0


def _quickstart(args) -> int:
    from adcore.quickstart import run_quickstart

    run_quickstart(args.output, methods=args.methods, categories=args.categories, profile=args.profile,
                   params=args.params, overrides=args.overrides)
    return 0


COMMANDS = {"demo-data": _demo_data, "train": _train, "evaluate": _evaluate, "predict": _predict, "export": _export,
            "config": _config, "methods": _methods, "bench": _bench, "synth-grid": _synth_grid,
            "quickstart": _quickstart}
