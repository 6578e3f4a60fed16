"""The algorithms in adcore/methods/common, each tested once: distances, k-means, coreset, patch features, blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adcore.methods.common.blocks import Bottleneck
from adcore.methods.common.coreset import greedy_coreset
from adcore.methods.common.distances import cosine_distance_map, nearest_neighbours, squared_distances
from adcore.methods.common.kmeans import kmeans
from adcore.methods.common.patch_features import pool_channels, pooled_patch_features


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


def test_pooled_patch_features_shapes_and_aggregation():
    a = torch.arange(16.0).reshape(1, 1, 4, 4)
    b = torch.ones(1, 2, 2, 2)
    out = pooled_patch_features([a, b], 3, count_include_pad=False)
    assert out.shape == (1, 3, 4, 4)
    # 3x3 mean without padding counted: the corner averages its 2x2 neighbourhood, the centre its 3x3 one.
    assert out[0, 0, 0, 0] == pytest.approx((0 + 1 + 4 + 5) / 4)
    assert out[0, 0, 1, 1] == pytest.approx(float(a[0, 0, :3, :3].mean()))
    assert torch.all(out[0, 1:] == 1)
    pooled = pool_channels(pooled_patch_features([torch.randn(2, 6, 4, 4), torch.randn(2, 10, 2, 2)]), 4)
    assert pooled.shape == (2, 4, 4, 4)
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert pool_channels(x, 3).flatten().tolist() == [0.5, 2.5, 4.5]
    # CFA's reading counts the zero padding (the PyTorch default): the corner averages 4 values over 9 cells.
    assert pooled_patch_features([a])[0, 0, 0, 0] == pytest.approx((0 + 1 + 4 + 5) / 9)


def test_kmeans_plus_plus_finds_separated_clusters_and_is_seeded():
    gen = torch.Generator().manual_seed(0)
    centres = ([0.0, 0.0], [5.0, 5.0], [-5.0, 5.0])
    pts = torch.cat([torch.randn(50, 2, generator=gen) * 0.1 + torch.tensor(c) for c in centres])
    (c1, _), (c2, _) = [kmeans(pts, 3, init="k-means++", rng=np.random.default_rng(1)) for _ in range(2)]
    assert torch.equal(c1, c2)
    found = sorted(tuple(round(v) for v in row) for row in c1.tolist())
    assert found == [(-5, 5), (0, 0), (5, 5)]


def test_kmeans_from_sampled_rows_finds_separated_clusters():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0] * 6, [10.0] * 6, [-10.0] * 6])
    x = torch.tensor(np.concatenate([c + rng.normal(0, 0.1, (20, 6)) for c in centres]), dtype=torch.float32)
    found, iters = kmeans(x, 3, init="sample", rng=np.random.default_rng(1), max_iter=300)
    assert iters <= 300
    got = sorted(found[:, 0].round().tolist())
    assert got == [-10.0, 0.0, 10.0]


def test_squared_distances_match_cdist_and_pass_gradients():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 5, generator=gen, requires_grad=True), torch.randn(4, 5, generator=gen)
    d = squared_distances(a, b)
    torch.testing.assert_close(d, torch.cdist(a, b) ** 2, rtol=1e-5, atol=1e-5)
    d.sum().backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()
    assert float(squared_distances(b, b).diagonal().max()) < 1e-5 and float(squared_distances(b, b).min()) >= 0


def test_cosine_distance_map_is_zero_for_same_direction_and_two_for_opposite():
    z = torch.randn(2, 8, 5, 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(cosine_distance_map(z, 3.0 * z), torch.zeros(2, 5, 5), atol=1e-6, rtol=0)
    torch.testing.assert_close(cosine_distance_map(z, -z), torch.full((2, 5, 5), 2.0), atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode, size", [("same", 8), ("down", 4), ("up", 16)])
def test_bottleneck_changes_resolution_as_its_mode_says(mode, size):
    block = Bottleneck(6, 10, 4, mode).eval()
    assert block(torch.randn(2, 6, 8, 8)).shape == (2, 10, size, size)
    assert isinstance(Bottleneck(6, 6, 4).shortcut, torch.nn.Identity)
