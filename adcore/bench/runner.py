"""The parent of ``adcore bench``: one child process per (method, category), then bench.json, bench.md, bench.png.

The parent never trains or times anything itself; it checks the inputs before any work, starts
:mod:`adcore.bench.child` for each run, echoes its progress, turns a crash into a ``failed`` row and rewrites the
outputs after every run, so an interrupted bench keeps what it measured.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adcore.bench.report import (
    BELOW_FLOOR_NOTE,
    EXPORT_NOTE,
    PEAK_MEMORY_NOTE,
    TIMING_NOTE,
    bench_table,
    consistency_checks,
    export_table,
    markdown_report,
)
from adcore.bench.timing import DEFAULT_TIMING_ROUNDS, MIN_TIMING_ROUNDS
from adcore.environment import environment_record
from adcore.errors import ConfigError
from adcore.io import atomic_write_json, atomic_write_text
from adcore.metrics import METRIC_KEYS
from adcore.report import format_number

#: Test images timed per (method, category); a multiple of the usual batch sizes so every timed batch is full.
N_TIMING_IMAGES = 32


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
    timing_rounds: int = DEFAULT_TIMING_ROUNDS,
    timeout: float | None = None,
    export: bool = True,
) -> list[dict]:
    """Train, evaluate and time each method on each category; write bench.json, bench.md, bench.png in ``output``.

    ``cache_dir`` None gives every run its own fresh feature cache (so training time always includes the backbone
    pass over the training images); a shared ``cache_dir`` lets later runs reuse features and is recorded as such.
    A run that fails is recorded with ``status: "failed"`` and its error, and the bench goes on. ``export``: also
    export each model to ONNX and OpenVINO and time them against torch and the floor (adcore.bench.export_timing).
    """
    from adcore.data.mvtec import load_category
    from adcore.methods import method_names, resolve_settings

    output = Path(output)
    methods = list(methods) if methods else method_names()
    batch_sizes = tuple(int(b) for b in batch_sizes)
    if not batch_sizes or min(batch_sizes) < 1:
        raise ConfigError(f"batch_sizes: expected positive batch sizes, got {list(batch_sizes)}")
    if int(timing_rounds) < MIN_TIMING_ROUNDS:
        raise ConfigError(f"timing_rounds: expected at least {MIN_TIMING_ROUNDS} paired rounds, got {timing_rounds}")
    for m in methods:  # fail before any work on a bad method name, setting or category
        resolve_settings(m, profile, params, list(overrides))
    for category in categories:
        load_category(data_root, category, check_images=False)
    if isinstance(params, (str, Path)):
        params = str(Path(params).resolve())
    output.mkdir(parents=True, exist_ok=True)
    settings = {"data_root": data_root, "categories": categories, "methods": methods, "output": output,
                "profile": profile, "params": params, "overrides": list(overrides), "cache_dir": cache_dir,
                "batch_sizes": batch_sizes, "n_timing_images": int(n_timing_images),
                "timing_rounds": int(timing_rounds), "export": bool(export)}
    started, load_before = time.strftime("%Y-%m-%d %H:%M:%S"), loadavg()
    rows: list[dict] = []
    total = len(methods) * len(categories)
    plotted = False
    for category in categories:
        for method in methods:
            tag = f"[bench {len(rows) + 1}/{total}] {method} on {category}"
            print(f"{tag}: start", flush=True)
            rows.append(run_child(child_spec(settings, method, category), tag, timeout))
            print_outcome(tag, rows[-1], batch_sizes[-1])
            report = bench_report(rows, settings, started, load_before, final=len(rows) == total)
            atomic_write_json(output / "bench.json", report)
            atomic_write_text(output / "bench.md", markdown_report(report) + "\n")
            plotted = write_plot(output / "bench.png", rows, batch_sizes[-1])
    print(bench_table(rows, batch_sizes), flush=True)
    exports = export_table(rows)
    if exports is not None:
        print(f"\nexported inference, batch 1, CPU (ms per image; {EXPORT_NOTE}):\n{exports}", flush=True)
    print(f"bench: wrote {output / 'bench.json'}, {output / 'bench.md'}"
          + (f", {output / 'bench.png'}" if plotted else " (no plot: no successful run)"), flush=True)
    for warning in report["consistency"]["warnings"]:
        print(f"bench: warning: {warning}", flush=True)
    return rows


def child_spec(settings: dict, method: str, category: str) -> dict[str, Any]:
    """What one child needs (written to its run folder as spec.json): absolute paths, plain JSON values."""
    run_dir = Path(settings["output"]) / "runs" / category / method
    cache_dir = settings["cache_dir"]
    return {"method": method, "category": category, "data_root": str(Path(settings["data_root"]).resolve()),
            "run_dir": str(run_dir.resolve()), "profile": settings["profile"], "params": settings["params"],
            "overrides": settings["overrides"], "batch_sizes": list(settings["batch_sizes"]),
            "n_timing_images": settings["n_timing_images"], "timing_rounds": settings["timing_rounds"],
            "cache_dir": str(Path(cache_dir).resolve()) if cache_dir is not None else None,
            "export": settings["export"]}


def print_outcome(tag: str, row: dict, b: int) -> None:
    """One line per finished run: the headline metrics, time and memory, or why it failed."""
    if row["status"] != "ok":
        print(f"{tag}: FAILED: {row['error'].splitlines()[-1] if row['error'] else '?'}", flush=True)
        return

    def show(key: str, spec: str = "") -> str:
        value = row.get(key)
        return "n/a" if value is None else format(value, spec) if spec else format_number(value)

    note = f"; {BELOW_FLOOR_NOTE}" if row.get(f"x_floor_b{b}_below_1") else ""
    print(f"{tag}: done: image_auroc={show('image_auroc', '.3f')} pixel_auroc={show('pixel_auroc', '.3f')} "
          f"train={row['train_seconds']:.1f}s predict={show(f'ms_per_image_b{b}')} ms/img "
          f"(b{b}, {show(f'x_floor_b{b}', '.2f')}x floor{note}) peak={row['peak_rss_mb']:.0f} MB", flush=True)


def bench_report(rows: list[dict], settings: dict, started: str, load_before, final: bool) -> dict[str, Any]:
    """bench.json: how the bench was run, on what, under which load, and every row."""
    return {
        "command": bench_command(**{k: settings[k] for k in ("data_root", "categories", "methods", "output",
                                                             "profile", "params", "overrides", "cache_dir",
                                                             "export")}),
        "started": started,
        "finished" if final else "last_update": time.strftime("%Y-%m-%d %H:%M:%S"),
        "environment": environment_record(),
        "load_average_before": load_before,
        "load_average_after": loadavg(),
        "batch_sizes": list(settings["batch_sizes"]),
        "n_timing_images": settings["n_timing_images"],
        "timing_rounds": settings["timing_rounds"],
        "feature_cache": "shared" if settings["cache_dir"] is not None else "fresh per run",
        "notes": {"peak_memory": PEAK_MEMORY_NOTE, "timing": TIMING_NOTE},
        "consistency": consistency_checks(rows),
        "complete": final,
        "rows": rows,
    }


def run_child(spec: dict, tag: str, timeout: float | None) -> dict:
    """Run one child to the end (or ``timeout`` seconds), log its output to log.txt; its row, or a failed row."""
    run_dir = Path(spec["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    spec_path, result_path, log_path = run_dir / "spec.json", run_dir / "result.json", run_dir / "log.txt"
    result_path.unlink(missing_ok=True)
    atomic_write_json(spec_path, spec)
    env = dict(os.environ)
    env["ADCORE_NO_PROGRESS"] = "1"  # the child prints one line per step instead of bars
    env["PYTHONUNBUFFERED"] = "1"
    package_parent = str(Path(__file__).resolve().parents[2])  # works from a checkout that is not installed
    env["PYTHONPATH"] = package_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t0 = time.perf_counter()
    tail: list[str] = []
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen([sys.executable, "-m", "adcore.bench.child", str(spec_path)], stdout=subprocess.PIPE,
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
    base = {"method": spec["method"], "category": spec["category"], "run_dir": str(run_dir),
            "wall_seconds": time.perf_counter() - t0}
    if rc == 0 and result_path.is_file():
        return {**json.loads(result_path.read_text()), **base}
    return {**base, "status": "failed", "returncode": rc, "error": "\n".join(tail[-15:]),
            **{k: None for k in METRIC_KEYS}, "ms_per_image": None}


def bench_command(data_root, categories, methods, output, profile, params, overrides, cache_dir,
                  export: bool = True) -> str:
    """The ``adcore bench`` command line that reproduces this run."""
    parts = ["adcore", "bench", "--data-root", str(data_root), "--categories", *categories, "--methods", *methods,
             "--profile", profile or "cpu", "--output", str(output)]
    if isinstance(params, (str, Path)):
        parts += ["--params", str(params)]
    for o in overrides:
        parts += ["--set", o]
    if cache_dir is not None:
        parts += ["--cache-dir", str(cache_dir)]
    if not export:
        parts.append("--no-export")
    return shlex.join(parts)


def write_plot(path: Path, rows: list[dict], batch: int) -> bool:
    """bench.png: image AUROC against ms/image at the largest batch; False when no run succeeded."""
    from adcore import viz

    pts = [{"label": f"{r['method']}/{r['category']}", "ms_per_image": r.get(f"ms_per_image_b{batch}"),
            "image_auroc": r.get("image_auroc")} for r in rows if r.get("status") == "ok"]
    pts = [p for p in pts if p["ms_per_image"] is not None and p["image_auroc"] is not None]
    if not pts:
        return False
    viz.plot_accuracy_vs_time(path, pts, x_key="ms_per_image", y_key="image_auroc", label_key="label")
    return True


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None
