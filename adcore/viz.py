"""Figures for reports: heatmap overlays, ROC / PRO curves, score histograms, accuracy-vs-time plots.

Figures are drawn on ``matplotlib.figure.Figure`` with the Agg canvas directly, never through pyplot, so no global
backend or figure state is touched and nothing needs a display. Every file is written atomically (temp file in the
same folder, then ``os.replace``), so a crash never leaves a half-written PNG.
"""

from __future__ import annotations

import io
import os
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from adcore.errors import DataError
from adcore.io import atomic_write_bytes

__all__ = [
    "heatmap_overlay",
    "plot_accuracy_vs_time",
    "plot_pro",
    "plot_roc",
    "plot_score_histogram",
    "save_overlay_panel",
]

_CMAP = matplotlib.colormaps["jet"]
_GREEN = np.array([0, 255, 0], dtype=np.uint8)
_MAX_CURVE_POINTS = 4000  # pixel-level curves have millions of points; a plot needs a few thousand


# ----------------------------------------------------------------------------------------------------------------------
# atomic writes (adcore.io)


def _save_image(path: str | os.PathLike, rgb: np.ndarray) -> None:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def _new_figure(size_px: tuple[int, int] = (640, 480), dpi: int = 100) -> Figure:
    fig = Figure(figsize=(size_px[0] / dpi, size_px[1] / dpi), dpi=dpi)
    FigureCanvasAgg(fig)  # attaches the Agg canvas to this figure only
    return fig


def _save_figure(path: str | os.PathLike, fig: Figure) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)  # no bbox_inches: the PNG has exactly the figure's pixel size
    atomic_write_bytes(path, buf.getvalue())


# ----------------------------------------------------------------------------------------------------------------------
# overlays


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    elif img.ndim == 3 and img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    if img.ndim != 3 or img.shape[2] != 3:
        raise DataError(f"overlay: expected an H x W x 3 image, got shape {img.shape}")
    if img.dtype != np.uint8:
        raise DataError(f"overlay: expected a uint8 image, got dtype {img.dtype}")
    return img


def _colorize(anomaly_map: np.ndarray, vmin: float | None, vmax: float | None) -> np.ndarray:
    """Map values to jet RGB uint8, scaled to [vmin, vmax] (default: the map's own min and max)."""
    m = np.asarray(anomaly_map, dtype=np.float64)
    if m.ndim != 2:
        raise DataError(f"overlay: expected an H x W anomaly map, got shape {m.shape}")
    lo = float(np.nanmin(m)) if vmin is None else float(vmin)
    hi = float(np.nanmax(m)) if vmax is None else float(vmax)
    scaled = np.clip((m - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(m)
    return (_CMAP(scaled)[..., :3] * 255.0 + 0.5).astype(np.uint8)


def _contour(mask: np.ndarray) -> np.ndarray:
    """The inner boundary of the mask (mask pixels with a non-mask 8-neighbour, or on the image border)."""
    m = np.asarray(mask) != 0
    inner = ndimage.binary_erosion(m, structure=np.ones((3, 3), bool), border_value=0)
    return m & ~inner


def heatmap_overlay(
    image_uint8_hwc: np.ndarray,
    anomaly_map: np.ndarray,
    mask: np.ndarray | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    alpha: float = 0.5,
) -> np.ndarray:
    """Image blended with the jet-coloured map: (1 - alpha) * image + alpha * colour; mask outline in green.

    Returns uint8 H x W x 3. With alpha 0 (and no mask) the image is returned unchanged.
    """
    if not 0.0 <= alpha <= 1.0:
        raise DataError(f"heatmap_overlay: alpha must be in [0, 1], got {alpha}")
    img = _as_rgb_uint8(image_uint8_hwc)
    color = _colorize(anomaly_map, vmin, vmax)
    if color.shape != img.shape:
        raise DataError(f"heatmap_overlay: map {color.shape[:2]} and image {img.shape[:2]} differ in size")
    out = np.rint((1.0 - alpha) * img + alpha * color.astype(np.float64)).astype(np.uint8)
    if mask is not None:
        if np.shape(mask) != img.shape[:2]:
            raise DataError(f"heatmap_overlay: mask {np.shape(mask)} and image {img.shape[:2]} differ in size")
        out[_contour(mask)] = _GREEN
    return out


def _text_strip(text: str, width: int) -> np.ndarray:
    strip = Image.new("RGB", (width, 20), (255, 255, 255))
    ImageDraw.Draw(strip).text((4, 4), text, fill=(0, 0, 0), font=ImageFont.load_default())
    return np.asarray(strip)


def save_overlay_panel(
    path: str | os.PathLike,
    image: np.ndarray,
    anomaly_map: np.ndarray,
    mask: np.ndarray | None = None,
    title: str = "",
) -> None:
    """PNG of image | coloured map | overlay at full resolution (W x H each, 4 px white gaps).

    The size is (3 W + 8) x H, plus a 20 px strip on top when a title is given.
    """
    img = _as_rgb_uint8(image)
    heat = _colorize(anomaly_map, None, None)
    if heat.shape != img.shape:
        raise DataError(f"save_overlay_panel: map {heat.shape[:2]} and image {img.shape[:2]} differ in size ({path})")
    over = heatmap_overlay(img, anomaly_map, mask)
    if mask is not None:
        heat = heat.copy()
        heat[_contour(mask)] = _GREEN
    gap = np.full((img.shape[0], 4, 3), 255, dtype=np.uint8)
    panel = np.concatenate([img, gap, heat, gap, over], axis=1)
    if title:
        panel = np.concatenate([_text_strip(title, panel.shape[1]), panel], axis=0)
    _save_image(path, panel)


# ----------------------------------------------------------------------------------------------------------------------
# curves and charts


def _thin(x: np.ndarray, y: np.ndarray, n: int = _MAX_CURVE_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most about 2n points of a monotone-in-x curve, evenly spread in index and in x; keeps both ends."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise DataError(f"curve: x {x.shape} and y {y.shape} must be 1-D arrays of the same length")
    if x.size <= 2 * n:
        return x, y
    by_index = np.linspace(0, x.size - 1, n).astype(np.int64)
    by_x = np.clip(np.searchsorted(x, np.linspace(x[0], x[-1], n)), 0, x.size - 1)
    keep = np.unique(np.concatenate((by_index, by_x, [0, x.size - 1])))
    return x[keep], y[keep]


def plot_roc(path: str | os.PathLike, fpr: np.ndarray, tpr: np.ndarray, auc: float, title: str = "") -> None:
    """ROC curve with the chance diagonal; 480 x 480 PNG."""
    x, y = _thin(fpr, tpr)
    fig = _new_figure((480, 480))
    ax = fig.add_subplot()
    ax.plot(x, y, color="tab:blue", lw=2, label=f"AUROC = {auc:.4f}")
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save_figure(path, fig)


def plot_pro(
    path: str | os.PathLike,
    fpr: np.ndarray,
    pro: np.ndarray,
    aupro: float,
    fpr_limit: float,
    title: str = "",
) -> None:
    """PRO curve with the integrated area (FPR 0..fpr_limit) shaded and the limit marked; 640 x 480 PNG."""
    x, y = _thin(fpr, pro)
    fig = _new_figure((640, 480))
    ax = fig.add_subplot()
    ax.plot(x, y, color="tab:blue", lw=2, label=f"AUPRO@{fpr_limit:g} = {aupro:.4f}")
    inside = x <= fpr_limit
    if inside.any():
        xs = np.append(x[inside], fpr_limit)
        ys = np.append(y[inside], np.interp(fpr_limit, x, y))
        ax.fill_between(xs, ys, color="tab:blue", alpha=0.15, step=None)
    ax.axvline(fpr_limit, color="tab:red", ls="--", lw=1.5, label=f"FPR limit {fpr_limit:g}")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate (normal pixels)",
           ylabel="per-region overlap (PRO)", title=title)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save_figure(path, fig)


def plot_score_histogram(
    path: str | os.PathLike,
    scores: np.ndarray,
    labels: np.ndarray,
    threshold: float | None = None,
) -> None:
    """Overlaid histograms of the scores of normal and anomalous samples, threshold marked; 640 x 480 PNG."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1) != 0
    if s.shape != y.shape:
        raise DataError(f"plot_score_histogram: {s.size} scores but {y.size} labels ({path})")
    finite = s[np.isfinite(s)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 41)
    fig = _new_figure((640, 480))
    ax = fig.add_subplot()
    for sel, name, color in ((~y, "normal", "tab:green"), (y, "anomalous", "tab:red")):
        if sel.any():
            ax.hist(s[sel], bins=bins.tolist(), alpha=0.55, color=color, label=f"{name} (n={int(sel.sum())})")
    if threshold is not None:
        ax.axvline(float(threshold), color="black", ls="--", lw=1.5, label=f"threshold {float(threshold):.4g}")
    ax.set(xlabel="anomaly score", ylabel="count")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save_figure(path, fig)


def plot_accuracy_vs_time(
    path: str | os.PathLike,
    rows: list[dict[str, Any]],
    x_key: str = "ms_per_image",
    y_key: str = "image_auroc",
    label_key: str = "method",
) -> None:
    """Scatter of accuracy against inference time, one labelled point per row; 720 x 480 PNG.

    Rows whose x or y is None (a failed or undefined measurement) are left out; a missing key is an error.
    The x axis is logarithmic when the times span more than a factor of 10.
    """
    pts: list[tuple[float, float, str]] = []
    for i, row in enumerate(rows):
        for key in (x_key, y_key):
            if key not in row:
                raise DataError(f"plot_accuracy_vs_time: row {i} has no key '{key}' ({path})")
        if row[x_key] is None or row[y_key] is None:
            continue
        pts.append((float(row[x_key]), float(row[y_key]), str(row.get(label_key, f"row {i}"))))
    if not pts:
        raise DataError(f"plot_accuracy_vs_time: no row has both '{x_key}' and '{y_key}' ({path})")
    fig = _new_figure((720, 480))
    ax = fig.add_subplot()
    xs = np.array([p[0] for p in pts])
    ys = np.array([p[1] for p in pts])
    ax.scatter(xs, ys, s=40, color="tab:blue", zorder=3)
    ax.margins(0.12)  # room for the labels
    for x, y, name in pts:
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=9)
    if (xs > 0).all() and xs.max() > 10 * xs.min():
        ax.set_xscale("log")
    ax.set(xlabel=x_key, ylabel=y_key)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    _save_figure(path, fig)
