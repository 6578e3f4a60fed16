"""Benchmark: every method on every category, side by side, with the same seeds, splits and backbone settings.

- :mod:`adcore.bench.runner` (the parent, ``adcore bench``): one fresh process per (method, category), then
  ``bench.json`` (rows + environment + consistency checks), ``bench.md`` (the table) and ``bench.png`` (image
  AUROC against batched inference time) in the output folder;
- :mod:`adcore.bench.child`: one run: trains (``adcore.training.train_model``), evaluates
  (``adcore.evaluation.evaluate_model``), times, and writes ``runs/<category>/<method>/`` (model, metrics, the
  timing rounds, log);
- :mod:`adcore.bench.timing`: ``predict`` against the backbone-only floor in paired, alternating rounds;
- :mod:`adcore.bench.export_timing`: the model exported to ONNX and OpenVINO, ms per image of torch, onnxruntime
  and OpenVINO on the CPU against the same floor;
- :mod:`adcore.bench.report`: the markdown table and page, and the checks that the comparison was fair.

Nothing is chosen on the test split: training and calibration see only ``train/good`` (split by the seed); the
test images are only scored and timed.
"""

from adcore.bench.report import bench_table, consistency_checks, markdown_report
from adcore.bench.runner import run_bench
from adcore.bench.timing import load_timing_images

__all__ = ["bench_table", "consistency_checks", "load_timing_images", "markdown_report", "run_bench"]
