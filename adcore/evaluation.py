"""Evaluate a trained model on a category's test split: metrics JSON, per-image scores, overlays and curves.

Outputs, next to the metrics JSON ``<out>.json``:
``scores.csv`` (path, defect, label, score), ``roc.png``, ``pro.png``, ``score_histogram.png`` and
``overlays/*.png`` (image | heatmap | overlay with the ground truth outlined).
"""

from __future__ import annotations

import csv
import hashlib
import io
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adcore.data.dataset import make_loader
from adcore.data.mvtec import load_category
from adcore.errors import DataError
from adcore.io import atomic_write_json, atomic_write_text, file_sha256
from adcore.methods import load_model
from adcore.metrics import METRIC_KEYS  # noqa: F401  (re-exported)
from adcore.progress import progress as progress_iter


def evaluate_model(
    model_dir: str | Path,
    data_root: str | Path,
    category: str,
    output_json: str | Path,
    *,
    device: str | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    write_artifacts: bool = True,
    exclude: Iterable[str] = (),
    evaluation: Any = None,
) -> dict[str, Any]:
    """Score every test image of ``data_root/category`` (except PRN's seen anomalies) and write the results.
    ``evaluation``: an EvaluationConfig replacing the model's own (dvc: params.yaml's, which training ignores)."""
    from adcore import metrics, viz

    model = load_model(model_dir, device=device)
    if evaluation is not None:
        model.settings.evaluation = evaluation
    cat = load_category(data_root, category)
    # PRN's seen anomalies trained the model; ``exclude`` removes another model's, to compare on the same split.
    # Matched by <category>/test/<defect>/<file>, not by the full path: the data root at evaluation (another pod's
    # artifact path, a relative path, a re-evaluation on new data) need not be the one used in training.
    seen = sorted(set(model.fit_info.get("seen_anomalies") or []) | {str(p) for p in exclude})
    test = exclude_seen(cat.test, seen)
    if not test:
        raise DataError(f"{cat.root / cat.name}/test: no test images to evaluate")
    transform = model.make_transform()
    bs = batch_size or model.settings.data.batch_size
    loader = make_loader(test, transform, bs, model.settings.data.num_workers)

    n = len(test)
    size = transform.output_size
    maps = np.empty((n, size, size), dtype=np.float32)
    masks = np.zeros((n, size, size), dtype=bool) if cat.has_masks else None
    scores = np.empty(n, dtype=np.float64)
    labels = np.array([s.label for s in test], dtype=np.int64)
    predict_seconds = 0.0
    for batch in progress_iter(loader, desc=f"evaluating {category}", enabled=progress):
        images = batch["image"]
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        t0 = time.perf_counter()
        pred = model.predict(images)
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        predict_seconds += time.perf_counter() - t0
        idx = batch["index"].numpy()
        maps[idx] = pred.maps.numpy()
        scores[idx] = pred.scores.numpy()
        if masks is not None:
            masks[idx] = batch["mask"].numpy() > 0.5

    results = metrics.compute_all(scores, labels, maps, masks, fpr_limit=model.settings.evaluation.aupro_fpr_limit)
    if masks is None:
        results["pixel_metrics_note"] = cat.masks_note
    results.update({
        "n_images": n,
        "n_anomalous": int(labels.sum()),
        "ms_per_image": 1000.0 * predict_seconds / n,
        "batch_size": bs,
        "method": model.name,
        "category": category,
        "device": str(model.device),
        "excluded_seen_anomalies": seen,
        "model_dir": str(model_dir),
    })
    output_json = Path(output_json)
    output_json.parent.mkdir(parents=True, exist_ok=True)
    if write_artifacts:
        out_dir = output_json.parent
        _write_scores_csv(out_dir / "scores.csv", test, labels, scores)
        results["artifacts"] = _write_plots(out_dir, model, test, transform, maps, masks, scores, labels, results,
                                            viz, metrics)
    atomic_write_json(output_json, results)
    return results


def _test_key(path: str | Path) -> tuple[str, ...]:
    """``<category>/test/<defect>/<file>``: identifies a test image independently of the dataset root."""
    return Path(path).parts[-4:]


def exclude_seen(test: list, seen: Iterable[str | Path]) -> list:
    """The test samples that are not among ``seen`` (paths of seen anomalies, under any dataset root)."""
    keys = {_test_key(p) for p in seen}
    return [s for s in test if _test_key(s.path) not in keys]


def split_fingerprint(data_root: str | Path, category: str, exclude: Iterable[str] = ()) -> str:
    """Fingerprint of the evaluated test split (images and masks, by content, less ``exclude``, e.g. PRN's seen
    anomalies): metrics are comparable only when equal. Independent of the data root, like ``exclude_seen``."""
    root = Path(data_root)
    cat = load_category(root, category, check_images=False)
    digest = hashlib.sha256()
    for s in exclude_seen(cat.test, exclude):
        digest.update(f"{Path(s.path).relative_to(root / category).as_posix()}\0{s.label}\0"
                      f"{file_sha256(s.path)}\0{file_sha256(s.mask_path) if s.mask_path else ''}\n".encode())
    return digest.hexdigest()


def _write_scores_csv(path: Path, test: list, labels: np.ndarray, scores: np.ndarray) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "defect", "label", "score"])
    for sample, label, score in zip(test, labels, scores, strict=True):
        writer.writerow([str(sample.path), sample.defect, int(label), f"{score:.6g}"])
    atomic_write_text(path, buf.getvalue())


def _write_plots(out_dir: Path, model, test, transform, maps, masks, scores, labels, results, viz, metrics) -> list:
    written = []
    name = f"{model.name} / {results['category']}"
    if results.get("image_auroc") is not None:
        fpr, tpr, _ = metrics.roc_curve(scores, labels)
        viz.plot_roc(out_dir / "roc.png", fpr, tpr, results["image_auroc"], title=f"image ROC, {name}")
        written.append("roc.png")
    if results.get("pixel_aupro") is not None:
        fpr, pro = metrics.pro_curve(maps, masks)
        viz.plot_pro(out_dir / "pro.png", fpr, pro, results["pixel_aupro"], model.settings.evaluation.aupro_fpr_limit,
                     title=f"PRO, {name}")
        written.append("pro.png")
    viz.plot_score_histogram(out_dir / "score_histogram.png", scores, labels)
    written.append("score_histogram.png")
    # Overlays: a few images of each defect type and of the good ones, one colour scale for all.
    limit = model.settings.evaluation.max_overlays
    if limit:
        vmin, vmax = float(np.percentile(maps, 1)), float(np.percentile(maps, 99.9))
        by_defect: dict[str, list[int]] = {}
        for i, sample in enumerate(test):
            by_defect.setdefault(sample.defect, []).append(i)
        per = max(1, limit // max(1, len(by_defect)))
        chosen = [i for idx in by_defect.values() for i in idx[:per]][:limit]
        (out_dir / "overlays").mkdir(exist_ok=True)
        from adcore.data.mvtec import read_image

        for i in chosen:
            sample = test[i]
            image = transform.denormalize(transform(read_image(sample.path)))
            rel = f"overlays/{sample.defect}_{Path(sample.path).stem}.png"
            viz.save_overlay_panel(out_dir / rel, image, np.clip((maps[i] - vmin) / (vmax - vmin + 1e-12), 0, 1),
                                   None if masks is None else masks[i],
                                   title=f"{sample.defect} score={scores[i]:.3g}")
            written.append(rel)
    return written
