"""One bench run, (method, category), in a process of its own: train, evaluate, time; write ``result.json``.

``python -m adcore.bench.child RUN_DIR/spec.json`` is started by :mod:`adcore.bench.runner`. A fresh process per run
makes its peak resident memory (``ru_maxrss``) belong to that run alone, and keeps one method's crash or leak from
spoiling the others. Progress goes to stdout as ``bench-step ...`` lines, which the parent echoes.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from adcore.io import atomic_write_json
from adcore.metrics import METRIC_KEYS

#: Keys of the spec file the parent writes for each run (all required).
SPEC_KEYS = ("method", "category", "data_root", "run_dir", "profile", "params", "overrides", "batch_sizes",
             "n_timing_images", "timing_rounds", "cache_dir")


def step(text: str) -> None:
    print(f"bench-step {text}", flush=True)


def run_one(spec: dict) -> dict[str, Any]:
    """Train, evaluate and time one method on one category; the bench row (see adcore.bench for the keys)."""
    import torch

    from adcore.bench.export_timing import time_exports
    from adcore.bench.timing import load_timing_images, time_inference
    from adcore.evaluation import evaluate_model
    from adcore.io import read_model_meta
    from adcore.methods import load_model, resolve_settings
    from adcore.training import TrainOptions, peak_rss_mb, train_model

    rss_import = peak_rss_mb()
    run_dir = Path(spec["run_dir"])
    model_dir = run_dir / "model"
    t_start = time.perf_counter()

    def on_epoch(epoch: int, losses: dict) -> None:
        step(f"epoch {epoch + 1}: " + " ".join(f"{k}={v:.4g}" for k, v in losses.items()))

    settings = resolve_settings(spec["method"], profile=spec["profile"], params=spec["params"],
                                overrides=spec["overrides"])
    step("training")
    with tempfile.TemporaryDirectory(prefix="adcore-bench-cache-", dir=run_dir) as fresh_cache:
        options = TrainOptions(cache_dir=Path(spec["cache_dir"] or fresh_cache), on_epoch=on_epoch, progress=False)
        result = train_model(settings, spec["data_root"], spec["category"], model_dir, options,
                             overwrite=True)  # a rerun of the bench replaces its own models
    rss_train = peak_rss_mb()
    step(f"trained in {result.seconds:.1f} s; evaluating")
    metrics = evaluate_model(model_dir, spec["data_root"], spec["category"], run_dir / "metrics.json",
                             progress=False, write_artifacts=False)
    rss_eval = peak_rss_mb()
    step(f"evaluated: image_auroc={metrics.get('image_auroc')}; timing {spec['timing_rounds']} paired rounds")

    model = load_model(model_dir)
    images = load_timing_images(model, spec["data_root"], spec["category"], spec["n_timing_images"])
    timing, samples = time_inference(model, images, spec["batch_sizes"], spec["timing_rounds"])
    if spec.get("export", True):
        step("exporting to ONNX and OpenVINO; timing torch, onnxruntime, OpenVINO and the floor at batch 1")
        export_fields, samples["export_b1"] = time_exports(model_dir, images, run_dir / "export",
                                                           spec["timing_rounds"])
        timing.update(export_fields)
    atomic_write_json(run_dir / "timing.json", samples)  # the rounds behind the medians, to check or re-plot
    meta = read_model_meta(model_dir)
    history = result.history or []
    epoch_s = [h["epoch_seconds"] for h in history if "epoch_seconds" in h]
    n_train = meta.get("data", {}).get("n_train")
    floor = timing.get(f"backbone_ms_per_image_b{max(spec['batch_sizes'])}")
    train_pass = n_train * floor / 1000.0 if n_train and floor else None
    row: dict[str, Any] = {
        "status": "ok",
        "method": spec["method"], "category": spec["category"],
        "profile": settings.profile, "seed": settings.train.seed,
        "backbone": f"{settings.backbone.name} ({settings.backbone.weights})",
        "input_size": settings.data.input_size,
        "n_train": n_train, "n_val": meta.get("data", {}).get("n_val"),
        "split_sha256": meta.get("data", {}).get("images_sha256"),
        "n_test": metrics.get("n_images"), "n_test_anomalous": metrics.get("n_anomalous"),
        **{k: metrics.get(k) for k in METRIC_KEYS},
        "pixel_metrics_note": metrics.get("pixel_metrics_note"),
        "eval_ms_per_image": metrics.get("ms_per_image"), "eval_batch_size": metrics.get("batch_size"),
        "train_seconds": result.seconds,
        "epochs": len(history) or None,
        "epoch_seconds_mean": statistics.fmean(epoch_s) if epoch_s else None,
        "backbone_train_pass_seconds": train_pass,
        "epoch_over_backbone_pass": (statistics.fmean(epoch_s) / train_pass) if epoch_s and train_pass else None,
        **timing,
        "ms_per_image": timing.get(f"ms_per_image_b{max(spec['batch_sizes'])}"),
        "rss_after_import_mb": rss_import, "peak_rss_train_mb": rss_train, "peak_rss_eval_mb": rss_eval,
        "model_mb": dir_size(model_dir) / 2**20,
        "fit_info": {k: v for k, v in model.fit_info.items() if isinstance(v, (int, float, str, bool))},
        "device": str(model.device), "torch_threads": torch.get_num_threads(),
        "child_seconds": time.perf_counter() - t_start,
    }
    row["peak_rss_mb"] = peak_rss_mb()
    row["peak_rss_above_import_mb"] = row["peak_rss_mb"] - rss_import
    return row


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def read_spec(path: Path) -> dict:
    """The spec file, checked so that a stale or hand-edited one fails with its name and the missing keys."""
    from adcore.errors import ConfigError

    try:
        spec = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the bench spec ({exc})") from None
    missing = [k for k in SPEC_KEYS if k not in spec] if isinstance(spec, dict) else list(SPEC_KEYS)
    if missing:
        raise ConfigError(f"{path}: bench spec lacks {', '.join(missing)}")
    return spec


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m adcore.bench.child SPEC.json  (internal: one run of adcore bench)", file=sys.stderr)
        return 2
    spec_path = Path(argv[0])
    row = run_one(read_spec(spec_path))
    atomic_write_json(spec_path.parent / "result.json", row)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
