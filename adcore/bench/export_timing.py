"""Exported inference against torch and the floor: ms per image of ``predict`` (torch), onnxruntime and OpenVINO
on the CPU, and the frozen backbone alone, batch size 1, in rounds whose order rotates.

The model is exported to both formats (one trace, :func:`adcore.export.export_formats`) into the run folder; each
round times the four on the same image one after the other, the first of them changing from round to round, so load
from other processes hits all alike. Every runtime gets the same number of threads as torch. The equality of the
exported maps with ``predict``'s on the timing images is recorded next to the times (relative to the map range).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adcore.bench.timing import WARMUP_ROUNDS, iqr, paired_ratios

#: Timed in this order in round 0, rotated by one each round; floor first: the others are compared with it.
ENGINES = ("floor", "torch", "onnxruntime", "openvino")
EXPORT_FORMATS = {"onnxruntime": "onnx", "openvino": "openvino"}


def time_exports(model_dir: str | Path, images: Any, export_dir: Path, rounds: int,
                 warmup: int = WARMUP_ROUNDS) -> tuple[dict[str, Any], dict[str, Any]]:
    """Row fields (``export_<engine>_ms_per_image_b1``, spreads, ratios to the floor, equality, export seconds)
    and the per-round samples. An export that cannot be made is recorded as ``export_error``, not raised."""
    import torch

    from adcore.errors import AdcoreError
    from adcore.export import export_formats, load_exported
    from adcore.export.check import compare
    from adcore.methods import load_model

    t0 = time.perf_counter()
    folders = {fmt: Path(export_dir) / fmt for fmt in EXPORT_FORMATS.values()}
    try:
        export_formats(model_dir, folders, batch_size=1, overwrite=True)
    except (AdcoreError, RuntimeError) as exc:  # torch.onnx / OpenVINO conversion errors are RuntimeErrors
        return {"export_error": " ".join(f"{type(exc).__name__}: {exc}".split())[:500]}, {}
    fields: dict[str, Any] = {"export_seconds": time.perf_counter() - t0}
    model = load_model(model_dir, device="cpu")
    threads = torch.get_num_threads()
    runners = {engine: load_exported(folders[fmt], threads=threads) for engine, fmt in EXPORT_FORMATS.items()}
    images = images.cpu()
    for engine, runner in runners.items():
        diff = compare(model, runner, images)
        fields[f"export_{engine}_max_rel_diff_maps"] = diff["max_rel_diff_maps"]
        fields[f"export_{engine}_max_rel_diff_scores"] = diff["max_rel_diff_scores"]

    def floor(x):
        with torch.inference_mode():
            return model.backbone(x)

    def exported(runner: Any) -> Callable[[Any], Any]:
        return lambda x: runner.predict(x.numpy())

    calls: dict[str, Callable[[Any], Any]] = {"floor": floor, "torch": model.predict,
                                              **{engine: exported(runner) for engine, runner in runners.items()}}
    singles = [images[i:i + 1] for i in range(len(images))]
    for r in range(warmup):
        for engine in ENGINES:
            calls[engine](singles[r % len(singles)])
    samples: dict[str, list[float]] = {f"{engine}{kind}": [] for engine in ENGINES for kind in ("_s", "_cpu_s")}
    for r in range(rounds):
        x = singles[r % len(singles)]
        for engine in ENGINES[r % len(ENGINES):] + ENGINES[:r % len(ENGINES)]:
            c0, t0 = time.process_time(), time.perf_counter()
            calls[engine](x)
            samples[f"{engine}_s"].append(time.perf_counter() - t0)
            samples[f"{engine}_cpu_s"].append(time.process_time() - c0)
    for engine in ENGINES:
        ms = [1000 * s for s in samples[f"{engine}_s"]]
        fields[f"export_{engine}_ms_per_image_b1"] = statistics.median(ms)
        fields[f"export_{engine}_ms_per_image_b1_iqr"] = iqr(ms)
        # CPU time of this process (all threads of every runtime): far less sensitive to other processes
        fields[f"export_{engine}_cpu_ms_per_image_b1"] = statistics.median(1000 * s for s in samples[f"{engine}_cpu_s"])
        if engine != "floor":
            fields[f"export_{engine}_x_floor_b1"] = statistics.median(paired_ratios(samples[f"{engine}_s"],
                                                                                    samples["floor_s"]))
    fields["export_threads"] = threads
    return fields, {"rounds": rounds, **samples}
