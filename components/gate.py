"""The promotion gate: does the challenger beat the champion by more than run-to-run noise?

Both models' per-image scores on the same test images (``scores.csv`` of components.evaluate, matched by
``<category>/test/<defect>/<file>``, so images seen by either model in training, PRN's, drop out of both) are
resampled together: a stratified paired bootstrap (normal and anomalous images drawn separately, the same draws
for both models, a fixed seed) gives a confidence interval of the difference of the promotion metric. The
challenger is promoted only when

- its metric is at least the absolute ``floor`` (the first model too),
- the interval's lower bound is above the ``margin`` (a tie, or a win the noise could explain, does not promote),
- no other metric is worse than the champion's by more than the ``tolerance``.

A missing metric never promotes. ``mode="manual"`` leaves the champion to a person: a challenger that passes
becomes ``candidate`` (components.register).
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adcore.errors import ConfigError, DataError
from adcore.metrics import METRIC_KEYS

#: Metrics computed from per-image scores, hence the ones the bootstrap can resample.
GATE_METRICS = ("image_auroc", "image_ap", "image_f1_max")
MODES = ("auto", "manual")


@dataclass(frozen=True)
class GateSettings:
    metric: str = "image_auroc"
    margin: float = 0.0
    tolerance: float = 0.02
    floor: float = 0.0
    resamples: int = 2000
    mode: str = "auto"
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        def bad(name: str, rule: str) -> ConfigError:
            return ConfigError(f"promotion {name}: {getattr(self, name)!r} {rule}")

        if self.metric not in GATE_METRICS:
            raise ConfigError(f"promotion metric: {self.metric!r} is not one of {', '.join(GATE_METRICS)} (the "
                              "paired bootstrap resamples per-image scores)")
        for name, low, high in (("margin", -1.0, 1.0), ("tolerance", 0.0, 1.0), ("floor", 0.0, 1.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise bad(name, f"must be a number in [{low}, {high}]")
        if isinstance(self.resamples, bool) or not isinstance(self.resamples, int) or \
                not 100 <= self.resamples <= 100_000:
            raise bad("resamples", "must be an integer in [100, 100000]")
        if self.mode not in MODES:
            raise bad("mode", f"must be one of {', '.join(MODES)}")
        if not 0.5 <= self.confidence < 1.0:
            raise bad("confidence", "must be in [0.5, 1)")

    def as_tags(self) -> dict[str, str]:
        return {f"promotion.{k}": str(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Interval:
    """The paired difference challenger - champion of ``metric`` on ``n_images`` common images."""

    metric: str
    challenger: float
    champion: float
    difference: float
    low: float
    high: float
    confidence: float
    resamples: int
    n_images: int
    n_anomalous: int

    def describe(self) -> str:
        return (f"{self.difference:+.4f}, {100 * self.confidence:g}% CI [{self.low:+.4f}, {self.high:+.4f}] "
                f"(paired bootstrap, {self.n_images} images, {self.resamples} resamples)")


# --------------------------------------------------------------------------------------------- per-image scores


def test_key(path: str) -> str:
    """``<category>/test/<defect>/<file>``: the same image under any dataset root (as adcore.evaluation)."""
    return "/".join(Path(path).parts[-4:])


def read_scores(path: str | Path) -> dict[str, tuple[int, float]]:
    """``scores.csv`` (path, defect, label, score) -> {image key: (label, score)}; DataError naming the file."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise DataError(f"{path}: cannot read the per-image scores ({exc})") from None
    out: dict[str, tuple[int, float]] = {}
    for i, row in enumerate(rows, start=2):
        try:
            label, score = int(row["label"]), float(row["score"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{path}:{i}: expected columns path, label, score with an integer label and a number "
                            "score") from None
        if label not in (0, 1) or not math.isfinite(score):
            raise DataError(f"{path}:{i}: label must be 0 or 1 and the score finite (got {label}, {score})")
        out[test_key(row["path"])] = (label, score)
    if not out:
        raise DataError(f"{path}: no per-image scores")
    return out


def pair_scores(challenger: dict[str, tuple[int, float]],
                champion: dict[str, tuple[int, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, challenger scores, champion scores) over the images both were evaluated on."""
    common = sorted(set(challenger) & set(champion))
    if not common:
        raise DataError("the challenger and the champion were evaluated on no common test image")
    differ = [k for k in common if challenger[k][0] != champion[k][0]]
    if differ:
        raise DataError(f"test image {differ[0]}: labelled {challenger[differ[0]][0]} for the challenger and "
                        f"{champion[differ[0]][0]} for the champion")
    labels = np.array([challenger[k][0] for k in common], dtype=np.int64)
    return (labels, np.array([challenger[k][1] for k in common], dtype=np.float64),
            np.array([champion[k][1] for k in common], dtype=np.float64))


# --------------------------------------------------------------------------------------------- bootstrap


def _draws(labels: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) image indices, normal and anomalous images drawn separately (every draw has both)."""
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    if not len(pos) or not len(neg):
        raise DataError(f"the common test images have {len(pos)} anomalous and {len(neg)} normal images: the "
                        "image metrics need both")
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.choice(pos, (resamples, len(pos))), rng.choice(neg, (resamples, len(neg)))], axis=1)


def _metric_per_draw(metric: str, labels: np.ndarray, scores: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """The metric of each resample (rows of ``draws``)."""
    if metric == "image_auroc":  # Mann-Whitney U on each row, vectorised; ties count half
        from scipy.stats import rankdata

        drawn_labels = labels[draws]
        n_pos = drawn_labels[0].sum()
        n_neg = drawn_labels.shape[1] - n_pos
        ranks = rankdata(scores[draws], axis=1)
        return ((ranks * drawn_labels).sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.array([metric_value(metric, labels[row], scores[row]) for row in draws])


def metric_value(metric: str, labels: np.ndarray, scores: np.ndarray) -> float:
    from adcore import metrics

    if metric == "image_auroc":
        return float(metrics.image_auroc(scores, labels))
    if metric == "image_ap":
        return float(metrics.image_ap(scores, labels))
    if metric == "image_f1_max":
        return float(metrics.f1_max(scores, labels)[0])
    raise ConfigError(f"promotion metric: {metric!r} is not one of {', '.join(GATE_METRICS)}")


def _bounds(values: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def paired_interval(labels: np.ndarray, challenger: np.ndarray, champion: np.ndarray,
                    settings: GateSettings) -> Interval:
    """Confidence interval of metric(challenger) - metric(champion), resampling the same images for both."""
    draws = _draws(labels, settings.resamples, settings.seed)
    diffs = (_metric_per_draw(settings.metric, labels, challenger, draws)
             - _metric_per_draw(settings.metric, labels, champion, draws))
    new, old = (metric_value(settings.metric, labels, s) for s in (challenger, champion))
    low, high = _bounds(diffs, settings.confidence)
    return Interval(settings.metric, new, old, new - old, low, high, settings.confidence, settings.resamples,
                    len(labels), int(labels.sum()))


def metric_intervals(scores: dict[str, tuple[int, float]], resamples: int = 2000, seed: int = 0,
                     confidence: float = 0.95) -> dict[str, tuple[float, float, float]]:
    """{metric: (value, low, high)} of one model's image metrics (for the model card)."""
    labels = np.array([v[0] for v in scores.values()], dtype=np.int64)
    values = np.array([v[1] for v in scores.values()], dtype=np.float64)
    draws = _draws(labels, resamples, seed)
    return {m: (metric_value(m, labels, values), *_bounds(_metric_per_draw(m, labels, values, draws), confidence))
            for m in GATE_METRICS}


# --------------------------------------------------------------------------------------------- decision


def number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def decide(challenger: dict[str, Any], champion: dict[str, Any] | None, interval: Interval | None,
           settings: GateSettings, champion_label: str = "champion") -> tuple[bool, list[str]]:
    """(passes?, reasons). ``champion`` None: there is none yet. ``interval`` None with a champion: no paired
    comparison was possible, which never passes."""
    metric = settings.metric
    new = number(challenger.get(metric))
    if new is None:
        return False, [f"challenger has no {metric}: a missing metric never promotes"]
    reasons: list[str] = []
    passes = True
    if new < settings.floor:
        passes = False
        reasons.append(f"{metric} {new:.4f} is below the floor {settings.floor}")
    if champion is None:
        if passes:
            reasons.append(f"no champion yet: the first model with {metric}={new:.4f} becomes champion (floor "
                           f"{settings.floor})")
        return passes, reasons
    if interval is None:
        return False, reasons + [f"no paired comparison with {champion_label} on common test images: a missing "
                                 "comparison never promotes"]
    if interval.low > settings.margin:
        reasons.append(f"{metric} {interval.challenger:.4f} beats {champion_label}'s {interval.champion:.4f} by "
                       f"{interval.describe()}: the lower bound clears the margin {settings.margin}")
    else:
        passes = False
        reasons.append(f"{metric} {interval.challenger:.4f} does not beat {champion_label}'s "
                       f"{interval.champion:.4f} by the margin {settings.margin}: {interval.describe()}")
    for key in METRIC_KEYS:
        if key == metric:
            continue
        a, b = number(challenger.get(key)), number(champion.get(key))
        if a is None and b is None:
            continue
        if a is None:
            passes = False
            reasons.append(f"challenger has no {key} while {champion_label} has {b:.4f}: a missing metric never "
                           "promotes")
        elif b is not None and a < b - settings.tolerance:
            passes = False
            reasons.append(f"{key} {a:.4f} is worse than {champion_label}'s {b:.4f} by more than the tolerance "
                           f"{settings.tolerance}")
    return passes, reasons


__all__ = ["GATE_METRICS", "GateSettings", "Interval", "decide", "metric_intervals", "pair_scores",
           "paired_interval", "read_scores"]
