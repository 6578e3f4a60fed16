"""The method contract, checked once for every registered method (as anomalib's model integration test and
scikit-learn's estimator checks do). A method registered in ``adcore/methods/<name>/`` is checked here without
writing a test: its ``smoke_overrides`` make the smallest meaningful run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adcore.data.dataset import make_loader
from adcore.data.mvtec import load_category
from adcore.errors import ConfigError, DataError, NotFittedError
from adcore.methods import create_model, get_method, load_model, method_names, resolve_settings
from adcore.methods.base import AnomalyModel, FitData, TrainOptions

#: Every check runs on the session's 64 px demo data, on the CPU, with the offline EfficientNet-Lite0 weights.
SHARED = ["data.image_size=64", "train.device=cpu", "train.seed=0"]
METHODS = method_names()


def settings_for(method: str, *extra: str):
    return resolve_settings(method, "cpu", None, [*SHARED, *get_method(method).smoke_overrides, *extra])


def fit_data(model: AnomalyModel, demo_root: Path, category: str = "widget") -> FitData:
    cat = load_category(demo_root, category)
    return FitData(train=cat.train[:12], val=cat.train[12:], transform=model.make_transform(), category_name=category)


def sample_images(model: AnomalyModel, demo_root: Path, category: str = "widget") -> torch.Tensor:
    cat = load_category(demo_root, category)
    return next(iter(make_loader(cat.test[:4], model.make_transform(), batch_size=4)))["image"]


def fit(method: str, demo_root: Path, options: TrainOptions | None = None, *extra: str) -> AnomalyModel:
    model = create_model(settings_for(method, *extra))
    return model.fit(fit_data(model, demo_root), options or TrainOptions(progress=False))


@pytest.fixture(scope="module")
def fitted(demo_root) -> dict[str, AnomalyModel]:
    """One fitted model per method, shared by the checks that only read it."""
    return {name: fit(name, demo_root) for name in METHODS}


def assert_same_maps(a: AnomalyModel, b: AnomalyModel, images: torch.Tensor) -> None:
    pa, pb = a.predict(images), b.predict(images)
    torch.testing.assert_close(pa.maps, pb.maps, rtol=0, atol=1e-6)
    torch.testing.assert_close(pa.scores, pb.scores, rtol=0, atol=1e-6)


def test_every_method_follows_the_folder_layout():
    root = Path(__file__).resolve().parents[1] / "adcore" / "methods"
    for name in METHODS:
        cls = get_method(name)
        assert cls.__module__ == f"adcore.methods.{name}.method", cls.__module__
        assert (root / name / "network.py").is_file()
        init = (root / name / "__init__.py").read_text()
        assert "def " not in init and "class " not in init, f"{name}/__init__.py must only re-export"


@pytest.mark.parametrize("method", METHODS)
def test_fit_then_save_and_load_gives_identical_maps(method, fitted, demo_root, tmp_path):
    model = fitted[method]
    images = sample_images(model, demo_root)
    pred = model.predict(images)
    assert pred.maps.shape == (4, *images.shape[-2:]) and torch.isfinite(pred.maps).all()
    model.save(tmp_path / "model")
    assert_same_maps(model, load_model(tmp_path / "model"), images)


@pytest.mark.parametrize("method", METHODS)
def test_two_fits_with_one_seed_give_identical_maps(method, fitted, demo_root):
    again = fit(method, demo_root)
    assert_same_maps(fitted[method], again, sample_images(again, demo_root))


@pytest.mark.parametrize("method", METHODS)
def test_resume_equals_an_uninterrupted_run(method, fitted, demo_root, tmp_path):
    ckpt = tmp_path / "ckpt"
    first = fit(method, demo_root, TrainOptions(progress=False, checkpoint_dir=ckpt, stop_after_epochs=1))
    resumed = fit(method, demo_root, TrainOptions(progress=False, checkpoint_dir=ckpt, resume=True))
    if first.fit_info.get("history"):  # a method with epochs stopped early, then went on where it stopped
        assert first.fit_info["epochs_completed"] == 1
        assert resumed.fit_info["epochs_completed"] == fitted[method].fit_info["epochs_completed"]
    assert_same_maps(fitted[method], resumed, sample_images(resumed, demo_root))


@pytest.mark.parametrize("method", METHODS)
def test_predict_and_save_before_fit_raise_not_fitted(method, tmp_path):
    model = create_model(settings_for(method))
    images = torch.zeros(1, 3, model.make_transform().output_size, model.make_transform().output_size)
    with pytest.raises(NotFittedError, match=rf"{method}: the model is not fitted; call fit"):
        model.predict(images)
    with pytest.raises(NotFittedError):
        model.save(tmp_path / "model")
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("method", METHODS)
def test_empty_training_set_is_a_data_error(method, demo_root):
    model = create_model(settings_for(method))
    with pytest.raises(DataError, match="empty training set"):
        model.fit(FitData(train=[], val=[], transform=model.make_transform(), category_name="widget"),
                  TrainOptions(progress=False))


@pytest.mark.parametrize("method", METHODS)
def test_unknown_setting_names_the_key(method):
    with pytest.raises(ConfigError, match=rf"method\.{method}\.no_such_setting: unknown setting"):
        settings_for(method, f"method.{method}.no_such_setting=1")
    with pytest.raises(ConfigError, match=r"data\.image_sise: unknown setting"):
        settings_for(method, "data.image_sise=64")


@pytest.mark.parametrize("method", METHODS)
def test_model_saved_on_another_device_loads_on_the_cpu(method, fitted, demo_root, tmp_path, monkeypatch):
    fitted[method].save(tmp_path / "model")
    meta_path = tmp_path / "model" / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["config"]["train"]["device"] = "cuda"  # as written by a training pod with a GPU
    meta_path.write_text(json.dumps(meta))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    loaded = load_model(tmp_path / "model")
    assert loaded.device.type == "cpu" and loaded.settings.train.device == "cpu"
    assert_same_maps(fitted[method], loaded, sample_images(loaded, demo_root))
