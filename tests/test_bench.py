"""The bench harness end to end on the demo data: one tiny PatchCore run in its own subprocess.

Nothing here asserts a speed: the machine running the tests may be shared. The timing checks are about the row's
structure and its consistency with the rounds it was computed from (runs/<category>/<method>/timing.json).
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import sys

import pytest

from adcore.bench import bench_table, consistency_checks, run_bench
from adcore.bench.report import export_table
from adcore.bench.timing import iqr
from adcore.data.mvtec import load_category
from adcore.errors import ConfigError, DataError
from adcore.metrics import METRIC_KEYS

TINY = ["backbone.weights=random", "data.image_size=64", "data.batch_size=4", "method.patchcore.embedding_dim=64",
        "method.patchcore.coreset_ratio=0.25", "evaluation.max_overlays=0"]
BATCHES = (1, 4)
ROUNDS = 5
#: the median keys of the two paired quantities (predict, backbone-only floor); spreads add _iqr and _min
TIMED = ("ms_per_image_b{b}", "backbone_ms_per_image_b{b}")


@pytest.fixture(scope="module")
def bench(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    rows = run_bench(demo_root, ["tile"], ["patchcore"], out, profile="cpu", overrides=TINY, batch_sizes=BATCHES,
                     n_timing_images=8, timing_rounds=ROUNDS)
    return out, rows


def test_bench_row_has_every_measurement(bench, demo_root):
    out, rows = bench
    assert len(rows) == 1
    row = rows[0]
    assert row["status"] == "ok", row.get("error")
    assert (row["method"], row["category"]) == ("patchcore", "tile")
    positive = ["train_seconds", "peak_rss_mb", "peak_rss_train_mb", "rss_after_import_mb", "model_mb",
                *(k for k in METRIC_KEYS if k != "pixel_f1_max")]
    for b in BATCHES:
        positive += [f"ms_per_image_b{b}", f"ms_per_image_b{b}_min", f"backbone_ms_per_image_b{b}",
                     f"backbone_ms_per_image_b{b}_min", f"x_floor_b{b}", f"postprocess_ms_per_image_b{b}",
                     f"cpu_ms_per_image_b{b}", f"backbone_cpu_ms_per_image_b{b}", f"x_floor_cpu_b{b}"]
    for key in positive:
        assert isinstance(row[key], float) and math.isfinite(row[key]) and row[key] > 0, key
    assert 0.0 <= row["image_auroc"] <= 1.0
    assert row["input_size"] == 64 and row["seed"] == 0
    assert row["n_timing_images"] == 8
    assert row["n_test"] == len(load_category(demo_root, "tile").test)
    # memory is per run (a fresh process), above the bare interpreter + torch baseline
    assert row["peak_rss_mb"] >= row["peak_rss_train_mb"] >= row["rss_after_import_mb"] > 50
    assert row["peak_rss_above_import_mb"] == pytest.approx(row["peak_rss_mb"] - row["rss_after_import_mb"])
    assert (out / "runs" / "tile" / "patchcore" / "model" / "model.safetensors").is_file()


@pytest.mark.parametrize("b", BATCHES)
def test_timing_fields_agree_with_their_rounds(bench, b):
    """Medians, spreads, x floor and its flag are what the recorded paired rounds give; no speed is asserted."""
    out, rows = bench
    row = rows[0]
    rounds = json.loads((out / "runs" / "tile" / "patchcore" / "timing.json").read_text())[f"b{b}"]
    assert row[f"timing_rounds_b{b}"] == ROUNDS
    assert all(len(rounds[k]) == ROUNDS for k in ("predict_s", "backbone_s", "predict_cpu_s", "backbone_cpu_s"))
    assert rounds["backbone_first"] == [r % 2 == 0 for r in range(ROUNDS)]  # the order alternates
    for key, samples in zip(TIMED, (rounds["predict_s"], rounds["backbone_s"]), strict=True):
        key = key.format(b=b)
        per_image = [1000 * t / b for t in samples]
        assert row[key] == pytest.approx(statistics.median(per_image))
        assert row[f"{key}_min"] == pytest.approx(min(per_image))
        assert row[f"{key}_iqr"] == pytest.approx(iqr(per_image))
        assert row[f"{key}_iqr"] >= 0 and row[f"{key}_min"] <= row[key]
    ratios = [p / q for p, q in zip(rounds["predict_s"], rounds["backbone_s"], strict=True)]
    assert row[f"x_floor_b{b}"] == pytest.approx(statistics.median(ratios))
    assert min(ratios) <= row[f"x_floor_b{b}"] <= max(ratios)
    assert row[f"x_floor_b{b}_iqr"] == pytest.approx(iqr(ratios))
    flag = row[f"x_floor_b{b}_below_1"]
    assert isinstance(flag, bool) and flag == (row[f"x_floor_b{b}"] < 1)


def test_bench_writes_json_table_and_plot(bench):
    out, rows = bench
    report = json.loads((out / "bench.json").read_text())
    assert report["rows"][0]["image_auroc"] == pytest.approx(rows[0]["image_auroc"])
    assert report["command"].startswith("adcore bench --data-root ")
    assert "--set backbone.weights=random" in report["command"]
    assert report["consistency"]["warnings"] == []
    assert report["consistency"]["tile"]["seed"] == ["0"]
    assert report["timing_rounds"] == ROUNDS
    assert {"environment", "load_average_before", "batch_sizes", "notes"} <= set(report)
    assert {"adcore", "python", "torch", "torch_threads", "cpu_count", "cuda"} <= set(report["environment"])
    table = (out / "bench.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| category"))
    for col in ("image AUROC", "ms/img b1 (IQR)", "floor b1 (IQR)", "x floor b4", "peak RSS MB", "model MB",
                "train s"):
        assert col in header
    assert "| tile | patchcore |" in table
    assert ("x floor < 1: timing noise" in table) == any(rows[0][f"x_floor_b{b}_below_1"] for b in BATCHES)
    png = (out / "bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_bench_times_the_exports_beside_the_floor(bench):
    """torch, onnxruntime, OpenVINO and the floor at batch 1 on the CPU: medians of the recorded rounds, the
    exports equal to predict on the timing images, and their table in bench.md. No speed is asserted."""
    out, rows = bench
    row = rows[0]
    assert "export_error" not in row, row.get("export_error")
    run = out / "runs" / "tile" / "patchcore"
    rounds = json.loads((run / "timing.json").read_text())["export_b1"]
    for engine in ("floor", "torch", "onnxruntime", "openvino"):
        per_image = [1000 * t for t in rounds[f"{engine}_s"]]
        assert len(per_image) == ROUNDS and min(per_image) > 0
        assert row[f"export_{engine}_ms_per_image_b1"] == pytest.approx(statistics.median(per_image))
        assert row[f"export_{engine}_ms_per_image_b1_iqr"] == pytest.approx(iqr(per_image))
        cpu = [1000 * t for t in rounds[f"{engine}_cpu_s"]]
        assert len(cpu) == ROUNDS
        assert row[f"export_{engine}_cpu_ms_per_image_b1"] == pytest.approx(statistics.median(cpu))
    for engine in ("torch", "onnxruntime", "openvino"):
        ratios = [p / q for p, q in zip(rounds[f"{engine}_s"], rounds["floor_s"], strict=True)]
        assert row[f"export_{engine}_x_floor_b1"] == pytest.approx(statistics.median(ratios))
    for engine in ("onnxruntime", "openvino"):
        assert 0 <= row[f"export_{engine}_max_rel_diff_maps"] <= 1e-4
        assert 0 <= row[f"export_{engine}_max_rel_diff_scores"] <= 1e-4
    assert (run / "export" / "onnx" / "model.onnx").is_file() and (run / "export" / "openvino" / "model.xml").is_file()
    table = (out / "bench.md").read_text()
    assert "Exported inference, batch 1, CPU:" in table
    header = next(line for line in table.splitlines() if line.startswith("| category | method | torch ms/img"))
    for col in ("onnxruntime ms/img", "OpenVINO ms/img", "floor ms/img", "ORT CPU ms", "OV max rel diff"):
        assert col in header


def test_bench_command_records_no_export():
    from adcore.bench.runner import bench_command

    args = ("data", ["tile"], ["patchcore"], "out", "cpu", None, [], None)
    assert bench_command(*args).endswith("--output out")
    assert bench_command(*args, export=False).endswith("--output out --no-export")


def test_export_table_reports_a_failed_export():
    rows = [{"category": "c", "method": "m", "status": "ok", "export_error": "ConfigError: no openvino"}]
    assert "export failed: ConfigError: no openvino" in export_table(rows)
    assert export_table([{"category": "c", "method": "m", "status": "ok"}]) is None


def test_bad_category_fails_before_any_work(demo_root, tmp_path):
    with pytest.raises(DataError, match="no_such_category"):
        run_bench(demo_root, ["no_such_category"], ["patchcore"], tmp_path, overrides=TINY)
    assert not (tmp_path / "runs").exists()


def test_bad_timing_setting_fails_before_any_work(demo_root, tmp_path):
    with pytest.raises(ConfigError, match="^timing_rounds: "):
        run_bench(demo_root, ["tile"], ["patchcore"], tmp_path, overrides=TINY, timing_rounds=1)
    with pytest.raises(ConfigError, match="^batch_sizes: "):
        run_bench(demo_root, ["tile"], ["patchcore"], tmp_path, overrides=TINY, batch_sizes=(0,))
    assert not (tmp_path / "runs").exists()


def test_failed_run_is_recorded_not_fatal(demo_root, tmp_path, monkeypatch):
    # A child that dies (here: /bin/false instead of Python) becomes a "failed" row; the table and JSON still come.
    monkeypatch.setattr(sys, "executable", shutil.which("false"))
    rows = run_bench(demo_root, ["tile", "widget"], ["patchcore"], tmp_path, overrides=TINY, batch_sizes=(1,))
    assert [(r["category"], r["status"], r["returncode"]) for r in rows] == [("tile", "failed", 1),
                                                                             ("widget", "failed", 1)]
    assert "| tile | patchcore | failed |" in (tmp_path / "bench.md").read_text()
    assert json.loads((tmp_path / "bench.json").read_text())["rows"][1]["status"] == "failed"
    assert not (tmp_path / "bench.png").exists()


def test_consistency_flags_different_splits():
    rows = [{"category": "c", "method": m, "status": "ok", "seed": 0, "split_sha256": s, "backbone": "b"}
            for m, s in (("a", "x"), ("b", "y"))]
    checks = consistency_checks(rows)
    assert checks["warnings"] == ["c: methods differ in split_sha256: ['x', 'y']"]
    assert "| c | a |" in bench_table(rows, (1,))


def test_table_marks_an_x_floor_below_one():
    row = {"category": "c", "method": "m", "status": "ok", "ms_per_image_b8": 20.0, "ms_per_image_b8_iqr": 1.5,
           "backbone_ms_per_image_b8": 25.3, "backbone_ms_per_image_b8_iqr": 0.4, "x_floor_b8": 0.79,
           "x_floor_b8_below_1": True}
    line = bench_table([row], (8,)).splitlines()[-1]
    assert "| 20.0 (1.5) | 25.3 (0.400) | 0.79* |" in line
