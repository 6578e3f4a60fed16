"""Time the pixel metrics on a realistic evaluation set: 100 maps of 256 x 256 with blob-shaped defects.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_metrics.py [--n 100] [--size 256] [--repeat 3]``
Prints the best-of-``repeat`` wall time of each metric; sklearn's roc_auc_score is timed for comparison.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adcore import metrics  # noqa: E402


def make_data(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Half the images get 1-3 elliptic blobs; maps are smooth noise plus a bump over the defects."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n // 2, n):
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0.1, 0.9, 2) * size
            ry, rx = rng.uniform(0.01, 0.12, 2) * size
            masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    noise = ndimage.gaussian_filter(rng.normal(size=(n, size, size)), sigma=(0, 4, 4)) * 8
    bump = ndimage.gaussian_filter(masks.astype(np.float64), sigma=(0, 3, 3))
    maps = (noise + 1.5 * bump).astype(np.float32)
    return maps, masks


def best_time(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-sklearn", action="store_true", help="skip the scikit-learn comparison")
    args = ap.parse_args()

    maps, masks = make_data(args.n, args.size)
    labels = masks.reshape(args.n, -1).any(1)
    scores = maps.reshape(args.n, -1).max(1)
    n_regions = ndimage.label(masks, structure=np.pad(np.ones((1, 3, 3)), ((1, 1), (0, 0), (0, 0))))[1]
    print(f"data: {args.n} maps of {args.size}x{args.size} ({maps.size / 1e6:.1f} M pixels, float32), "
          f"{masks.mean():.2%} anomalous pixels, {n_regions} regions")

    rows = [
        ("aupro (fpr_limit 0.3)", lambda: metrics.aupro(maps, masks, 0.3)),
        ("pixel_auroc", lambda: metrics.pixel_auroc(maps, masks)),
        ("pixel_ap", lambda: metrics.pixel_ap(maps, masks)),
        ("pro_curve", lambda: len(metrics.pro_curve(maps, masks)[0])),
        ("compute_all (all 9 metrics)", lambda: metrics.compute_all(scores, labels, maps, masks)["pixel_aupro"]),
    ]
    if not args.no_sklearn:
        from sklearn.metrics import roc_auc_score

        rows.append(("sklearn roc_auc_score (pixels)", lambda: roc_auc_score(masks.ravel(), maps.ravel())))
    for name, fn in rows:
        t, value = best_time(fn, args.repeat)
        print(f"{name:34s} {t:7.2f} s   -> {value}")


if __name__ == "__main__":
    main()
