"""PatchCore: coreset selection, nearest neighbours, the Eq. 7 image-score reweighting, persistence, demo accuracy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from adcore import metrics
from adcore.config import resolve
from adcore.data.dataset import make_loader
from adcore.data.mvtec import load_category
from adcore.methods import create_model, load_model
from adcore.methods.base import FitData
from adcore.methods.patchcore import greedy_coreset, local_patch_features, nearest_neighbours


def brute_force_k_center(x: torch.Tensor, n: int, start: int) -> list[int]:
    """Greedy k-center (PatchCore Alg. 1) written the obvious way, in float64 with exact distances."""
    x = x.double()
    chosen = [start]
    for _ in range(n - 1):
        d = torch.cdist(x, x[chosen]).min(dim=1).values
        chosen.append(int(d.argmax()))
    return chosen


def test_greedy_coreset_equals_brute_force_k_center():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 8, generator=gen)
    # projection_dim >= the feature size: no projection, so the picks must be exactly the textbook ones.
    picked = greedy_coreset(x, 30, projection_dim=128, seed=0)
    assert picked.shape == (30,) and picked.dtype == torch.long
    assert picked.tolist() == brute_force_k_center(x, 30, int(picked[0]))
    assert len(set(picked.tolist())) == 30
    assert greedy_coreset(x, 30, projection_dim=128, seed=0).tolist() == picked.tolist()  # seeded


def test_greedy_coreset_picks_the_farthest_points():
    # Five tight clusters far apart and one far outlier: six picks take the outlier and one point per cluster.
    gen = torch.Generator().manual_seed(1)
    centres = torch.tensor([[0.0, 0], [10, 0], [0, 10], [10, 10], [5, 5]])
    points = (centres.repeat_interleave(40, 0) + 0.1 * torch.randn(200, 2, generator=gen))
    points = torch.cat([points, torch.tensor([[40.0, 40.0]])])
    picked = greedy_coreset(points, 6, projection_dim=16, seed=3).tolist()
    assert 200 in picked
    assert sorted(i // 40 for i in picked if i != 200) == [0, 1, 2, 3, 4]
    # Asking for more than there is returns every index once; asking for none still returns one.
    assert sorted(greedy_coreset(points[:7], 50, seed=0).tolist()) == list(range(7))
    assert greedy_coreset(points, 0, seed=0).numel() == 1


def test_greedy_coreset_with_projection_covers_the_data():
    # One big cluster and 39 small ones in 64 dimensions: a random 10 % misses small clusters, the greedy
    # coreset on a 16-d random projection keeps at least one point of every cluster.
    gen = torch.Generator().manual_seed(2)
    sizes = [1610] + [10] * 39
    labels = torch.repeat_interleave(torch.arange(40), torch.tensor(sizes))
    x = 10 * torch.randn(40, 64, generator=gen)[labels] + 0.5 * torch.randn(2000, 64, generator=gen)
    picked = greedy_coreset(x, 200, projection_dim=16, seed=0)
    assert len(set(picked.tolist())) == 200
    assert set(labels[picked].tolist()) == set(range(40))
    radius = torch.cdist(x, x[picked]).min(1).values.max()
    rand = torch.cdist(x, x[torch.randperm(2000, generator=gen)[:200]]).min(1).values.max()
    assert radius < 0.5 * rand


@pytest.mark.parametrize("k, chunk", [(1, 4096), (3, 7)])
def test_nearest_neighbours_matches_cdist(k, chunk):
    gen = torch.Generator().manual_seed(0)
    queries, memory = torch.randn(50, 16, generator=gen), torch.randn(80, 16, generator=gen)
    dist, idx = nearest_neighbours(queries, memory, k=k, chunk=chunk)
    ref_d, ref_i = torch.cdist(queries, memory).topk(k, dim=1, largest=False)
    assert dist.shape == idx.shape == (50, k)
    assert torch.equal(idx, ref_i)
    torch.testing.assert_close(dist, ref_d, rtol=1e-4, atol=1e-4)
    d_self, i_self = nearest_neighbours(memory, memory, k=1)
    assert torch.equal(i_self[:, 0], torch.arange(80)) and float(d_self.max()) < 1e-2  # sqrt of float32 rounding


def test_local_patch_features_shapes_and_aggregation():
    a = torch.arange(16.0).reshape(1, 1, 4, 4)
    b = torch.ones(1, 2, 2, 2)
    out = local_patch_features([a, b], patch_size=3, embedding_dim=8)
    assert out.shape == (1, 3, 4, 4)
    # 3x3 mean without padding counted: the corner averages its 2x2 neighbourhood, the centre its 3x3 one.
    assert out[0, 0, 0, 0] == pytest.approx((0 + 1 + 4 + 5) / 4)
    assert out[0, 0, 1, 1] == pytest.approx(float(a[0, 0, :3, :3].mean()))
    assert torch.all(out[0, 1:] == 1)
    pooled = local_patch_features([torch.randn(2, 6, 4, 4), torch.randn(2, 10, 2, 2)], 3, 4)
    assert pooled.shape == (2, 4, 4, 4)


def _tiny_model(**method):
    overrides = ["backbone.name=resnet18", "backbone.weights=random", "train.device=cpu", "data.image_size=32"]
    overrides += [f"method.patchcore.{k}={v}" for k, v in method.items()]
    return create_model(resolve("patchcore", "cpu", overrides=overrides))


def test_image_score_reweighting_eq7():
    model = _tiny_model(reweight_k=3)
    memory = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.5], [5.0, 5.0], [6.0, 5.0]])  # no distance ties
    model.memory = memory
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
    plain.memory, plain.embed = memory, model.embed
    unweighted = plain.predict_raw(torch.zeros(2, 3, 32, 32))
    assert unweighted.scores is None  # the base class then takes the map's maximum
    torch.testing.assert_close(unweighted.maps, raw.maps)


def _fit(root, category, image_size=64):
    overrides = [f"data.image_size={image_size}", "train.device=cpu", "method.patchcore.embedding_dim=256",
                 "method.patchcore.coreset_ratio=0.1", "method.patchcore.coreset_min=0"]
    model = create_model(resolve("patchcore", "cpu", overrides=overrides))  # the offline Lite0 weights
    cat = load_category(root, category)
    model.fit(FitData(train=cat.train, val=[], transform=model.make_transform(), progress=False,
                      category_name=category))
    return model, cat


def _scores(model, samples):
    preds = [model.predict(b["image"]) for b in make_loader(samples, model.make_transform(), 16)]
    return torch.cat([p.scores for p in preds]).numpy(), torch.cat([p.maps for p in preds]).numpy()


@pytest.mark.parametrize("category", ["tile", "widget"])
def test_demo_accuracy_and_save_load_round_trip(demo_root, tmp_path, category):
    model, cat = _fit(demo_root, category)
    n_patches = model.fit_info["n_patches"]
    assert n_patches == len(cat.train) * 8 * 8  # stride 8 on 64 px
    assert model.fit_info["memory_size"] == round(0.1 * n_patches) == model.memory.shape[0]
    scores, maps = _scores(model, cat.test)
    labels = np.array([s.label for s in cat.test])
    assert maps.shape == (len(cat.test), 64, 64)
    assert metrics.image_auroc(scores, labels) > 0.9
    masks = np.stack([b["mask"].numpy() > 0.5 for b in make_loader(cat.test, model.make_transform(), 64)][0])
    assert metrics.pixel_auroc(maps, masks) > 0.8

    model.save(tmp_path / "model")
    loaded = load_model(tmp_path / "model", device="cpu")
    assert torch.equal(loaded.memory, model.memory)
    assert loaded.backbone.weights_sha256 == model.backbone.weights_sha256
    assert (loaded.backbone.mean, loaded.backbone.std) == (model.backbone.mean, model.backbone.std)
    scores2, maps2 = _scores(loaded, cat.test)  # same batches as before: bit-identical results
    np.testing.assert_array_equal(maps2, maps)
    np.testing.assert_array_equal(scores2, scores)
