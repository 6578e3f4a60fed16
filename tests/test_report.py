"""The shared pieces of every report: the markdown table writer, the environment record, the timing statistics."""

from __future__ import annotations

import statistics

import pytest

from adcore.bench.timing import summarise
from adcore.environment import environment_record
from adcore.metrics import METRIC_KEYS
from adcore.report import markdown_table


def test_markdown_table_headers_formats_and_missing_values():
    rows = [{"method": "a|b", "auroc": 0.91234, "ms": 123.456, "n": 3}, {"method": "c", "auroc": None}]
    table = markdown_table(rows, [("method", "method"), ("auroc", "AUROC"), "ms", "n"], {"auroc": ".2f"})
    assert table.splitlines() == ["| method | AUROC | ms | n |", "|---|---|---|---|",
                                  "| a\\|b | 0.91 | 123.5 | 3 |", "| c | n/a | n/a | n/a |"]


def test_markdown_table_one_formatter_for_every_column():
    table = markdown_table([{"x": 1.0, "y": "s"}], ["x", "y"], lambda v: f"<{v}>", missing="-")
    assert table.splitlines()[-1] == "| <1.0> | <s> |"


def test_summary_columns_name_real_metrics():
    from adcore.bench.report import TABLE_METRICS
    from adcore.quickstart import COLUMNS
    from pipelines.steps import SUMMARY_COLUMNS

    for columns in (COLUMNS, [k for k, _ in TABLE_METRICS], SUMMARY_COLUMNS):
        assert {c for c in columns if c.startswith(("image_", "pixel_"))} <= set(METRIC_KEYS)


def test_quickstart_table_is_the_shared_writer():
    from adcore.quickstart import summary_table

    row = {"category": "tile", "method": "patchcore", "image_auroc": 0.98765, "pixel_auroc": None,
           "ms_per_image": 12.34, "train_seconds": 5.0}
    assert summary_table([row]).splitlines()[-1] == "| tile | patchcore | 0.988 | n/a | n/a | n/a | 12.3 | 5.0 |"


def test_environment_record_has_the_shared_keys():
    env = environment_record("cpu")
    for key in ("adcore", "python", "platform", "processor", "torch", "timm", "numpy", "cuda"):
        assert isinstance(env[key], str) and env[key], key
    assert isinstance(env["cpu_count"], int) and isinstance(env["torch_threads"], int)
    assert env["device"] == "cpu" and "device" not in environment_record()


def test_timing_summary_pairs_rounds():
    b = 2
    samples = {"predict_s": [0.030, 0.032, 0.100, 0.031], "backbone_s": [0.020, 0.040, 0.021, 0.020],
               "postprocess_s": [0.001] * 4, "predict_cpu_s": [0.06] * 4, "backbone_cpu_s": [0.04] * 4}
    fields = summarise(samples, b)
    ratios = [p / q for p, q in zip(samples["predict_s"], samples["backbone_s"], strict=True)]
    assert fields["x_floor_b2"] == pytest.approx(statistics.median(ratios))
    assert fields["ms_per_image_b2"] == pytest.approx(1000 * statistics.median(samples["predict_s"]) / b)
    assert fields["ms_per_image_b2_min"] == pytest.approx(15.0)
    assert fields["x_floor_b2_below_1"] is False and fields["timing_rounds_b2"] == 4
    slow_floor = summarise({**samples, "backbone_s": [0.05] * 4}, b)
    assert slow_floor["x_floor_b2"] < 1 and slow_floor["x_floor_b2_below_1"] is True
