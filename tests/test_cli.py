"""The ``adcore`` command line end to end on the demo data, and its one-line errors (exit code 2) for bad input."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adcore.cli import main

TINY = ["--set", "data.image_size=64", "--set", "train.device=cpu"]
METRIC_KEYS = {"image_auroc", "pixel_auroc", "pixel_aupro", "pixel_ap", "image_ap", "image_f1_max", "pixel_f1_max",
               "n_images", "ms_per_image"}


@pytest.fixture(autouse=True)
def _quiet(monkeypatch, tmp_path):
    monkeypatch.setenv("ADCORE_NO_PROGRESS", "1")
    monkeypatch.setenv("ADCORE_CACHE_DIR", str(tmp_path / "feature-cache"))  # never the user's cache


def _train(root: Path, category: str, out: Path, *extra: str) -> int:
    return main(["train", "--method", "patchcore", "--data-root", str(root), "--category", category,
                 "--output", str(out), *TINY, *extra])


def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"adcore {command}: error: ")
    return lines[0]


def test_train_evaluate_predict_on_demo_data(demo_root, tmp_path, capsys):
    model = tmp_path / "model"
    assert _train(demo_root, "tile", model, "--cache-dir", str(tmp_path / "cache")) == 0
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["model_dir"] == str(model) and summary["method"] == "patchcore" and summary["device"] == "cpu"
    assert sorted(p.name for p in model.iterdir()) == ["model.json", "model.safetensors"]
    assert any((tmp_path / "cache").iterdir())  # the features went to --cache-dir

    metrics_json = tmp_path / "eval" / "metrics.json"
    assert main(["evaluate", "--model", str(model), "--data-root", str(demo_root), "--category", "tile",
                 "--output", str(metrics_json)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(printed) == METRIC_KEYS
    results = json.loads(metrics_json.read_text())
    assert METRIC_KEYS <= set(results)
    assert results["n_images"] == 6 + 4 * 3  # test/good + 4 defect types x 3 on the tile category
    assert results["image_auroc"] > 0.9 and results["pixel_auroc"] > 0.8
    for key in METRIC_KEYS - {"n_images"}:
        assert isinstance(results[key], float) and results[key] >= 0, key
    assert 0 < results["pixel_aupro"] <= 1 and results["ms_per_image"] > 0
    assert {k: printed[k] for k in METRIC_KEYS} == {k: results[k] for k in METRIC_KEYS}

    out_dir = metrics_json.parent
    for name in ("scores.csv", "roc.png", "pro.png", "score_histogram.png"):
        assert (out_dir / name).stat().st_size > 0, name
    with open(out_dir / "scores.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == results["n_images"] and set(rows[0]) == {"path", "defect", "label", "score"}
    assert {r["label"] for r in rows if r["defect"] == "good"} == {"0"}
    overlays = sorted((out_dir / "overlays").glob("*.png"))
    assert len(overlays) >= 5 and {p.name.split("_")[0] for p in overlays} == {"good", "crack", "hole", "scratch",
                                                                              "stain"}
    assert Image.open(overlays[0]).size[0] > 64  # a panel: image | heatmap | overlay

    # predict: two images share the stem 000 (test/good and test/crack); neither heatmap overwrites the other.
    images = [demo_root / "tile" / "test" / "good" / "000.png", demo_root / "tile" / "test" / "crack" / "000.png",
              demo_root / "tile" / "test" / "hole" / "001.png"]
    pred_dir = tmp_path / "pred"
    assert main(["predict", "--model", str(model), "--output", str(pred_dir), *map(str, images)]) == 0
    stdout_lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    records = [json.loads(line) for line in (pred_dir / "predictions.jsonl").read_text().splitlines()]
    assert records == stdout_lines and [r["path"] for r in records] == list(map(str, images))
    assert len({r["heatmap"] for r in records}) == 3
    for record in records:
        assert Path(record["heatmap"]).is_file() and Path(record["heatmap"]).parent == pred_dir
        assert isinstance(record["score"], float) and 0 <= record["normalized_score"] <= 1
    by_path = {r["path"]: r for r in records}
    scores_csv = {r["path"]: float(r["score"]) for r in rows}
    for path in map(str, images):  # the same score as the evaluation gave, to the CSV's 6 digits
        assert by_path[path]["score"] == pytest.approx(scores_csv[path], rel=1e-5)
    assert by_path[str(images[0])]["score"] < by_path[str(images[1])]["score"]


def test_category_without_ground_truth_gives_null_pixel_metrics(tiny_category, tmp_path, capsys):
    cat = tiny_category("labels_only", masks=False, n_train=6, size=(48, 48))
    model = tmp_path / "model"
    assert _train(cat.parent, "labels_only", model) == 0
    out = tmp_path / "eval" / "m.json"
    assert main(["evaluate", "--model", str(model), "--data-root", str(cat.parent), "--category", "labels_only",
                 "--output", str(out)]) == 0
    results = json.loads(out.read_text())
    assert METRIC_KEYS <= set(results)
    for key in ("pixel_auroc", "pixel_aupro", "pixel_ap", "pixel_f1_max"):
        assert results[key] is None, key
    assert "ground_truth" in results["pixel_metrics_note"]
    assert results["image_auroc"] is not None and results["n_images"] == 4
    assert (out.parent / "roc.png").is_file() and not (out.parent / "pro.png").exists()
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["pixel_auroc"] is None


def _break(kind: str, cat: Path) -> None:
    """Damage a fresh tiny category in one of the ways listed in the issue."""
    if kind == "corrupt image":
        path = cat / "train" / "good" / "001.png"
        path.write_bytes(path.read_bytes()[:60])  # truncated PNG
    elif kind == "not an image":
        (cat / "test" / "good" / "000.png").write_bytes(b"hello")
    elif kind == "missing train/good":
        shutil.rmtree(cat / "train" / "good")
    elif kind == "wrong folder layout":  # images straight in train/ instead of train/good/
        for f in (cat / "train" / "good").iterdir():
            f.rename(cat / "train" / f.name)
        (cat / "train" / "good").rmdir()
    elif kind == "missing test":
        shutil.rmtree(cat / "test")
    elif kind == "mask of the wrong size":
        Image.fromarray(np.zeros((10, 10), np.uint8)).save(cat / "ground_truth" / "scratch" / "001_mask.png")
    elif kind == "defect image without a mask":
        (cat / "ground_truth" / "scratch" / "001_mask.png").unlink()
    elif kind == "empty category":
        for f in (cat / "train" / "good").iterdir():
            f.unlink()
    elif kind == "no test images":
        shutil.rmtree(cat / "test")
        (cat / "test" / "good").mkdir(parents=True)


@pytest.mark.parametrize("kind, pattern", [
    ("corrupt image", r"part/train/good/001\.png: unreadable image \(OSError: image file is truncated\)$"),
    ("not an image", r"part/test/good/000\.png: unreadable image \(UnidentifiedImageError"),
    ("missing train/good", r"part/train/good: missing; expected <root>/<category>/train/good with normal images"),
    ("wrong folder layout", r"part/train/good: missing; expected <root>/<category>/train/good"),
    ("missing test", r"part/test: missing; expected <root>/<category>/test/good and test/<defect>"),
    ("mask of the wrong size",
     r"part/ground_truth/scratch/001_mask\.png: mask size 10x10 differs from its image size 40x30"),
    ("defect image without a mask",
     r"part/ground_truth: 1 anomalous test image\(s\) have no mask: .*part/test/scratch/001\.png "
     r"\(expected .*part/ground_truth/scratch/001_mask\.png\)"),
    ("empty category", r"part/train/good: empty category, no images \(\.png, \.jpg, \.jpeg, \.bmp\) in train/good$"),
    ("no test images", r"part/test: no test images in test/good or test/<defect>"),
])
def test_bad_dataset_is_one_line_and_exit_code_2(tiny_category, tmp_path, capsys, kind, pattern):
    cat = tiny_category("part")
    _break(kind, cat)
    model = tmp_path / "model"
    assert _train(cat.parent, "part", model) == 2
    line = _one_error_line(capsys, "train")
    assert re.search(pattern, line), line
    assert not model.exists()  # nothing half-written


def test_bad_settings_and_paths(tiny_category, tmp_path, capsys):
    cat = tiny_category("part")
    root = str(cat.parent)
    assert _train(cat.parent, "part", tmp_path / "m", "--set", "data.image_sze=3") == 2
    assert _one_error_line(capsys, "train").endswith("error: data.image_sze: unknown setting")
    assert _train(cat.parent, "part", tmp_path / "m", "--set", "method.patchcore.coreset_ratio=3") == 2
    assert "method.patchcore.coreset_ratio: Input should be less than or equal to 1 (got 3)" in \
        _one_error_line(capsys, "train")
    params = tmp_path / "params.yaml"
    params.write_text("method:\n  patchcore:\n    neighbours: 3\n")
    assert _train(cat.parent, "part", tmp_path / "m", "--params", str(params)) == 2
    assert _one_error_line(capsys, "train").endswith("method.patchcore.neighbours: unknown setting")
    assert main(["train", "--method", "nosuch", "--data-root", root, "--category", "part",
                 "--output", str(tmp_path / "m")]) == 2
    assert "method 'nosuch': unknown; known methods: " in _one_error_line(capsys, "train")
    assert _train(cat.parent, "nosuch", tmp_path / "m") == 2
    assert "category 'nosuch' not found; categories in" in _one_error_line(capsys, "train")
    assert _train(tmp_path / "nowhere", "part", tmp_path / "m") == 2
    assert "nowhere: dataset root not found" in _one_error_line(capsys, "train")
    assert not (tmp_path / "m").exists()
    assert main(["config", "--method", "patchcore", "--set", "backbone.nam=x"]) == 2
    assert _one_error_line(capsys, "config").endswith("backbone.nam: unknown setting")


def test_bad_model_and_images(tiny_category, tmp_path, capsys):
    cat = tiny_category("part", n_train=6, size=(32, 32))
    model = tmp_path / "model"
    assert _train(cat.parent, "part", model, "--set", "data.image_size=32") == 0
    capsys.readouterr()
    image = str(cat / "test" / "good" / "000.png")

    old = tmp_path / "old"
    shutil.copytree(model, old)
    meta = json.loads((old / "model.json").read_text())
    meta.update(format_version=0, adcore_version="0.0.1")
    (old / "model.json").write_text(json.dumps(meta))
    expected = (f"{old}: model format version 0 (written by adcore 0.0.1) cannot be read by adcore")
    assert main(["evaluate", "--model", str(old), "--data-root", str(cat.parent), "--category", "part",
                 "--output", str(tmp_path / "e.json")]) == 2
    assert expected in _one_error_line(capsys, "evaluate")
    assert main(["predict", "--model", str(old), "--output", str(tmp_path / "p"), image]) == 2
    assert expected in _one_error_line(capsys, "predict")

    assert main(["predict", "--model", str(tmp_path / "nowhere"), "--output", str(tmp_path / "p"), image]) == 2
    assert "nowhere: not a model directory" in _one_error_line(capsys, "predict")
    assert main(["predict", "--model", str(model), "--output", str(tmp_path / "p"), str(cat / "nothere.png")]) == 2
    assert _one_error_line(capsys, "predict").endswith("part/nothere.png: image not found")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert main(["predict", "--model", str(model), "--output", str(tmp_path / "p"), str(bad)]) == 2
    assert f"{bad}: unreadable image" in _one_error_line(capsys, "predict")

    incomplete = tmp_path / "incomplete"
    shutil.copytree(model, incomplete)
    meta = json.loads((incomplete / "model.json").read_text())
    del meta["backbone"]  # valid JSON, right version, but not what adcore writes
    (incomplete / "model.json").write_text(json.dumps(meta))
    assert main(["predict", "--model", str(incomplete), "--output", str(tmp_path / "p"), image]) == 2
    assert _one_error_line(capsys, "predict").endswith(
        "incomplete/model.json: incomplete or inconsistent model (KeyError: 'backbone')")

    (model / "model.safetensors").write_bytes(b"\x80\x04\x95 pickle")
    assert main(["predict", "--model", str(model), "--output", str(tmp_path / "p"), image]) == 2
    assert "model.safetensors: not a readable safetensors file" in _one_error_line(capsys, "predict")


def test_methods_and_config_commands(capsys):
    assert main(["methods"]) == 0
    assert "patchcore" in capsys.readouterr().out
    assert main(["config", "--method", "patchcore", "--profile", "paper", "--set", "data.image_size=128"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["backbone"]["name"] == "wide_resnet50_2.tv_in1k" and cfg["data"]["image_size"] == 128
    assert cfg["method"]["coreset_ratio"] == 0.1


def test_quickstart_trains_evaluates_and_summarises(tmp_path, capsys):
    """The README's main command, shrunk: demo data -> train -> evaluate -> summary table, for two methods."""
    out = tmp_path / "qs"
    code = main(["--no-progress", "quickstart", "--output", str(out), "--methods", "patchcore", "frad",
                 "--categories", "tile", "--set", "data.image_size=64", "--set", "method.frad.epochs=1",
                 "--set", "evaluation.max_overlays=1"])
    assert code == 0
    rows = json.loads((out / "summary.json").read_text())
    assert [(r["category"], r["method"]) for r in rows] == [("tile", "patchcore"), ("tile", "frad")]
    assert rows[0]["image_auroc"] > 0.9  # PatchCore on the demo texture finds the defects
    table = (out / "summary.md").read_text()
    assert "| tile | patchcore |" in table and "| tile | frad |" in table
    for method in ("patchcore", "frad"):
        assert (out / "models" / "tile" / method / "model.safetensors").is_file()
        assert (out / "eval" / "tile" / method / "roc.png").is_file()
    assert "| tile | patchcore |" in capsys.readouterr().out


def test_not_fitted_model_is_one_line_and_exit_code_2(monkeypatch, tmp_path, capsys):
    # A library caller's unfitted model reaching a command (here through predict) is a user error, not a traceback.
    from adcore.errors import NotFittedError
    from adcore.methods import create_model, resolve_settings

    model = create_model(resolve_settings("patchcore", "cpu", None, ["backbone.name=resnet18",
                                                                     "backbone.weights=random"]))

    def predict_files(model_dir, images, output, device=None, threshold=None):
        model.predict(__import__("torch").zeros(1, 3, 32, 32))
        yield {}

    monkeypatch.setattr("adcore.predict.predict_files", predict_files)
    assert main(["predict", "--model", str(tmp_path), "--output", str(tmp_path / "p"), "x.png"]) == 2
    line = _one_error_line(capsys, "predict")
    assert line.endswith("patchcore: the model is not fitted; call fit(data) or load a saved model with "
                         "adcore.methods.load_model(path)")
    assert issubclass(NotFittedError, RuntimeError)
