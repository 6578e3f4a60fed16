"""Evaluation metrics for anomaly detection: exact, sort-based, numpy only.

Every metric sorts the scores once and reads the curve off cumulative sums at the ends of groups of equal scores,
so ties form a single step (as in scikit-learn) and no threshold loop is needed. AUROC equals
``sklearn.metrics.roc_auc_score`` and AP equals ``sklearn.metrics.average_precision_score``.

AUPRO follows the MVTec AD paper (Bergmann et al., IJCV 2021, Sec. 4.2 / 5.1): the regions are the 8-connected
components of every ground-truth mask; at each threshold PRO is the mean over all regions of all images of the
fraction of the region's pixels at or above the threshold, and FPR is the fraction of all normal pixels at or above
it. The PRO-over-FPR curve is integrated from FPR 0 up to ``fpr_limit`` (the curve interpolated at the limit) and
divided by ``fpr_limit``, so a perfect detector scores 1.

A sample is predicted anomalous when its score is ``>= threshold``. Metrics that are undefined because only one
class is present raise :class:`adcore.errors.DataError` (a ``ValueError``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from adcore.errors import DataError

__all__ = [
    "METRIC_KEYS",
    "aupro",
    "compute_all",
    "f1_max",
    "image_ap",
    "image_auroc",
    "pixel_ap",
    "pixel_auroc",
    "pro_curve",
    "roc_curve",
]

#: The headline metrics of an evaluation (keys of compute_all's result); higher is better for every one.
METRIC_KEYS = ("image_auroc", "pixel_auroc", "pixel_aupro", "pixel_ap", "image_ap", "image_f1_max", "pixel_f1_max")

_trapezoid = np.trapezoid  # numpy >= 2 (pinned); np.trapz, its old name, is gone since numpy 2.4

# 8-connectivity inside each image, none across the stack axis: one ndimage.label call labels all images.
_STRUCTURE_8 = np.zeros((3, 3, 3), dtype=bool)
_STRUCTURE_8[1] = True


# ----------------------------------------------------------------------------------------------------------------------
# input checks


def _scores_1d(scores: Any, name: str) -> np.ndarray:
    s = np.asarray(scores)
    if s.dtype == bool or not np.issubdtype(s.dtype, np.number):
        raise DataError(f"{name}: expected numeric scores, got dtype {s.dtype}")
    s = s.reshape(-1)
    if np.issubdtype(s.dtype, np.floating) and np.isnan(s).any():
        raise DataError(f"{name}: {int(np.isnan(s).sum())} score(s) are NaN")
    return s


def _binary_1d(labels: Any, name: str) -> np.ndarray:
    y = np.asarray(labels)
    if y.dtype != bool:
        if not np.issubdtype(y.dtype, np.number):
            raise DataError(f"{name}: expected bool or 0/1 labels, got dtype {y.dtype}")
        bad = (y != 0) & (y != 1)
        if bad.any():
            raise DataError(f"{name}: labels must be 0/1 or bool, found value {y[bad].flat[0]!r}")
        y = y != 0
    return y.reshape(-1)


def _pair(scores: Any, labels: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    s = _scores_1d(scores, f"{what} scores")
    y = _binary_1d(labels, f"{what} labels")
    if s.shape != y.shape:
        raise DataError(f"{what}: {s.size} scores but {y.size} labels")
    if s.size == 0:
        raise DataError(f"{what}: no samples")
    return s, y


def _maps_pair(maps: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(maps)
    k = np.asarray(masks)
    if m.ndim == 2 and k.ndim == 2:  # a single map
        m, k = m[None], k[None]
    if m.ndim != 3 or k.shape != m.shape:
        raise DataError(f"anomaly maps {m.shape} and masks {k.shape} must both be (N, H, W) of the same shape")
    s = _scores_1d(m, "anomaly maps").reshape(m.shape)
    y = _binary_1d(k, "ground-truth masks").reshape(k.shape)
    if s.size == 0:
        raise DataError("anomaly maps: no pixels")
    return s, y


def _need_both_classes(n_pos: int, n_neg: int, what: str, metric: str) -> None:
    if n_pos == 0 or n_neg == 0:
        present = "anomalous" if n_pos else "normal"
        raise DataError(f"{metric} is undefined: all {n_pos + n_neg} {what} are {present} (need both classes)")


# ----------------------------------------------------------------------------------------------------------------------
# one sort, read at the ends of tie groups


@dataclass
class _Sorted:
    """Scores sorted descending and the index of the last element of each group of equal scores."""

    order: np.ndarray  # permutation: scores[order] is non-increasing
    ends: np.ndarray  # positions (in sorted order) where a tie group ends
    thresholds: np.ndarray  # the distinct scores, descending

    @classmethod
    def of(cls, scores: np.ndarray) -> _Sorted:
        order = np.argsort(scores)[::-1]  # order inside a tie group is irrelevant: only group ends are read
        s = scores[order]
        ends = np.flatnonzero(s[1:] != s[:-1])  # '!=' (not diff) so that inf, inf is a tie
        ends = np.append(ends, s.size - 1)
        return cls(order=order, ends=ends, thresholds=s[ends])

    def counts(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(false positives, true positives) when thresholding at each distinct score."""
        tps = np.cumsum(y[self.order], dtype=np.int64)[self.ends]
        fps = self.ends + 1 - tps
        return fps, tps


def _auroc_from_counts(fps: np.ndarray, tps: np.ndarray) -> float:
    """Trapezoid area under the ROC steps, in integer arithmetic up to one final division (exact)."""
    n_pos, n_neg = int(tps[-1]), int(fps[-1])
    f = np.concatenate(([0], fps))
    t = np.concatenate(([0], tps))
    twice_area = int(np.sum(np.diff(f) * (t[1:] + t[:-1])))  # 2 * sum dF * (T_i + T_{i-1}) / 2
    return twice_area / (2.0 * n_pos * n_neg)


def _ap_from_counts(fps: np.ndarray, tps: np.ndarray) -> float:
    """AP = sum_k (R_k - R_{k-1}) P_k over distinct thresholds, as scikit-learn (no interpolation)."""
    precision = tps / (tps + fps)
    recall_steps = np.diff(np.concatenate(([0], tps))) / tps[-1]
    return float(np.sum(recall_steps * precision))


def _f1_from_counts(fps: np.ndarray, tps: np.ndarray, thresholds: np.ndarray) -> tuple[float, float]:
    f1 = 2.0 * tps / (tps + fps + tps[-1])  # 2TP / (2TP + FP + FN), FN = P - TP
    best = int(np.argmax(f1))  # first maximum = the highest threshold reaching it
    return float(f1[best]), float(thresholds[best])


def _curve_counts(scores: Any, labels: Any, what: str, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s, y = _pair(scores, labels, what)
    n_pos = int(np.count_nonzero(y))
    _need_both_classes(n_pos, y.size - n_pos, what, metric)
    srt = _Sorted.of(s)
    fps, tps = srt.counts(y)
    return fps, tps, srt.thresholds


# ----------------------------------------------------------------------------------------------------------------------
# image level


def image_auroc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve of image scores against image labels (1 = anomalous)."""
    fps, tps, _ = _curve_counts(scores, labels, "images", "AUROC")
    return _auroc_from_counts(fps, tps)


def image_ap(scores: Any, labels: Any) -> float:
    """Average precision of image scores (anomalous is the positive class)."""
    fps, tps, _ = _curve_counts(scores, labels, "images", "AP")
    return _ap_from_counts(fps, tps)


def roc_curve(scores: Any, labels: Any, drop_intermediate: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) as ``sklearn.metrics.roc_curve``: starts at (0, 0) with threshold +inf.

    ``drop_intermediate`` removes points on straight segments, which keeps pixel-level curves small for plotting.
    """
    fps, tps, thr = _curve_counts(scores, labels, "samples", "ROC curve")
    if drop_intermediate and fps.size > 2:
        keep = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        fps, tps, thr = fps[keep], tps[keep], thr[keep]
    fpr = np.concatenate(([0.0], fps / fps[-1]))
    tpr = np.concatenate(([0.0], tps / tps[-1]))
    thresholds = np.concatenate(([np.inf], thr.astype(np.float64)))
    return fpr, tpr, thresholds


def f1_max(scores: Any, labels: Any) -> tuple[float, float]:
    """(best F1, its threshold) over all thresholds; predictions are ``score >= threshold``.

    Of several thresholds reaching the best F1 the highest is returned.
    """
    fps, tps, thr = _curve_counts(scores, labels, "samples", "F1")
    return _f1_from_counts(fps, tps, thr)


# ----------------------------------------------------------------------------------------------------------------------
# pixel level


def pixel_auroc(maps: Any, masks: Any) -> float:
    """AUROC over all pixels of all images; maps and masks are (N, H, W)."""
    s, y = _maps_pair(maps, masks)
    fps, tps, _ = _curve_counts(s, y, "pixels", "AUROC")
    return _auroc_from_counts(fps, tps)


def pixel_ap(maps: Any, masks: Any) -> float:
    """Average precision over all pixels of all images."""
    s, y = _maps_pair(maps, masks)
    fps, tps, _ = _curve_counts(s, y, "pixels", "AP")
    return _ap_from_counts(fps, tps)


def _pro_weights(masks: np.ndarray) -> np.ndarray:
    """Per-pixel PRO increment: 1 / (n_regions * region_size) inside a region, 0 on normal pixels."""
    labels, n_regions = ndimage.label(masks, structure=_STRUCTURE_8)
    if n_regions == 0:
        raise DataError("AUPRO is undefined: the ground-truth masks contain no anomalous pixel")
    sizes = np.bincount(labels.ravel(), minlength=n_regions + 1)
    per_region = np.zeros(n_regions + 1, dtype=np.float64)
    per_region[1:] = 1.0 / (n_regions * sizes[1:].astype(np.float64))
    return per_region[labels.ravel()]


def _pro_from_sorted(
    srt: _Sorted, y: np.ndarray, masks: np.ndarray, fps: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, pro) from the sorted pixels; `fps` (false positives per threshold) is reused when already known."""
    n_normal = y.size - int(np.count_nonzero(y))
    if n_normal == 0:
        raise DataError("AUPRO is undefined: every pixel of the ground-truth masks is anomalous (no normal pixel)")
    weights = _pro_weights(masks)
    pro = np.cumsum(weights[srt.order])[srt.ends]
    np.minimum(pro, 1.0, out=pro)  # summation rounding must not overshoot
    pro[-1] = 1.0  # at the lowest threshold every region is fully covered; remove the rounding of the sum
    if fps is None:
        fps, _ = srt.counts(y)
    fpr = fps / n_normal
    # threshold above every score: nothing is flagged
    return np.concatenate(([0.0], fpr)), np.concatenate(([0.0], pro))


def pro_curve(maps: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, pro) at every distinct threshold, from the highest down, starting at (0, 0); for plotting."""
    s, y = _maps_pair(maps, masks)
    return _pro_from_sorted(_Sorted.of(s.reshape(-1)), y.reshape(-1), y)


def _area_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under y(x) on [x[0], x_max]; x non-decreasing; the curve is interpolated at x_max."""
    k = int(np.searchsorted(x, x_max, side="right"))  # points with x <= x_max
    xs, ys = x[:k], y[:k]
    if k < x.size and xs[-1] < x_max:
        x0, x1, y0, y1 = x[k - 1], x[k], y[k - 1], y[k]
        y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        xs, ys = np.append(xs, x_max), np.append(ys, y_at)
    return float(_trapezoid(ys, xs))


def _check_limit(fpr_limit: float) -> float:
    fpr_limit = float(fpr_limit)
    if not 0.0 < fpr_limit <= 1.0:
        raise DataError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    return fpr_limit


def aupro(maps: Any, masks: Any, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit`` (MVTec AD, Bergmann et al. 2021)."""
    fpr_limit = _check_limit(fpr_limit)
    fpr, pro = pro_curve(maps, masks)
    return _area_to(fpr, pro, fpr_limit) / fpr_limit


# ----------------------------------------------------------------------------------------------------------------------
# everything at once


def compute_all(
    image_scores: Any,
    labels: Any,
    maps: Any | None = None,
    masks: Any | None = None,
    fpr_limit: float = 0.3,
) -> dict[str, Any]:
    """All image and pixel metrics as a JSON-able dict.

    A metric that cannot be computed (one class only, no masks) is ``None`` and ``image_metrics_note`` /
    ``pixel_metrics_note`` say why (both keys are always present, ``None`` when there is nothing to say).
    The pixel metrics share one sort of all pixels.
    """
    out: dict[str, Any] = {
        "image_auroc": None,
        "image_ap": None,
        "image_f1_max": None,
        "image_f1_threshold": None,
        "image_metrics_note": None,
        "pixel_auroc": None,
        "pixel_aupro": None,
        "pixel_ap": None,
        "pixel_f1_max": None,
        "pixel_f1_threshold": None,
        "pixel_metrics_note": None,
    }
    try:
        fps, tps, thr = _curve_counts(image_scores, labels, "images", "image-level metrics")
        out["image_auroc"] = _auroc_from_counts(fps, tps)
        out["image_ap"] = _ap_from_counts(fps, tps)
        out["image_f1_max"], out["image_f1_threshold"] = _f1_from_counts(fps, tps, thr)
    except DataError as e:
        if "undefined" not in str(e):
            raise  # malformed input is an error, not a note
        out["image_metrics_note"] = str(e)

    if maps is None or masks is None:
        missing = "anomaly maps" if maps is None else "ground-truth masks"
        out["pixel_metrics_note"] = f"no {missing} given, pixel metrics skipped"
        return out

    fpr_limit = _check_limit(fpr_limit)
    s, y = _maps_pair(maps, masks)
    flat_s, flat_y = s.reshape(-1), y.reshape(-1)
    n_pos = int(np.count_nonzero(flat_y))
    try:
        _need_both_classes(n_pos, flat_y.size - n_pos, "pixels", "pixel-level metrics")
    except DataError as e:
        out["pixel_metrics_note"] = str(e)
        return out
    srt = _Sorted.of(flat_s)
    fps, tps = srt.counts(flat_y)
    out["pixel_auroc"] = _auroc_from_counts(fps, tps)
    out["pixel_ap"] = _ap_from_counts(fps, tps)
    out["pixel_f1_max"], out["pixel_f1_threshold"] = _f1_from_counts(fps, tps, srt.thresholds)
    fpr, pro = _pro_from_sorted(srt, flat_y, y, fps)
    out["pixel_aupro"] = _area_to(fpr, pro, fpr_limit) / fpr_limit
    return out
