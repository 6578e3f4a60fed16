"""Inference timing of one trained model: ``predict`` against the frozen backbone alone, in paired rounds.

A round times the backbone and ``predict`` on the same batch, one right after the other, the order alternating
from round to round, so load from other processes and drift (turbo, thermal, caches) hit both alike. After
warm-up rounds, ``timing_rounds`` rounds per batch size give the median and spread of each, and ``x_floor``
is the median of the per-round ratios predict / backbone. Since ``predict`` includes the backbone, a ratio
below 1 can only be noise; it is flagged (``x_floor_b{B}_below_1``), not hidden.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

#: Paired rounds per batch size: enough for a stable median, few enough that a category stays cheap.
DEFAULT_TIMING_ROUNDS = 20
#: Untimed rounds first: allocator, lazy initialisation, caches, thread pools.
WARMUP_ROUNDS = 3
#: Fewest rounds that give a median and an interquartile range.
MIN_TIMING_ROUNDS = 3


def load_timing_images(model, data_root, category: str, n: int):
    """The first ``n`` test images (PRN's seen anomalies excluded) as one normalised tensor: the timing set."""
    import torch

    from adcore.data.dataset import ImageDataset
    from adcore.data.mvtec import load_category
    from adcore.evaluation import exclude_seen

    cat = load_category(data_root, category, check_images=False)
    test = exclude_seen(cat.test, model.fit_info.get("seen_anomalies") or [])[:n]
    ds = ImageDataset(test, model.make_transform())
    return torch.stack([ds[i]["image"] for i in range(len(ds))])


def time_inference(model, images, batch_sizes: Sequence[int], rounds: int = DEFAULT_TIMING_ROUNDS,
                   warmup: int = WARMUP_ROUNDS) -> tuple[dict[str, Any], dict[str, Any]]:
    """Row fields (medians, spreads, ratios, flags per batch size) and the raw per-round samples behind them."""
    import torch

    from adcore.postprocess import anomaly_maps_to_input

    sigma = model.output_blur_sigma()
    size = tuple(images.shape[-2:])
    sync = (lambda: torch.cuda.synchronize(model.device)) if model.device.type == "cuda" else (lambda: None)

    def backbone(x):
        with torch.inference_mode():
            return model.backbone(x)

    def raw_maps(x):
        with torch.inference_mode():
            return model.predict_raw(x).maps.float()

    def timed(fn: Callable, *args) -> tuple[float, float]:
        sync()
        c0, t0 = time.process_time(), time.perf_counter()
        fn(*args)
        sync()
        return time.perf_counter() - t0, time.process_time() - c0

    fields: dict[str, Any] = {"n_timing_images": 0}
    samples: dict[str, Any] = {}
    for b in batch_sizes:
        n_full = (len(images) // b) * b
        if n_full == 0:
            continue
        fields["n_timing_images"] = max(fields["n_timing_images"], n_full)
        batches = [images[i:i + b].to(model.device) for i in range(0, n_full, b)]
        for r in range(warmup):
            model.predict(batches[r % len(batches)])
            backbone(batches[r % len(batches)])
        s: dict[str, list] = {"predict_s": [], "backbone_s": [], "predict_cpu_s": [], "backbone_cpu_s": [],
                              "backbone_first": []}
        for r in range(rounds):
            x = batches[r % len(batches)]
            backbone_first = r % 2 == 0
            first, second = (backbone, model.predict) if backbone_first else (model.predict, backbone)
            t_first, c_first = timed(first, x)
            t_second, c_second = timed(second, x)
            (tb, cb), (tp, cp) = ((t_first, c_first), (t_second, c_second)) if backbone_first else \
                ((t_second, c_second), (t_first, c_first))
            s["predict_s"].append(tp)
            s["backbone_s"].append(tb)
            s["predict_cpu_s"].append(cp)
            s["backbone_cpu_s"].append(cb)
            s["backbone_first"].append(backbone_first)
        maps = raw_maps(batches[0])
        s["postprocess_s"] = [timed(anomaly_maps_to_input, maps, size, sigma)[0] for _ in range(rounds)]
        samples[f"b{b}"] = s
        fields.update(summarise(s, b))
    return fields, samples


def summarise(s: dict[str, list], b: int) -> dict[str, Any]:
    """The row fields of one batch size from its per-round samples (seconds per batch)."""
    per_image = {k: [1000 * t / b for t in s[k]] for k in ("predict_s", "backbone_s", "postprocess_s",
                                                           "predict_cpu_s", "backbone_cpu_s")}
    ratios = paired_ratios(s["predict_s"], s["backbone_s"])
    x_floor = statistics.median(ratios)
    return {
        f"timing_rounds_b{b}": len(ratios),
        f"ms_per_image_b{b}": statistics.median(per_image["predict_s"]),
        f"ms_per_image_b{b}_iqr": iqr(per_image["predict_s"]),
        f"ms_per_image_b{b}_min": min(per_image["predict_s"]),
        f"backbone_ms_per_image_b{b}": statistics.median(per_image["backbone_s"]),
        f"backbone_ms_per_image_b{b}_iqr": iqr(per_image["backbone_s"]),
        f"backbone_ms_per_image_b{b}_min": min(per_image["backbone_s"]),
        f"x_floor_b{b}": x_floor,
        f"x_floor_b{b}_iqr": iqr(ratios),
        f"x_floor_b{b}_below_1": bool(x_floor < 1.0),
        f"postprocess_ms_per_image_b{b}": statistics.median(per_image["postprocess_s"]),
        # CPU time of this process (all its threads): far less sensitive to other processes than wall time
        f"cpu_ms_per_image_b{b}": statistics.median(per_image["predict_cpu_s"]),
        f"backbone_cpu_ms_per_image_b{b}": statistics.median(per_image["backbone_cpu_s"]),
        f"x_floor_cpu_b{b}": statistics.median(paired_ratios(s["predict_cpu_s"], s["backbone_cpu_s"])),
    }


def paired_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Per-round ratios; a zero denominator (a CPU clock too coarse to see the call) counts as one nanosecond."""
    return [p / max(q, 1e-9) for p, q in zip(numerators, denominators, strict=True)]


def iqr(values: Sequence[float]) -> float:
    """Interquartile range (inclusive quartiles): the spread of the middle half, robust to a few slow rounds."""
    if len(values) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q3 - q1
