"""Benchmark: every method on every category, side by side, with the same seeds, splits and backbone settings.

Each (method, category) run happens in a fresh Python subprocess (``python -m adcore.bench SPEC.json``), so that
its peak resident memory (``ru_maxrss`` of that process) belongs to that run alone and one method's crash or leak
cannot spoil the others. The child trains (``adcore.training.train_model``), evaluates
(``adcore.evaluation.evaluate_model``), then times inference on the same test images:

- ``ms_per_image_b{B}``: ``model.predict`` (backbone + method head + upsample/blur + scores) per image at batch B,
- ``backbone_ms_per_image_b{B}``: the frozen backbone's forward pass alone on the same tensors (the floor), timed
  interleaved with ``predict`` (one backbone call, one predict call, per batch) so that load from other processes
  hits both alike; ``x_floor_b{B}`` is the median of the paired ratios predict / backbone,
- ``postprocess_ms_per_image_b{B}``: upsample + blur of the raw maps, so head = predict - backbone - postprocess.

Nothing is chosen on the test split: training and calibration see only ``train/good`` (split by the seed); the
test images are only scored and timed. Outputs in ``output``: ``bench.json`` (rows + environment + consistency
checks), ``bench.md`` (the table), ``bench.png`` (image AUROC against batched inference time) and, per run,
``runs/<category>/<method>/`` (model, metrics, log).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adcore.io import atomic_write_json, atomic_write_text

METRIC_KEYS = ("image_auroc", "pixel_auroc", "pixel_aupro", "pixel_ap", "image_ap", "image_f1_max", "pixel_f1_max")
#: images timed per (method, category); a multiple of the usual batch sizes so every timed batch is full
N_TIMING_IMAGES = 32
PEAK_MEMORY_NOTE = (
    "peak_rss_mb is ru_maxrss of a fresh subprocess per (method, category) run: it includes the interpreter and "
    "torch baseline (rss_after_import_mb) and excludes DataLoader worker processes (num_workers > 0)."
)


# ----------------------------------------------------------------------------------------------------------------------
# parent: loop over runs, collect, write the JSON / table / plot


def run_bench(
    data_root: str | Path,
    categories: list[str],
    methods: list[str] | None,
    output: Path,
    *,
    profile: str | None = None,
    params: Any = None,
    overrides: Sequence[str] = (),
    cache_dir: str | Path | None = None,
    batch_sizes: Sequence[int] = (1, 8),
    n_timing_images: int = N_TIMING_IMAGES,
    timeout: float | None = None,
) -> list[dict]:
    """Train, evaluate and time each method on each category; write bench.json, bench.md, bench.png in ``output``.

    ``cache_dir`` None gives every run its own fresh feature cache (so training time always includes the backbone
    pass over the training images); a shared ``cache_dir`` lets later runs reuse features and is recorded as such.
    A run that fails is recorded with ``status: "failed"`` and its error, and the bench goes on.
    """
    from adcore.config import resolve
    from adcore.data.mvtec import load_category
    from adcore.methods import method_names

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    methods = list(methods) if methods else method_names()
    for m in methods:  # fail before any work on a bad method name, setting or category
        resolve(m, profile, params, list(overrides))
    for category in categories:
        load_category(data_root, category, check_images=False)
    if isinstance(params, (str, Path)):
        params = str(Path(params).resolve())
    batch_sizes = tuple(int(b) for b in batch_sizes)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    load_before = _loadavg()
    rows: list[dict] = []
    total = len(methods) * len(categories)
    step = 0
    plotted = False
    for category in categories:
        for method in methods:
            step += 1
            tag = f"[bench {step}/{total}] {method} on {category}"
            print(f"{tag}: start", flush=True)
            run_dir = output / "runs" / category / method
            spec = {
                "method": method, "category": category, "data_root": str(Path(data_root).resolve()),
                "run_dir": str(run_dir.resolve()), "profile": profile, "params": params,
                "overrides": list(overrides), "batch_sizes": list(batch_sizes),
                "n_timing_images": int(n_timing_images),
                "cache_dir": str(Path(cache_dir).resolve()) if cache_dir is not None else None,
            }
            row = _run_child(spec, tag, timeout)
            rows.append(row)
            if row["status"] == "ok":
                b = batch_sizes[-1]
                print(f"{tag}: done: image_auroc={_fmt(row.get('image_auroc'))} "
                      f"pixel_auroc={_fmt(row.get('pixel_auroc'))} train={row['train_seconds']:.1f}s "
                      f"predict={_fmt(row.get(f'ms_per_image_b{b}'))} ms/img (b{b}, "
                      f"{_fmt(row.get(f'x_floor_b{b}'))}x floor) peak={row['peak_rss_mb']:.0f} MB", flush=True)
            else:
                print(f"{tag}: FAILED: {row['error'].splitlines()[-1] if row['error'] else '?'}", flush=True)
            final = step == total
            report = _report(rows, data_root, categories, methods, output, profile, params, overrides, cache_dir,
                             batch_sizes, n_timing_images, started, load_before, final)
            # Written after every run, so an interrupted bench keeps what it measured.
            atomic_write_json(output / "bench.json", report)
            atomic_write_text(output / "bench.md", markdown_report(report) + "\n")
            plotted = write_plot(output / "bench.png", rows, batch_sizes[-1])
    print(markdown_table(rows, batch_sizes), flush=True)
    print(f"bench: wrote {output / 'bench.json'}, {output / 'bench.md'}"
          + (f", {output / 'bench.png'}" if plotted else " (no plot: no successful run)"), flush=True)
    for warning in consistency_checks(rows)["warnings"]:
        print(f"bench: warning: {warning}", flush=True)
    return rows


def _report(rows, data_root, categories, methods, output, profile, params, overrides, cache_dir, batch_sizes,
            n_timing_images, started, load_before, final: bool) -> dict[str, Any]:
    command = bench_command(data_root, categories, methods, output, profile, params, overrides, cache_dir)
    return {
        "command": command,
        "started": started,
        "finished" if final else "last_update": time.strftime("%Y-%m-%d %H:%M:%S"),
        "environment": _environment(),
        "load_average_before": load_before,
        "load_average_after": _loadavg(),
        "batch_sizes": list(batch_sizes),
        "n_timing_images": int(n_timing_images),
        "feature_cache": "shared" if cache_dir is not None else "fresh per run",
        "notes": {"peak_memory": PEAK_MEMORY_NOTE,
                  "timing": "median over full batches of the timing images; x_floor = median paired ratio "
                            "predict / backbone-only forward on the same tensors, interleaved; *_cpu_* = the same "
                            "with process CPU time (all threads of the run), robust to other load on the machine"},
        "consistency": consistency_checks(rows),
        "complete": final,
        "rows": rows,
    }


def _run_child(spec: dict, tag: str, timeout: float | None) -> dict:
    run_dir = Path(spec["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    spec_path, result_path, log_path = run_dir / "spec.json", run_dir / "result.json", run_dir / "log.txt"
    result_path.unlink(missing_ok=True)
    atomic_write_json(spec_path, spec)
    env = dict(os.environ)
    env["ADCORE_NO_PROGRESS"] = "1"  # the child prints one line per step instead of bars
    env["PYTHONUNBUFFERED"] = "1"
    package_parent = str(Path(__file__).resolve().parents[1])  # works from a checkout that is not installed
    env["PYTHONPATH"] = package_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t0 = time.perf_counter()
    tail: list[str] = []
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen([sys.executable, "-m", "adcore.bench", str(spec_path)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env, bufsize=1)
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                log.write(line)
                tail = (tail + [line.rstrip()])[-40:]
                if line.startswith("bench-step "):
                    print(f"{tag}: {line[len('bench-step '):].rstrip()}", flush=True)
                if timeout is not None and time.perf_counter() - t0 > timeout:
                    proc.kill()
                    tail.append(f"killed after {timeout:.0f} s (bench timeout)")
                    break
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    wall = time.perf_counter() - t0
    base = {"method": spec["method"], "category": spec["category"], "run_dir": str(run_dir), "wall_seconds": wall}
    if rc == 0 and result_path.is_file():
        row = json.loads(result_path.read_text())
        row.update(base)
        return row
    return {**base, "status": "failed", "returncode": rc, "error": "\n".join(tail[-15:]),
            **{k: None for k in METRIC_KEYS}, "ms_per_image": None}


def bench_command(data_root, categories, methods, output, profile, params, overrides, cache_dir) -> str:
    """The ``adcore bench`` command line that reproduces this run."""
    parts = ["adcore", "bench", "--data-root", str(data_root), "--categories", *categories, "--methods", *methods,
             "--profile", profile or "cpu", "--output", str(output)]
    if isinstance(params, (str, Path)):
        parts += ["--params", str(params)]
    for o in overrides:
        parts += ["--set", o]
    if cache_dir is not None:
        parts += ["--cache-dir", str(cache_dir)]
    return shlex.join(parts)


def consistency_checks(rows: list[dict]) -> dict[str, Any]:
    """Per category: do all methods share the seed, the train/val split and the backbone? Differences are warnings."""
    out: dict[str, Any] = {"warnings": []}
    for category in sorted({r["category"] for r in rows}):
        ok = [r for r in rows if r["category"] == category and r.get("status") == "ok"]
        facts = {key: sorted({str(r.get(key)) for r in ok}) for key in ("seed", "split_sha256", "backbone")}
        out[category] = facts
        for key, values in facts.items():
            if len(values) > 1:
                out["warnings"].append(f"{category}: methods differ in {key}: {values}")
    return out


def write_plot(path: Path, rows: list[dict], batch: int) -> bool:
    from adcore import viz

    pts = [{"label": f"{r['method']}/{r['category']}", "ms_per_image": r.get(f"ms_per_image_b{batch}"),
            "image_auroc": r.get("image_auroc")} for r in rows if r.get("status") == "ok"]
    pts = [p for p in pts if p["ms_per_image"] is not None and p["image_auroc"] is not None]
    if not pts:
        return False
    viz.plot_accuracy_vs_time(path, pts, x_key="ms_per_image", y_key="image_auroc", label_key="label")
    return True


TABLE_COLUMNS = (
    ("category", "category"), ("method", "method"), ("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"),
    ("pixel_aupro", "AUPRO@0.3"), ("pixel_ap", "pixel AP"), ("input_size", "input px"),
    ("train_seconds", "train s"),
)


def markdown_table(rows: list[dict], batch_sizes: Sequence[int]) -> str:
    cols = list(TABLE_COLUMNS)
    for b in batch_sizes:
        cols += [(f"ms_per_image_b{b}", f"ms/img b{b}"), (f"backbone_ms_per_image_b{b}", f"floor b{b}"),
                 (f"x_floor_b{b}", f"x floor b{b}"), (f"x_floor_cpu_b{b}", f"x floor CPU b{b}")]
    cols += [("epoch_over_backbone_pass", "epoch / backbone pass"), ("peak_rss_mb", "peak RSS MB"),
             ("model_mb", "model MB")]
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        if r.get("status") != "ok":
            lines.append("| " + " | ".join([r["category"], r["method"], "failed"] + [""] * (len(cols) - 3)) + " |")
            continue
        lines.append("| " + " | ".join(_fmt(r.get(k), k) for k, _ in cols) + " |")
    return "\n".join(lines)


def markdown_report(report: dict) -> str:
    env = report["environment"]
    rows = report["rows"]
    out = [
        "# adcore bench",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Started {report['started']}, "
        + (f"finished {report['finished']}." if report.get("complete") else
           f"INCOMPLETE (last update {report.get('last_update')}).") + f" Machine: {env['cpu_count']} CPU cores, "
        f"torch {env['torch']} ({env['torch_threads']} threads), {env['platform']}; GPU: {env['cuda']}.",
        f"Load average (1, 5, 15 min) before: {report['load_average_before']}, after: "
        f"{report['load_average_after']}" + (" - the machine was shared with other work, timings are noisy."
                                             if _contended(report) else "."),
        "",
        markdown_table(rows, report["batch_sizes"]),
        "",
        f"Times are per image on preprocessed tensors (decoding excluded), median over full batches of the first "
        f"{report['n_timing_images']} test images; `floor` is the frozen backbone's forward pass alone on the same "
        "tensors in the same process, and `x floor` the median paired ratio. "
        f"Feature cache: {report['feature_cache']}. {PEAK_MEMORY_NOTE}",
    ]
    failed = [r for r in rows if r.get("status") != "ok"]
    if failed:
        out += ["", "Failed runs:"] + [f"- {r['method']} on {r['category']}: "
                                       f"{(r.get('error') or '?').splitlines()[-1]}" for r in failed]
    if report["consistency"]["warnings"]:
        out += ["", "Warnings:"] + [f"- {w}" for w in report["consistency"]["warnings"]]
    return "\n".join(out)


def _contended(report: dict) -> bool:
    cores = report["environment"]["cpu_count"] or 1
    loads = [report["load_average_before"], report["load_average_after"]]
    return any(la and la[0] > cores for la in loads)


def _fmt(value: Any, key: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if key.startswith(("image_", "pixel_")) or key in {"image_auroc"}:
            return f"{value:.3f}"
        if key.startswith(("x_floor", "epoch_over")):
            return f"{value:.2f}"
        return f"{value:.3f}" if abs(value) < 1 else f"{value:.1f}"
    return str(value)


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _environment() -> dict[str, Any]:
    import torch

    from adcore import __version__

    return {"adcore": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"}


# ----------------------------------------------------------------------------------------------------------------------
# child: one (method, category) run in its own process


def _step(text: str) -> None:
    print(f"bench-step {text}", flush=True)


def run_one(spec: dict) -> dict:
    """Train, evaluate and time one method on one category (meant to run in a fresh process; see module doc)."""
    import tempfile

    import torch

    from adcore.evaluation import evaluate_model
    from adcore.io import read_model_meta
    from adcore.methods import load_model
    from adcore.training import peak_rss_mb, train_model

    rss_import = peak_rss_mb()
    run_dir = Path(spec["run_dir"])
    model_dir = run_dir / "model"
    t_start = time.perf_counter()

    def on_epoch(epoch: int, losses: dict) -> None:
        shown = " ".join(f"{k}={v:.4g}" for k, v in losses.items())
        _step(f"epoch {epoch + 1}: {shown}")

    _step("training")
    with tempfile.TemporaryDirectory(prefix="adcore-bench-cache-", dir=run_dir) as fresh_cache:
        result = train_model(spec["method"], spec["data_root"], spec["category"], model_dir, profile=spec["profile"],
                             params=spec["params"], overrides=spec["overrides"],
                             cache_dir=spec["cache_dir"] or fresh_cache, on_epoch=on_epoch, progress=False)
    rss_train = peak_rss_mb()
    _step(f"trained in {result.seconds:.1f} s; evaluating")
    metrics = evaluate_model(model_dir, spec["data_root"], spec["category"], run_dir / "metrics.json",
                             progress=False, write_artifacts=False)
    rss_eval = peak_rss_mb()
    _step(f"evaluated: image_auroc={metrics.get('image_auroc')}; timing")

    model = load_model(model_dir)
    timing = time_inference(model, spec["data_root"], spec["category"], spec["batch_sizes"],
                            spec["n_timing_images"])
    meta = read_model_meta(model_dir)
    config = result.config
    history = result.history or []
    epoch_s = [h["epoch_seconds"] for h in history if "epoch_seconds" in h]
    n_train = meta.get("data", {}).get("n_train")
    bmax = max(spec["batch_sizes"])
    floor_b = timing.get(f"backbone_ms_per_image_b{bmax}")
    train_pass = n_train * floor_b / 1000.0 if n_train and floor_b else None
    row: dict[str, Any] = {
        "status": "ok",
        "method": spec["method"], "category": spec["category"],
        "profile": config.profile, "seed": config.train.seed,
        "backbone": f"{config.backbone.name} ({config.backbone.weights})",
        "input_size": config.data.input_size,
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
        "ms_per_image": timing.get(f"ms_per_image_b{bmax}"),
        "rss_after_import_mb": rss_import, "peak_rss_train_mb": rss_train, "peak_rss_eval_mb": rss_eval,
        "model_mb": dir_size(model_dir) / 2**20,
        "fit_info": {k: v for k, v in model.fit_info.items() if isinstance(v, (int, float, str, bool))},
        "device": str(model.device), "torch_threads": torch.get_num_threads(),
        "child_seconds": time.perf_counter() - t_start,
    }
    row["peak_rss_mb"] = peak_rss_mb()
    row["peak_rss_above_import_mb"] = row["peak_rss_mb"] - rss_import
    return row


def load_timing_images(model, data_root, category: str, n: int):
    """The first ``n`` test images (PRN's seen anomalies excluded) as one normalised tensor: the timing set."""
    import torch

    from adcore.data.dataset import ImageDataset
    from adcore.data.mvtec import load_category

    cat = load_category(data_root, category, check_images=False)
    seen = set(model.fit_info.get("seen_anomalies") or [])
    test = [s for s in cat.test if str(s.path) not in seen][:n]
    ds = ImageDataset(test, model.make_transform())
    return torch.stack([ds[i]["image"] for i in range(len(ds))])


def time_inference(model, data_root, category: str, batch_sizes: Sequence[int], n_images: int) -> dict[str, Any]:
    """Per-image predict / backbone-only / post-processing times, interleaved per batch (see module docstring)."""
    import torch

    from adcore.postprocess import anomaly_maps_to_input

    images = load_timing_images(model, data_root, category, n_images)
    sigma = model.blur_sigma if model.blur_sigma is not None else model.config.postprocess.blur_sigma
    size = tuple(images.shape[-2:])
    sync = (lambda: torch.cuda.synchronize(model.device)) if model.device.type == "cuda" else (lambda: None)

    cpu: dict[str, list[float]] = {}

    def timed(fn, *args, name: str = ""):
        sync()
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn(*args)
        sync()
        cpu.setdefault(name, []).append(time.process_time() - c0)
        return time.perf_counter() - t0, out

    def backbone(x):
        with torch.inference_mode():
            return model.backbone(x)

    def raw(x):
        with torch.inference_mode():
            return model.predict_raw(x)

    out: dict[str, Any] = {"n_timing_images": 0}
    for b in batch_sizes:
        n_full = (len(images) // b) * b
        if n_full == 0:
            continue
        out["n_timing_images"] = max(out["n_timing_images"], n_full)
        batches = [images[i:i + b].to(model.device) for i in range(0, n_full, b)]
        model.predict(batches[0])  # warm-up: allocator, lazy init, caches
        backbone(batches[0])
        t_pred, t_back, t_post = [], [], []
        cpu.clear()
        for x in batches:
            tb, _ = timed(backbone, x, name="backbone")
            tp, _ = timed(model.predict, x, name="predict")
            t_back.append(tb)
            t_pred.append(tp)
        raw_maps = raw(batches[0]).maps.float()
        for _ in range(min(len(batches), 8)):
            tq, _ = timed(anomaly_maps_to_input, raw_maps, size, sigma)
            t_post.append(tq)
        out[f"ms_per_image_b{b}"] = 1000 * statistics.median(t_pred) / b
        out[f"ms_per_image_min_b{b}"] = 1000 * min(t_pred) / b
        out[f"backbone_ms_per_image_b{b}"] = 1000 * statistics.median(t_back) / b
        out[f"backbone_ms_per_image_min_b{b}"] = 1000 * min(t_back) / b
        out[f"postprocess_ms_per_image_b{b}"] = 1000 * statistics.median(t_post) / b
        out[f"x_floor_b{b}"] = statistics.median(p / q for p, q in zip(t_pred, t_back))
        # CPU time of this process (all its threads): far less sensitive to other processes than wall time
        out[f"cpu_ms_per_image_b{b}"] = 1000 * statistics.median(cpu["predict"]) / b
        out[f"backbone_cpu_ms_per_image_b{b}"] = 1000 * statistics.median(cpu["backbone"]) / b
        out[f"x_floor_cpu_b{b}"] = statistics.median(p / max(q, 1e-9) for p, q in zip(cpu["predict"],
                                                                                      cpu["backbone"]))
    return out


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _child_main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m adcore.bench SPEC.json  (internal: one run of adcore bench)", file=sys.stderr)
        return 2
    spec_path = Path(argv[0])
    spec = json.loads(spec_path.read_text())
    row = run_one(spec)
    atomic_write_json(spec_path.parent / "result.json", row)
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
