"""The promotion rule of components.register (pure function) and small helpers; the registry itself is in e2e."""

from __future__ import annotations

import math

import pytest

from adcore.errors import ConfigError
from components.register import decide_promotion, registered_name
from components.tracking import flatten

CHAMP = {"image_auroc": 0.90, "pixel_auroc": 0.95, "pixel_aupro": 0.80}


def decide(new, champion=CHAMP, margin=0.01, tolerance=0.02):
    return decide_promotion(new, champion, metric="image_auroc", margin=margin, tolerance=tolerance)


def test_promotes_only_when_better_by_margin_and_nothing_much_worse():
    ok, reasons = decide({"image_auroc": 0.93, "pixel_auroc": 0.94, "pixel_aupro": 0.80})
    assert ok and reasons == ["image_auroc 0.9300 beats champion's 0.9000 by +0.0300 (margin 0.01)"]
    ok, reasons = decide({"image_auroc": 0.905, "pixel_auroc": 0.95, "pixel_aupro": 0.80})
    assert not ok and "does not beat champion's 0.9000 by the margin 0.01 (+0.0050)" in reasons[0]
    ok, reasons = decide({"image_auroc": 0.99, "pixel_auroc": 0.90, "pixel_aupro": 0.80})
    assert not ok and reasons[1] == "pixel_auroc 0.9000 is worse than champion's 0.9500 by more than the tolerance 0.02"


def test_missing_metrics_never_promote():
    assert decide({"pixel_auroc": 0.99}, None) == (False, ["challenger has no image_auroc: a missing metric never "
                                                           "promotes"])
    assert decide({"image_auroc": math.nan}, None)[0] is False
    assert decide({"image_auroc": 0.99}, {"pixel_auroc": 0.5})[1] == [
        "champion has no image_auroc to compare with: a missing metric never promotes"]
    ok, reasons = decide({"image_auroc": 0.99, "pixel_auroc": 0.99})  # no pixel_aupro while the champion has one
    assert not ok and "challenger has no pixel_aupro while champion has 0.8000" in reasons[-1]
    ok, reasons = decide({"image_auroc": 0.7}, None)
    assert ok and reasons == ["no champion yet: the first model with image_auroc=0.7000 becomes champion"]


def test_names_and_flatten():
    assert registered_name("adcore", "tile", "patchcore") == "adcore-tile-patchcore"
    with pytest.raises(ConfigError, match="registered model name"):
        registered_name("a b", "tile", "cfa")
    assert flatten({"data": {"image_size": 64, "mean": [0.5]}, "method_name": "cfa"}) == {
        "data.image_size": "64", "data.mean": "[0.5]", "method_name": "cfa"}


def test_registry_on_local_sqlite_reevaluates_champion_on_another_split(demo_root, tmp_path, monkeypatch):
    """Default store (sqlite in the working folder); a champion scored on another test split is re-evaluated."""
    import json
    import shutil

    from mlflow import MlflowClient

    from components.evaluate import evaluate
    from components.register import register_model
    from components.tracking import model_fingerprint
    from components.train import train

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tr = train("patchcore", str(demo_root), "tile", str(tmp_path / "a"), track=False,
               overrides=["backbone.weights=random", "data.image_size=32"])
    ev = evaluate(tr["model_dir"], str(demo_root), "tile", str(tmp_path / "eval"), track=False)
    first = register_model(tr["model_dir"], ev["metrics_json"], "tile", "patchcore", prefix="t")
    assert first["decision"] == "promoted" and (tmp_path / "mlflow.db").is_file()

    # model B claims perfect metrics, but on another test split: not comparable without re-evaluating the champion
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    (tmp_path / "b" / "model.json").write_text((tmp_path / "a" / "model.json").read_text() + "\n")
    metrics = json.loads(open(ev["metrics_json"]).read())
    metrics.update({k: 1.0 for k in ("image_auroc", "pixel_auroc", "pixel_aupro", "pixel_ap", "image_ap",
                                     "image_f1_max", "pixel_f1_max")}, test_split_sha256="another-split",
                   model_sha256=model_fingerprint(tmp_path / "b"))  # its own hash, or register refuses the file
    (tmp_path / "b.json").write_text(json.dumps(metrics))
    no_root = register_model(str(tmp_path / "b"), str(tmp_path / "b.json"), "tile", "patchcore", prefix="t")
    assert no_root["decision"] == "rejected" and no_root["version"] == 2
    assert no_root["reasons"].startswith("champion v1 was evaluated on a different test split and no data_root was "
                                         "given to re-evaluate it; champion v1 has no image_auroc to compare with")
    with_root = register_model(str(tmp_path / "b"), str(tmp_path / "b.json"), "tile", "patchcore", prefix="t",
                               data_root=str(demo_root))
    assert with_root["decision"] == "promoted" and with_root["version"] == 2, with_root
    assert with_root["reasons"].startswith("champion v1 was re-evaluated on this test split; image_auroc 1.0000 "
                                           f"beats champion v1's {ev['image_auroc']:.4f}")
    client = MlflowClient("sqlite:///mlflow.db")
    assert str(client.get_model_version_by_alias("t-tile-patchcore", "champion").version) == "2"
    assert client.get_model_version("t-tile-patchcore", "2").tags["promotion.compared_with"] == "1"
