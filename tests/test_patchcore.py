"""PatchCore: the Eq. 7 image-score reweighting and demo accuracy (its shared algorithms: tests/test_common.py)."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from adcore import metrics
from adcore.data.dataset import make_loader
from adcore.data.mvtec import load_category
from adcore.methods import create_model, load_model, resolve_settings
from adcore.methods.base import FitData, TrainOptions
from adcore.methods.common.patch_features import pool_channels, pooled_patch_features
from adcore.methods.patchcore import PatchCoreNetwork
from adcore.methods.patchcore.method import embed_stages


def _tiny_model(**method):
    overrides = ["backbone.name=resnet18", "backbone.weights=random", "train.device=cpu", "data.image_size=32"]
    overrides += [f"method.patchcore.{k}={v}" for k, v in method.items()]
    return create_model(resolve_settings("patchcore", "cpu", None, overrides))


def test_image_score_reweighting_eq7():
    model = _tiny_model(reweight_k=3)
    memory = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.5], [5.0, 5.0], [6.0, 5.0]])  # no distance ties
    model.network = PatchCoreNetwork(*memory.shape)
    model.network.memory.copy_(memory)
    # Two images, a 1x2 patch grid each: image 0's worst patch is near the dense corner, image 1's near the
    # sparse pair.
    patches = torch.tensor([[[-2.0, 0.0], [0.1, 0.1]],
                            [[5.0, 5.2], [5.0, 8.0]]])  # (B, h*w, D)
    model.embed = lambda stages: patches.reshape(2, 1, 2, 2).permute(0, 3, 1, 2)  # -> (B, D, h=1, w=2)
    raw = model.predict_raw(torch.zeros(2, 3, 32, 32))
    expected_maps, expected_scores = [], []
    for image in patches.double():
        d = torch.cdist(image, memory.double())  # (h*w, M)
        patch_scores = d.min(1).values
        worst = int(patch_scores.argmax())
        m_star = int(d[worst].argmin())
        s_star = float(patch_scores[worst])
        support = torch.cdist(memory[m_star:m_star + 1].double(), memory.double())[0].argsort()[:3]
        dists = [float(torch.dist(image[worst], memory[j].double())) for j in support]
        weight = 1 - math.exp(dists[0]) / sum(math.exp(v) for v in dists)  # Eq. 7, b = 3
        expected_maps.append(patch_scores)
        expected_scores.append(weight * s_star)
    torch.testing.assert_close(raw.maps.reshape(2, 2).double(), torch.stack(expected_maps), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(raw.scores.double(), torch.tensor(expected_scores, dtype=torch.float64),
                               rtol=1e-5, atol=1e-5)
    # The weight is in (0, 1): the score is below the raw maximum distance.
    assert torch.all(raw.scores < raw.maps.reshape(2, -1).max(1).values)

    plain = _tiny_model(reweight=False)
    plain.network, plain.embed = model.network, model.embed
    unweighted = plain.predict_raw(torch.zeros(2, 3, 32, 32))
    assert unweighted.scores is None  # the base class then takes the map's maximum
    torch.testing.assert_close(unweighted.maps, raw.maps)


# ---- the embedding: each stage pooled to embedding_dim on its own, then the stack (reference Preprocessing) --------
def _stages(a: float = 1.0, b: float = 10.0) -> list[torch.Tensor]:
    """Stage maps as WRN50's layer2/layer3 in miniature: the deeper one has 2x the channels and half the grid."""
    shallow = a * torch.arange(1, 5, dtype=torch.float32).view(1, 4, 1, 1).expand(1, 4, 6, 6).clone()
    deep = b * torch.arange(1, 9, dtype=torch.float32).view(1, 8, 1, 1).expand(1, 8, 3, 3).clone()
    return [shallow, deep]


def test_each_stage_fills_an_equal_share_of_the_embedding_whatever_its_width():
    dim = 6
    emb = embed_stages(_stages(), dim)
    assert emb.shape == (1, dim, 6, 6)
    # Channels 0-2 depend on the shallow stage only, 3-5 on the deep one only (a 2x wider stage gets no 2x share).
    shallow_changed = embed_stages(_stages(a=-3.0), dim)
    deep_changed = embed_stages(_stages(b=-7.0), dim)
    assert torch.equal(emb[:, 3:], shallow_changed[:, 3:]) and not torch.equal(emb[:, :3], shallow_changed[:, :3])
    assert torch.equal(emb[:, :3], deep_changed[:, :3]) and not torch.equal(emb[:, 3:], deep_changed[:, 3:])
    # Inside the grid (no padding): shallow channels 1..4 pooled to 6 then pairs averaged -> 3 values from 4 channels
    shallow_6 = pool_channels(torch.arange(1, 5, dtype=torch.float32).view(1, 4, 1, 1), 6).flatten()
    expected = shallow_6.view(3, 2).mean(1)
    torch.testing.assert_close(emb[0, :3, 2, 2], expected)
    # The one-step pooling it replaces gave the deep stage 2/3 of the channels: 4 of 6 read only the deep stage.
    old = pool_channels(pooled_patch_features(_stages(), 3, count_include_pad=False), dim)
    old_changed = pool_channels(pooled_patch_features(_stages(b=-7.0), 3, count_include_pad=False), dim)
    assert int((old != old_changed).flatten(2).any(2).sum()) == 4


def test_neighbourhood_average_counts_the_zero_padding_as_the_reference():
    ones = [torch.ones(1, 2, 4, 4), torch.ones(1, 2, 2, 2)]
    emb = embed_stages(ones, 2)  # channel 0 <- shallow stage, channel 1 <- deep stage
    assert emb[0, 0, 1, 1].item() == pytest.approx(1.0)  # interior: 9 of 9 neighbours
    assert emb[0, 0, 0, 0].item() == pytest.approx(4 / 9)  # corner: 4 of 9, the padding counted as zeros
    assert emb[0, 0, 0, 1].item() == pytest.approx(6 / 9)  # edge: 6 of 9
    # the 2x2 deep map: every cell sees 4 of 9, then bilinear upsampling keeps the constant
    torch.testing.assert_close(emb[0, 1], torch.full((4, 4), 4 / 9))


def test_paper_profile_runs_end_to_end(demo_root, tmp_path):
    settings = resolve_settings("patchcore", "paper", None, ["backbone.weights=random", "data.image_size=64",
                                                            "data.crop_size=56", "train.device=cpu"])
    assert settings.backbone.name == "wide_resnet50_2.tv_in1k" and settings.method.embedding_dim == 1024
    model = create_model(settings)
    cat = load_category(demo_root, "tile")
    model.fit(FitData(train=cat.train[:4], val=cat.train[4:6], transform=model.make_transform()),
              TrainOptions(progress=False))
    assert model.backbone.channels == [512, 1024]
    assert model.fit_info["n_patches"] == 4 * 7 * 7  # stride 8 on 56 px
    assert tuple(model.network.memory.shape) == (round(0.1 * 4 * 7 * 7), 1024)
    images = next(iter(make_loader(cat.test[:4], model.make_transform(), 4)))["image"]
    pred = model.predict(images)
    assert pred.maps.shape == (4, 56, 56) and pred.scores.shape == (4,)
    assert torch.isfinite(pred.maps).all() and torch.isfinite(pred.scores).all()
    model.save(tmp_path / "paper")
    again = load_model(tmp_path / "paper", device="cpu").predict(images)
    assert torch.equal(pred.maps, again.maps) and torch.equal(pred.scores, again.scores)


def _fit(root, category, image_size=64):
    overrides = [f"data.image_size={image_size}", "train.device=cpu", "method.patchcore.embedding_dim=256",
                 "method.patchcore.coreset_ratio=0.1", "method.patchcore.coreset_min=0"]
    model = create_model(resolve_settings("patchcore", "cpu", None, overrides))  # the offline Lite0 weights
    cat = load_category(root, category)
    model.fit(FitData(train=cat.train, val=[], transform=model.make_transform(), category_name=category),
              TrainOptions(progress=False))
    return model, cat


def _scores(model, samples):
    preds = [model.predict(b["image"]) for b in make_loader(samples, model.make_transform(), 16)]
    return torch.cat([p.scores for p in preds]).numpy(), torch.cat([p.maps for p in preds]).numpy()


@pytest.mark.parametrize("category", ["tile", "widget"])
def test_demo_accuracy(demo_root, category):
    # Save/load, resume and seeding are checked for every method in tests/test_method_contract.py.
    model, cat = _fit(demo_root, category)
    n_patches = model.fit_info["n_patches"]
    assert n_patches == len(cat.train) * 8 * 8  # stride 8 on 64 px
    assert model.fit_info["memory_size"] == round(0.1 * n_patches) == model.network.memory.shape[0]
    scores, maps = _scores(model, cat.test)
    labels = np.array([s.label for s in cat.test])
    assert maps.shape == (len(cat.test), 64, 64)
    assert metrics.image_auroc(scores, labels) > 0.9
    masks = np.stack([b["mask"].numpy() > 0.5 for b in make_loader(cat.test, model.make_transform(), 64)][0])
    assert metrics.pixel_auroc(maps, masks) > 0.8


# ---- the measurement scripts of the cpu profile and the anomalib comparison (benchmarks/) ----------------------------
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _benchmark_module(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_profile_validation_pairs_each_held_out_normal_with_an_anomalous_twin(demo_root):
    from adcore.data.mvtec import train_val_split

    search = _benchmark_module("cpu_profile_search")
    images, masks, labels = search.validation_set(demo_root, "tile", 0, 0.25, 2)
    _, val = train_val_split(load_category(demo_root, "tile").train, 0.25, 0, 2)
    n = len(val)
    size = search.SYNTH_SIZE
    assert images.shape == (2 * n, size, size, 3) and images.dtype == np.uint8
    assert labels.tolist() == [0] * n + [1] * n
    assert not masks[:n].any() and all(m.any() for m in masks[n:])
    # each twin differs from its normal image inside its mask, and only there
    diff = np.abs(images[n:].astype(int) - images[:n].astype(int)).max(axis=-1)
    assert all(d[m].max() > 0 and d[~m].max() == 0 for d, m in zip(diff, masks[n:], strict=True))
    again = search.validation_set(demo_root, "tile", 0, 0.25, 2)
    assert np.array_equal(again[0], images) and np.array_equal(again[1], masks)  # the same set for every candidate


def test_anomalib_side_by_side_skips_with_a_reason_without_anomalib(tmp_path):
    missing = tmp_path / "no-venv" / "bin" / "python"
    out = subprocess.run([sys.executable, str(BENCHMARKS / "anomalib_side_by_side.py"), "--anomalib-python",
                          str(missing), "--out", str(tmp_path / "rows.jsonl")], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"skipped: no anomalib environment at {missing} (set --anomalib-python or " \
                                 "ADCORE_ANOMALIB_PYTHON)"
    assert not (tmp_path / "rows.jsonl").exists()
