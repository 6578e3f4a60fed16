"""The bench harness end to end on the demo data: one tiny PatchCore run in its own subprocess."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from adcore.data.mvtec import load_category
from adcore.errors import DataError
from adcore.bench import consistency_checks, markdown_table, run_bench

TINY = ["backbone.weights=random", "data.image_size=64", "data.batch_size=4", "method.patchcore.embedding_dim=64",
        "method.patchcore.coreset_ratio=0.25", "evaluation.max_overlays=0"]


@pytest.fixture(scope="module")
def bench(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    rows = run_bench(demo_root, ["tile"], ["patchcore"], out, profile="cpu", overrides=TINY, batch_sizes=(1, 4),
                     n_timing_images=8)
    return out, rows


def test_bench_row_has_every_measurement(bench, demo_root):
    out, rows = bench
    assert len(rows) == 1
    row = rows[0]
    assert row["status"] == "ok", row.get("error")
    assert (row["method"], row["category"]) == ("patchcore", "tile")
    for key in ("image_auroc", "pixel_auroc", "pixel_aupro", "pixel_ap", "image_ap", "image_f1_max",
                "train_seconds", "ms_per_image_b1", "ms_per_image_b4", "backbone_ms_per_image_b1",
                "backbone_ms_per_image_b4", "x_floor_b1", "x_floor_b4", "postprocess_ms_per_image_b4",
                "peak_rss_mb", "peak_rss_train_mb", "rss_after_import_mb", "model_mb"):
        assert isinstance(row[key], float) and row[key] > 0, key
    assert 0.0 <= row["image_auroc"] <= 1.0
    assert row["input_size"] == 64 and row["seed"] == 0
    assert row["n_timing_images"] == 8
    assert row["n_test"] == len(load_category(demo_root, "tile").test)
    # the floor is part of predict, so predict cannot be much faster than it (allow timer noise)
    assert row["ms_per_image_b4"] > 0.5 * row["backbone_ms_per_image_b4"]
    # memory is per run (a fresh process), above the bare interpreter + torch baseline
    assert row["peak_rss_mb"] >= row["peak_rss_train_mb"] >= row["rss_after_import_mb"] > 50
    assert row["peak_rss_above_import_mb"] == pytest.approx(row["peak_rss_mb"] - row["rss_after_import_mb"])
    assert (out / "runs" / "tile" / "patchcore" / "model" / "model.safetensors").is_file()


def test_bench_writes_json_table_and_plot(bench):
    out, rows = bench
    report = json.loads((out / "bench.json").read_text())
    assert report["rows"][0]["image_auroc"] == pytest.approx(rows[0]["image_auroc"])
    assert report["command"].startswith("adcore bench --data-root ")
    assert "--set backbone.weights=random" in report["command"]
    assert report["consistency"]["warnings"] == []
    assert report["consistency"]["tile"]["seed"] == ["0"]
    assert {"environment", "load_average_before", "batch_sizes", "notes"} <= set(report)
    table = (out / "bench.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| category"))
    for col in ("image AUROC", "ms/img b1", "floor b1", "x floor b4", "peak RSS MB", "model MB", "train s"):
        assert col in header
    assert "| tile | patchcore |" in table
    png = (out / "bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_bad_category_fails_before_any_work(demo_root, tmp_path):
    with pytest.raises(DataError, match="no_such_category"):
        run_bench(demo_root, ["no_such_category"], ["patchcore"], tmp_path, overrides=TINY)
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
    assert "| c | a |" in markdown_table(rows, (1,))
