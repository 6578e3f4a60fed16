"""Training and evaluation orchestration: validation split, cache reuse, calibration, recorded facts, metrics."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from adcore.errors import ModelFormatError
from adcore.evaluation import METRIC_KEYS, evaluate_model
from adcore.features import FeatureCache
from adcore.methods import load_model, resolve_settings
from adcore.training import TrainOptions, default_cache_dir, train_model

TINY = ["data.image_size=64", "train.device=cpu"]


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("ADCORE_CACHE_DIR", str(tmp_path / "a"))
    assert default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("ADCORE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "adcore" / "features"


def test_train_then_evaluate(demo_root, tmp_path, caplog, monkeypatch):
    extracted = []
    original = FeatureCache._extract

    def counting_extract(*args, **kwargs):
        extracted.append(len(args[1]))
        return original(*args, **kwargs)

    monkeypatch.setattr(FeatureCache, "_extract", staticmethod(counting_extract))
    cache = tmp_path / "cache"
    settings = resolve_settings("patchcore", "cpu", None, TINY)
    options = TrainOptions(cache_dir=cache, progress=False)
    result = train_model(settings, demo_root, "widget", tmp_path / "model", options)
    assert result.model_dir == tmp_path / "model" and result.device == "cpu"
    assert result.seconds > 0 and result.peak_rss_mb > 0 and result.history == []
    assert result.config.data.image_size == 64

    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    fit = meta["fit_info"]
    train_dir = demo_root / "widget" / "train" / "good"
    # The validation split is carved from train/good (16 images, 10 %, at least 2): never from the test split.
    assert len(fit["val_images"]) == 2 and all(Path(p).parent == train_dir for p in fit["val_images"])
    assert meta["data"]["n_train"] == 14 and meta["data"]["n_val"] == 2 and meta["data"]["category"] == "widget"
    assert fit["n_patches"] == 14 * 8 * 8 and fit["seen_anomalies"] == []
    assert extracted == [14]  # the backbone ran once, on the training images only
    assert meta["normalizer"] is not None and meta["normalizer"]["quantile"] == 0.99
    assert meta["config"]["data"]["image_size"] == 64 and meta["method"] == "patchcore"
    assert meta["backbone"]["name"] == "tf_efficientnet_lite0" and meta["backbone"]["mean"] == [0.5, 0.5, 0.5]
    assert {"python", "torch", "timm"} <= set(meta["environment"])

    # A second training with the same data and settings reads the features from the cache.
    with caplog.at_level(logging.INFO, logger="adcore.features"):
        again = train_model(settings, demo_root, "widget", tmp_path / "model2", options)
    assert extracted == [14] and "feature cache hit" in caplog.text
    assert json.loads((again.model_dir / "model.json").read_text())["fit_info"]["memory_size"] == fit["memory_size"]

    out = tmp_path / "eval" / "metrics.json"
    results = evaluate_model(tmp_path / "model", demo_root, "widget", out, progress=False, write_artifacts=False)
    assert set(METRIC_KEYS) <= set(results) and json.loads(out.read_text()) == json.loads(json.dumps(results))
    assert results["n_images"] == 6 + 3 * 3 and results["n_anomalous"] == 9
    assert results["image_auroc"] > 0.9
    assert sorted(p.name for p in out.parent.iterdir()) == ["metrics.json"]  # no artifacts asked for

    # Seen anomalies are excluded by <category>/test/<defect>/<file>, whatever root the model was trained from.
    from adcore.data.mvtec import load_category

    anomalous = next(s for s in load_category(demo_root, "widget").test if s.label == 1)
    elsewhere = Path("/elsewhere/data") / anomalous.path.relative_to(demo_root)
    fewer = evaluate_model(tmp_path / "model", demo_root, "widget", tmp_path / "eval2" / "metrics.json",
                           progress=False, write_artifacts=False, exclude=[elsewhere])
    assert fewer["n_images"] == results["n_images"] - 1 and fewer["n_anomalous"] == 8
    assert fewer["excluded_seen_anomalies"] == [str(elsewhere)]

    # A model saved on another device loads on the CPU: tests/test_method_contract.py.
    # Normalised predictions of the loaded model: the validation images sit at or below the 0.5 threshold mostly.
    model = load_model(tmp_path / "model", device="cpu")
    from adcore.data.dataset import make_loader
    from adcore.data.mvtec import Sample

    val = [Sample(Path(p), 0, "good", None) for p in fit["val_images"]]
    batch = next(iter(make_loader(val, model.make_transform(), 8)))
    pred = model.predict(batch["image"], normalize=True)
    assert float(pred.scores.min()) >= 0 and float(pred.scores.max()) <= 0.55

    # predict_files reports the same normalised scores as model.predict(normalize=True).
    from adcore.predict import predict_files

    records = list(predict_files(tmp_path / "model", [val[0].path, val[1].path], tmp_path / "pred", device="cpu"))
    assert [r["normalized_score"] for r in records] == pytest.approx(pred.scores.tolist(), abs=1e-6)
    assert [r["is_anomalous"] for r in records] == [bool(s > 0.5) for s in pred.scores]


def test_single_training_image_trains_without_validation(tiny_category, tmp_path):
    cat = tiny_category("one", n_train=1, size=(32, 32))
    settings = resolve_settings("patchcore", "cpu", None, ["backbone.name=resnet18", "backbone.weights=random",
                                                           "data.image_size=32", "train.device=cpu"])
    result = train_model(settings, cat.parent, "one", tmp_path / "m",
                         TrainOptions(cache_dir=tmp_path / "c", progress=False))
    meta = json.loads((result.model_dir / "model.json").read_text())
    assert meta["data"]["n_train"] == 1 and meta["data"]["n_val"] == 0 and meta["normalizer"] is None
    model = load_model(result.model_dir)
    images = model.make_transform()(np.zeros((32, 32, 3), np.uint8))[None]
    with pytest.raises(ModelFormatError, match="no fitted normaliser"):
        model.predict(images, normalize=True)
    # predict then reports raw scores only, with a min-max scaled heatmap.
    from adcore.predict import predict_files

    records = list(predict_files(result.model_dir, [cat / "test" / "good" / "000.png"], tmp_path / "p"))
    assert set(records[0]) == {"path", "score", "heatmap"}
