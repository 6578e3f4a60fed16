"""The promotion gate (components.gate) on constructed per-image scores: a tie, a clear win and a noisy win that
the old point-estimate rule (margin 0, >=) would have promoted; the floor, the tolerance, missing metrics, pairing
by image (seen anomalies drop out of both models) and the settings' checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from adcore.errors import ConfigError, DataError
from adcore.metrics import image_auroc
from components.gate import (
    GateSettings,
    _draws,
    _metric_per_draw,
    decide,
    metric_intervals,
    pair_scores,
    paired_interval,
    read_scores,
)

N_NORMAL, N_ANOMALOUS = 80, 20
LABELS = np.r_[np.zeros(N_NORMAL, np.int64), np.ones(N_ANOMALOUS, np.int64)]


def scores(separation: float, seed: int) -> np.ndarray:
    """Normal images ~ N(0, 1), anomalous ones ~ N(separation, 1): AUROC grows with the separation."""
    return LABELS * separation + np.random.default_rng(seed).normal(size=len(LABELS))


def gate_on(challenger: np.ndarray, champion: np.ndarray, **settings):
    gate = GateSettings(**settings)
    interval = paired_interval(LABELS, challenger, champion, gate)
    others = {"pixel_auroc": 0.95}
    new = {"image_auroc": interval.challenger, **others}
    old = {"image_auroc": interval.champion, **others}
    return interval, decide(new, old, interval, gate, champion_label="champion v1")


def test_tie_clear_win_and_noisy_win():
    champion = scores(1.5, seed=0)
    # a tie: the same model retrained, its scores jittered
    tie = champion + np.random.default_rng(1).normal(scale=0.05, size=len(LABELS))
    interval, (ok, reasons) = gate_on(tie, champion)
    assert not ok and interval.low < 0 < interval.high and abs(interval.difference) < 0.01
    assert reasons[0].startswith("image_auroc ") and "does not beat champion v1's" in reasons[0]

    # a clear win: much better separated
    interval, (ok, reasons) = gate_on(scores(3.5, seed=2), champion)
    assert ok and interval.low > 0.05, interval
    assert "the lower bound clears the margin 0.0" in reasons[0] and "95% CI [+" in reasons[0]

    # a noisy win: better by a point estimate the old rule promoted, but the interval straddles zero
    noisy = scores(1.5, seed=3)
    interval, (ok, reasons) = gate_on(noisy, champion)
    assert interval.difference > 0 and interval.low < 0 < interval.high, interval
    assert not ok and "does not beat" in reasons[0]


def test_margin_floor_tolerance_and_first_model():
    champion = scores(1.5, seed=0)
    win = scores(3.5, seed=2)
    interval, (ok, _) = gate_on(win, champion, margin=0.5)  # wins, but not by half an AUROC
    assert not ok and interval.low < 0.5
    gate = GateSettings(floor=0.99)
    ok, reasons = decide({"image_auroc": 0.9}, None, None, gate)
    assert not ok and reasons == ["image_auroc 0.9000 is below the floor 0.99"]
    ok, reasons = decide({"image_auroc": 0.995}, None, None, gate)
    assert ok and reasons == ["no champion yet: the first model with image_auroc=0.9950 becomes champion (floor 0.99)"]
    interval = paired_interval(LABELS, win, champion, GateSettings())
    ok, reasons = decide({"image_auroc": interval.challenger, "pixel_auroc": 0.90},
                         {"image_auroc": interval.champion, "pixel_auroc": 0.95}, interval, GateSettings())
    assert not ok and reasons[-1] == ("pixel_auroc 0.9000 is worse than champion's 0.9500 by more than the tolerance "
                                      "0.02")


def test_missing_metric_or_comparison_never_promotes():
    gate = GateSettings()
    assert decide({"pixel_auroc": 0.9}, None, None, gate) == (
        False, ["challenger has no image_auroc: a missing metric never promotes"])
    assert decide({"image_auroc": math.nan}, None, None, gate)[0] is False
    ok, reasons = decide({"image_auroc": 0.99}, {"image_auroc": 0.5}, None, gate, champion_label="champion v3")
    assert not ok and reasons == ["no paired comparison with champion v3 on common test images: a missing "
                                  "comparison never promotes"]
    interval = paired_interval(LABELS, scores(3.5, 2), scores(1.5, 0), gate)
    ok, reasons = decide({"image_auroc": interval.challenger}, {"image_auroc": 0.5, "pixel_aupro": 0.8}, interval,
                         gate)
    assert not ok and "challenger has no pixel_aupro while champion has 0.8000" in reasons[-1]


def test_bootstrap_is_paired_seeded_and_exact_per_draw():
    a, b = scores(2.0, 5), scores(1.0, 6)
    gate = GateSettings(resamples=500)
    assert paired_interval(LABELS, a, b, gate) == paired_interval(LABELS, a, b, gate)  # fixed seed
    draws = _draws(LABELS, 20, seed=0)
    assert all(LABELS[row].sum() == N_ANOMALOUS for row in draws)  # stratified: class counts kept
    fast = _metric_per_draw("image_auroc", LABELS, a, draws)
    np.testing.assert_allclose(fast, [image_auroc(a[row], LABELS[row]) for row in draws], atol=1e-12)
    # a model compared with itself: every paired difference is exactly 0
    same = paired_interval(LABELS, a, a, gate)
    assert same.low == same.high == same.difference == 0.0
    ap = paired_interval(LABELS, a, b, GateSettings(metric="image_ap", resamples=200))
    assert ap.low < ap.difference < ap.high
    cis = metric_intervals({f"k{i}": (int(y), float(s)) for i, (y, s) in enumerate(zip(LABELS, a, strict=True))}, 200)
    assert set(cis) == {"image_auroc", "image_ap", "image_f1_max"}
    assert all(low <= value <= high for value, low, high in cis.values())


def test_scores_are_paired_by_image_and_seen_anomalies_drop_out(tmp_path):
    def write(name, rows):
        path = tmp_path / name
        path.write_text("path,defect,label,score\n" + "".join(f"{p},{d},{y},{s}\n" for p, d, y, s in rows))
        return read_scores(path)

    # the same images under two data roots; the challenger (PRN) saw crack/001 in training, the champion did not
    champion = write("a.csv", [("/data/a/tile/test/good/000.png", "good", 0, 0.1),
                               ("/data/a/tile/test/good/001.png", "good", 0, 0.2),
                               ("/data/a/tile/test/crack/000.png", "crack", 1, 0.9),
                               ("/data/a/tile/test/crack/001.png", "crack", 1, 0.3)])
    challenger = write("b.csv", [("/pod/x/tile/test/good/000.png", "good", 0, 0.4),
                                 ("/pod/x/tile/test/good/001.png", "good", 0, 0.1),
                                 ("/pod/x/tile/test/crack/000.png", "crack", 1, 0.8)])
    labels, new, old = pair_scores(challenger, champion)
    assert labels.tolist() == [1, 0, 0] and new.tolist() == [0.8, 0.4, 0.1] and old.tolist() == [0.9, 0.1, 0.2]
    bad = write("c.csv", [("/x/tile/test/good/000.png", "good", 1, 0.4)])
    with pytest.raises(DataError, match="tile/test/good/000.png: labelled 1 for the challenger and 0"):
        pair_scores(bad, champion)
    (tmp_path / "d.csv").write_text("path,defect,label,score\n/x/tile/test/good/0.png,good,0,nan\n")
    with pytest.raises(DataError, match=r"d.csv:2: label must be 0 or 1 and the score finite"):
        read_scores(tmp_path / "d.csv")


@pytest.mark.parametrize(("settings", "message"), [
    ({"metric": "pixel_aupro"}, "promotion metric: 'pixel_aupro' is not one of image_auroc, image_ap, image_f1_max "
                               "(the paired bootstrap resamples per-image scores)"),
    ({"margin": 2.0}, "promotion margin: 2.0 must be a number in [-1.0, 1.0]"),
    ({"tolerance": -0.1}, "promotion tolerance: -0.1 must be a number in [0.0, 1.0]"),
    ({"floor": True}, "promotion floor: True must be a number in [0.0, 1.0]"),
    ({"resamples": 10}, "promotion resamples: 10 must be an integer in [100, 100000]"),
    ({"mode": "yolo"}, "promotion mode: 'yolo' must be one of auto, manual"),
])
def test_settings_are_checked(settings, message):
    with pytest.raises(ConfigError) as exc:
        GateSettings(**settings)
    assert str(exc.value) == message
