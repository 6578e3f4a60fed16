"""Figures: overlays blend as documented, PNGs are valid with the expected size, writes leave no temp files."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from adcore import metrics, viz
from adcore.errors import DataError


def _png(path) -> Image.Image:
    with Image.open(path) as im:
        im.verify()  # a complete, uncorrupted PNG
    im = Image.open(path)
    assert im.format == "PNG"
    return im


@pytest.fixture
def sample():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
    amap = np.zeros((48, 40))
    amap[10:20, 12:24] = 1.0
    mask = amap > 0
    return image, amap, mask


def test_overlay_alpha_zero_is_the_image(sample):
    image, amap, _ = sample
    out = viz.heatmap_overlay(image, amap, alpha=0.0)
    assert out.dtype == np.uint8 and out.shape == image.shape
    np.testing.assert_array_equal(out, image)


def test_overlay_differs_where_map_is_high(sample):
    image, amap, _ = sample
    gray = np.full_like(image, 64)
    out = viz.heatmap_overlay(gray, amap, vmin=0.0, vmax=1.0, alpha=0.5)
    hot = amap > 0
    # jet at 1 is dark red (128, 0, 0): red rises, blue falls; at 0 it is dark blue (0, 0, 128)
    np.testing.assert_array_equal(out[hot], np.broadcast_to([96, 32, 32], out[hot].shape))
    np.testing.assert_array_equal(out[~hot], np.broadcast_to([32, 32, 96], out[~hot].shape))
    out = viz.heatmap_overlay(image, amap, alpha=0.5)
    assert (out[hot] != image[hot]).any(axis=-1).all()
    full = viz.heatmap_overlay(gray, amap, vmin=0.0, vmax=1.0, alpha=1.0)
    assert not np.array_equal(full[hot][0], full[~hot][0])


def test_overlay_mask_contour_green(sample):
    image, amap, mask = sample
    out = viz.heatmap_overlay(image, amap, mask=mask, alpha=0.0)
    green = np.all(out == [0, 255, 0], axis=-1)
    assert green[10, 12:24].all() and green[19, 12:24].all() and green[10:20, 12].all()
    assert not green[12:18, 14:22].any()  # interior untouched
    np.testing.assert_array_equal(out[~green], image[~green])


def test_overlay_grayscale_and_errors(sample):
    image, amap, _ = sample
    assert viz.heatmap_overlay(image[..., 0], amap).shape == (48, 40, 3)
    with pytest.raises(DataError, match="differ"):
        viz.heatmap_overlay(image, amap[:-1])
    with pytest.raises(DataError, match="uint8"):
        viz.heatmap_overlay(image.astype(np.float32), amap)
    with pytest.raises(DataError, match="alpha"):
        viz.heatmap_overlay(image, amap, alpha=2)


def test_overlay_panel(tmp_path, sample):
    image, amap, mask = sample
    viz.save_overlay_panel(tmp_path / "p.png", image, amap, mask)
    assert _png(tmp_path / "p.png").size == (3 * 40 + 8, 48)
    arr = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"))
    np.testing.assert_array_equal(arr[:, :40], image)  # first panel is the image, lossless
    viz.save_overlay_panel(tmp_path / "sub" / "t.png", image, amap, title="bottle 003 score 0.91")
    assert _png(tmp_path / "sub" / "t.png").size == (3 * 40 + 8, 48 + 20)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["p.png", "sub", "t.png"]  # no temp files left


def test_curve_plots(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = rng.normal(size=200) + labels
    fpr, tpr, _ = metrics.roc_curve(scores, labels)
    viz.plot_roc(tmp_path / "roc.png", fpr, tpr, metrics.image_auroc(scores, labels), title="ROC")
    assert _png(tmp_path / "roc.png").size == (480, 480)

    masks = np.zeros((4, 64, 64), bool)
    masks[:2, 20:30, 20:40] = True
    maps = rng.random((4, 64, 64)) + masks  # 16k distinct thresholds: the plot thins the curve
    fpr, pro = metrics.pro_curve(maps, masks)
    viz.plot_pro(tmp_path / "pro.png", fpr, pro, metrics.aupro(maps, masks), 0.3, title="PRO")
    assert _png(tmp_path / "pro.png").size == (640, 480)

    viz.plot_score_histogram(tmp_path / "hist.png", scores, labels, threshold=0.5)
    assert _png(tmp_path / "hist.png").size == (640, 480)
    viz.plot_score_histogram(tmp_path / "hist1.png", scores, np.zeros(200))  # one class, no threshold
    assert _png(tmp_path / "hist1.png").size == (640, 480)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hist.png", "hist1.png", "pro.png", "roc.png"]


def test_accuracy_vs_time(tmp_path):
    rows = [
        {"method": "patchcore", "ms_per_image": 40.0, "image_auroc": 0.99},
        {"method": "cfa", "ms_per_image": 12.0, "image_auroc": 0.97},
        {"method": "prn", "ms_per_image": 900.0, "image_auroc": 0.98},
        {"method": "failed", "ms_per_image": None, "image_auroc": None},
    ]
    viz.plot_accuracy_vs_time(tmp_path / "acc.png", rows)
    assert _png(tmp_path / "acc.png").size == (720, 480)
    with pytest.raises(DataError, match="pixel_aupro"):
        viz.plot_accuracy_vs_time(tmp_path / "x.png", rows, y_key="pixel_aupro")
    assert not (tmp_path / "x.png").exists()


def test_no_pyplot_global_state():
    code = "import adcore.viz, sys; print('matplotlib.pyplot' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
