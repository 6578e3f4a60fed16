"""adcore export: every registered method, exported whole to ONNX and OpenVINO IR, scores as ``adcore predict``.

Each method is trained once on the session's 64 px demo data (its smoke overrides, cpu profile) and exported once
to both formats from one trace, at batch size 2 so that the runners' batching (cut and pad) is exercised too.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adcore.cli import main as cli_main
from adcore.data.mvtec import load_category, read_image
from adcore.errors import ConfigError, DataError, ModelFormatError
from adcore.export import EXPORT_FILE, FORMATS, export_formats, export_model, load_exported
from adcore.export.check import compare
from adcore.export.decompositions import channel_adaptive_avg_pool3d, euclidean_cdist
from adcore.methods import get_method, load_model, method_names, resolve_settings
from adcore.training import TrainOptions, train_model

METHODS = method_names()
#: Relative to the range of predict's maps (docs/EXPORT.md).
TOLERANCE = 1e-4
BATCH = 2
#: One epoch where a method trains: the export checks need a fitted model, not a good one.
ONE_EPOCH = {"cfa": ["method.cfa.epochs=1"], "frad": ["method.frad.epochs=1"], "nnet": ["method.nnet.epochs=1"],
             "prn": ["method.prn.epochs=1"]}


def train_tiny(method: str, demo_root, output, *extra: str):
    settings = resolve_settings(method, "cpu", None, ["data.image_size=64", "train.device=cpu", "train.seed=0",
                                                      *get_method(method).smoke_overrides,
                                                      *ONE_EPOCH.get(method, []), *extra])
    return train_model(settings, demo_root, "widget", output, TrainOptions(progress=False)).model_dir


@pytest.fixture(scope="module", params=METHODS)
def exported(request, demo_root, tmp_path_factory):
    """(method, model dir, {format: export dir}): each method trained once and exported once to both formats."""
    method = request.param
    root = tmp_path_factory.mktemp(method)
    model_dir = train_tiny(method, demo_root, root / "model")
    folders = {fmt: root / fmt for fmt in FORMATS}
    export_formats(model_dir, folders, batch_size=BATCH)
    return method, model_dir, folders


@pytest.fixture(scope="module")
def test_images(demo_root):
    return [s.path for s in load_category(demo_root, "widget").test]


@pytest.fixture(scope="module")
def patchcore_model(demo_root, tmp_path_factory):
    return train_tiny("patchcore", demo_root, tmp_path_factory.mktemp("patchcore") / "model")


@pytest.fixture(scope="module")
def normalized_onnx(patchcore_model, tmp_path_factory):
    """``adcore export --normalize`` of the PatchCore model and the command's answer on stdout."""
    out = tmp_path_factory.mktemp("cli") / "onnx"
    args = ["export", "--model", str(patchcore_model), "--format", "onnx", "--output", str(out), "--normalize"]
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert cli_main(args) == 0
    return out, json.loads(buffer.getvalue().strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_export_equals_predict(exported, test_images, fmt):
    """Maps and scores of the runner equal predict's within 1e-4 of the maps' range, on all test images (an odd
    number: the last batch is padded), for every registered method."""
    method, model_dir, folders = exported
    runner = load_exported(folders[fmt])
    model = load_model(model_dir, device="cpu")
    images = torch.stack([runner.transform()(read_image(p)) for p in test_images])
    assert len(images) % BATCH == 1
    diff = compare(model, runner, images)
    assert diff["map_range"] > 0
    assert diff["max_rel_diff_maps"] <= TOLERANCE, diff
    assert diff["max_rel_diff_scores"] <= TOLERANCE, diff
    record = json.loads((folders[fmt] / EXPORT_FILE).read_text())
    assert record["whole_graph"] is True and record["method"] == method and record["batch_size"] == BATCH
    assert (folders[fmt] / record["file"]).is_file()
    assert record["preprocessing"]["mean"] == list(model.backbone.mean)
    assert record["preprocessing"]["std"] == list(model.backbone.std)
    assert record["preprocessing"]["input_size"] == model.settings.data.input_size
    assert record["threshold"] == model.normalizer["image_threshold"]


def test_cli_export_with_normaliser_matches_adcore_predict(patchcore_model, normalized_onnx, test_images, tmp_path):
    """``adcore export --normalize`` then the runner on image files, preprocessed as export.json says, gives the
    normalised scores ``adcore predict`` writes for the same files."""
    out, answer = normalized_onnx
    assert answer["threshold"] == 0.5 and "normaliser" in answer["graph"] and answer["format"] == "onnx"
    assert cli_main(["predict", "--model", str(patchcore_model), "--output", str(tmp_path / "pred"),
                     *map(str, test_images)]) == 0
    expected = [json.loads(line)["normalized_score"]
                for line in (tmp_path / "pred" / "predictions.jsonl").read_text().splitlines()]
    runner = load_exported(out)
    transform = runner.transform()
    maps, scores = runner.predict(np.stack([transform(read_image(p)).numpy() for p in test_images]))
    assert maps.shape == (len(test_images), 64, 64) and 0.0 <= maps.min() and maps.max() <= 1.0
    np.testing.assert_allclose(scores, expected, rtol=0, atol=TOLERANCE)


def test_existing_export_is_replaced_only_with_overwrite(patchcore_model, normalized_onnx, capsys):
    out, _ = normalized_onnx
    before = (out / "model.onnx").read_bytes()
    assert cli_main(["export", "--model", str(patchcore_model), "--format", "onnx", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--overwrite" in err and str(out) in err
    assert (out / "model.onnx").read_bytes() == before  # nothing written
    # a folder that is not an export (here: the model itself) is never replaced, even with --overwrite
    assert cli_main(["export", "--model", str(patchcore_model), "--format", "onnx", "--output",
                     str(patchcore_model), "--overwrite"]) == 2
    assert "not an adcore export folder" in capsys.readouterr().err
    assert (patchcore_model / "model.safetensors").is_file() and not (patchcore_model / EXPORT_FILE).exists()


def test_overwrite_replaces_the_export_whole(patchcore_model, tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"an older export")
    (out / EXPORT_FILE).write_text(json.dumps({"format": "onnx", "file": "model.onnx", "batch_size": 1}))
    record = export_model(patchcore_model, "openvino", out, batch_size=3, overwrite=True)
    assert record["batch_size"] == 3 and json.loads((out / EXPORT_FILE).read_text())["format"] == "openvino"
    assert sorted(p.name for p in out.iterdir()) == [EXPORT_FILE, "model.bin", "model.xml"]  # no model.onnx left
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no temporary folder left behind
    maps, scores = load_exported(out).predict(np.zeros((4, 3, 64, 64), np.float32))  # cut into 3 + 1 (padded)
    assert maps.shape == (4, 64, 64) and scores.shape == (4,)
    np.testing.assert_allclose(scores, scores[0], rtol=1e-6)


def test_normalize_without_normaliser_is_refused(demo_root, tmp_path):
    model_dir = train_tiny("patchcore", demo_root, tmp_path / "model", "data.val_fraction=0", "data.min_val_images=0")
    with pytest.raises(ConfigError, match="no fitted normaliser"):
        export_model(model_dir, "onnx", tmp_path / "out", normalize=True)
    assert not (tmp_path / "out").exists()


def test_missing_package_is_named(patchcore_model, tmp_path, monkeypatch):
    folder = tmp_path / "ov"
    folder.mkdir()
    (folder / "model.xml").write_text("<net/>")
    (folder / EXPORT_FILE).write_text(json.dumps({"format": "openvino", "file": "model.xml", "batch_size": 1,
                                                  "input": {"shape": [1, 3, 64, 64]}}))
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    with pytest.raises(ConfigError, match="needs the package 'openvino'"):
        export_model(patchcore_model, "openvino", tmp_path / "out")
    with pytest.raises(ConfigError, match="needs the package 'openvino'"):
        load_exported(folder)
    assert not (tmp_path / "out").exists()


def test_runner_refuses_bad_input(normalized_onnx, tmp_path):
    runner = load_exported(normalized_onnx[0])
    with pytest.raises(DataError, match=r"expected float32 images of shape \(N, 3, 64, 64\)"):
        runner.predict(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(DataError, match="float32"):
        runner.predict(np.zeros((1, 3, 64, 64), np.float64))
    with pytest.raises(DataError, match="N >= 1"):
        runner.predict(np.zeros((0, 3, 64, 64), np.float32))
    with pytest.raises(ModelFormatError, match="not an adcore export folder"):
        load_exported(tmp_path)


@pytest.mark.parametrize(("channels", "out"), [(40, 224), (112, 224), (448, 224), (7, 3), (5, 5), (3, 8)])
def test_channel_pooling_rewrite_equals_adaptive_pooling(channels, out):
    x = torch.randn(2, 1, channels, 3, 4, generator=torch.Generator().manual_seed(0))
    expected = F.adaptive_avg_pool3d(x, (out, 3, 4))
    torch.testing.assert_close(channel_adaptive_avg_pool3d(x, [out, 3, 4]), expected, rtol=1e-6, atol=1e-6)


def test_cdist_rewrite_equals_cdist():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 1, 16, generator=gen), torch.randn(3, 9, 16, generator=gen)
    torch.testing.assert_close(euclidean_cdist(a, b), torch.cdist(a, b), rtol=1e-5, atol=1e-5)
