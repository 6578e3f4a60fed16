"""Metrics: hand-computed cases, scikit-learn equality, and a brute-force threshold-loop AUPRO reference."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage
from sklearn import metrics as skm

from adcore import metrics as M
from adcore.errors import DataError

# ----------------------------------------------------------------------------------------------------------------------
# references


def brute_pro_curve(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PRO curve by the definition: loop over every distinct threshold, high to low."""
    masks = masks.astype(bool)
    regions = []
    for i, m in enumerate(masks):
        lab, n = ndimage.label(m, structure=np.ones((3, 3)))
        regions += [(i, lab == k) for k in range(1, n + 1)]
    normal = ~masks
    fpr, pro = [0.0], [0.0]
    for t in sorted(set(maps.ravel().tolist()), reverse=True):
        pred = maps >= t
        pro.append(float(np.mean([pred[i][r].sum() / r.sum() for i, r in regions])))
        fpr.append((pred & normal).sum() / normal.sum())
    return np.array(fpr), np.array(pro)


def brute_area(fpr: np.ndarray, pro: np.ndarray, limit: float) -> float:
    """Segment-by-segment trapezoid up to limit, cutting the crossing segment by linear interpolation."""
    area = 0.0
    for i in range(1, len(fpr)):
        x0, x1, y0, y1 = fpr[i - 1], fpr[i], pro[i - 1], pro[i]
        if x0 >= limit:
            break
        if x1 > limit:
            y1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            x1 = limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / limit


def brute_f1(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    best, best_t = -1.0, None
    for t in sorted(set(scores.tolist()), reverse=True):
        pred = scores >= t
        tp = int((pred & labels).sum())
        fp = int((pred & ~labels).sum())
        p = tp / (tp + fp)
        r = tp / labels.sum()
        f = 0.0 if tp == 0 else 2 * p * r / (p + r)
        if f > best + 1e-12:  # ties keep the higher threshold
            best, best_t = f, t
    return best, best_t


def random_maps(seed: int, n: int = 3, h: int = 12, w: int = 10, levels: int | None = 12):
    """Small maps (quantised when `levels`, to create many ties) and blobby masks; the last image is normal."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.normal(size=(n, h, w)), sigma=(0, 1.2, 1.2))
    masks = noise > np.quantile(noise, 0.8)
    masks[-1] = False
    maps = noise + rng.normal(scale=0.15, size=noise.shape)
    if levels:
        maps = np.round(maps * levels) / levels
    return maps, masks


# ----------------------------------------------------------------------------------------------------------------------
# hand-computed PRO curve


def hand_case():
    """Two 4x4 images. Image 0: region R1 = {(0,0), (1,1)} (diagonal: one region under 8-connectivity), R2 = {(3,3)}.
    Image 1 is normal. 29 normal pixels in total."""
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 3, 3] = True
    maps = np.zeros((2, 4, 4))
    maps[0] = 0.1
    maps[0, 0, 0], maps[0, 1, 1], maps[0, 3, 3], maps[0, 0, 3] = 0.9, 0.5, 0.7, 0.8
    maps[1, 2, 2], maps[1, 0, 0] = 0.6, 0.5  # 0.5 ties with R1's second pixel: one step
    # thresholds 0.9 .8 .7 .6 .5 .1 0 -> (FPR, PRO) by hand:
    fpr = np.array([0, 0, 1, 1, 2, 3, 15, 29]) / 29
    pro = np.array([0, 0.25, 0.25, 0.75, 0.75, 1, 1, 1])
    return maps, masks, fpr, pro


def test_pro_curve_hand_computed():
    maps, masks, fpr, pro = hand_case()
    got_fpr, got_pro = M.pro_curve(maps, masks)
    np.testing.assert_allclose(got_fpr, fpr, rtol=0, atol=1e-15)
    np.testing.assert_allclose(got_pro, pro, rtol=0, atol=1e-15)


def test_aupro_hand_computed_and_limit_interpolation():
    maps, masks, _, _ = hand_case()
    # limit 0.3: 0.25/29 + 0.75/29 + 0.875/29 + (0.3 - 3/29) * 1, divided by 0.3
    assert M.aupro(maps, masks, 0.3) == pytest.approx(1 - 3.75 / 29, abs=1e-12)
    # limit inside the flat part 1/29..2/29 (PRO 0.75): (0.25 + 0.75 * 0.5) / 1.5 = 5/12
    assert M.aupro(maps, masks, 1.5 / 29) == pytest.approx(5 / 12, abs=1e-12)
    # limit inside the rising part 2/29..3/29: PRO interpolated to 0.875 there
    assert M.aupro(maps, masks, 2.5 / 29) == pytest.approx((0.25 + 0.75 + 0.8125 * 0.5) / 2.5, abs=1e-12)
    # limit exactly on a curve point, and the full curve
    assert M.aupro(maps, masks, 3 / 29) == pytest.approx((0.25 + 0.75 + 0.875) / 3, abs=1e-12)
    assert M.aupro(maps, masks, 1.0) == pytest.approx(1 - 1.125 / 29, abs=1e-12)


def test_regions_use_8_connectivity():
    maps, masks, _, _ = hand_case()
    # under 4-connectivity R1 would split into two regions and the first step would be PRO 1/3, not 1/4
    _, pro = M.pro_curve(maps, masks)
    assert pro[1] == pytest.approx(0.25)


# ----------------------------------------------------------------------------------------------------------------------
# brute force AUPRO


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("levels", [None, 12, 3])
def test_aupro_matches_threshold_loop(seed, levels):
    maps, masks = random_maps(seed, levels=levels)
    fpr_ref, pro_ref = brute_pro_curve(maps, masks)
    fpr, pro = M.pro_curve(maps, masks)
    assert fpr.shape == fpr_ref.shape  # one point per distinct threshold: ties are a single step
    np.testing.assert_allclose(fpr, fpr_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(pro, pro_ref, rtol=0, atol=1e-12)
    for limit in (0.05, 0.3, 0.5, 1.0):
        assert abs(M.aupro(maps, masks, limit) - brute_area(fpr_ref, pro_ref, limit)) < 1e-9


def test_aupro_float32_and_unequal_region_sizes():
    maps, masks = random_maps(11, n=4, h=16, w=16, levels=None)
    maps = maps.astype(np.float32)
    fpr_ref, pro_ref = brute_pro_curve(maps, masks)
    assert abs(M.aupro(maps, masks, 0.3) - brute_area(fpr_ref, pro_ref, 0.3)) < 1e-9


def test_aupro_perfect_inverted_constant():
    _, masks = random_maps(1)
    assert M.aupro(masks.astype(float), masks) == pytest.approx(1.0)
    assert M.aupro(1.0 - masks, masks) == pytest.approx(0.0)
    # all scores tied: one step from (0, 0) to (1, 1); area under y = x up to 0.3, over 0.3
    fpr, pro = M.pro_curve(np.zeros(masks.shape), masks)
    np.testing.assert_array_equal(fpr, [0, 1])
    np.testing.assert_array_equal(pro, [0, 1])
    assert M.aupro(np.zeros(masks.shape), masks, 0.3) == pytest.approx(0.15)


def test_aupro_errors():
    maps, masks = random_maps(0)
    with pytest.raises(ValueError, match="no anomalous pixel"):
        M.aupro(maps, np.zeros_like(masks))
    with pytest.raises(ValueError, match="no normal pixel"):
        M.aupro(maps, np.ones_like(masks))
    with pytest.raises(DataError, match="fpr_limit"):
        M.aupro(maps, masks, 0.0)
    with pytest.raises(DataError, match="same shape"):
        M.aupro(maps, masks[:, :-1])
    with pytest.raises(DataError, match="0/1"):
        M.aupro(maps, masks * 255)
    with pytest.raises(DataError, match="NaN"):
        M.aupro(np.where(masks, np.nan, maps), masks)


# ----------------------------------------------------------------------------------------------------------------------
# AUROC / AP / ROC / F1 against scikit-learn and brute force


@pytest.mark.parametrize("seed", range(8))
def test_auroc_ap_equal_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    labels = rng.random(n) < rng.uniform(0.1, 0.9)
    labels[:2] = [True, False]
    scores = rng.integers(0, int(rng.integers(2, 30)), n) + 0.7 * labels  # many ties
    assert M.image_auroc(scores, labels) == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)
    assert M.image_ap(scores, labels) == pytest.approx(skm.average_precision_score(labels, scores), abs=1e-12)
    fpr, tpr, thr = M.roc_curve(scores, labels)
    sk_fpr, sk_tpr, sk_thr = skm.roc_curve(labels, scores)
    np.testing.assert_allclose(fpr, sk_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr, sk_tpr, atol=1e-12)
    np.testing.assert_array_equal(thr[1:], sk_thr[1:])
    assert thr[0] == np.inf
    f1, t = M.f1_max(scores, labels)
    f1_ref, t_ref = brute_f1(scores, labels)
    assert f1 == pytest.approx(f1_ref, abs=1e-12)
    assert t == t_ref


def test_continuous_scores_and_int_labels():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 500)
    scores = rng.normal(size=500) + labels
    assert M.image_auroc(scores, labels) == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)
    assert M.image_ap(scores, labels) == pytest.approx(skm.average_precision_score(labels, scores), abs=1e-12)
    fpr, tpr, _ = M.roc_curve(scores, labels, drop_intermediate=False)
    assert fpr.size == np.unique(scores).size + 1


def test_pixel_auroc_ap_equal_sklearn():
    maps, masks = random_maps(5, n=4, h=20, w=20, levels=5)
    y, s = masks.ravel(), maps.ravel()
    assert M.pixel_auroc(maps, masks) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert M.pixel_ap(maps, masks) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)


def test_ties_are_one_step():
    # one positive and one negative tied: half credit, like sklearn
    assert M.image_auroc([0.5, 0.5], [0, 1]) == 0.5
    assert M.image_auroc([0.1, 0.5, 0.5, 0.9], [0, 0, 1, 1]) == pytest.approx(0.875)
    assert M.image_ap([0.5, 0.5], [0, 1]) == 0.5  # precision 1/2 at the only threshold
    assert M.f1_max([0.5, 0.5], [0, 1]) == (pytest.approx(2 / 3), 0.5)


def test_perfect_and_inverted_detectors():
    labels = np.array([0, 0, 0, 1, 1])
    good = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    assert M.image_auroc(good, labels) == 1.0
    assert M.image_ap(good, labels) == 1.0
    assert M.f1_max(good, labels) == (1.0, 0.8)
    assert M.image_auroc(-good, labels) == 0.0
    assert M.image_ap(-good, labels) == pytest.approx(skm.average_precision_score(labels, -good))


def test_f1_max_hand():
    # thresholds 0.9: TP1 FP0 -> F1 2/(1+0+2)=2/3 ; 0.8: TP1 FP1 -> 2/4 ; 0.7: TP2 FP1 -> 4/5 ; 0.1: TP2 FP2 -> 4/6
    f1, t = M.f1_max([0.9, 0.8, 0.7, 0.1], [1, 0, 1, 0])
    assert f1 == pytest.approx(0.8)
    assert t == 0.7


@pytest.mark.parametrize("fn", [M.image_auroc, M.image_ap, M.f1_max, M.roc_curve])
def test_one_class_raises(fn):
    with pytest.raises(ValueError, match="undefined.*normal"):
        fn([0.1, 0.2, 0.3], [0, 0, 0])
    with pytest.raises(ValueError, match="undefined.*anomalous"):
        fn([0.1, 0.2, 0.3], [1, 1, 1])


def test_bad_input_raises():
    with pytest.raises(DataError, match="3 scores but 2 labels"):
        M.image_auroc([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(DataError, match="0/1"):
        M.image_auroc([0.1, 0.2], [0, 2])
    with pytest.raises(DataError, match="no samples"):
        M.image_auroc([], [])


# ----------------------------------------------------------------------------------------------------------------------
# compute_all


def test_compute_all_matches_individual_metrics():
    maps, masks = random_maps(7, n=5, h=24, w=24, levels=20)
    labels = masks.reshape(5, -1).any(1)
    scores = maps.reshape(5, -1).max(1)
    out = M.compute_all(scores, labels, maps, masks, fpr_limit=0.2)
    assert out["image_auroc"] == M.image_auroc(scores, labels)
    assert out["image_ap"] == M.image_ap(scores, labels)
    assert (out["image_f1_max"], out["image_f1_threshold"]) == M.f1_max(scores, labels)
    assert out["pixel_auroc"] == M.pixel_auroc(maps, masks)
    assert out["pixel_ap"] == M.pixel_ap(maps, masks)
    assert out["pixel_aupro"] == pytest.approx(M.aupro(maps, masks, 0.2), abs=1e-12)
    assert (out["pixel_f1_max"], out["pixel_f1_threshold"]) == M.f1_max(maps.ravel(), masks.ravel())
    assert out["image_metrics_note"] is None and out["pixel_metrics_note"] is None
    json.dumps(out)  # plain floats only


def test_compute_all_missing_or_undefined():
    scores, labels = [0.1, 0.9, 0.4], [0, 1, 0]
    out = M.compute_all(scores, labels)
    assert out["image_auroc"] == 1.0
    for key in ("pixel_auroc", "pixel_aupro", "pixel_ap", "pixel_f1_max", "pixel_f1_threshold"):
        assert out[key] is None
    assert "no anomaly maps" in out["pixel_metrics_note"]

    maps = np.random.default_rng(0).random((3, 8, 8))
    out = M.compute_all([0.1, 0.2, 0.3], [0, 0, 0], maps, np.zeros((3, 8, 8), bool))
    assert out["image_auroc"] is None and "undefined" in out["image_metrics_note"]
    assert out["pixel_aupro"] is None and "undefined" in out["pixel_metrics_note"]
    assert set(out) == {
        "image_auroc", "image_ap", "image_f1_max", "image_f1_threshold", "image_metrics_note",
        "pixel_auroc", "pixel_aupro", "pixel_ap", "pixel_f1_max", "pixel_f1_threshold", "pixel_metrics_note",
    }  # fmt: skip

    with pytest.raises(DataError):  # malformed input is still an error
        M.compute_all([0.1, 0.2], [0, 1, 1])
