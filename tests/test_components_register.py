"""components.register on a real MLflow registry (sqlite in tmp_path): the gate on per-image scores, the champion
re-evaluated on another split with the challenger's seen anomalies excluded, manual mode, promote, rollback and the
model card. The gate's rule itself: tests/test_gate.py; against a real `mlflow server`: tests/test_components_e2e.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from adcore.errors import ConfigError
from components.register import registered_name
from components.tracking import flatten


def test_names_and_flatten():
    assert registered_name("adcore", "tile", "patchcore") == "adcore-tile-patchcore"
    with pytest.raises(ConfigError, match="registered model name"):
        registered_name("a b", "tile", "cfa")
    assert flatten({"data": {"image_size": 64, "mean": [0.5]}, "method_name": "cfa"}) == {
        "data.image_size": "64", "data.mean": "[0.5]", "method_name": "cfa"}


@pytest.fixture
def registry(tmp_path, monkeypatch):
    # an absolute URI: MLflow caches stores by URI, so a relative sqlite:///mlflow.db would be another test's
    uri = f"sqlite:///{tmp_path / 'registry.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "register-test")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _twin(src: Path, evaluation: Path, dst: Path, **metric_updates) -> tuple[str, str]:
    """A copy of the model with another content hash (same predictions) and its evaluation folder, re-stamped."""
    from components.tracking import model_fingerprint

    shutil.copytree(src, dst)
    (dst / "model.json").write_text((src / "model.json").read_text() + " " * len(dst.name))  # a hash per name
    out = dst.with_name(dst.name + "-eval")
    shutil.copytree(evaluation, out)
    metrics = json.loads((out / "metrics.json").read_text())
    metrics.update(model_sha256=model_fingerprint(dst), **metric_updates)
    (out / "metrics.json").write_text(json.dumps(metrics))
    return str(dst), str(out / "metrics.json")


@pytest.fixture(scope="module")
def trained(demo_root, tmp_path_factory):
    """One small model and its evaluation (scores.csv, plots), shared by the tests here (read-only)."""
    from components.evaluate import evaluate
    from components.train import train

    tmp_path = tmp_path_factory.mktemp("trained")
    tr = train("patchcore", str(demo_root), "tile", str(tmp_path / "a"), track=False,
               overrides=["backbone.weights=random", "data.image_size=32", "evaluation.max_overlays=1"])
    ev = evaluate(tr["model_dir"], str(demo_root), "tile", str(tmp_path / "a-eval"), track=False)
    return Path(tr["model_dir"]), Path(ev["metrics_json"])


def test_gate_manual_mode_promote_rollback_and_card(registry, trained, tmp_path, capsys):
    from components.cli import main
    from components.register import register_model

    model, metrics_json = trained
    first = register_model(str(model), str(metrics_json), "tile", "patchcore", prefix="t")
    assert first["decision"] == "promoted" and first["version"] == 1 and first["interval"] is None
    name = "t-tile-patchcore"

    # the same predictions under another hash: a tie, rejected with its interval
    b, b_metrics = _twin(model, metrics_json.parent, tmp_path / "b")
    tie = register_model(b, b_metrics, "tile", "patchcore", prefix="t")
    assert tie["decision"] == "rejected" and tie["interval"] == [0.0, 0.0, 0.0], tie
    assert tie["reasons"].startswith("image_auroc ") and "does not beat champion v1's" in tie["reasons"]
    v2 = registry.get_model_version(name, "2")
    assert v2.tags["promotion.ci_low"] == "0.000000" and v2.tags["promotion.resamples"] == "2000"
    # the model card: the version's description and an artifact of its run, with the pictures beside it
    assert v2.description.startswith(f"# {name} v2\n") and "- decision: **rejected** (compared with: 1)" in \
        v2.description and "| image_auroc |" in v2.description and "![roc](pictures/roc.png)" in v2.description
    card_files = {a.path for a in registry.list_artifacts(tie["run_id"], "model_card/pictures")}
    assert "model_card/pictures/roc.png" in card_files

    # manual mode with a gate every challenger passes: the alias candidate, the champion untouched
    c, c_metrics = _twin(model, metrics_json.parent, tmp_path / "cc")
    cand = register_model(c, c_metrics, "tile", "patchcore", prefix="t", mode="manual", margin=-1.0, tolerance=1.0)
    assert cand["decision"] == "candidate" and cand["champion_version"] == 1
    assert "promote it with `adcore-step promote tile patchcore --version 3`" in cand["reasons"]
    assert str(registry.get_model_version_by_alias(name, "candidate").version) == "3"
    assert str(registry.get_model_version_by_alias(name, "champion").version) == "1"

    # a person promotes it, then rolls it back with a reason
    assert main(["promote", "tile", "patchcore", "--version", "3", "--prefix", "t", "--reason", "card read"]) == 0
    assert json.loads(capsys.readouterr().out)["champion_version"] == 3
    assert str(registry.get_model_version_by_alias(name, "champion").version) == "3"
    assert registry.get_model_version(name, "3").tags["champion.previous"] == "1"
    assert main(["rollback", "tile", "patchcore", "--prefix", "t", "--reason", "false alarms on line 4"]) == 0
    assert json.loads(capsys.readouterr().out) == {"name": name, "champion_version": 1, "rolled_back": 3,
                                                   "reason": "false alarms on line 4"}
    assert str(registry.get_model_version_by_alias(name, "champion").version) == "1"
    v3 = registry.get_model_version(name, "3")
    assert v3.tags["rollback.reason"] == "false alarms on line 4" and v3.tags["rollback.to"] == "1"
    assert registry.get_registered_model(name).tags["last_rollback"].startswith("v3 -> v1 at ")
    # v1 was the first champion: nothing to roll back to, one line and exit code 2
    assert main(["rollback", "tile", "patchcore", "--prefix", "t", "--reason", "again"]) == 2
    assert capsys.readouterr().err.strip() == ("error: t-tile-patchcore v1 is the first champion (no "
                                               "champion.previous tag): there is nothing to roll back to; promote a "
                                               "version with `adcore-step promote`")
    assert main(["promote", "tile", "patchcore", "--version", "9", "--prefix", "t"]) == 2
    assert capsys.readouterr().err.strip() == "error: registered model t-tile-patchcore has no version 9"


def test_champion_reevaluated_on_another_split_without_the_challengers_seen_anomalies(registry, trained, demo_root,
                                                                                      tmp_path):
    """A challenger that saw one anomaly in training (as PRN does) was scored without it: the champion is
    re-evaluated on that split, without it too, and the paired comparison runs over the same images."""
    from adcore.evaluation import split_fingerprint
    from components.register import register_model

    model, metrics_json = trained
    assert register_model(str(model), str(metrics_json), "tile", "patchcore", prefix="s")["decision"] == "promoted"
    rows = (metrics_json.parent / "scores.csv").read_text().splitlines()
    seen = next(r.split(",")[0] for r in rows[1:] if r.split(",")[2] == "1")
    split = split_fingerprint(demo_root, "tile", [seen])
    b, b_metrics = _twin(model, metrics_json.parent, tmp_path / "b", excluded_seen_anomalies=[seen],
                         test_split_sha256=split)
    Path(b_metrics).with_name("scores.csv").write_text("\n".join(r for r in rows if not r.startswith(seen)) + "\n")

    no_root = register_model(b, b_metrics, "tile", "patchcore", prefix="s")
    assert no_root["decision"] == "rejected" and no_root["interval"] is None
    assert no_root["reasons"] == ("champion v1 was evaluated on a different test split and no data_root was given "
                                  "to re-evaluate it; no paired comparison with champion v1 on common test images: "
                                  "a missing comparison never promotes")
    with_root = register_model(b, b_metrics, "tile", "patchcore", prefix="s", data_root=str(demo_root))
    assert with_root["reasons"].startswith("champion v1 was re-evaluated on this test split; image_auroc ")
    assert with_root["interval"] == [0.0, 0.0, 0.0] and with_root["decision"] == "rejected"  # same predictions
    n_images = len(rows) - 1
    assert registry.get_model_version("s-tile-patchcore", "2").tags["promotion.n_images"] == str(n_images - 1)
